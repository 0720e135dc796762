"""``thinchat data ...``: convert, synth, import-clipcap, pseudo-label (docs/data.md has the details).

Each action's options are the fields of its config in ``data_tools/configs.py`` (``add_arguments``), and
its handler passes the parsed config on as keyword arguments (``from_args``), so a setting is declared
once. Work modules are imported inside each handler so ``thinchat --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from data_tools.configs import (
    ConvertConfig,
    ImportClipcapConfig,
    PseudoLabelConfig,
    ReplayConfig,
    SynthConfig,
)
from thinchat.config import add_arguments, from_args


def _convert(args: argparse.Namespace) -> int:
    from data_tools.convert import convert, format_summary

    summary = convert(**dataclasses.asdict(from_args(ConvertConfig, args)))
    print(format_summary(summary))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from data_tools.synth import generate

    summary = generate(**dataclasses.asdict(from_args(SynthConfig, args)))
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    return 0


def _import_clipcap(args: argparse.Namespace) -> int:
    from data_tools.clipcap import import_clipcap

    summary = import_clipcap(args.file, **dataclasses.asdict(from_args(ImportClipcapConfig, args)))
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from data_tools.replay import make_replay

    summary = make_replay(**dataclasses.asdict(from_args(ReplayConfig, args)))
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    return 0


def _pseudo_label(args: argparse.Namespace) -> int:
    from data_tools.pseudo_label import pseudo_label

    summary = pseudo_label(**dataclasses.asdict(from_args(PseudoLabelConfig, args)))
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    return 1 if summary["failed"] else 0


def _add_convert_parser(sub: argparse._SubParsersAction) -> None:
    """``data convert``: image-caption pairs (or class labels) -> LLaVA conversation JSON; its options are
    the fields of ``ConvertConfig``."""
    conv = sub.add_parser(
        "convert", help="image-caption pairs -> LLaVA conversation JSON (with a skip report)"
    )
    add_arguments(conv, ConvertConfig)
    conv.set_defaults(func=_convert)


def _add_synth_parser(sub: argparse._SubParsersAction) -> None:
    """``data synth``: procedural thin sections with ground-truth labels and captions."""
    syn = sub.add_parser(
        "synth", help="procedural PPL/XPL thin sections with ground-truth labels and captions"
    )
    add_arguments(syn, SynthConfig)
    syn.set_defaults(func=_synth)


def _add_import_clipcap_parser(sub: argparse._SubParsersAction) -> None:
    """``data import-clipcap``: a ThinGPT/ClipCap feature pickle -> JSON + safetensors."""
    clip = sub.add_parser(
        "import-clipcap", help="ThinGPT/ClipCap feature pickle -> JSON + safetensors (safely)"
    )
    clip.add_argument("file", help="pickle written by ThinGPT's process_flickr.py")
    add_arguments(clip, ImportClipcapConfig)
    clip.set_defaults(func=_import_clipcap)


def _add_replay_parser(sub: argparse._SubParsersAction) -> None:
    """``data replay``: the base model's own answers, as text-only data against forgetting."""
    rep = sub.add_parser(
        "replay", help="the base model's own answers to general questions (text-only data for text_data)"
    )
    add_arguments(rep, ReplayConfig)
    rep.set_defaults(func=_replay)


def _add_pseudo_label_parser(sub: argparse._SubParsersAction) -> None:
    """``data pseudo-label``: captions written, translated or expanded by a teacher model."""
    pl = sub.add_parser("pseudo-label", help="describe/translate/expand captions with a teacher model")
    add_arguments(pl, PseudoLabelConfig)
    pl.set_defaults(func=_pseudo_label)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``thinchat data`` and its actions, one small function per action."""
    parser = subparsers.add_parser(
        "data", help="prepare training data: convert captions, synthesise slides, import ThinGPT features"
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    _add_convert_parser(sub)
    _add_synth_parser(sub)
    _add_import_clipcap_parser(sub)
    _add_replay_parser(sub)
    _add_pseudo_label_parser(sub)
