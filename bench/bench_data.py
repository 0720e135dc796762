"""Benchmark the data tools; prints JSON: synth slides/s and images/s at 224 px, convert rows/s.

    python bench/bench_data.py [--n 200] [--size 224] [--workers N]

``synth`` renders ``n`` PPL+XPL pairs (images/s counts both views); ``convert`` reads the resulting
captions TSV with image checks, the multi-turn facet split and the JSON writing (rows/s), run on a
5x-replicated captions file so several captions share each image as in UCM/Sydney-style data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from data_tools.convert import convert
from data_tools.synth import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="slides to synthesise")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=None, help="synth processes (default: one per CPU)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        summary = generate(root / "synth", args.n, seed=0, lang="both", size=args.size, workers=args.workers)
        synth_s = time.perf_counter() - start

        rows = (root / "synth" / "captions_zh.tsv").read_text(encoding="utf-8").splitlines()
        en = (root / "synth" / "captions_en.tsv").read_text(encoding="utf-8").splitlines()
        many = root / "many.tsv"
        many.write_text("\n".join((rows + en) * 3) + "\n", encoding="utf-8")  # 6 captions per image
        start = time.perf_counter()
        conv = convert(
            many, root / "synth" / "images", root / "out" / "data.json", multi_turn=True, split="0.8,0.1,0.1"
        )
        convert_s = time.perf_counter() - start
    result = {
        "synth": {
            "slides": args.n,
            "size": args.size,
            "workers": summary["workers"],
            "seconds": round(synth_s, 2),
            "slides_per_s": round(args.n / synth_s, 2),
            "images_per_s": round(2 * args.n / synth_s, 2),
            "seconds_per_1000_pairs": round(1000 * synth_s / args.n, 1),
        },
        "convert": {
            "rows": conv["rows_in"],
            "images": 2 * args.n,
            "multi_turn": True,
            "seconds": round(convert_s, 2),
            "rows_per_s": round(conv["rows_in"] / convert_s, 1),
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
