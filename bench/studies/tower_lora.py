"""Does the adapted tower (stage 0, ``thinchat.train.tower``) hold the class better than the frozen one?

Measures, on a labelled set converted by ``thinchat data convert --labels`` (train and test JSON) and a
base Llava built for it (``thinchat build``, or a recipe's ``base/``), the class accuracy of the ridge class
probe (``thinchat probe``'s) on the projector's input pooled per view (each view's mean token, side by
side), for the base's frozen tower and for the tower ``adapt_tower`` makes from it, each read three ways:

- ``d4=none``: the slides as they are;
- ``d4=train``: the training slides' eight rotations/flips as extra rows (a thin section has no up);
- ``d4=both``: and each test slide's features averaged over its eight.

Prints one JSON object (and writes it with ``--out``)::

    python bench/studies/tower_lora.py --base /tmp/grains/labels_run/base \\
        --train /tmp/grains/conv_train.json --test /tmp/grains/conv_test.json epochs=12
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _util import emit_report

from thinchat.eval.data import load_eval_set
from thinchat.eval.feature_probe import probe_classes
from thinchat.images import load_image
from thinchat.train.embeds import tower_features
from thinchat.train.model_setup import load_base_dir
from thinchat.train.tower import adapt_tower, dihedral, load_tower_config

D4_MODES = ("none", "train", "both")


def load_split(path: str, processor) -> tuple[torch.Tensor, list[tuple[str, ...]]]:
    """Each slide's views as one pixel tensor ``[views, 3, H, W]`` stacked to ``[slides, ...]``, and its labels."""
    samples, _ = load_eval_set(path)
    samples = [s for s in samples if s.images and s.labels]
    pixels = [
        processor([load_image(p) for p in s.images], return_tensors="pt")["pixel_values"] for s in samples
    ]
    return torch.stack(pixels), [tuple(s.labels) for s in samples]


@torch.no_grad()
def pooled(model, pixels: torch.Tensor, k: int = 0, batch: int = 16) -> torch.Tensor:
    """Per slide (rotated by ``dihedral(k)``): each view's mean projector-input token, side by side."""
    rows = []
    for start in range(0, len(pixels), batch):
        chunk = dihedral(pixels[start : start + batch], k)
        slides = chunk.shape[0]
        tokens = tower_features(model, chunk.flatten(0, 1)).float()
        rows.append(tokens.mean(dim=1).reshape(slides, -1))
    return torch.cat(rows)


def read_out(model, train, test, alpha: float, d4: str) -> dict:
    """The ridge class probe on the model's tower features under one of ``D4_MODES``."""
    (train_px, train_y), (test_px, test_y) = train, test
    turns = range(8) if d4 != "none" else range(1)
    train_x = torch.cat([pooled(model, train_px, k) for k in turns])
    test_turns = range(8) if d4 == "both" else range(1)
    test_x = torch.stack([pooled(model, test_px, k) for k in test_turns]).mean(0)
    return probe_classes(train_x, train_y * len(turns), test_x, test_y, alpha)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="base Llava directory")
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--config", default="configs/tower_cpu.yaml")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tower_study"))
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="tower config overrides")
    args = parser.parse_args()

    config = load_tower_config(
        args.config,
        [f"model={args.base}", f"data={args.train}", f"output_dir={args.work / 'tower'}", *args.overrides],
    )
    stats = adapt_tower(config)
    result = {"tower": stats}
    for name, path in (("frozen", args.base), ("adapted", config.output_dir)):
        model, processor = load_base_dir(path)
        model.eval()
        train = load_split(args.train, processor.image_processor)
        test = load_split(args.test, processor.image_processor)
        for mode in D4_MODES:
            result[f"{name}/d4={mode}"] = read_out(model, train, test, args.alpha, mode)
            print(name, mode, result[f"{name}/d4={mode}"]["class_accuracy"], flush=True)
    emit_report(result, args.out, indent=1)


if __name__ == "__main__":
    main()
