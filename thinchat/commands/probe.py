"""`thinchat probe`: the linear-probe ceiling of a vision tower's features for the report's terms."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from thinchat.config import add_arguments, field, from_args
from thinchat.errors import ConfigError
from thinchat.eval.feature_probe import Pool


@dataclass(kw_only=True)
class ProbeOptions:
    """What ``thinchat probe`` passes on to ``run_probe`` as keyword arguments, with ``run_probe``'s
    defaults (tests/test_feature_probe.py checks them). Each list option is a comma-separated list; every
    combination of ``sizes`` x ``max_tiles`` x ``pixel_shuffle`` x ``layers`` gets a row."""

    vision: str = field("dinov2-small", help="vision tower spec (default dinov2-small)")
    sizes: list[int] = field(
        [42],
        metavar="PX[,PX...]",
        help="view sizes, as thinchat build --image-size takes them, e.g. 42,84,112 (default 42)",
    )
    layers: list[int] = field(
        [-2],
        metavar="L[,L...]",
        help="tower hidden layers, e.g. --layers=-2,6,8 (default -2)",
    )
    pixel_shuffle: list[int] = field(
        [1],
        metavar="F[,F...]",
        help="compression, as thinchat build --pixel-shuffle: each FxF block of the patch grid folded into "
        "one token of F^2 times the width, the features the projector reads (1/F^2 the image tokens); "
        "F must divide the patch grid at every size, e.g. 1,2 (default 1: off)",
    )
    max_tiles: list[int] = field(
        [0],
        metavar="N[,N...]",
        help="tiles, as thinchat build --max-tiles: each image as its global view plus up to N tiles cut "
        "by the model's own tiler, pooled per image over all its views, e.g. 0,4 (default 0: off)",
    )
    train_slides: list[int] = field(
        [0],
        metavar="N[,N...]",
        help="fit on a seeded sample of N training slides (0: all of them), e.g. 160,320,0: a ceiling "
        "that still rises with N is limited by the data, not by the tower (default 0)",
    )
    alpha: float = field(0.1, help="relative ridge penalty (default 0.1)")
    pool: Pool = field(
        "mean",
        help="slide features: the mean of every patch token; each image's mean side by side; or each "
        "image's mean and max (minor phases move the max)",
    )

    def validate(self) -> None:
        for name in ("sizes", "layers", "pixel_shuffle", "max_tiles", "train_slides"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')}: give at least one value")
        if any(n < 0 for n in self.train_slides):
            raise ConfigError(f"--train-slides {self.train_slides}: counts are >= 0 (0: every slide)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="how well a linear probe on tower features names the report's minerals (a ceiling for training)",
        description="Fits per-term ridge classifiers on pooled tower features of --train and scores term F1 on "
        "--test, for each image setting a model can be built with (view size, pixel shuffle, tiles) and "
        "hidden layer, with the LM image tokens per slide each setting costs; on labelled data (data "
        "convert --labels) also the class accuracy of per-class ridge classifiers. See "
        "thinchat/eval/feature_probe.py.",
    )
    parser.add_argument(
        "--train", required=True, help="training conversations JSON (references name the terms)"
    )
    parser.add_argument("--test", required=True, help="held-out conversations JSON")
    add_arguments(parser, ProbeOptions)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from thinchat.eval.feature_probe import run_probe

    options = from_args(ProbeOptions, args)
    results = run_probe(args.train, args.test, **dataclasses.asdict(options))
    for r in results:
        classes = f", class accuracy {r['class_accuracy']:.3f}" if "class_accuracy" in r else ""
        print(
            f"{r['vision']} {r['image_size']} px, pixel shuffle {r['pixel_shuffle']}, max tiles "
            f"{r['max_tiles']} ({r['image_tokens']} image tokens per slide), layer {r['layer']}, {r['pool']}, "
            f"{r['train_slides']} training slides: "
            f"term F1 {r['f1']:.3f}, balanced yes/no {r['yes_no_accuracy']:.3f}{classes}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0
