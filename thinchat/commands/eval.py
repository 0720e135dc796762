"""`thinchat eval`: score one or more checkpoints on a test set and write a side-by-side report."""

from __future__ import annotations

import argparse
from pathlib import Path

from thinchat.commands.options import add_checkpoint, add_device, add_look_first


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
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        reliance_samples=args.reliance_samples,
        question_probes=args.question_probes,
        text_data=args.text_data,
        look_first=args.look_first,
        meteor=args.meteor,
        device=args.device,
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
    parser.add_argument("--batch-size", type=int, default=8, help="generation batch size (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="answer length cap (default 256)")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="score a seeded sample of N samples spread over the classes / terms (thinchat/eval/sampling.py)",
    )
    parser.add_argument(
        "--reliance-samples",
        dest="reliance_samples",
        type=int,
        default=16,
        help="samples for the image-reliance check (answer loss with own vs another slide's images; 0: off)",
    )
    parser.add_argument(
        "--question-probes",
        dest="question_probes",
        type=int,
        default=4,
        help="grounded yes/no questions per held-out slide (half 'yes', half 'no') plus up to three "
        "which-of questions, scored in the report's question-following section (0: off)",
    )
    add_look_first(parser)  # the questions are also asked as every interface asks them
    parser.add_argument(
        "--text-data",
        default=None,
        help="text-only LLaVA JSON (e.g. held-out `thinchat data replay` answers of the base model): "
        "reports each model's answer loss on it, the general chat retention",
    )
    parser.add_argument(
        "--meteor",
        choices=("auto", "java", "nltk"),
        default="auto",
        help="METEOR 1.5 via java (auto: when java is on PATH) or the labelled nltk approximation",
    )
    add_device(parser, "torch device (default: the loader's choice)")
    parser.set_defaults(func=_run)
