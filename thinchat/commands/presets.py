"""`thinchat presets`: list the offline presets, or materialise them into the cache."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("presets", help="list offline model presets (and prepare their caches)")
    parser.add_argument(
        "--prepare", nargs="*", metavar="NAME", help="convert these presets now (all if none given)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from thinchat.model.presets import PRESETS, cache_root, materialize

    if args.prepare is not None:
        for name in args.prepare or list(PRESETS):
            if name not in PRESETS:
                from thinchat.model.resolve import classify

                classify(name, "lm")  # raises the standard unknown-model error
            print(f"{name}: {materialize(name)}")
        return 0
    print(f"cache: {cache_root()}")
    for preset in PRESETS.values():
        print(f"{preset.name:24s} {preset.kind:6s} {preset.requirement:34s} {preset.description}")
    return 0
