"""`thinchat eval`: score one or more checkpoints on a test set and write a side-by-side report."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from thinchat.commands.options import add_checkpoint, add_device, add_dtype, add_look_first
from thinchat.config import add_arguments, field, from_args
from thinchat.eval.question_following import question_probes_field


@dataclass(kw_only=True)
class EvalOptions:
    """What ``thinchat eval`` passes on to ``evaluate`` as keyword arguments, with ``evaluate``'s defaults
    (tests/test_config_cli.py checks them); ``question_probes`` is the recipes' field."""

    batch_size: int = field(8, help="generation batch size (default 8)")
    max_new_tokens: int = field(256, help="answer length cap (default 256)")
    limit: int | None = field(
        None,
        help="score a seeded sample of N samples spread over the classes / terms (thinchat/eval/sampling.py)",
    )
    reliance_samples: int = field(
        16,
        help="samples for the image-reliance check (answer loss with own vs another slide's images; 0: off)",
    )
    question_probes: int = question_probes_field()
    text_data: str | None = field(
        None,
        help="text-only LLaVA JSON (e.g. held-out `thinchat data replay` answers of the base model): "
        "reports each model's answer loss on it, the general chat retention",
    )
    meteor: Literal["auto", "java", "nltk"] = field(
        "auto", help="METEOR 1.5 via java (auto: when java is on PATH) or the labelled nltk approximation"
    )


def checkpoint_names(paths: list[str]) -> dict[str, str]:
    """``{name: path}`` with names from directory names, made unique (``ckpt``, ``ckpt-2``)."""
    names: dict[str, str] = {}
    for path in paths:
        base = Path(path.rstrip("/\\")).name or "checkpoint"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names[name] = path
    return names


def _run(args: argparse.Namespace) -> int:
    from thinchat.eval import evaluate

    report = evaluate(
        checkpoint_names(args.from_pretrained),
        args.data,
        args.out,
        look_first=args.look_first,
        device=args.device,
        dtype=args.dtype,
        **dataclasses.asdict(from_args(EvalOptions, args)),
    )
    out = Path(args.out)
    print(f"scored {report['counts']['scored']} samples, skipped {report['counts']['skipped']}")
    print(f"report: {out / 'report.md'}  data: {out / 'report.json'}  chart: {out / 'chart.png'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score checkpoints on a test set (BLEU, METEOR, ROUGE-L, CIDEr-D, chrF, GLEU, domain score)",
        description="Generate an answer for each test question with each checkpoint (greedy, batched) and "
        "compare them side by side. Writes report.md, report.json, generations_<name>.jsonl and chart.png. "
        "See docs/evaluation.md for how to read each metric.",
    )
    add_checkpoint(
        parser,
        "checkpoint directory (Llava or LoRA); repeat to compare several (e.g. base and finetuned)",
        metavar="CKPT",
        repeat=True,
    )
    parser.add_argument("--data", required=True, help="test set in LLaVA JSON format (first human/gpt turn)")
    parser.add_argument("--out", required=True, help="output directory for the report")
    add_arguments(
        parser, EvalOptions, ["batch_size", "max_new_tokens", "limit", "reliance_samples", "question_probes"]
    )
    add_look_first(parser)  # the questions are also asked as every interface asks them
    add_arguments(parser, EvalOptions, ["text_data", "meteor"])
    add_device(parser, "torch device (default: the loader's choice)")
    add_dtype(parser)
    parser.set_defaults(func=_run)
