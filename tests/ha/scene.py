"""A camera for the Home Assistant tests, run by lookout as a `command`
source: writes an MJPEG stream (concatenated JPEGs) to stdout at FPS frames
a second, each frame the image file the control file names at that moment;
while the control file says `pause` it writes nothing, as a stalled camera.

    scene.py CONTROL_FILE FPS
"""

import sys
import time

control, period = sys.argv[1], 1.0 / float(sys.argv[2])
out = sys.stdout.buffer
while True:
    with open(control) as f:
        image = f.read().strip()
    if image != "pause":
        with open(image, "rb") as f:
            out.write(f.read())
        out.flush()
    time.sleep(period)
