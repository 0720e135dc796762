"""`thinchat build`: compose a vision tower and an LM into a standard Llava checkpoint."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build",
        help="compose a vision tower and a causal LM into a standard Llava checkpoint",
        description="Specs: an offline preset (thinchat presets), a local HF directory, a .gguf file or a hub id.",
    )
    parser.add_argument("--vision", default="dinov2-small", help="vision tower spec (default: dinov2-small)")
    parser.add_argument("--llm", default="smollm2-135m-instruct", help="language model spec")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input resolution; DINOv2 patch 14: 112 px = 64 image tokens, 224 px = 256",
    )
    parser.add_argument(
        "--chat-template",
        choices=["chatml", "gemma", "plain"],
        default=None,
        help="turn format (default: chosen from the LM's special tokens)",
    )
    parser.add_argument(
        "--feature-layer",
        type=int,
        default=None,
        help="tower hidden layer fed to the projector (default: the penultimate, -2, as LLaVA); "
        "middle layers keep more colour and texture",
    )
    parser.add_argument(
        "--pixel-shuffle",
        type=int,
        default=1,
        help="fold each NxN block of the tower's patches into one image token (space-to-depth, as "
        "Idefics3/SmolVLM): e.g. --image-size 168 --pixel-shuffle 2 costs the LM what 84 px costs; 1: "
        "off, a plain transformers Llava checkpoint",
    )
    parser.add_argument(
        "--max-tiles",
        type=int,
        default=0,
        help="show each image larger than the tower's input as a global view plus up to N tiles of a "
        "grid matched to its aspect ratio (LLaVA-NeXT AnyRes / InternVL style; for ~2000 x 1500 px "
        "photographs): up to (1+N)x the image tokens per image; 0 or 1: off",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the projector init and new token rows")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from thinchat.model.compose import build

    info = build(
        args.vision,
        args.llm,
        args.out,
        image_size=args.image_size,
        template=args.chat_template,
        seed=args.seed,
        feature_layer=args.feature_layer,
        pixel_shuffle=args.pixel_shuffle,
        max_tiles=args.max_tiles,
    )
    print(
        f"wrote {args.out}: {info.vision_model_type} + {info.lm_model_type}, "
        f"{info.image_seq_length} image tokens per image, chat template '{info.chat_template}'"
        + (f", up to {args.max_tiles} tiles per image" if args.max_tiles > 1 else "")
    )
    return 0
