"""Captions and a fixed test set for a grains set (single sandstone grains, a PPL and an XPL image each,
``labels.csv`` with ``id,class,ppl,xpl`` and class quartz / feldspar / lithic), for ``thinchat finetune``.

Why only the label: the set says what each grain is (quartz, feldspar, rock fragment) and nothing else, so
a caption claiming more (extinction, twinning) would teach the model things nobody checked. The grounded
questions ("Is this grain quartz?") come from ``data convert --qa-turns`` over these captions.

    python scripts/grains_captions.py --grains path/to/grains --out /tmp/grains
    # writes /tmp/grains/captions.jsonl and /tmp/grains/test_ids.txt (20% of each class, seeded)
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections import defaultdict
from pathlib import Path

TEMPLATES = {
    "quartz": (
        "A single detrital quartz grain, shown in plane-polarised and cross-polarised light.",
        "Quartz grain: one framework grain of quartz in PPL and XPL.",
    ),
    "feldspar": (
        "A single detrital feldspar grain, shown in plane-polarised and cross-polarised light.",
        "Feldspar grain: one framework grain of feldspar in PPL and XPL.",
    ),
    "lithic": (
        "A single rock fragment (lithic grain), shown in plane-polarised and cross-polarised light.",
        "Rock fragment: one lithic framework grain in PPL and XPL.",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grains", required=True, help="the grains folder (labels.csv, ppl/, xpl/)")
    parser.add_argument("--out", required=True, help="folder for captions.jsonl and test_ids.txt")
    parser.add_argument("--test-share", type=float, default=0.2, help="share of each class held out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    grains, out = Path(args.grains), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    by_class: dict[str, list[str]] = defaultdict(list)
    with open(grains / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    classes: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        classes[row["id"]].add(row["class"])
    # A grain listed under two classes (same images) has no trustworthy label: left out.
    conflicting = sorted(i for i, c in classes.items() if len(c) > 1)
    with open(out / "captions.jsonl", "w", encoding="utf-8") as captions:
        for row in rows:
            if row["id"] in conflicting:
                continue
            caption = rng.choice(TEMPLATES[row["class"]])
            captions.write(json.dumps({"image": [row["ppl"], row["xpl"]], "caption": caption}) + "\n")
            by_class[row["class"]].append(row["id"])
    test = []
    for ids in by_class.values():  # stratified: each class keeps its share in the test set
        test += rng.sample(sorted(ids), round(len(ids) * args.test_share))
    (out / "test_ids.txt").write_text("\n".join(sorted(test)) + "\n", encoding="utf-8")
    print(
        f"{sum(map(len, by_class.values()))} captions, {len(test)} test ids in {out}; "
        f"{len(conflicting)} grains left out, listed under two classes: {', '.join(conflicting)}"
    )


if __name__ == "__main__":
    main()
