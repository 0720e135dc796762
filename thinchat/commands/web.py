"""`thinchat web` (and ``python web_demo.py``): the gradio web demo for one checkpoint.

Heavy imports (torch, transformers, gradio) happen inside ``run`` so ``thinchat --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from thinchat.commands.options import (
    LOCAL_HOSTS,
    add_bind,
    add_checkpoint,
    add_device,
    add_dtype,
    add_look_first,
)
from thinchat.errors import ConfigError, ThinchatError
from thinchat.threads import passive_omp_threads

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``thinchat web`` and ``web_demo.py``."""
    add_checkpoint(parser, "checkpoint directory (base, stage-1, LoRA, merged or ClipCap)")
    add_bind(parser, port=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--lang", choices=("zh", "en"), default="zh", help="interface language (default zh)")
    add_device(parser)
    add_dtype(parser)
    add_look_first(parser)
    parser.add_argument("--temperature", type=float, default=None, help="initial temperature slider value")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="initial max-new-tokens slider value"
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=None,
        help="largest upload accepted, in pixels (default 8192x8192)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=int,
        default=None,
        help="largest uploaded file in MB; larger uploads are refused before they are stored (default 25)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "web",
        help="gradio web demo: upload PPL/XPL views and chat (same as python web_demo.py)",
        description="Gradio web demo: upload one or two views of a slide and chat about it with streaming.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint once and serve the demo until Ctrl-C."""
    passive_omp_threads()
    import torch

    # Flush denormal floats to zero: no effect on a trained model's answers, ~10x speed for random ones.
    torch.set_flush_denormal(True)
    from thinchat.engine import ChatEngine
    from thinchat.generation import GenerationSettings
    from thinchat.images import DEFAULT_MAX_PIXELS
    from thinchat.web.app import DEFAULT_MAX_UPLOAD_MB, build_demo, launch

    max_upload_mb = args.max_upload_mb if args.max_upload_mb is not None else DEFAULT_MAX_UPLOAD_MB
    if max_upload_mb < 1:
        raise ConfigError(f"--max-upload-mb {max_upload_mb}: expected an integer >= 1")

    overrides = {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens}
    settings = GenerationSettings().with_overrides(**overrides)
    engine = ChatEngine.from_pretrained(
        args.from_pretrained, device=args.device, dtype=args.dtype, settings=settings
    )
    demo = build_demo(
        engine,
        lang=args.lang,
        max_image_pixels=args.max_image_pixels or DEFAULT_MAX_PIXELS,
        look_first=args.look_first,
    )
    if args.host not in LOCAL_HOSTS or args.share:
        log.warning("the demo is reachable beyond this machine: anyone with the link can use the model")
    launch(demo, host=args.host, port=args.port, share=args.share, max_upload_mb=max_upload_mb)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``web_demo.py``: same options as ``thinchat web``, same error handling."""
    parser = argparse.ArgumentParser(prog="web_demo.py", description="thinchat gradio web demo")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        return run(args)
    except ThinchatError as exc:
        print(f"web_demo.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
