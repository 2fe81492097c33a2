#!/usr/bin/env python3
"""Few-shot evidence for custom classes (issue 17) on real handwritten digits.

A backbone that never saw digits 5-9: the small Data2Vec-Vision of
train_small.py, trained the same way on the training images of 0-4 only and
exported int8 with its embedding output (tests/fixtures/fewshot/). lookout
is then taught 5-9 as custom classes from 1, 5 and 20 training images per
class (`lookout teach`, several random draws) and evaluated on every held-out
test image of 5-9 (`lookout eval`), with the held-out 0-4 images as
pictures of no taught class (they should come out `unknown`). The ceiling: a
linear probe (logistic regression) on lookout's embeddings of all training
images of 5-9, tested on the same held-out images.

    tools/.venv/bin/python tools/fewshot_digits.py            # train (~3 min) + export + evaluate
    tools/.venv/bin/python tools/fewshot_digits.py --eval-only  # evaluate the committed model

Needs the release binary (cargo build --release). Writes tools/FEWSHOT.md's
digits table to stdout and the raw figures to --json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_model as ex  # noqa: E402
import train_small as ts  # noqa: E402

REPO = ex.REPO_ROOT
OUT = REPO / "tests" / "fixtures" / "fewshot"
SEEN, NEW = list(range(5)), list(range(5, 10))
SHOTS = (1, 5, 20)


def train_half(epochs: int):
    import torch
    from transformers import Data2VecVisionForImageClassification

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    images, labels, train_idx, _ = ts.load_data()
    keep = train_idx[labels[train_idx] < 5]
    cfg = ts.make_config()
    cfg.num_labels = 5
    cfg.id2label = {i: ts.WORDS[i] for i in SEEN}
    cfg.label2id = {ts.WORDS[i]: i for i in SEEN}
    with ex.step(f"train on digits 0-4 only: {len(keep)} images, {epochs} epochs"):
        model = ts.train(ts.normalize_uint8(images[keep]), labels[keep], epochs, 32, 1e-3, config=cfg)
    assert isinstance(model, Data2VecVisionForImageClassification)
    return model


def export(model) -> None:
    images, labels, _, test_idx = ts.load_data()
    seen_test = test_idx[labels[test_idx] < 5]
    x = ts.normalize_uint8(images[seen_test])
    samples = [(f"test {i}", x[k : k + 1]) for k, i in enumerate(seen_test)]
    with tempfile.TemporaryDirectory() as tmp:
        res = ex.export_all(model, Path(tmp), "digits04", source="tools/fewshot_digits.py: digits 0-4 only (seed 0)",
                            preprocess=ts.PREPROCESS, samples=samples, trained=True,
                            tolerances={"int8_min_agreement": ts.INT8_MIN_AGREEMENT})
        print("\n".join(res.verification.summary().splitlines()[-6:]))
        if res.verification.failures:
            raise SystemExit(f"verification failed: {res.verification.failures}")
        if OUT.exists():
            shutil.rmtree(OUT)
        (OUT / "model").mkdir(parents=True)
        for f in (res.int8, res.manifests[1], res.labels):
            shutil.copy(f, OUT / "model" / f.name)


def write_pngs(root: Path, idx, images, labels) -> dict[int, list[Path]]:
    from PIL import Image

    out: dict[int, list[Path]] = {}
    for i in idx:
        d = root / ts.WORDS[labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{i:04d}.png"
        Image.fromarray(np.repeat(images[i][..., None], 3, axis=-1), mode="RGB").save(p)
        out.setdefault(int(labels[i]), []).append(p)
    return out


def lookout(bin_: Path, *args: str) -> str:
    r = subprocess.run([str(bin_), *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"lookout {' '.join(args[:3])}...: exit {r.returncode}: {r.stderr[-2000:]}")
    return r.stdout


def few_shot(bin_: Path, model: Path, pool: dict[str, list[Path]], test: Path, shots_list, draws: int,
             work: Path, threads: int = 1) -> dict:
    """Teaches the classes of `pool` (class -> training pictures) from
    `shots` random pictures each through `lookout teach`, then `lookout eval`
    on `test` (one folder per class; folders that are no taught class should
    come out unknown). Returns per shot count the runs' accuracy on the taught
    classes' folders and the unknown rates on those and on the others."""
    out = {}
    for shots in shots_list:
        runs = []
        for draw in range(draws):
            rng = np.random.default_rng(1000 * shots + draw)
            state = work / f"state-{shots}-{draw}"
            state.mkdir(parents=True)
            cfg = config(state, model, test, threads)
            for cls, files in pool.items():
                chosen = sorted(rng.choice(len(files), size=shots, replace=False))
                lookout(bin_, "teach", "--config", str(cfg), "--class", cls, *[str(files[k]) for k in chosen])
            rep = json.loads(lookout(bin_, "eval", "--config", str(cfg), "--json", "--folds", "2", str(test)))
            sec = next(s for s in rep["sections"] if s["name"] == "taught classes")
            rows = {c["name"]: r for c, r in zip(sec["classes"], sec["confusion"])}
            cols = sec["predicted"]
            unk = cols.index("unknown") if "unknown" in cols else None
            taught = [rows[c] for c in pool]
            n_taught = sum(sum(r) for r in taught)
            others = rows.get("unknown")
            runs.append({
                "accuracy": sum(r[cols.index(c)] for c, r in zip(pool, taught)) / n_taught,
                "unknown_taught": (sum(r[unk] for r in taught) / n_taught) if unk is not None else 0.0,
                "unknown_others": (others[unk] / sum(others)) if others and unk is not None else None,
                "images_taught": n_taught,
                "images_others": sum(others) if others else 0,
            })
        out[shots] = runs
        acc = np.array([r["accuracy"] for r in runs])
        ex.log(f"{shots:2d} shots: accuracy {acc.mean():.3f} ± {acc.std():.3f}, unknown on taught classes "
               f"{np.mean([r['unknown_taught'] for r in runs]):.3f}")
    return out


