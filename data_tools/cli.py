"""`thinchat data ...` (placeholder until the data-tools issue lands)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="(not available yet)")
    parser.set_defaults(func=lambda args: parser.error("not implemented yet"))
