#!/usr/bin/env python3
"""The Python side of `cargo bench --bench preprocess`: the same frames
through PIL and Hugging Face's BEiT image processor (PIL backend, the
reference lookout is tested against), timed the same way.

Usage: preprocess_py.py DIR ITERATIONS. DIR holds frame.rgb, frame.yuyv,
frame.nv12 (raw, size in DIR/size.txt as "W H") and frame.jpg, written by the
Rust bench. Prints one JSON object: format -> mean CPU milliseconds per frame.
YUYV and NV12 are converted with numpy (BT.601 limited range, as lookout
does), the fastest conversion available without extra packages.
"""

import io
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from transformers.models.beit import BeitImageProcessorPil  # noqa: E402

PROC = BeitImageProcessorPil(size={"height": 224, "width": 224}, resample=Image.BICUBIC)


def square(img):
    side = min(img.width, img.height)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side))


def tensor(img):
    return PROC(square(img), return_tensors="np")["pixel_values"]


def yuv_to_rgb(y, u, v):
    y = (y.astype(np.float32) - 16) * (255 / 219)
    u = (u.astype(np.float32) - 128) * (255 / 224)
    v = (v.astype(np.float32) - 128) * (255 / 224)
    rgb = np.stack([y + 1.402 * v, y - 0.344136 * u - 0.714136 * v, y + 1.772 * u], -1)
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))


def main():
    d = pathlib.Path(sys.argv[1])
    n = int(sys.argv[2])
    w, h = map(int, (d / "size.txt").read_text().split())
    rgb = (d / "frame.rgb").read_bytes()
    yuyv = (d / "frame.yuyv").read_bytes()
    nv12 = (d / "frame.nv12").read_bytes()
    jpg = (d / "frame.jpg").read_bytes()

    def from_rgb():
        return tensor(Image.frombuffer("RGB", (w, h), rgb, "raw", "RGB", 0, 1))

    def from_yuyv():
        q = np.frombuffer(yuyv, np.uint8).reshape(h, w // 2, 4)
        y = q[..., [0, 2]].reshape(h, w)
        return tensor(yuv_to_rgb(y, np.repeat(q[..., 1], 2, 1), np.repeat(q[..., 3], 2, 1)))

    def from_nv12():
        a = np.frombuffer(nv12, np.uint8)
        y = a[: w * h].reshape(h, w)
        uv = a[w * h :].reshape(h // 2, w // 2, 2)
        up = lambda c: np.repeat(np.repeat(c, 2, 0), 2, 1)  # noqa: E731
        return tensor(yuv_to_rgb(y, up(uv[..., 0]), up(uv[..., 1])))

    def from_jpeg():
        return tensor(Image.open(io.BytesIO(jpg)).convert("RGB"))

    # Not preprocessing: the floor under any MJPEG figure. libjpeg-turbo
    # (PIL's decoder) decoding alone, at full size and at the smallest DCT
    # scale it offers (draft mode, 1/8: the IDCT is nearly skipped, the
    # Huffman pass is not).
    def decode(scale):
        def f():
            img = Image.open(io.BytesIO(jpg))
            if scale > 1:
                img.draft("RGB", (img.width // scale, img.height // scale))
            img.load()
            return img

        return f

    out = {}
    cases = [("rgb8", from_rgb, n), ("yuyv", from_yuyv, n), ("nv12", from_nv12, n), ("mjpeg", from_jpeg, n)]
    for name, f, _ in cases:
        assert f().shape == (1, 3, 224, 224)
    assert decode(8)().width == -(-w // 8)
    cases += [("jpeg_decode_only", decode(1), 5 * n), ("jpeg_decode_only_1_8", decode(8), 5 * n)]
    for name, f, iters in cases:
        # Process CPU time, like the Rust side: wall time on a loaded
        # machine counts other processes too.
        t = time.process_time()
        for _ in range(iters):
            f()
        out[name] = (time.process_time() - t) * 1000 / iters
    print(json.dumps(out))


if __name__ == "__main__":
    main()
