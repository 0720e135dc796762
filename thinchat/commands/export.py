"""`thinchat export` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="(not available yet)")
    parser.set_defaults(func=lambda args: parser.error("not implemented yet"))
