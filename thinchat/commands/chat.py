"""`thinchat chat` and ``python cli_demo.py``: multi-turn chat about slides in the terminal.

The options and the model loading live here; the loop itself (``/image``, ``/save``, streaming, the
one-line-per-question output for scripts) is ``thinchat.chat.repl``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from thinchat.commands.options import add_checkpoint, add_device, add_dtype, add_look_first, add_threads
from thinchat.errors import ModelSpecError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``cli_demo.py`` and ``thinchat chat``."""
    add_checkpoint(parser, "checkpoint directory: base, LoRA adapter or merged export")
    parser.add_argument(
        "--image",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATH",
        help="slide image(s) for the first question, e.g. PPL then XPL",
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="answer length limit (default 256)")
    parser.add_argument(
        "--temperature", type=float, default=None, help="0 = greedy (default); e.g. 0.7 to sample"
    )
    parser.add_argument(
        "--top-p", type=float, default=None, help="nucleus sampling when temperature > 0 (default 0.9)"
    )
    parser.add_argument("--repetition-penalty", type=float, default=None, help="default 1.1; 1 = off")
    parser.add_argument(
        "--seed", type=int, default=None, help="sampling seed, for reproducible sampled answers"
    )
    parser.add_argument(
        "--system", default=None, help="optional system prompt (none by default, as in training)"
    )
    add_look_first(parser)
    add_device(parser, "torch device (default: the GPU when there is one, else cpu)")
    add_dtype(parser)
    add_threads(parser)
    parser.add_argument(
        "--jsonl",
        action="store_true",
        help="with piped stdin: one JSON object per question {question, answer | error}",
    )


def run(
    args: argparse.Namespace,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Load the model and chat until /quit or end of input; returns the exit status."""
    from thinchat.chat.repl import load_images, talk
    from thinchat.chat.session import ChatSession
    from thinchat.engine import ChatEngine
    from thinchat.generation import GenerationSettings

    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    settings = GenerationSettings().with_overrides(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    checkpoint = Path(args.from_pretrained).expanduser()
    if not checkpoint.is_dir():  # fail in a second, not after importing torch and transformers
        raise ModelSpecError(
            f"{checkpoint}: checkpoint directory not found (expected the output of thinchat "
            "build/train/export)"
        )
    images, sources = load_images(args.image)  # a bad --image stops before the slow model load
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    engine = ChatEngine.from_pretrained(
        args.from_pretrained, device=args.device, dtype=args.dtype, settings=settings
    )
    session = ChatSession(engine, system=args.system, look_first=args.look_first)
    if images:
        session.set_images(images, sources)
    return talk(session, stdin, stdout, stderr, jsonl=args.jsonl)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="chat with a checkpoint in the terminal (/image to switch slide; pipe questions for scripts)",
        description="Multi-turn chat with streaming answers. Commands: /image PATH [PATH2], /reset, /save FILE, "
        "/help, /quit. With piped stdin: one answer line per question on stdout, messages on stderr.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
