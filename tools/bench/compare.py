#!/usr/bin/env python3
"""Side-by-side inference benchmark: lookout (tract) against onnxruntime and
PyTorch on the same ONNX files, the same input and the same thread count.

    tools/.venv/bin/python tools/bench/compare.py            # large model
    tools/.venv/bin/python tools/bench/compare.py --size base --runs 5

Each runtime runs in its own child process, one after the other, so its peak
RSS is its own and none competes with another for the cores. The input is the
pseudo-random image `lookout bench` generates (the same xorshift here), so the
logits can be compared too. The table goes to stdout and, with --write, into
the `## Inference` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def bench_input(size: int = 224):
    """The input `lookout bench` feeds (src/main.rs): xorshift64, top 24 bits."""
    import numpy as np

    n = 3 * size * size
    out = np.empty(n, dtype=np.float32)
    mask = (1 << 64) - 1
    s = 0x2545_F491_4F6C_DD1D
    for i in range(n):
        s ^= (s << 13) & mask
        s ^= s >> 7
        s ^= (s << 17) & mask
        out[i] = (s >> 40) / float(1 << 23) - 1.0
    return out.reshape(1, 3, size, size)


def timed_runs(run, warmup: int, runs: int) -> dict:
    for _ in range(max(warmup - 1, 0)):
        run()
    times = []
    cpu0, wall0 = sum(os.times()[:2]), time.perf_counter()
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    busy = (sum(os.times()[:2]) - cpu0) / (time.perf_counter() - wall0)
    times.sort()
    return {"median_ms": times[len(times) // 2], "min_ms": times[0], "max_ms": times[-1], "cpu_busy": busy}


def worker(args) -> dict:
    """Runs inside the child process: load, first result, timed runs."""
    import numpy as np

    x = bench_input()
    start = time.perf_counter()
    if args.worker == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(args.model), sess_options=so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run():
            return sess.run(None, {name: x})[0]

        version = f"onnxruntime {ort.__version__}"
    else:
        import torch

        torch.set_num_threads(args.threads)
        sys.path.insert(0, str(args.tools))
        from export_model import build_random_model  # the exporter's exact architecture and seed

        model = build_random_model(args.size, 0).eval()
        tx = torch.from_numpy(x)

        def run():
            with torch.no_grad():
                return model(pixel_values=tx).logits.numpy()

        version = f"PyTorch {torch.__version__}"
    load = time.perf_counter() - start
    logits = np.asarray(run()).reshape(-1)
    first = time.perf_counter() - start
    r = timed_runs(run, args.warmup, args.runs)
    r.update(
        load_s=load,
        first_result_s=first,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        version=version,
        logits=[float(v) for v in logits],
    )
    return r


def child(cmd: list[str], timeout: float) -> dict:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def lookout_version(binary: Path) -> str:
    return subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.strip()


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    # Some VMs hide the flag although the instructions work: say what was seen.
    vnni = "avx512_vnni" if "avx512_vnni" in flags else ("avx_vnni" if "avx_vnni" in flags else "no VNNI flag in /proc/cpuinfo")
    return f"{os.cpu_count()} cores {platform.machine()}, {cpu}, {vnni}"


def max_abs(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def argmax(v) -> int:
    return max(range(len(v)), key=v.__getitem__)


def digits_agreement(binary: Path, threads: int) -> list[str]:
    """lookout int8 against onnxruntime int8 (this machine's kernels) and the
    ONNX reference evaluator's logits, on the 397 held-out images of the
    real-trained digits model: the same file, the same pixels."""
    import tempfile

    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    fixtures = REPO / "tests/fixtures/digits"
    model = REPO / "models/digits/digits-int8.onnx"
    ref = json.loads((fixtures / "reference.json").read_text())
    spec = json.loads((fixtures / "onnx-reference-int8.json").read_text())
    files = [fixtures / i["file"] for i in ref["images"]]
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "digits.toml"
        cfg.write_text(f'[device]\nstate_dir = "{d}"\n[source]\nkind = "files"\npath = "{fixtures / "test"}"\n'
                       f'[model]\npath = "{model}"\nthreads = {threads}\n')
        out = subprocess.run([str(binary), "classify", "--config", str(cfg), "--logits", *map(str, files)],
                             capture_output=True, text=True, check=True).stdout
    ours = [np.array(json.loads(line)["logits"], dtype=np.float32) for line in out.splitlines()]
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model), sess_options=so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    mean, std = (np.array(ref["normalize"][k], np.float32) for k in ("mean", "std"))
    theirs = []
    for f in files:
        x = (np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0 - mean) / std
        theirs.append(sess.run(None, {name: x.transpose(2, 0, 1)[None].astype(np.float32)})[0][0])
    specs = [np.array(i["logits"], dtype=np.float32) for i in spec["images"]]
    lines = []
    for what, other in [("onnxruntime int8 (run now)", theirs), ("the ONNX reference evaluator", specs)]:
        diff = max(float(np.abs(a - b).max()) for a, b in zip(ours, other))
        same = sum(int(a.argmax() == b.argmax()) for a, b in zip(ours, other))
        lines.append(f"- digits model, {len(files)} held-out images: lookout int8 vs {what}: "
                     f"max abs logit difference {diff:.4f}, same top-1 on {same}/{len(files)}.")
    return lines


def table(results: dict, args, command: str) -> str:
    base = results.get("onnxruntime int8")
    rows = [
        "| runtime | latency median (min-max) | vs onnxruntime int8 | load | first result | peak RSS | cores busy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "error" in r:
            rows.append(f"| {name} | failed: {r['error'][:120]} | | | | | |")
            continue
        ratio = f"{r['median_ms'] / base['median_ms']:.2f}x" if base and "error" not in base else "-"
        rows.append(
            f"| {name} | {r['median_ms']:.0f} ms ({r['min_ms']:.0f}-{r['max_ms']:.0f}) | {ratio} | "
            f"{r['load_s']:.1f} s | {r['first_result_s']:.1f} s | {r['peak_rss_mb']:.0f} MB | {r['cpu_busy']:.2f} |"
        )
    notes = []
    for a, b in [("lookout int8", "onnxruntime int8"), ("lookout f32", "onnxruntime fp32"),
                 ("tract int8 (no lookout passes)", "onnxruntime int8")]:
        ra, rb = results.get(a, {}), results.get(b, {})
        if "logits" in ra and "logits" in rb:
            same = "same" if argmax(ra["logits"]) == argmax(rb["logits"]) else "DIFFERENT"
            notes.append(f"- {a} vs {b}: max abs logit difference {max_abs(ra['logits'], rb['logits']):.4f}, "
                         f"{same} top-1.")
    versions = sorted({r["version"] for r in results.values() if "version" in r})
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        f"### Data2Vec-Vision {args.size} (random init), {args.threads} threads",
        "",
        f"- Date: {date}. Machine: {machine()}.",
        f"- Command: `{command}`",
        f"- Runs: {args.warmup} warm-up then {args.runs} timed, one runtime at a time in its own process; "
        "load is session/model creation (for lookout: parse + optimize + passes + plan; for PyTorch: "
        "building the random-init model), first result includes load.",
        f"- Versions: {', '.join(versions)}.",
        "",
        *rows,
        "",
        *notes,
        "",
    ])


def write_section(path: Path, body: str, size: str) -> None:
    """Replaces this size's table under `## Inference`, keeping the rest."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if "## Inference" not in text:
        text = text.rstrip("\n") + "\n\n## Inference\n\nWritten by `tools/bench/compare.py`.\n\n"
    head, _, tail = text.partition("## Inference")
    section, sep, rest = tail.partition("\n## ")
    heading = f"### Data2Vec-Vision {size} "
    parts = re.split(r"(?m)^(?=### )", section)
    # In place, so the prose after the tables keeps reading them in order.
    at = next((i for i, p in enumerate(parts) if p.startswith(heading)), None)
    if at is None:
        section = section.rstrip("\n") + "\n\n" + body
    else:
        parts[at] = body.rstrip("\n") + "\n\n"
        section = "".join(parts)
    path.write_text(head + "## Inference" + section + ("\n" + sep.lstrip("\n") + rest if sep else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["large", "base"], default="large")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--models", type=Path, help="export folder (default: tools/out/d2v-SIZE-random)")
    p.add_argument("--tools", type=Path, default=REPO / "tools", help="folder holding export_model.py (PyTorch run)")
    p.add_argument("--lookout", type=Path, default=REPO / "target/release/lookout")
    p.add_argument("--only", help="comma-separated runtimes: lookout-int8,tract-int8,lookout-f32,ort-int8,ort-fp32,torch")
    p.add_argument("--write", type=Path, help="update the ## Inference section of this file (e.g. BENCHMARKS.md)")
    p.add_argument("--timeout", type=float, default=1800)
    # Child-process mode.
    p.add_argument("--worker", choices=["ort", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    models = args.models or REPO / "tools/out" / f"d2v-{args.size}-random"
    def pick(kind):
        # The exporter names files after the folder's model (`--name`);
        # another name is taken when the folder holds one of that kind.
        default = models / f"d2v-{args.size}-random-{kind}.onnx"
        found = sorted(models.glob(f"*-{kind}.onnx"))
        return found[0] if not default.exists() and len(found) == 1 else default

    int8, fp32 = pick("int8"), pick("fp32")
    for f in (int8, fp32):
        if not f.exists():
            print(f"compare.py: {f} missing; export it with tools/export_model.py --random-init {args.size} "
                  f"--out {models}, or pass --models", file=sys.stderr)
            return 2
    if not args.lookout.exists():
        print(f"compare.py: {args.lookout} missing; build it with `cargo build --release`", file=sys.stderr)
        return 2

    common = ["--threads", str(args.threads), "--warmup", str(args.warmup), "--runs", str(args.runs)]
    lookout = [str(args.lookout), "bench", "--json", "--logits", *common, "--model"]
    py = [sys.executable, __file__, "--size", args.size, *common, "--tools", str(args.tools)]
    runs = {
        "lookout-int8": ("lookout int8", lookout + [str(int8)]),
        "tract-int8": ("tract int8 (no lookout passes)", lookout + [str(int8), "--no-passes"]),
        "lookout-f32": ("lookout f32", lookout + [str(fp32)]),
        "ort-int8": ("onnxruntime int8", py + ["--worker", "ort", "--model", str(int8)]),
        "ort-fp32": ("onnxruntime fp32", py + ["--worker", "ort", "--model", str(fp32)]),
        "torch": ("PyTorch fp32 eager", py + ["--worker", "torch"]),
    }
    chosen = args.only.split(",") if args.only else list(runs)
    unknown = [c for c in chosen if c not in runs]
    if unknown:
        print(f"compare.py: unknown runtime(s) {unknown}; choose from {list(runs)}", file=sys.stderr)
        return 2
    results = {}
    for key in chosen:
        name, cmd = runs[key]
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            r = child(cmd, args.timeout)
            if key.startswith(("lookout", "tract")):
                r["load_s"] = r["parse_s"] + r["optimize_s"] + r["passes_s"] + r["plan_s"]
                r["version"] = lookout_version(args.lookout)
            results[name] = r
            print(f"   {r['median_ms']:.1f} ms, {r['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
            results[name] = {"error": str(e)}
            print(f"   failed: {e}", file=sys.stderr, flush=True)
    command = "tools/.venv/bin/python " + " ".join(
        [str(Path(__file__).relative_to(REPO))] + [a for a in (argv if argv is not None else sys.argv[1:])])
    body = table(results, args, command)
    if "lookout-int8" in chosen:
        body += "\n".join(digits_agreement(args.lookout, args.threads)) + "\n"
    print(body)
    if args.write:
        write_section(args.write, body, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
