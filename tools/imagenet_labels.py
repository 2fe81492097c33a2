#!/usr/bin/env python3
"""Write models/imagenet-1k/labels.txt: line i = ImageNet-1k class i, named as in
Hugging Face configs' id2label (e.g. 281 "tabby, tabby cat").

Source: the synset list and WordNet lemmas that timm ships in
timm/data/_info/ (no download). Class i is the i-th synset of
imagenet_synsets.txt (sorted wnids, the standard ImageNet-1k order); its
name is the comma-separated lemma list, which is the id2label naming.

    python tools/imagenet_labels.py [--out models/imagenet-1k/labels.txt]
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "models" / "imagenet-1k" / "labels.txt"

# Spot checks against the id2label naming used by Hugging Face ImageNet configs.
KNOWN = {
    0: "tench, Tinca tinca",
    1: "goldfish, Carassius auratus",
    207: "golden retriever",
    281: "tabby, tabby cat",
    285: "Egyptian cat",
    340: "zebra",
    409: "analog clock",
    530: "digital clock",
    817: "sports car, sport car",
    999: "toilet tissue, toilet paper, bathroom tissue",
}


def read_info(name: str) -> list[str]:
    text = resources.files("timm.data").joinpath("_info", name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def imagenet_labels() -> list[str]:
    synsets = read_info("imagenet_synsets.txt")
    lemmas = dict(line.split("\t", 1) for line in read_info("imagenet_synset_to_lemma.txt"))
    assert len(synsets) == 1000, f"expected 1000 synsets, got {len(synsets)}"
    assert synsets == sorted(synsets), "ImageNet-1k class order is the sorted wnid order"
    labels = [lemmas[s].strip() for s in synsets]
    for i, name in KNOWN.items():
        assert labels[i] == name, f"class {i}: {labels[i]!r} != {name!r}"
    assert all(labels) and not any("\n" in l or "\t" in l for l in labels)
    return labels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    labels = imagenet_labels()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(labels) + "\n", encoding="utf-8")
    print(f"wrote {len(labels)} labels to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
