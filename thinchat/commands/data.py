"""``thinchat data ...``: convert, synth, import-clipcap, pseudo-label (docs/data.md has the details).

Each action's options are the fields of its config in ``data_tools/configs.py`` (``add_arguments``), and
its handler passes the parsed config on as keyword arguments (``from_args``), so a setting is declared
once. Work modules are imported inside each handler so ``thinchat --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from typing import Any

from data_tools.configs import (
    ConvertConfig,
    ImportClipcapConfig,
    PseudoLabelConfig,
    ReplayConfig,
    SynthConfig,
)
from thinchat.config import add_arguments, from_args


def _options(config: type, args: argparse.Namespace) -> dict[str, Any]:
    """The action's parsed options as the keyword arguments of its function (the config's fields)."""
    return dataclasses.asdict(from_args(config, args))


def _print_json(summary: dict[str, Any]) -> None:
    print(json.dumps(summary, ensure_ascii=False, indent=1))


def _convert(args: argparse.Namespace) -> int:
    from data_tools.convert import convert, format_summary

    print(format_summary(convert(**_options(ConvertConfig, args))))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from data_tools.synth import generate

    _print_json(generate(**_options(SynthConfig, args)))
    return 0


def _import_clipcap(args: argparse.Namespace) -> int:
    from data_tools.clipcap import import_clipcap

    _print_json(import_clipcap(args.file, **_options(ImportClipcapConfig, args)))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from data_tools.replay import make_replay

    _print_json(make_replay(**_options(ReplayConfig, args)))
    return 0


def _pseudo_label(args: argparse.Namespace) -> int:
    from data_tools.pseudo_label import pseudo_label

    summary = pseudo_label(**_options(PseudoLabelConfig, args))
    _print_json(summary)
    return 1 if summary["failed"] else 0


#: ``data ACTION``: its help, the config whose fields are its options, and its handler.
ACTIONS: tuple[tuple[str, str, type, Callable[[argparse.Namespace], int]], ...] = (
    ("convert", "image-caption pairs -> LLaVA conversation JSON (with a skip report)", ConvertConfig, _convert),
    ("synth", "procedural PPL/XPL thin sections with ground-truth labels and captions", SynthConfig, _synth),
    ("import-clipcap", "ThinGPT/ClipCap feature pickle -> JSON + safetensors (safely)", ImportClipcapConfig,
     _import_clipcap),
    ("replay", "the base model's own answers to general questions (text-only data for text_data)", ReplayConfig,
     _replay),
    ("pseudo-label", "describe/translate/expand captions with a teacher model", PseudoLabelConfig, _pseudo_label),
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``thinchat data`` and its actions, each declared by one ``ACTIONS`` row (a config and a handler)
    so that every action is wired the same way."""
    parser = subparsers.add_parser(
        "data", help="prepare training data: convert captions, synthesise slides, import ThinGPT features"
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for name, help_text, config, handler in ACTIONS:
        action = sub.add_parser(name, help=help_text)
        if name == "import-clipcap":
            action.add_argument("file", help="pickle written by ThinGPT's process_flickr.py")
        add_arguments(action, config)
        action.set_defaults(func=handler)
