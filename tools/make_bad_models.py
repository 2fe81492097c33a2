"""Writes the tiny ONNX models tests/badinput.rs loads to check that a model
with the wrong input is refused with a clear error (exit 79).

Each is a valid ONNX graph with 10 outputs (so the digits labels fit) whose
input is not the [1, 3, H, W] image lookout feeds:
- rank2.onnx: a [1, 48] vector (a tabular model).
- gray.onnx: a [1, 1, 16, 16] one-channel image.

and one that is not valid ONNX in a way tract does not check:
- string-raw.onnx: the digits model's graph shape, with an initializer of
  type STRING stored as raw bytes (ONNX forbids raw data for strings;
  tract 0.23.9 panics on it, lookout must report it).

Run with tools/.venv/bin/python tools/make_bad_models.py; the files are
committed (a few hundred bytes each), so tests need no Python.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "bad-models"


def save(name: str, graph: onnx.GraphProto, check: bool = True) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="make_bad_models")
    if check:
        onnx.checker.check_model(model)
    OUT.mkdir(parents=True, exist_ok=True)
    onnx.save(model, OUT / name)


def rank2() -> None:
    w = numpy_helper.from_array(np.linspace(-1, 1, 48 * 10, dtype=np.float32).reshape(48, 10), "w")
    save(
        "rank2.onnx",
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["logits"])],
            "rank2",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 48])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
            [w],
        ),
    )


def gray() -> None:
    w = numpy_helper.from_array(np.linspace(-1, 1, 16 * 16 * 10, dtype=np.float32).reshape(256, 10), "w")
    shape = numpy_helper.from_array(np.array([1, 256], dtype=np.int64), "shape")
    save(
        "gray.onnx",
        helper.make_graph(
            [
                helper.make_node("Reshape", ["x", "shape"], ["flat"]),
                helper.make_node("MatMul", ["flat", "w"], ["logits"]),
            ],
            "gray",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
            [w, shape],
        ),
    )



def string_raw() -> None:
    w = numpy_helper.from_array(np.linspace(-1, 1, 3 * 32 * 32 * 10, dtype=np.float32).reshape(3072, 10), "w")
    shape = numpy_helper.from_array(np.array([1, 3072], dtype=np.int64), "shape")
    # make_tensor refuses raw strings: build the proto by hand.
    names = TensorProto(name="names", data_type=TensorProto.STRING, dims=[2], raw_data=b"ab")
    save(
        "string-raw.onnx",
        helper.make_graph(
            [
                helper.make_node("Reshape", ["x", "shape"], ["flat"]),
                helper.make_node("MatMul", ["flat", "w"], ["logits"]),
            ],
            "string_raw",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
            [w, shape, names],
        ),
        check=False,
    )


if __name__ == "__main__":
    rank2()
    gray()
    string_raw()
