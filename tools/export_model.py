#!/usr/bin/env python3
"""Export a Data2Vec-Vision image classifier to ONNX (fp32 + int8) for lookout.

Examples:
    # Real model, on a workstation that can reach the Hugging Face hub:
    python tools/export_model.py --model facebook/data2vec-vision-large-ft1k --out d2v-large/
    # A checkpoint already on disk (save_pretrained() layout):
    python tools/export_model.py --checkpoint path/to/ckpt --out out/
    # Same architecture, random weights (benchmarks; no download at all):
    python tools/export_model.py --random-init large --out tools/out/d2v-large-random/

Writes into --out:
    <name>-fp32.onnx, <name>-int8.onnx, a <stem>.manifest.json beside each, labels.txt

The int8 file is restricted to ONNX ops that tract runs as real int8
(DynamicQuantizeLinear + MatMulInteger); see check_tract_ops().

Exit codes: 0 ok, 1 verification failed, 2 bad usage or input.

tools/train_small.py imports this module so the small test model goes through
exactly the same export, quantization, manifest and verification code.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EXPORTER_VERSION = "1"
REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGENET_LABELS = REPO_ROOT / "models" / "imagenet-1k" / "labels.txt"

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_USAGE = 0, 1, 2

# Default tolerances; every one is printed with the verification summary and
# documented in tools/README.md.
#  - ORT fp32 vs torch: same arithmetic up to op ordering, so the max abs logit
#    error must stay below this fraction of the torch logit range.
FP32_REL_TOL = 1e-3
#  - ORT int8 vs torch fp32, trained weights: minimum top-1 agreement on the
#    sample set. 0.75 = 6 of the 8 default photos; random crops of photos are
#    ambiguous for ImageNet, so a few flips near a tie are expected.
INT8_MIN_AGREEMENT = 0.75
#  - ORT int8 vs torch fp32, random weights: top-1 is a near-tie and says
#    nothing, so bound the max abs logit error relative to the torch logit
#    range instead. This catches gross breakage (wrong scale/axis), not drift.
INT8_RANDOM_REL_TOL = 0.25

# Ops allowed in the int8 graph besides standard ONNX ops: none outside the
# default domain, and none of the quantized forms tract does not run as int8.
FORBIDDEN_OP_PREFIXES = ("QLinear", "QGemm", "QAttention", "QuantizeLinear", "DequantizeLinear")

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


@contextlib.contextmanager
def step(what: str):
    log(f"{what} ...")
    t = time.monotonic()
    yield
    log(f"{what}: done in {time.monotonic() - t:.1f}s")


class ExportError(Exception):
    """Bad input or a model we cannot export; maps to exit code 2."""


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------

# Architecture of facebook/data2vec-vision-{large,base}-ft1k: transformers'
# Data2VecVisionConfig defaults plus the options its conversion script sets.
RANDOM_INIT_SIZES = {
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def read_labels(path: Path) -> list[str]:
    labels = path.read_text(encoding="utf-8").splitlines()
    if not labels or any(not l.strip() for l in labels):
        raise ExportError(f"{path}: empty labels file or blank line")
    return labels


def random_init_config(size: str, labels: list[str]):
    from transformers import Data2VecVisionConfig

    return Data2VecVisionConfig(
        **RANDOM_INIT_SIZES[size],
        image_size=224,
        patch_size=16,
        use_relative_position_bias=True,
        use_shared_relative_position_bias=False,
        use_mean_pooling=True,
        layer_scale_init_value=0.1,
        hidden_act="gelu",
        num_labels=len(labels),
        id2label={i: l for i, l in enumerate(labels)},
        label2id={l: i for i, l in enumerate(labels)},
    )


def build_random_model(size: str, seed: int):
    from transformers import Data2VecVisionForImageClassification

    if not IMAGENET_LABELS.exists():
        raise ExportError(f"{IMAGENET_LABELS} missing; run tools/imagenet_labels.py first")
    labels = read_labels(IMAGENET_LABELS)
    seed_everything(seed)
    model = Data2VecVisionForImageClassification(random_init_config(size, labels))
    # transformers starts the relative position bias tables at zeros, and a
    # bias of zeros is dropped at load (lookout's canon and attention
    # rewrite): the blocks would skip the Add a trained model's blocks do.
    # BEiT's own init draws them (truncated normal, std 0.02).
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                torch.nn.init.trunc_normal_(p, std=0.02)
    return model


def load_pretrained(name_or_dir: str):
    from transformers import Data2VecVisionForImageClassification

    try:
        return Data2VecVisionForImageClassification.from_pretrained(name_or_dir)
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot load {name_or_dir!r}: {e}") from e


def labels_of(model) -> list[str]:
    id2label = model.config.id2label
    n = model.config.num_labels
    labels = [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(n)]
    if any(not l for l in labels):
        raise ExportError("model config lacks id2label for some class index")
    if any("\n" in l for l in labels):
        raise ExportError("a label contains a newline")
    return labels


def preprocess_from_checkpoint(path: str | None) -> dict:
    """Mean/std/resize from a checkpoint's preprocessor_config.json if present.

    Data2Vec-Vision ft1k uses BeitImageProcessor: resize the whole image to
    224x224 with PIL bicubic (resample=3), rescale 1/255, mean=std=0.5.
    """
    pp = {"resize": "bicubic", "crop_fraction": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3}
    if path is None:
        return pp
    cfg_path = Path(path) / "preprocessor_config.json"
    if not cfg_path.exists():
        return pp
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("do_center_crop"):
        crop = cfg.get("crop_size") or {}
        size = cfg.get("size") or {}
        if isinstance(crop, dict) and isinstance(size, dict) and crop.get("height") and size.get("height"):
            pp["crop_fraction"] = crop["height"] / size["height"]
    pp["resize"] = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(cfg.get("resample", 3), "bicubic")
    if "image_mean" in cfg:
        pp["mean"] = [float(v) for v in cfg["image_mean"]]
    if "image_std" in cfg:
        pp["std"] = [float(v) for v in cfg["image_std"]]
    return pp


# --------------------------------------------------------------------------
# Preprocessing for verification samples
# --------------------------------------------------------------------------

_PIL_FILTERS = {"bicubic": 3, "bilinear": 2, "nearest": 0}


def preprocess_image(img, size: int, pp: dict) -> np.ndarray:
    """PIL image -> float32 NCHW [1,3,size,size], BeitImageProcessor semantics.

    crop_fraction < 1 takes a centered square of that fraction of the short
    side first; 1.0 (the default for Data2Vec-Vision) squashes the whole image,
    exactly as BeitImageProcessor does (it has no crop for ft1k).
    """
    from PIL import Image

    img = img.convert("RGB")
    cf = float(pp.get("crop_fraction", 1.0))
    if cf < 1.0:
        w, h = img.size
        side = round(min(w, h) * cf)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    img = img.resize((size, size), resample=Image.Resampling(_PIL_FILTERS[pp["resize"]]))
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(pp["mean"], dtype=np.float32)
    std = np.asarray(pp["std"], dtype=np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def default_sample_images(seed: int = 0, total: int = 8) -> list[tuple[str, "object"]]:
    """Real photos that ship inside installed packages, plus seeded random crops.

    Only files already on disk are read (no pooch/hub downloads): scikit-learn's
    load_sample_images() and the image files bundled in scikit-image's data dir.
    """
    from PIL import Image

    photos: list[tuple[str, Image.Image]] = []
    from sklearn.datasets import load_sample_images

    ds = load_sample_images()
    for fname, arr in zip(ds.filenames, ds.images):
        photos.append((f"sklearn:{Path(fname).name}", Image.fromarray(arr)))
    try:
        import skimage

        data_dir = Path(skimage.__file__).parent / "data"
        for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"):
            p = data_dir / name
            if p.exists():
                photos.append((f"skimage:{name}", Image.open(p).convert("RGB")))
    except ImportError:
        pass

    rng = random.Random(seed)
    samples = list(photos)
    i = 0
    while len(samples) < total:
        name, img = photos[i % len(photos)]
        w, h = img.size
        side = rng.randint(min(w, h) // 3, min(w, h))
        left, top = rng.randint(0, w - side), rng.randint(0, h - side)
        samples.append((f"{name}[crop {left},{top},{side}]", img.crop((left, top, left + side, top + side))))
        i += 1
    return samples[:max(total, len(photos))]


def load_sample_dir(path: Path) -> list[tuple[str, "object"]]:
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"))
    if not files:
        raise ExportError(f"--samples {path}: no image files")
    return [(p.name, Image.open(p).convert("RGB")) for p in files]


# --------------------------------------------------------------------------
# Export, quantization, checks
# --------------------------------------------------------------------------


EMBEDDING_OUTPUT = "embedding"
#  - The embedding output (the pooled features before the classifier head,
#    which lookout's custom classes compare by cosine similarity): ORT int8 vs
#    torch fp32, the least cosine similarity over the samples. Measured on the
#    digits model: see tools/README.md.
EMBEDDING_MIN_COSINE = 0.98


def _outputs_of(model, embedding: bool):
    import torch

    class Outputs(torch.nn.Module):
        """ONNX outputs are bare tensors, not a ModelOutput: the logits, then
        (with `embedding`) Data2Vec-Vision's pooler output, the mean-pooled,
        layer-normed patch tokens that the classifier head reads. The head is
        applied here exactly as the model's forward applies it."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            if not embedding:
                return self.inner(pixel_values=pixel_values, return_dict=True).logits
            pooled = self.inner.data2vec_vision(pixel_values=pixel_values, return_dict=True).pooler_output
            return self.inner.classifier(pooled), pooled

    return Outputs(model).eval()


