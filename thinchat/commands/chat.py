"""`thinchat chat`: multi-turn chat about slides in the terminal (the same loop as ``cli_demo.py``)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from thinchat.chat.repl import add_arguments

    parser = subparsers.add_parser(
        "chat",
        help="chat with a checkpoint in the terminal (/image to switch slide; pipe questions for scripts)",
        description="Multi-turn chat with streaming answers. Commands: /image PATH [PATH2], /reset, /save FILE, "
        "/help, /quit. With piped stdin: one answer line per question on stdout, messages on stderr.",
    )
    add_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from thinchat.chat.repl import run

    return run(args)
