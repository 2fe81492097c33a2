#!/usr/bin/env python3
"""Whether this CPU's onnxruntime sums int8 products exactly: one
MatMulInteger of 64 activation bytes of 255 by 64 weights of 127. With
AVX-512 VNNI (or ARM) it gives 255 * 127 * 64 = 2,072,640; with AVX2 alone
MLAS's vpmaddubsw saturates each pair at 32767 and it gives 1,048,544
(BENCHMARKS.md, "AMD EPYC Zen 3").

    tools/.venv/bin/python tools/bench/ort_saturation.py
"""

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

K = 64
graph = helper.make_graph(
    [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
    "saturation",
    [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, K])],
    [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])],
    [helper.make_tensor("b", TensorProto.INT8, [K, 1], [127] * K)],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
got = int(session.run(None, {"a": np.full((1, K), 255, np.uint8)})[0][0, 0])
want = 255 * 127 * K
print(f"onnxruntime {ort.__version__} MatMulInteger(255 x 127, k={K}): {got}, exact {want}: "
      + ("exact" if got == want else f"off by {want - got} (saturated pair sums)"))
