"""Peak memory of a 100k-slide set: reading it (a JSON list vs a saved ``datasets.DatasetDict``) and
what the trainer holds for it (a list of samples vs the lazy sources).

    python bench/bench_datasets.py [--rows 100000] [--keep DIR] [--reading-only | --trainer-only]
        [--before TREE]

Writes a generated set twice (LLaVA JSON with image files referenced by path; a DatasetDict with the
image bytes stored as ``Image`` features, as ``thinchat data convert --format-out hf`` writes it), then
measures, each in a fresh process (peak RSS, and anonymous / file-backed RSS at the end):

- reading: ``json.load`` of the list, iterating every row of the DatasetDict (memory-mapped Arrow,
  images undecoded), and streaming it to JSON + image files (thinchat/hfdata.py ``as_llava_json``);
- the trainer: building ``SupervisedDataset`` (thinchat/train/dataset.py: every sample checked and
  tokenised once, lengths kept) on a list of every entry parsed, on ``open_samples`` of the
  DatasetDict split and of the JSON (thinchat/train/sources.py), then ``dataset[i]`` (tokens + pixels) for
  300 items spread over the set, with the tiny llama + DINOv2 processor of ``thinchat.testing`` (28 px
  images: few image tokens per sample). ``--before TREE``: the list case again with another checkout of
  thinchat first on ``PYTHONPATH`` (e.g. ``git archive`` of an older commit), to compare.

Images are 16 x 16 PNGs: the point is the per-row overhead, not pixels. Prints JSON: peak RSS (MiB) and
seconds per case, rows, machine, date.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "baseline (python + imports)": "import datasets",
    "json.load of the list": "import json; rows = json.load(open(sys.argv[1] + '/train.json')); n = len(rows)",
    "DatasetDict: iterate every row": (
        "import datasets\n"
        "d = datasets.load_from_disk(sys.argv[1] + '/hf')['train']\n"
        "d = d.cast_column('image', datasets.List(datasets.Image(decode=False)))\n"
        "n = sum(len(r['conversations']) for r in d)"
    ),
    "DatasetDict -> trainer JSON (as_llava_json)": (
        "from pathlib import Path\nfrom thinchat.hfdata import as_llava_json\n"
        "as_llava_json(Path(sys.argv[1]) / 'hf', 'train')"
    ),
}

_TRAINER = (
    "import datasets\nfrom thinchat.testing import tiny_llava\nfrom thinchat.train.dataset import SupervisedDataset\n"
    "_, processor = tiny_llava('llama', 'dinov2', image_size=28)\n"
)
LIST_CASE = "trainer, list of samples (every entry parsed)"
_ITERATE = (
    "ds = SupervisedDataset(samples, processor, 2048)\n"
    "n = sum(len(ds[i]['input_ids']) for i in range(0, len(ds), max(1, len(ds) // 300)))\n"
)
#: Every entry parsed into one list; a tree from before the one reader of the format (``--before``) has
#: ``load_samples``, which built the same list.
_LIST = """\
try:
    from thinchat.conversation import parse_entry, read_llava_json
    from thinchat.train.data import as_sample
except ImportError:
    from thinchat.train.data import load_samples
    samples = load_samples(sys.argv[1] + '/train.json')
else:
    path, entries = read_llava_json(sys.argv[1] + '/train.json', '')
    samples = [as_sample(parse_entry(e, i, str(path)), path.parent) for i, e in enumerate(entries)]
    del entries
