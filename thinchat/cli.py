"""The ``thinchat`` console script: one command, one subcommand per stage.

Each subcommand lives in its own module with a ``register(subparsers)`` function that adds its parser
and sets ``func``. Modules import heavy libraries (torch, transformers) inside ``func`` so that
``thinchat --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Sequence

from thinchat.commands.options import add_threads
from thinchat.errors import ThinchatError

COMMAND_MODULES = (
    "thinchat.commands.presets",
    "thinchat.commands.build",
    "thinchat.commands.data",
    "thinchat.commands.train",
    "thinchat.commands.export",
    "thinchat.commands.chat",
    "thinchat.commands.web",
    "thinchat.commands.serve",
    "thinchat.commands.eval",
    "thinchat.commands.caption",
    "thinchat.commands.probe",
    "thinchat.commands.quickstart",
    "thinchat.commands.finetune",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thinchat",
        description="Train and use a multimodal chat model on rock thin-section images.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    # `deepspeed --module thinchat train ...` starts `python -m thinchat --local_rank=N train ...`.
    parser.add_argument(
        "--local_rank",
        "--local-rank",
        dest="launcher_local_rank",
        type=int,
        default=None,
        help=argparse.SUPPRESS,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for name in sorted(HEAVY_COMMANDS):
        # chat adds --threads itself (shared with cli_demo.py): keep that one.
        with contextlib.suppress(argparse.ArgumentError):
            add_threads(subparsers.choices[name])
    return parser


#: Commands that generate on a worker thread per request: idle OpenMP teams must sleep, not spin
#: (thinchat/threads.py). The batch commands work on one thread and keep libgomp's default waiting.
THREADED_COMMANDS = frozenset({"chat", "serve", "web"})
#: Commands that run torch: their thread count follows the CPUs this process may use.
HEAVY_COMMANDS = THREADED_COMMANDS | {"eval", "caption", "train", "probe", "finetune", "quickstart"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in HEAVY_COMMANDS:
        from thinchat.commands.quiet import quiet_known_noise
        from thinchat.threads import configure_threads

        configure_threads(args.threads, passive=args.command in THREADED_COMMANDS)
        quiet_known_noise()
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
