"""`thinchat probe`: the linear-probe ceiling of a vision tower's features for the report's terms."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from thinchat.eval.feature_probe import POOLS


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from exc


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="how well a linear probe on tower features names the report's minerals (a ceiling for training)",
        description="Fits per-term ridge classifiers on pooled tower features of --train and scores term F1 on "
        "--test, for each input size and hidden layer; on labelled data (data convert --labels) also the "
        "class accuracy of per-class ridge classifiers. See thinchat/eval/feature_probe.py.",
    )
    parser.add_argument(
        "--train", required=True, help="training conversations JSON (references name the terms)"
    )
    parser.add_argument("--test", required=True, help="held-out conversations JSON")
    parser.add_argument("--vision", default="dinov2-small", help="vision tower spec")
    parser.add_argument("--sizes", type=_ints, default=[42], help="input sizes, e.g. 42,84,112")
    parser.add_argument("--layers", type=_ints, default=[-2], help="hidden layers, e.g. -2,6,8")
    parser.add_argument("--alpha", type=float, default=0.1, help="relative ridge penalty")
    parser.add_argument(
        "--pool",
        choices=POOLS,
        default="mean",
        help="slide features: the mean of every patch token; each view's mean side by side; or each "
        "view's mean and max (minor phases move the max)",
    )
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from thinchat.eval.feature_probe import run_probe

    results = run_probe(args.train, args.test, args.vision, args.sizes, args.layers, args.alpha, args.pool)
    for r in results:
        classes = f", class accuracy {r['class_accuracy']:.3f}" if "class_accuracy" in r else ""
        print(
            f"{r['vision']} {r['image_size']} px, layer {r['layer']}, {r['pool']}: term F1 {r['f1']:.3f}, "
            f"balanced yes/no {r['yes_no_accuracy']:.3f}{classes}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0
