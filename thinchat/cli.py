"""The ``thinchat`` console script: one command, one subcommand per stage.

Each subcommand lives in its own module with a ``register(subparsers)`` function that adds its parser
and sets ``func``. Modules import heavy libraries (torch, transformers) inside ``func`` so that
``thinchat --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from thinchat.errors import ThinchatError

COMMAND_MODULES = (
    "thinchat.commands.presets",
    "thinchat.commands.build",
    "data_tools.cli",
    "thinchat.commands.train",
    "thinchat.commands.export",
    "thinchat.commands.chat",
    "thinchat.commands.web",
    "thinchat.commands.serve",
    "thinchat.commands.eval",
    "thinchat.commands.caption",
    "thinchat.commands.probe",
    "thinchat.commands.quickstart",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thinchat",
        description="Train and use a multimodal chat model on rock thin-section images.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


#: Commands that generate on worker threads: idle OpenMP teams must sleep, not spin (see commands/threads.py).
GENERATING_COMMANDS = frozenset({"chat", "serve", "web", "eval", "caption"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in GENERATING_COMMANDS:
        from thinchat.commands.threads import passive_omp_threads

        passive_omp_threads()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        result = args.func(args)
    except ThinchatError as exc:
        print(f"thinchat {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
