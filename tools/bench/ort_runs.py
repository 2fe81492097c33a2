"""N single-threaded onnxruntime inferences of MODEL on a fixed random
1x3x224x224 input; run by tools/bench/arm_ort_icount.sh under qemu-aarch64.

    python3 ort_runs.py MODEL N [MAPS_OUT]

MAPS_OUT, if given, receives /proc/self/maps after the runs (qemu-user
shows the guest's mappings there), for tools/bench/arm_profile.py to place
the blocks of the shared libraries."""

import sys

import numpy as np
import onnxruntime as ort

model, n = sys.argv[1], int(sys.argv[2])
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
# No spinning worker threads exist with 1 thread, but say so anyway.
so.add_session_config_entry("session.intra_op.allow_spinning", "0")
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
name = sess.get_inputs()[0].name
for _ in range(n):
    y = sess.run(None, {name: x})[0]
print(f"onnxruntime {ort.__version__}, {n} runs, logits[0,:3] {y.ravel()[:3]}", file=sys.stderr)
if len(sys.argv) > 3:
    with open("/proc/self/maps") as f, open(sys.argv[3], "w") as g:
        g.write(f.read())