def export_fp32(model, path: Path, image_size: int, opset: int, embedding: bool = True) -> None:
    import torch

    wrapped = _outputs_of(model.eval(), embedding)
    dummy = torch.zeros(1, 3, image_size, image_size, dtype=torch.float32)
    with torch.no_grad(), warnings_quiet():
        torch.onnx.export(
            wrapped,
            (dummy,),
            str(path),
            opset_version=opset,
            dynamo=False,
            input_names=["pixel_values"],
            output_names=["logits", EMBEDDING_OUTPUT] if embedding else ["logits"],
            do_constant_folding=True,
            dynamic_axes=None,  # static 1x3xHxW: tract optimizes best on fixed shapes
        )


def add_embedding_output(path: Path, tensor: str) -> int:
    """Expose the intermediate tensor `tensor` of any ONNX classifier as a
    second graph output named `embedding` (through an Identity node, so the
    graph's own names stay). Returns its width; the tensor must be [1, N] or
    [N] (flatten a pooled [1, N, 1, 1] before naming it). The shape comes from
    running the graph once on zeros: shape inference leaves it open where torch
    exported shape arithmetic."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    m = onnx.load(str(path))
    names = {o for n in m.graph.node for o in n.output}
    if tensor not in names:
        raise ExportError(f"--embedding {tensor!r}: no node of {path.name} produces it")
    if any(o.name == EMBEDDING_OUTPUT for o in m.graph.output):
        raise ExportError(f"{path.name} already has an output named {EMBEDDING_OUTPUT!r}")
    m.graph.node.append(helper.make_node("Identity", [tensor], [EMBEDDING_OUTPUT], name="lookout_embedding"))
    m.graph.output.append(helper.make_empty_tensor_value_info(EMBEDDING_OUTPUT))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    value = sess.run([EMBEDDING_OUTPUT], {inp.name: np.zeros(inp.shape, dtype=np.float32)})[0]
    dims = list(value.shape)
    if value.dtype != np.float32 or len(dims) > 2 or (len(dims) == 2 and dims[0] != 1) or not value.size:
        raise ExportError(f"--embedding {tensor!r} is {value.dtype} {dims}; name a float [1, N] tensor")
    m.graph.output.pop()
    m.graph.output.append(helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, dims))
    onnx.save(m, str(path))
    return dims[-1]


def output_width(path: Path, name: str) -> int | None:
    """Width of the graph output `name` ([1, N] or [N]), None if absent."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    out = next((o for o in m.graph.output if o.name == name), None)
    if out is None:
        return None
    return out.type.tensor_type.shape.dim[-1].dim_value


