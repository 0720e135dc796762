"""`thinchat caption`: describe a folder of slides into a TSV/JSONL file, resumably."""

from __future__ import annotations

import argparse
import sys

from thinchat.commands.options import add_checkpoint, add_device, add_dtype, add_look_first
from thinchat.errors import ThinchatError
from thinchat.eval.caption import DEFAULT_PROMPT


def _run(args: argparse.Namespace) -> int:
    from thinchat.eval.caption import CaptionWriter, caption_slides, discover_slides
    from thinchat.model.loading import load_pretrained

    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise ThinchatError("--batch-size and --max-new-tokens must be at least 1")
    suffixes = tuple(s for s in (args.pair_suffixes or "").split(",") if s)
    slides = discover_slides(args.images, suffixes)
    writer = CaptionWriter(args.out, args.format)  # validates an existing file before loading the model
    todo = sum(1 for s in slides if s.id not in writer.done)
    print(f"{len(slides)} slides, {len(slides) - todo} already in {args.out}, {todo} to caption")
    if todo == 0:
        return 0
    model, processor = load_pretrained(args.from_pretrained, device=args.device, dtype=args.dtype)
    summary = caption_slides(
        model,
        processor,
        slides,
        writer,
        args.prompt,
        args.batch_size,
        args.max_new_tokens,
        look_first=args.look_first,
    )
    print(f"wrote {summary.written} captions to {args.out} ({summary.already_done} were already done)")
    if summary.failed:
        print(f"{len(summary.failed)} slide(s) could not be captioned:", file=sys.stderr)
        for ident, reason in summary.failed:
            print(f"  {ident}: {reason}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "caption",
        help="describe a folder of slides into results.tsv / results.jsonl (resumable)",
        description="Caption every image (or PPL/XPL pair) with a checkpoint. Rows are appended and flushed "
        "after each batch; a rerun skips ids already in --out. Unreadable images are reported and skipped "
        "(exit status 1) while the rest is captioned.",
    )
    add_checkpoint(parser, "checkpoint directory (Llava, LoRA or ClipCap)", metavar="CKPT")
    parser.add_argument("--images", nargs="+", required=True, metavar="DIR|FILE",
                        help="a directory (searched recursively) and/or image files")  # fmt: skip
    parser.add_argument("--out", required=True, help="results file: .tsv (id, images, caption) or .jsonl")
    parser.add_argument("--format", choices=("tsv", "jsonl"), default=None,
                        help="output format (default: from the --out extension)")  # fmt: skip
    parser.add_argument(
        "--prompt", default=DEFAULT_PROMPT, help=f"question asked per slide (default {DEFAULT_PROMPT!r})"
    )
    add_look_first(parser)  # a question that is not a description is answered after the description
    parser.add_argument("--batch-size", type=int, default=8, help="generation batch size (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="caption length cap (default 256)")
    parser.add_argument(
        "--pair-suffixes",
        default=None,
        metavar="_ppl,_xpl",
        help="group files whose names end with these suffixes (X_ppl.png + X_xpl.png) into one slide, in this order",
    )
    add_device(parser, "torch device (default: the loader's choice)")
    add_dtype(parser)
    parser.set_defaults(func=_run)