def config(state: Path, model: Path, frames: Path, threads: int = 1) -> Path:
    c = state / "lookout.toml"
    c.write_text(f'[device]\nstate_dir = "{state}"\n[source]\nkind = "files"\npath = "{frames}"\n'
                 f'[model]\npath = "{model}"\nthreads = {threads}\n')
    return c


def embed(bin_: Path, cfg: Path, paths: list[Path]) -> np.ndarray:
    """lookout's embeddings of the pictures (`lookout classify --embedding`)."""
    rows = []
    for k in range(0, len(paths), 500):
        out = lookout(bin_, "classify", "--config", str(cfg), "--embedding", *map(str, paths[k : k + 500]))
        rows += [json.loads(l)["embedding"] for l in out.splitlines()]
    return np.array(rows, dtype=np.float64)


def ceilings(bin_: Path, cfg: Path, train: list[tuple[Path, str]], test: list[tuple[Path, str]]) -> dict:
    """A linear probe (logistic regression) on lookout's embeddings of every
    training picture, and the class means of all of them, on the test set."""
    from sklearn.linear_model import LogisticRegression

    xtr, ytr = embed(bin_, cfg, [p for p, _ in train]), np.array([c for _, c in train])
    xte, yte = embed(bin_, cfg, [p for p, _ in test]), np.array([c for _, c in test])
    probe = LogisticRegression(max_iter=5000).fit(xtr, ytr)
    classes = sorted(set(ytr))
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    means = unit(np.stack([unit(xtr[ytr == c]).mean(0) for c in classes]))
    pred = np.array(classes)[np.argmax(unit(xte) @ means.T, axis=1)]
    return {"train_images": len(ytr), "test_images": len(yte),
            "linear_probe": float((probe.predict(xte) == yte).mean()), "class_means_all": float((pred == yte).mean())}


def table(res: dict, taught_what: str, others_what: str | None) -> str:
    n = next(iter(res["shots"].values()))[0]
    head = f"| examples per class | accuracy on {n['images_taught']} held-out {taught_what} | unknown on them |"
    rule = "|---|---|---|"
    if others_what:
        head += f" unknown on {n['images_others']} {others_what} |"
        rule += "---|"
    lines = [head, rule]
    for shots, runs in res["shots"].items():
        a = np.array([r["accuracy"] for r in runs])
        line = (f"| {shots} | {a.mean() * 100:.1f} % ± {a.std() * 100:.1f} | "
                f"{np.mean([r['unknown_taught'] for r in runs]) * 100:.1f} % |")
        if others_what:
            line += f" {np.mean([r['unknown_others'] for r in runs]) * 100:.1f} % |"
        lines.append(line)
    c = res["ceilings"]
    pad = " - |" if others_what else ""
    lines.append(f"| linear probe on all {c['train_images']} training pictures (ceiling) | "
                 f"{c['linear_probe'] * 100:.1f} % | - |{pad}")
    lines.append(f"| class means of all {c['train_images']} training pictures, no unknown | "
                 f"{c['class_means_all'] * 100:.1f} % | - |{pad}")
    return "\n".join(lines)


def evaluate(bin_: Path, draws: int, model: Path) -> dict:
    images, labels, train_idx, test_idx = ts.load_data()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pool = write_pngs(tmp / "train", [i for i in train_idx if labels[i] >= 5], images, labels)
        write_pngs(tmp / "test", test_idx, images, labels)
        named = {ts.WORDS[d]: pool[d] for d in NEW}
        res = {"draws": draws, "shots": few_shot(bin_, model, named, tmp / "test", SHOTS, draws, tmp / "runs")}
        probe = tmp / "probe"
        probe.mkdir()
        cfg = config(probe, model, tmp / "test")
        train = [(p, ts.WORDS[d]) for d in NEW for p in pool[d]]
        test = [(p, ts.WORDS[d]) for d in NEW for p in sorted((tmp / "test" / ts.WORDS[d]).iterdir())]
        res["ceilings"] = ceilings(bin_, cfg, train, test)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--bin", default=str(REPO / "target" / "release" / "lookout"))
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--model", default=str(OUT / "model" / "digits04-int8.onnx"),
                   help="the backbone (models/digits/digits-int8.onnx: one whose training saw 5-9, for contrast)")
    args = p.parse_args(argv)
    if not args.eval_only and args.model == p.get_default("model"):
        ex.seed_everything(ts.SEED)
        export(train_half(args.epochs))
    res = evaluate(Path(args.bin), args.draws, Path(args.model).resolve())
    print()
    print(table(res, "5-9", "held-out 0-4 (no taught class)"))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