@contextlib.contextmanager
def warnings_quiet():
    # TracerWarnings about python ints from tensor shapes are expected: the
    # shape is static by design.
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=Warning, module=r"torch\..*")
        warnings.filterwarnings("ignore", category=Warning, module=r"transformers\..*")
        # dynamo=False is deliberate (the dynamo exporter is not what was measured with tract).
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        yield


def fold_constants(raw: Path, out: Path) -> None:
    """Constant-fold the exported graph with onnxruntime's basic optimizer.

    torch exports the relative position bias index computation as ~2,000
    shape/ScatterND/Where/Resize nodes although every input is constant at a
    static shape; folding leaves ~7 % of the nodes (152 of 1,943 for digits,
    872 of 11,812 for large) and stores each layer's gathered bias
    [heads, tokens, tokens] as an initializer, so a runtime neither recomputes
    nor re-folds it at load. The price is file size: about +48 MB on the large
    model (24 x 16 x 197 x 197 floats instead of small tables). --no-fold skips
    this step.
    Basic-level passes only rewrite to standard ONNX ops. MatMulAddFusion is
    disabled: it reshapes Linear layers to 2-D Gemms, and the quantizer then
    gives each Gemm its own DynamicQuantizeLinear instead of sharing one across
    Q/K/V (25 instead of 17 in the digits model), which is a measured hot spot
    in tract. The fp32 output is bit-identical before and after (digits model).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(raw), so, providers=["CPUExecutionProvider"], disabled_optimizers=["MatMulAddFusion"])
    strip_unused_opset_imports(out)


def quantize_int8(fp32: Path, int8: Path, reduce_range: bool = False) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Not quant_pre_process: its symbolic shape inference fails on this graph
    # ("Incomplete symbolic shape inference"), and its optimization step is
    # fold_constants() plus the MatMulAddFusion we avoid. The input here is
    # already folded, with static shapes. The quantizer's root-logger warning
    # recommending it is therefore silenced.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(fp32),
            str(int8),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            reduce_range=reduce_range,
        )
    finally:
        root.setLevel(level)
    strip_unused_opset_imports(int8)


def strip_unused_opset_imports(path: Path) -> None:
    """Drop opset imports (e.g. com.microsoft) that no node uses.

    The quantizer declares com.microsoft even when it emitted only standard
    ops; a consumer should not have to know that domain.
    """
    import onnx

    m = onnx.load(str(path))
    used = {n.domain or "" for n in m.graph.node}
    keep = [o for o in m.opset_import if (o.domain or "") in used or (o.domain or "") in ("", "ai.onnx")]
    if len(keep) != len(m.opset_import):
        del m.opset_import[:]
        m.opset_import.extend(keep)
        onnx.save(m, str(path))


def op_histogram(path: Path) -> dict[str, int]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    hist: dict[str, int] = {}
    for n in m.graph.node:
        key = n.op_type if not n.domain or n.domain == "ai.onnx" else f"{n.domain}:{n.op_type}"
        hist[key] = hist.get(key, 0) + 1
    return dict(sorted(hist.items()))


def check_tract_ops(path: Path, quantized: bool) -> dict[str, int]:
    """Fail unless the graph uses only default-domain ONNX ops that tract runs.

    For the int8 file, the MatMuls must have become DynamicQuantizeLinear +
    MatMulInteger (tract's real int8 path), not QDQ, QLinear* or ORT contrib ops.
    """
    hist = op_histogram(path)
    bad = [op for op in hist if ":" in op or op.startswith(FORBIDDEN_OP_PREFIXES)]
    if bad:
        raise ExportError(f"{path.name}: ops tract cannot run as intended: {bad}")
    if quantized and not hist.get("MatMulInteger"):
        raise ExportError(f"{path.name}: quantization produced no MatMulInteger")
    if quantized and hist.get("MatMul"):
        # Activation x activation MatMuls (attention scores) legitimately stay
        # fp32; only weight MatMuls are quantized. Nothing to fail on, but say so.
        log(f"{path.name}: {hist['MatMul']} MatMul left in fp32 (activation x activation, e.g. attention)")
    return hist


def onnx_check(path: Path) -> None:
    import onnx

    # Path form: works for files above the 2 GB protobuf limit too.
    onnx.checker.check_model(str(path), full_check=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    import onnxruntime
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__}


def write_manifest(onnx_path: Path, *, source: str, parameters: int, image_size: int, num_labels: int,
                   preprocess: dict, quantization: str, opset: int, labels_file: str = "labels.txt",
                   embedding_width: int | None = None, embedding_source: str = "") -> Path:
    stem = onnx_path.name[: -len(".onnx")]
    manifest = {
        "format": 1,
        "name": stem,
        "source": source,
        "architecture": "Data2VecVisionForImageClassification",
        "parameters": parameters,
        "input": {"name": "pixel_values", "shape": [1, 3, image_size, image_size], "layout": "NCHW", "color": "RGB"},
        "output": {"name": "logits", "width": num_labels},
        **({"embedding": {"name": EMBEDDING_OUTPUT, "width": embedding_width, "source": embedding_source}}
           if embedding_width else {}),
        "preprocess": {
            "resize": preprocess["resize"],
            "crop_fraction": float(preprocess["crop_fraction"]),
            "mean": [float(v) for v in preprocess["mean"]],
            "std": [float(v) for v in preprocess["std"]],
        },
        "labels": labels_file,
        "quantization": quantization,
        "sha256": sha256_file(onnx_path),
        "opset": opset,
        "exporter": {"tool": "lookout tools/export_model.py", "version": EXPORTER_VERSION, **versions()},
    }
    out = onnx_path.with_name(f"{stem}.manifest.json")
    out.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out


# --------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------


def ort_session(path: Path, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def run_ort(sess, inputs: list[np.ndarray], output: str = "logits") -> np.ndarray:
    return np.concatenate([sess.run([output], {"pixel_values": x})[0] for x in inputs], axis=0)


def run_torch(model, inputs: list[np.ndarray], embedding: bool = False):
    """Logits, or (logits, pooled embedding) with `embedding`."""
    import torch

    wrapped = _outputs_of(model.eval(), embedding)
    with torch.no_grad():
        outs = [wrapped(torch.from_numpy(x)) for x in inputs]
    if not embedding:
        return np.concatenate([o.numpy() for o in outs], axis=0)
    return tuple(np.concatenate([o[i].numpy() for o in outs], axis=0) for i in (0, 1))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


@dataclass
class Verification:
    names: list[str]
    torch_logits: np.ndarray
    fp32_logits: np.ndarray
    int8_logits: np.ndarray
    trained: bool
    fp32_rel_tol: float = FP32_REL_TOL
    int8_min_agreement: float = INT8_MIN_AGREEMENT
    int8_random_rel_tol: float = INT8_RANDOM_REL_TOL
    # The embedding output, where the model has one: torch fp32, ORT fp32, ORT int8.
    torch_emb: np.ndarray | None = None
    fp32_emb: np.ndarray | None = None
    int8_emb: np.ndarray | None = None
    embedding_min_cosine: float = EMBEDDING_MIN_COSINE
    failures: list[str] = field(default_factory=list)

    def embedding_error(self, other: np.ndarray) -> tuple[float, float]:
        """(least cosine similarity, max abs difference) against torch."""
        return float(cosine_rows(other, self.torch_emb).min()), float(np.abs(other - self.torch_emb).max())

    @property
    def logit_range(self) -> float:
        return float(self.torch_logits.max() - self.torch_logits.min())

    def max_abs(self, other: np.ndarray) -> float:
        return float(np.abs(other - self.torch_logits).max())

    def agreement(self, other: np.ndarray) -> float:
        return float((other.argmax(1) == self.torch_logits.argmax(1)).mean())

    def evaluate(self) -> bool:
        self.failures = []
        rng = self.logit_range
        fp32_err = self.max_abs(self.fp32_logits)
        if fp32_err > self.fp32_rel_tol * rng:
            self.failures.append(
                f"ORT fp32 vs torch max abs logit error {fp32_err:.3g} > {self.fp32_rel_tol:g} x logit range {rng:.4g}"
            )
        if self.trained:
            agr = self.agreement(self.int8_logits)
            if agr < self.int8_min_agreement:
                self.failures.append(f"ORT int8 vs torch top-1 agreement {agr:.3f} < {self.int8_min_agreement:g}")
        else:
            rel = self.max_abs(self.int8_logits) / rng if rng > 0 else float("inf")
            if rel > self.int8_random_rel_tol:
                self.failures.append(
                    f"ORT int8 vs torch max abs logit error / logit range = {rel:.3g} > {self.int8_random_rel_tol:g}"
                )
        if self.torch_emb is not None:
            for what, emb, limit in (("fp32", self.fp32_emb, 1 - 1e-5), ("int8", self.int8_emb, self.embedding_min_cosine)):
                cos, _ = self.embedding_error(emb)
                if cos < limit:
                    self.failures.append(f"ORT {what} embedding vs torch: least cosine similarity {cos:.5f} < {limit:g}")
        return not self.failures

    def summary(self, labels: list[str] | None = None) -> str:
        rows = []
        t1, f1, i1 = (a.argmax(1) for a in (self.torch_logits, self.fp32_logits, self.int8_logits))

        def lab(i):
            s = labels[i] if labels else str(i)
            return (s[:22] + "…") if len(s) > 23 else s

        w = max(len(n) for n in self.names + ["sample"])
        w = min(w, 44)
        rows.append(f"{'sample':<{w}}  {'torch top-1':<24} {'ort fp32':<8} {'ort int8':<8} {'|fp32-torch|':>12} {'|int8-torch|':>12}")
        for k, name in enumerate(self.names):
            rows.append(
                f"{name[:w]:<{w}}  {lab(t1[k]):<24} {'same' if f1[k] == t1[k] else lab(f1[k]):<8} "
                f"{'same' if i1[k] == t1[k] else lab(i1[k])[:8]:<8} "
                f"{np.abs(self.fp32_logits[k] - self.torch_logits[k]).max():12.3g} "
                f"{np.abs(self.int8_logits[k] - self.torch_logits[k]).max():12.3g}"
            )
        rng = self.logit_range
        rows.append("")
        rows.append(f"torch logit range (max-min over all samples): {rng:.4g}")
        rows.append(
            f"ORT fp32 vs torch: max abs {self.max_abs(self.fp32_logits):.3g} "
            f"(limit {self.fp32_rel_tol:g} x range = {self.fp32_rel_tol * rng:.3g}), "
            f"top-1 agreement {self.agreement(self.fp32_logits):.3f}"
        )
        int8_err = self.max_abs(self.int8_logits)
        line = (f"ORT int8 vs torch: max abs {int8_err:.3g} (relative to range {int8_err / rng if rng else float('inf'):.3g}), "
                f"top-1 agreement {self.agreement(self.int8_logits):.3f}")
        if self.trained:
            line += f" (limit >= {self.int8_min_agreement:g}, trained weights)"
        else:
            line += f" (limit relative error <= {self.int8_random_rel_tol:g}, random weights: top-1 not gated)"
        rows.append(line)
        if self.torch_emb is not None:
            for what, emb in (("fp32", self.fp32_emb), ("int8", self.int8_emb)):
                cos, diff = self.embedding_error(emb)
                rows.append(f"ORT {what} embedding vs torch: least cosine similarity {cos:.5f}, max abs {diff:.3g} "
                            f"(embedding values span {float(np.abs(self.torch_emb).max()):.3g})")
            rows.append(f"  limit: int8 cosine >= {self.embedding_min_cosine:g}, fp32 cosine >= 0.99999")
        return "\n".join(rows)


def verify(model, fp32_path: Path, int8_path: Path, named_inputs: list[tuple[str, np.ndarray]], trained: bool,
           torch_embedding: bool = True, **tolerances) -> Verification:
    """`torch_embedding`: the embedding output is the pooler output, which torch
    computes too; otherwise (a named tensor) ORT fp32's stands in for torch's."""
    names = [n for n, _ in named_inputs]
    inputs = [x for _, x in named_inputs]
    embedding = output_width(fp32_path, EMBEDDING_OUTPUT) is not None
    with step(f"verify: torch fp32 on {len(inputs)} samples"):
        t, te = run_torch(model, inputs, embedding=True)
    sessions = {}
    for what, path in (("fp32", fp32_path), ("int8", int8_path)):
        with step(f"verify: onnxruntime {what}"):
            sess = ort_session(path)
            sessions[what] = (run_ort(sess, inputs), run_ort(sess, inputs, EMBEDDING_OUTPUT) if embedding else None)
    (f, fe), (q, qe) = sessions["fp32"], sessions["int8"]
    ref = (te if torch_embedding else fe) if embedding else None
    v = Verification(names, t, f, q, trained, torch_emb=ref, fp32_emb=fe, int8_emb=qe,
                     **tolerances)
    v.evaluate()
    return v


# --------------------------------------------------------------------------
# The whole pipeline
# --------------------------------------------------------------------------


@dataclass
class ExportResult:
    fp32: Path
    int8: Path
    manifests: list[Path]
    labels: Path
    ops_fp32: dict[str, int]
    ops_int8: dict[str, int]
    verification: Verification | None


def export_all(model, out_dir: Path, name: str, *, source: str, preprocess: dict, opset: int = 17,
               samples: list[tuple[str, np.ndarray]] | None = None, trained: bool = True,
               tolerances: dict | None = None, fold: bool = True, embedding: str = "pooler",
               reduce_range: bool = False) -> ExportResult:
    """Export fp32, quantize to int8, check ops, write manifests and labels,
    then verify on `samples` (already preprocessed NCHW float32) if given.

    `embedding`: "pooler" exports Data2Vec-Vision's pooled features as a second
    output, "none" exports the logits only, anything else names an intermediate
    tensor of the exported graph to expose instead (add_embedding_output)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    image_size = int(model.config.image_size)
    labels = labels_of(model)
    params = int(sum(p.numel() for p in model.parameters()))
    log(f"model: {params:,} parameters, input 1x3x{image_size}x{image_size}, {len(labels)} labels")

    fp32 = out_dir / f"{name}-fp32.onnx"
    int8 = out_dir / f"{name}-int8.onnx"
    raw = out_dir / f"{name}-fp32.raw.onnx"
    with step(f"torch.onnx.export opset {opset} -> {raw}"):
        export_fp32(model, raw, image_size, opset, embedding=embedding == "pooler")
    if embedding not in ("pooler", "none"):
        add_embedding_output(raw, embedding)
    if fold:
        with step(f"fold constants (onnxruntime basic level) -> {fp32}"):
            fold_constants(raw, fp32)
        log(f"nodes: {sum(op_histogram(raw).values())} exported, {sum(op_histogram(fp32).values())} after folding")
        raw.unlink()
    else:
        raw.replace(fp32)
    with step("onnx.checker fp32"):
        onnx_check(fp32)
    ops_fp32 = check_tract_ops(fp32, quantized=False)
    with step(f"quantize_dynamic int8 (QInt8, per-channel, MatMul{', reduce_range' if reduce_range else ''}) -> {int8}"):
        quantize_int8(fp32, int8, reduce_range)
    with step("onnx.checker int8"):
        onnx_check(int8)
    ops_int8 = check_tract_ops(int8, quantized=True)
    log(f"int8 ops: {ops_int8}")
    for p in (fp32, int8):
        log(f"{p.name}: {p.stat().st_size / 1e6:.2f} MB")

    emb_width = output_width(fp32, EMBEDDING_OUTPUT)
    emb_source = {"pooler": "pooler_output: mean-pooled, layer-normed patch tokens before the classifier head",
                  "none": ""}.get(embedding, f"tensor {embedding}")
    for p in (fp32, int8):
        if output_width(p, EMBEDDING_OUTPUT) != emb_width:
            raise ExportError(f"{p.name}: the embedding output did not survive folding/quantization")
    if emb_width:
        log(f"embedding output: {emb_width} values ({emb_source})")
    labels_path = out_dir / "labels.txt"
    labels_path.write_text("\n".join(labels) + "\n", encoding="utf-8")
    manifests = [
        write_manifest(fp32, source=source, parameters=params, image_size=image_size, num_labels=len(labels),
                       preprocess=preprocess, quantization="none", opset=opset, embedding_width=emb_width,
                       embedding_source=emb_source),
        write_manifest(int8, source=source, parameters=params, image_size=image_size, num_labels=len(labels),
                       preprocess=preprocess, quantization="int8-dynamic-matmul-per-channel" + ("-7bit" if reduce_range else ""), opset=opset,
                       embedding_width=emb_width, embedding_source=emb_source),
    ]
    ver = None
    if samples:
        ver = verify(model, fp32, int8, samples, trained, torch_embedding=embedding == "pooler", **(tolerances or {}))
    return ExportResult(fp32, int8, manifests, labels_path, ops_fp32, ops_int8, ver)


def default_name(args) -> str:
    if args.name:
        return args.name
    if args.model:
        return args.model.rstrip("/").split("/")[-1]
    if args.checkpoint:
        return Path(args.checkpoint).resolve().name
    return f"d2v-{args.random_init}-random"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="Hugging Face model id (needs the hub), e.g. facebook/data2vec-vision-large-ft1k")
    src.add_argument("--checkpoint", help="local checkpoint directory (save_pretrained layout)")
    src.add_argument("--random-init", choices=sorted(RANDOM_INIT_SIZES), help="same architecture, random weights")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--name", help="file stem prefix (default: derived from the source)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init weights and sample crops")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit int8 weights (onnxruntime's reduce_range): exact and faster on x86 boards without "
                        "VNNI (lookout's AVX2 byte kernel), slightly less accurate everywhere")
    p.add_argument("--skip-verify", action="store_true")
    p.add_argument("--no-fold", action="store_true",
                   help="keep torch's graph as exported (no onnxruntime constant folding); larger node count, "
                        "smaller files (the relative position bias stays a table + index computation)")
    p.add_argument("--samples", help="directory of images for verification (default: photos bundled with "
                                     "scikit-learn/scikit-image plus seeded random crops, 8 images)")
    p.add_argument("--tolerance", type=float, default=FP32_REL_TOL,
                   help=f"ORT fp32 vs torch: max abs logit error / torch logit range (default {FP32_REL_TOL:g})")
    p.add_argument("--int8-min-agreement", type=float, default=INT8_MIN_AGREEMENT,
                   help=f"trained weights: min int8 vs torch top-1 agreement (default {INT8_MIN_AGREEMENT:g})")
    p.add_argument("--int8-random-tolerance", type=float, default=INT8_RANDOM_REL_TOL,
                   help=f"random weights: max int8 abs logit error / logit range (default {INT8_RANDOM_REL_TOL:g})")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--embedding", default="pooler", metavar="pooler|none|TENSOR",
                   help="second output 'embedding' for lookout's custom classes: 'pooler' (default) = the pooled "
                        "features before the classifier head; 'none' = logits only; else the name of a [1, N] "
                        "tensor in the exported ONNX graph")
    p.add_argument("--embedding-min-cosine", type=float, default=EMBEDDING_MIN_COSINE,
                   help=f"min cosine similarity of the int8 embedding to torch's on every sample "
                        f"(default {EMBEDDING_MIN_COSINE:g})")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    try:
        if args.samples and not Path(args.samples).is_dir():
            raise ExportError(f"--samples {args.samples}: not a directory")
        if args.checkpoint and not Path(args.checkpoint).is_dir():
            raise ExportError(f"--checkpoint {args.checkpoint}: not a directory")
        with step("load model"):
            if args.random_init:
                model = build_random_model(args.random_init, args.seed)
                source, trained, pp = f"random-init:{args.random_init}", False, preprocess_from_checkpoint(None)
            elif args.checkpoint:
                model = load_pretrained(args.checkpoint)
                source, trained, pp = str(args.checkpoint), True, preprocess_from_checkpoint(args.checkpoint)
            else:
                model = load_pretrained(args.model)
                source, trained = args.model, True
                pp = preprocess_from_checkpoint(_hub_preprocessor_dir(args.model))
        samples = None
        if not args.skip_verify:
            imgs = load_sample_dir(Path(args.samples)) if args.samples else default_sample_images(args.seed)
            size = int(model.config.image_size)
            samples = [(n, preprocess_image(im, size, pp)) for n, im in imgs]
        res = export_all(model, out_dir, default_name(args), source=source, preprocess=pp, opset=args.opset,
                         samples=samples, trained=trained,
                         tolerances=dict(fp32_rel_tol=args.tolerance, int8_min_agreement=args.int8_min_agreement,
                                         int8_random_rel_tol=args.int8_random_tolerance,
                                         embedding_min_cosine=args.embedding_min_cosine),
                         fold=not args.no_fold, embedding=args.embedding, reduce_range=args.reduce_range)
    except ExportError as e:
        log(f"error: {e}")
        return EXIT_USAGE

    print()
    for p in (res.fp32, res.int8, *res.manifests, res.labels):
        print(f"  {p}  ({p.stat().st_size:,} bytes)")
    if res.verification is None:
        print("verification skipped (--skip-verify)")
        return EXIT_OK
    print()
    print(res.verification.summary(labels_of(model)))
    if res.verification.failures:
        for f in res.verification.failures:
            print(f"VERIFICATION FAILED: {f}", file=sys.stderr)
        return EXIT_VERIFY_FAILED
    print("verification passed")
    return EXIT_OK


def _hub_preprocessor_dir(model_id: str) -> str | None:
    """Local dir holding the hub model's preprocessor_config.json, if fetchable."""
    try:
        from huggingface_hub import hf_hub_download

        return str(Path(hf_hub_download(model_id, "preprocessor_config.json")).parent)
    except Exception:  # noqa: BLE001 - absent file means defaults, which match ft1k
        return None


if __name__ == "__main__":
    sys.exit(main())