"""
TRAINER_CASES = {
    "trainer baseline (imports + tiny processor)": _TRAINER,
    LIST_CASE: _TRAINER + _LIST + _ITERATE,
    "trainer, lazy: DatasetDict split (open_samples)": _TRAINER
    + "from thinchat.train.sources import open_samples\nsamples = open_samples(sys.argv[1] + '/hf')\n"
    + _ITERATE,
    "trainer, lazy: JSON (open_samples)": _TRAINER
    + "from thinchat.train.sources import open_samples\nsamples = open_samples(sys.argv[1] + '/train.json')\n"
    + _ITERATE,
}


def _entry(i: int) -> dict:
    caption = f"Quartz about {i % 60}%, feldspar {i % 20}%; calcite cement, sericitized matrix. Slide {i}."
    return {
        "id": f"s{i:06d}",
        "image": [f"images/s{i % 100:03d}.png"],
        "conversations": [
            {"from": "human", "value": "<image>\nDescribe this thin section."},
            {"from": "gpt", "value": caption},
            {"from": "human", "value": "Is there quartz here?"},
            {"from": "gpt", "value": "Yes."},
        ],
        "lang": "en",
    }


def generate(root: Path, rows: int) -> None:
    """100 small PNGs referenced round-robin, the JSON list and the DatasetDict (bytes inside)."""
    import numpy as np
    from datasets import DatasetDict
    from PIL import Image

    from thinchat.hfdata import conversation_features

    (root / "images").mkdir(parents=True)
    pngs = []
    for k in range(100):
        pixels = np.random.default_rng(k).integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"s{k:03d}.png")
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    with open(root / "train.json", "w", encoding="utf-8") as out:
        out.write("[" + ",".join(json.dumps(_entry(i)) for i in range(rows)) + "]")

    def gen():
        for i in range(rows):
            entry = _entry(i)
            yield {
                "id": entry["id"],
                "image": [{"bytes": pngs[i % 100], "path": Path(entry["image"][0]).name}],
                "caption": entry["conversations"][1]["value"],
                "conversations": entry["conversations"],
                "lang": "en",
                "turn_types": ["describe", "presence"],
            }

    from datasets import Dataset

    data = Dataset.from_generator(gen, features=conversation_features(), cache_dir=str(root / "cache"))
    DatasetDict(train=data).save_to_disk(str(root / "hf"))


def measure(code: str, root: Path, pythonpath: str | None = None) -> dict[str, float]:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork + exec, so a child would report this
    # (large) parent's peak; VmHWM belongs to the child's own address space.
    script = (
        "import sys, time\nstart = time.perf_counter()\n"
        + code
        + "\nst = {l.split(':')[0]: int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(('VmHWM', 'Rss'))}"
        + "\nprint(st['VmHWM'] / 1024, st['RssAnon'] / 1024, st['RssFile'] / 1024, time.perf_counter() - start)"
    )
    # ``python -c`` puts its working directory first on sys.path: run in the checkout to measure.
    env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
    out = subprocess.run(
        [sys.executable, "-c", script, str(root)],
        capture_output=True,
        text=True,
        check=True,
        cwd=pythonpath or ROOT,
        env=env,
    ).stdout
    peak, anon, file, seconds = map(float, out.split()[-4:])
    # The peak counts the memory-mapped Arrow pages read (page cache, given back under pressure); the
    # anonymous memory at the end is what the process itself holds (the JSON list is still alive then).
    return {
        "peak_rss_mib": round(peak, 1),
        "anon_rss_end_mib": round(anon, 1),
        "file_rss_end_mib": round(file, 1),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--keep", default=None, help="write the generated set here instead of a temp dir")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--reading-only", action="store_true", help="skip the trainer cases")
    only.add_argument("--trainer-only", action="store_true", help="skip the reading cases")
    parser.add_argument("--before", default=None, help="also run the list case on this thinchat checkout")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp) / "bench_datasets"
        start = time.perf_counter()
        generate(root, args.rows)
        report: dict[str, object] = {
            "rows": args.rows,
            "generate_s": round(time.perf_counter() - start, 1),
            "json_mib": round((root / "train.json").stat().st_size / 2**20, 1),
            "date": datetime.date.today().isoformat(),
            "cpu": next(
                (
                    line.split(":", 1)[1].strip()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")
                ),
                "unknown",
            ),
        }
        if not args.trainer_only:
            for name, code in CASES.items():
                report[name] = measure(code, root)
        if not args.reading_only:
            from thinchat.hfdata import as_llava_json

            as_llava_json(root / "hf", "train")  # the images the lazy split reads: extracted once, not timed
            for name, code in TRAINER_CASES.items():
                report[name] = measure(code, root)
            if args.before:
                report[f"{LIST_CASE}, --before {args.before}"] = measure(
                    TRAINER_CASES[LIST_CASE], root, str(Path(args.before).resolve())
                )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
