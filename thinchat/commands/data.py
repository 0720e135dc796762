"""``thinchat data ...``: convert, synth, import-clipcap, pseudo-label (docs/data.md has the details).

Work modules are imported inside each handler so ``thinchat --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from data_tools.configs import ConvertConfig
from thinchat.config import add_arguments, from_args


def _convert(args: argparse.Namespace) -> int:
    from data_tools.convert import convert, format_summary

    summary = convert(**dataclasses.asdict(from_args(ConvertConfig, args)))
    print(format_summary(summary))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from data_tools.synth import generate

    summary = generate(args.out, args.n, seed=args.seed, lang=args.lang, size=args.size, workers=args.workers)
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    return 0


def _import_clipcap(args: argparse.Namespace) -> int:
    from data_tools.clipcap import import_clipcap

    summary = import_clipcap(
        args.file,
        args.out,
        seed=args.seed,
        lang=args.lang,
        split=args.split,
        test_ids=args.test_ids,
        encoder=args.encoder,
    )
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from data_tools.replay import make_replay

    summary = make_replay(
        args.model,
        args.out,
        lang=args.lang,
        questions=args.questions,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        holdout_every=args.holdout_every,
    )
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    return 0


def _pseudo_label(args: argparse.Namespace) -> int:
    from data_tools.pseudo_label import pseudo_label

    summary = pseudo_label(
        args.teacher,
        args.out,
        images=args.images,
        task=args.task,
        lang=args.lang,
        captions=args.captions,
        prompt_file=args.prompt_file,
        rate=args.rate,
        retries=args.retries,
        model=args.model,
        api_key=args.api_key,
    )
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
    syn.add_argument("--out", required=True, help="output directory")
    syn.add_argument("--n", type=int, default=100, help="number of slides (each: a PPL and an XPL image)")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--lang", default="both", choices=["zh", "en", "both"])
    syn.add_argument("--size", type=int, default=224, help="image side in pixels")
    syn.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
    syn.set_defaults(func=_synth)


def _add_import_clipcap_parser(sub: argparse._SubParsersAction) -> None:
    """``data import-clipcap``: a ThinGPT/ClipCap feature pickle -> JSON + safetensors."""
    clip = sub.add_parser(
        "import-clipcap", help="ThinGPT/ClipCap feature pickle -> JSON + safetensors (safely)"
    )
    clip.add_argument("file", help="pickle written by ThinGPT's process_flickr.py")
    clip.add_argument("--out", required=True, help="output directory")
    clip.add_argument("--seed", type=int, default=0)
    clip.add_argument("--lang", default="auto", choices=["auto", "zh", "en"])
    clip.add_argument(
        "--split",
        default=None,
        help="train,test or train,val,test ratios by image (e.g. 0.9,0.1): writes OUT/train, OUT/val, OUT/test",
    )
    clip.add_argument(
        "--test-ids",
        default=None,
        metavar="FILE|ID,ID",
        help="image ids held out as OUT/test (a file, one id a line, or a comma list); the rest is OUT/train "
        "(with --split train,val: also OUT/val)",
    )
    clip.add_argument(
        "--encoder",
        default="openai/clip-vit-base-patch32",
        help="tower the embeddings came from (hub id or directory), recorded for encoding new images "
        "(default: ThinGPT's CLIP ViT-B/32)",
    )
    clip.set_defaults(func=_import_clipcap)


def _add_replay_parser(sub: argparse._SubParsersAction) -> None:
    """``data replay``: the base model's own answers, as text-only data against forgetting."""
    rep = sub.add_parser(
        "replay", help="the base model's own answers to general questions (text-only data for text_data)"
    )
    rep.add_argument("--model", required=True, help="checkpoint that answers (the base you finetune)")
    rep.add_argument("--out", required=True, help="output LLaVA JSON (text-only entries)")
    rep.add_argument("--lang", default="both", choices=["zh", "en", "both"])
    rep.add_argument("--questions", default=None, help="question pool YAML (default: replay_questions.yaml)")
    rep.add_argument("--max-new-tokens", type=int, default=96)
    rep.add_argument("--batch-size", type=int, default=8)
    rep.add_argument(
        "--holdout-every",
        type=int,
        default=0,
        help="write every k-th answer to OUT_heldout.json instead (for thinchat eval --text-data); 0: none",
    )
    rep.set_defaults(func=_replay)


def _add_pseudo_label_parser(sub: argparse._SubParsersAction) -> None:
    """``data pseudo-label``: captions written, translated or expanded by a teacher model."""
    pl = sub.add_parser("pseudo-label", help="describe/translate/expand captions with a teacher model")
    pl.add_argument("--images", help="directory of slides ({id}.jpg or {id}_ppl/_xpl views)")
    pl.add_argument(
        "--teacher", required=True, help="OpenAI-compatible base URL or local checkpoint directory"
    )
    pl.add_argument("--out", required=True, help="captions TSV to append to (resumable)")
    pl.add_argument("--task", default="describe", choices=["describe", "translate", "expand"])
    pl.add_argument("--captions", help="existing captions TSV (translate, expand)")
    pl.add_argument("--prompt-file", help="prompt template file ({caption} is replaced)")
    pl.add_argument("--lang", default="zh", choices=["zh", "en"], help="language of the output captions")
    pl.add_argument("--rate", type=float, default=1.0, help="max requests per second (0 = unlimited)")
    pl.add_argument("--retries", type=int, default=2)
    pl.add_argument("--model", default="default", help="model name sent to the endpoint")
    pl.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY, else none)")
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
