#!/usr/bin/env python3
"""Export the digits checkpoint, and small random-init ViT and DeiT from
transformers, the ways other people export a model, without lookout's
exporter (tools/export_model.py) folding the graph first, so the tests can
hold lookout's graph passes to every form.

Forms (each quantized the plain way: quantize_dynamic(per_channel=True,
op_types_to_quantize=["MatMul"], weight_type=QInt8), nothing before it):
    legacy: torch.onnx.export(..., opset_version=17, dynamo=False)
    dynamo: torch.onnx.export(..., opset_version=17, dynamo=True)

With --full (for benchmarks, not the tests): Data2Vec-Vision base (as
export_model.py --random-init base builds it), transformers' ViT-B/16 and
DeiT-B/16 at their real size (224x224, 1000 classes, random init), in
tools/out/forms-full/ by default, each form also as tools/export_model.py
writes it (folded: onnxruntime's basic optimizer before quantizing), and
no reference logits.

Outputs, in tests/fixtures/export-forms/ by default:
    <model>-<form>-int8.onnx + .manifest.json, labels.txt (model: digits,
        vit, deit; the random-init ones have the digits model's size and
        input, hidden 64, 4 layers, 4 heads, 32x32 in patches of 4)
    reference.json: on every STEP-th held-out digit (tests/fixtures/digits),
        each file's logits under the ONNX reference evaluator (the
        specification) and under onnxruntime.

    tools/.venv/bin/python tools/export_forms.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_model as ex  # noqa: E402
import train_small as ts  # noqa: E402

FORMS = ("legacy", "dynamo")
MODELS = ("digits", "vit", "deit")
# Every 4th of the 397 held-out images: 100 images keep the fixture small
# and the reference evaluator (minutes on the unfolded graphs) bearable.
STEP = 4


# --full: transformers' defaults are the base models (hidden 768, 12 layers,
# 12 heads, 224x224 in patches of 16); ImageNet's 1000 classes.
FULL_IMAGE_SIZE = 224
FULL_CLASSES = 1000


def random_init(kind: str, full: bool = False):
    """transformers' ViT or DeiT at the digits model's size (or, full, at
    base size), seeded."""
    import torch
    from transformers import DeiTConfig, DeiTForImageClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(ts.SEED)
    size = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128,
            "image_size": ts.IMAGE_SIZE, "patch_size": 4, "num_labels": len(ts.WORDS)}
    if full:
        size = {"num_labels": FULL_CLASSES}
    if kind == "vit":
        return ViTForImageClassification(ViTConfig(**size)).eval()
    return DeiTForImageClassification(DeiTConfig(**size)).eval()


class Logits:
    """The logits alone, as a tensor (the models return a ModelOutput)."""

    def __new__(cls, model):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, pixel_values):
                return self.inner(pixel_values=pixel_values).logits

        return Wrapped(model).eval()


def export(model, form: str, path: Path, embedding: bool, image_size: int = ts.IMAGE_SIZE) -> None:
    import torch

    wrapped = ex._outputs_of(model.eval(), embedding=True) if embedding else Logits(model)
    dummy = torch.zeros(1, 3, image_size, image_size, dtype=torch.float32)
    outputs = ["logits", ex.EMBEDDING_OUTPUT] if embedding else ["logits"]
    names = {"input_names": ["pixel_values"], "output_names": outputs}
    with torch.no_grad(), ex.warnings_quiet():
        if form in ("legacy", "folded"):
            torch.onnx.export(wrapped, (dummy,), str(path), opset_version=17, dynamo=False, **names)
        else:
            torch.onnx.export(wrapped, (dummy,), str(path), opset_version=17, dynamo=True, external_data=False,
                              **names)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(ex.REPO_ROOT / "tools" / "checkpoints" / "digits"))
    p.add_argument("--out", default=str(ex.REPO_ROOT / "tests" / "fixtures" / "export-forms"))
    p.add_argument("--forms", default=",".join(FORMS))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--no-reference", action="store_true", help="skip the evaluator (slow); export only")
    p.add_argument("--full", action="store_true", help="ViT-B and DeiT-B at 224x224 for benchmarks (module doc)")
    args = p.parse_args(argv)
    if args.full:
        return export_full(args, p)

    import onnx
    import torch
    from onnx.reference import ReferenceEvaluator
    from transformers import Data2VecVisionForImageClassification

    torch.set_num_threads(1)
    ex.seed_everything(ts.SEED)
    digits_model = Data2VecVisionForImageClassification.from_pretrained(args.checkpoint).eval()
    checkpoint = Path(args.checkpoint).resolve()
    if checkpoint.is_relative_to(ex.REPO_ROOT):
        checkpoint = checkpoint.relative_to(ex.REPO_ROOT)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.txt").write_text("\n".join(ts.WORDS) + "\n", encoding="utf-8")

    digits = ex.REPO_ROOT / "tests" / "fixtures" / "digits"
    ref = json.loads((digits / "reference.json").read_text())
    files = [item["file"] for item in ref["images"]][::STEP]
    inputs = ts.read_png_inputs([digits / f for f in files])

    doc = {"what": f"logits of each form on every {STEP}th held-out digit (tests/fixtures/digits)",
           "versions": {**ex.versions(), "onnx": onnx.__version__}, "forms": {}}
    for kind, form in [(k, f) for k in args.models.split(",") for f in args.forms.split(",")]:
        model = digits_model if kind == "digits" else random_init(kind)
        params = int(sum(p.numel() for p in model.parameters()))
        source = f"{checkpoint}" if kind == "digits" else f"random init, seed {ts.SEED}"
        raw = out / f"{kind}-{form}-fp32.onnx"
        int8 = out / f"{kind}-{form}-int8.onnx"
        with ex.step(f"export {kind} {form} -> {raw}"):
            export(model, form, raw, embedding=kind == "digits")
        with ex.step(f"quantize_dynamic -> {int8}"):
            ex.quantize_int8(raw, int8)
        ex.onnx_check(int8)
        ex.log(f"{int8.name}: {int8.stat().st_size / 1e6:.2f} MB, ops {ex.op_histogram(int8)}")
        raw.unlink()
        # The dynamo exporter writes opset 18 when its conversion to 17 fails.
        opset = max(o.version for o in onnx.load(str(int8)).opset_import if o.domain in ("", "ai.onnx"))
        manifest = ex.write_manifest(int8, source=f"tools/export_forms.py --models {kind} --forms {form} ({source})",
                          parameters=params,
                          image_size=ts.IMAGE_SIZE, num_labels=len(ts.WORDS), preprocess=ts.PREPROCESS,
                          quantization="int8-dynamic-matmul-per-channel", opset=opset,
                          embedding_width=ex.output_width(int8, ex.EMBEDDING_OUTPUT),
                          embedding_source="pooler_output" if kind == "digits" else "")
        spec = json.loads(manifest.read_text())
        spec["architecture"] = type(model).__name__
        manifest.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        if args.no_reference:
            continue
        sess = ex.ort_session(int8, threads=1)
        ort = ex.run_ort(sess, [inputs[i : i + 1] for i in range(len(inputs))])
        with ex.step(f"reference evaluator on {len(files)} images"):
            ev = ReferenceEvaluator(onnx.load(str(int8)))
            spec = np.concatenate([ev.run(["logits"], {"pixel_values": inputs[i : i + 1]})[0]
                                   for i in range(len(inputs))])
        ex.log(f"{kind} {form}: onnxruntime vs specification: max abs {np.abs(ort - spec).max():.3f}, "
               f"top-1 agreement {(ort.argmax(1) == spec.argmax(1)).mean():.3f}")
        doc["forms"][f"{kind}-{form}"] = {
            "model": int8.name,
            "onnx_sha256": ex.sha256_file(int8),
            "images": [{"file": f, "spec_logits": ts.f32_list(spec[i]), "ort_logits": ts.f32_list(ort[i])}
                       for i, f in enumerate(files)],
        }
    if not args.no_reference:
        (out / "reference.json").write_text(json.dumps(doc, indent=0) + "\n", encoding="utf-8")
    return 0


def export_full(args, parser) -> int:
    """--full: every form of ViT-B and DeiT-B, one folder per form, each
    as `lookout model install` and tools/bench/compare.py take it."""
    import onnx
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out if args.out != parser.get_default("out") else ex.REPO_ROOT / "tools" / "out" / "forms-full")
    models = [m for m in args.models.split(",") if m != "digits"] if args.models != parser.get_default("models") \
        else ["d2v", "vit", "deit"]
    forms = args.forms.split(",") if args.forms != parser.get_default("forms") else ["legacy", "dynamo", "folded"]
    labels = "\n".join(str(i) for i in range(FULL_CLASSES)) + "\n"
    for kind, form in [(k, f) for k in models for f in forms]:
        model = ex.build_random_model("base", ts.SEED) if kind == "d2v" else random_init(kind, full=True)
        embedding = kind == "d2v"
        params = int(sum(p.numel() for p in model.parameters()))
        folder = out / f"{kind}-base-{form}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "labels.txt").write_text(labels, encoding="utf-8")
        raw = folder / f"{kind}-base-fp32.onnx"
        int8 = folder / f"{kind}-base-int8.onnx"
        with ex.step(f"export {kind} base {form} -> {raw}"):
            export(model, form, raw, embedding=embedding, image_size=FULL_IMAGE_SIZE)
        if form == "folded":
            with ex.step("onnxruntime's basic optimizer (tools/export_model.py's fold)"):
                folded = folder / "folded.onnx"
                ex.fold_constants(raw, folded)
                folded.replace(raw)
        with ex.step(f"quantize_dynamic -> {int8}"):
            ex.quantize_int8(raw, int8)
        ex.onnx_check(int8)
        ex.log(f"{int8}: {int8.stat().st_size / 1e6:.1f} MB, {len(onnx.load(str(int8)).graph.node)} nodes")
        opset = max(o.version for o in onnx.load(str(int8)).opset_import if o.domain in ("", "ai.onnx"))
        for f in (raw, int8):
            manifest = ex.write_manifest(f, source=f"tools/export_forms.py --full --models {kind} --forms {form} "
                                         f"(random init, seed {ts.SEED})", parameters=params,
                                         image_size=FULL_IMAGE_SIZE, num_labels=FULL_CLASSES,
                                         preprocess=ts.PREPROCESS, quantization="int8-dynamic-matmul-per-channel"
                                         if f == int8 else "none", opset=opset,
                                         embedding_width=ex.output_width(f, ex.EMBEDDING_OUTPUT) if embedding else None,
                                         embedding_source="pooler_output" if embedding else "")
            spec = json.loads(manifest.read_text())
            spec["architecture"] = type(model).__name__
            manifest.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
