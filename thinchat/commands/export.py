"""`thinchat export --from_pretrained CKPT --merge --out DIR`: a standalone merged Llava checkpoint."""

from __future__ import annotations

import argparse

from thinchat.commands.options import add_checkpoint, add_dtype


def run(args: argparse.Namespace) -> int:
    from thinchat.train.export import export

    out = export(args.from_pretrained, args.out, merge=args.merge, dtype=args.dtype, overwrite=args.overwrite)
    print(f"merged checkpoint written to {out} (loads with transformers' LlavaForConditionalGeneration)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="merge a LoRA checkpoint into a standalone standard Llava directory",
        description="Fold a LoRA adapter (and its trained projector) into the base weights and save a "
        "standard transformers Llava checkpoint that needs neither peft nor the base model.",
    )
    add_checkpoint(parser, "checkpoint directory written by thinchat train", metavar="CKPT")
    parser.add_argument("--out", required=True, metavar="DIR", help="where to write the merged checkpoint")
    parser.add_argument("--merge", action="store_true", help="merge the LoRA adapter into the weights")
    add_dtype(parser, default="float32", text="weights dtype of the merged checkpoint (default float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    parser.set_defaults(func=run)
