"""`thinchat serve`: an OpenAI-compatible HTTP server for one checkpoint (see docs/serving.md).

Heavy imports (torch, transformers, fastapi, uvicorn) happen inside ``run`` so ``thinchat --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from thinchat.commands.options import (
    LOCAL_HOSTS,
    add_bind,
    add_checkpoint,
    add_device,
    add_dtype,
    add_look_first,
    positive_int,
)
from thinchat.errors import ConfigError
from thinchat.threads import passive_omp_threads

log = logging.getLogger(__name__)

#: Environment variable read for the API key when neither --api-key nor --api-key-file is given.
API_KEY_ENV = "THINCHAT_API_KEY"


def _add_access(parser: argparse.ArgumentParser) -> None:
    """Who may call the server (the API key, three ways) and which image directories a request may name."""
    parser.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on /v1/* (default: no auth; always set one "
        "when binding beyond 127.0.0.1). Visible to other users in `ps`: prefer --api-key-file "
        f"or ${API_KEY_ENV}",
    )
    parser.add_argument(
        "--api-key-file",
        default=None,
        metavar="FILE",
        help=f"read the API key from FILE (first line); ${API_KEY_ENV} is used when neither is given",
    )
    parser.add_argument(
        "--allow-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="directory whose images requests may name by path or file:// URL (repeatable)",
    )


def _add_limits(parser: argparse.ArgumentParser) -> None:
    """The per-request and queue limits: each bounds what one client can make the server hold or do."""
    parser.add_argument(
        "--max-concurrency",
        type=positive_int,
        default=1,
        help="requests generating at once (default 1: the model runs one at a time)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=16,
        help="requests waiting for the model beyond --max-concurrency; more get HTTP 429 (default 16)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=positive_int,
        default=4096 * 4096,
        help="largest image accepted, in pixels (default 4096x4096)",
    )
    parser.add_argument("--max-images", type=positive_int, default=4, help="images per request (default 4)")
    parser.add_argument(
        "--max-image-bytes",
        type=positive_int,
        default=8 * 1024 * 1024,
        help="largest encoded image (file or data URI) in bytes (default 8 MiB)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=positive_int,
        default=20 * 1024 * 1024,
        help="largest request body in bytes (default 20 MiB)",
    )
    parser.add_argument(
        "--max-messages", type=positive_int, default=256, help="messages per request (default 256)"
    )
    parser.add_argument(
        "--max-stop", type=int, default=4, help="stop strings per request (default 4, as OpenAI)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible chat server (POST /v1/chat/completions, GET /v1/models, GET /health)",
        description="Serve a base, LoRA or merged checkpoint over the OpenAI chat-completions API. Images come "
        "as data URIs, or as paths inside --allow-dir directories; URLs are never fetched.",
    )
    add_checkpoint(parser, "checkpoint directory (base, stage-1, LoRA, merged or ClipCap)")
    add_bind(parser, port=8000)
    _add_access(parser)
    _add_limits(parser)
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="model id clients send (default: the checkpoint directory's name)",
    )
    add_look_first(parser)
    add_device(parser)
    add_dtype(parser)
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        help="default answer length when a request sets no max_tokens",
    )
    parser.set_defaults(func=run)


def resolve_api_key(
    key: str | None, key_file: str | None, environ: Mapping[str, str] = os.environ
) -> str | None:
    """The API key from ``--api-key``, else ``--api-key-file``, else ``$THINCHAT_API_KEY``, else None.

    Why a file and a variable: a key on the command line is visible to every user of the machine in
    ``ps``; a file (mode 600) or the environment of the service is not.
    """
    if key is not None and key_file is not None:
        raise ConfigError("give the API key once: --api-key or --api-key-file, not both")
    if key_file is not None:
        path = Path(key_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--api-key-file {key_file}: cannot read it ({type(exc).__name__})") from exc
        key = text.splitlines()[0].strip() if text.strip() else ""
        if not key:
            raise ConfigError(
                f"--api-key-file {key_file}: the file is empty; write the key on its first line"
            )
        return key
    if key is not None:
        if not key.strip():
            raise ConfigError("--api-key is empty")
        return key
    env = environ.get(API_KEY_ENV, "").strip()
    return env or None


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint once, then serve until Ctrl-C."""
    api_key = resolve_api_key(args.api_key, args.api_key_file)
    if args.max_stop < 0:
        raise ConfigError(f"--max-stop {args.max_stop}: expected an integer >= 0")
    allow_dirs = []
    for d in args.allow_dir:
        path = Path(d).expanduser()
        if not path.is_dir():
            raise ConfigError(f"--allow-dir {d}: not a directory; give an existing directory of images")
        allow_dirs.append(path.resolve())
    if args.max_queue < 0:
        raise ConfigError(f"--max-queue {args.max_queue}: expected an integer >= 0")
    if args.host not in LOCAL_HOSTS and not api_key:
        log.warning(
            "serving on %s without --api-key: anyone who can reach this port can use the model", args.host
        )
    passive_omp_threads()
    import torch

    # Flush denormal floats to zero: no effect on a trained model's answers, ~10x speed for random ones.
    torch.set_flush_denormal(True)
    from thinchat.engine import ChatEngine
    from thinchat.generation import GenerationSettings
    from thinchat.server import ServerSettings, serve

    settings = GenerationSettings()
    if args.max_new_tokens is not None:
        settings = settings.with_overrides(max_new_tokens=args.max_new_tokens)
    engine = ChatEngine.from_pretrained(
        args.from_pretrained, device=args.device, dtype=args.dtype, settings=settings
    )
    server_settings = ServerSettings(
        api_key=api_key,
        allow_dirs=tuple(allow_dirs),
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        max_image_pixels=args.max_image_pixels,
        max_images=args.max_images,
        max_image_bytes=args.max_image_bytes,
        max_request_bytes=args.max_request_bytes,
        max_messages=args.max_messages,
        max_stop=args.max_stop,
        served_model_name=args.served_model_name,
        look_first=args.look_first,
    )
    log.info(
        "serving model '%s' on http://%s:%d/v1", args.served_model_name or engine.name, args.host, args.port
    )
    serve(engine, server_settings, host=args.host, port=args.port)
    return 0
