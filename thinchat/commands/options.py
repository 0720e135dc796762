"""Option groups that several commands share: the checkpoint, device and dtype, bind address, threads.

Why one module: ``thinchat chat`` / ``cli_demo.py``, ``thinchat web`` / ``web_demo.py``, ``thinchat serve``,
``eval``, ``caption`` and ``export`` take the same options; defined once, they keep the same spelling
(``--from_pretrained`` and ``--from-pretrained``), the same accepted values (the dtype names of
``thinchat.precision.DTYPE_NAMES``) and the same meaning everywhere.
"""

from __future__ import annotations

import argparse

from thinchat.precision import DTYPE_NAMES

#: Bind addresses that keep a server on this machine; anything else is reachable from outside.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def add_checkpoint(
    parser: argparse.ArgumentParser, text: str, *, metavar: str = "DIR", repeat: bool = False
) -> None:
    """``--from_pretrained`` / ``--from-pretrained`` (required; ``repeat``: may be given several times)."""
    parser.add_argument(
        "--from_pretrained",
        "--from-pretrained",
        dest="from_pretrained",
        required=True,
        metavar=metavar,
        help=text,
        **({"action": "append"} if repeat else {}),
    )


def add_device(
    parser: argparse.ArgumentParser, text: str = "torch device (default: cuda if available, else cpu)"
) -> None:
    parser.add_argument("--device", default=None, help=text)


def add_dtype(
    parser: argparse.ArgumentParser,
    default: str | None = None,
    text: str = "weights dtype (default auto: bfloat16 on a GPU that has it; on a CPU the precision whose "
    "matmuls measure faster, thinchat/precision.py)",
) -> None:
    """``--dtype`` with the names every loader accepts (``auto`` where the default is the device's choice)."""
    choices = list(DTYPE_NAMES) + ([] if default else ["auto"])
    parser.add_argument(
        "--dtype", default=default, choices=choices, metavar="{" + ",".join(choices) + "}", help=text
    )


def add_bind(parser: argparse.ArgumentParser, port: int) -> None:
    """``--host`` (default: this machine only) and ``--port``."""
    parser.add_argument(
        "--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=port, help=f"TCP port (default {port})")


def add_threads(parser: argparse.ArgumentParser) -> None:
    """``--threads``: the torch thread count (``thinchat.threads.configure_threads`` applies it)."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads (default: $OMP_NUM_THREADS, else the CPUs this process may use: "
        "affinity and cgroup quota); idle threads wait passively; 1 avoids slow-downs on a busy shared machine",
    )


def add_look_first(parser: argparse.ArgumentParser) -> None:
    """``--look-first/--no-look-first`` of the chat demos, the server, captioning and evaluation
    (:mod:`thinchat.chat.look`)."""
    parser.add_argument(
        "--look-first",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="answer the first question about a new slide after the model's own description of it "
        "(asked once per slide and kept; the chat demos show it first) (default: on; docs/chat.md)",
    )
