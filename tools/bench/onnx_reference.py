#!/usr/bin/env python3
"""Writes tests/fixtures/digits/onnx-reference-int8.json: the logits of the
bundled int8 digits model on every held-out image, computed by the ONNX
reference evaluator (`onnx.reference`, the specification in Python).

onnxruntime's int8 kernels are not bit-exact to the specification (its logits
differ from the evaluator's by up to 1.5 on this model, as much as int8 differs
from fp32), so tests/inference.rs holds lookout to the specification and only
reports its distance to onnxruntime.

    tools/.venv/bin/python tools/bench/onnx_reference.py
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    fixtures = REPO / "tests/fixtures/digits"
    ref = json.loads((fixtures / "reference.json").read_text())
    model_path = REPO / "models/digits/digits-int8.onnx"
    model = onnx.load(model_path)
    ev = ReferenceEvaluator(model)
    name = model.graph.input[0].name
    mean, std, size = ref["normalize"]["mean"], ref["normalize"]["std"], ref["image_size"]
    out = []
    for item in ref["images"]:
        img = Image.open(fixtures / item["file"]).convert("RGB")
        if img.size != (size, size):
            print(f"{item['file']}: {img.size} is not {size}x{size}; this script expects the fixture images", file=sys.stderr)
            return 1
        x = np.asarray(img, dtype=np.float32) / 255.0
        x = ((x - np.array(mean, np.float32)) / np.array(std, np.float32)).transpose(2, 0, 1)[None]
        y = ev.run(None, {name: x.astype(np.float32)})[0][0]
        out.append({"file": item["file"], "logits": [float(v) for v in y]})
    doc = {
        "model": "digits-int8.onnx",
        "onnx_sha256": ref["onnx_sha256"]["digits-int8.onnx"],
        "evaluator": f"onnx {onnx.__version__} onnx.reference.ReferenceEvaluator",
        "images": out,
    }
    (fixtures / "onnx-reference-int8.json").write_text(json.dumps(doc, indent=0) + "\n")
    print(f"wrote {len(out)} images", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
