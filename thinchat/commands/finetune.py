"""`thinchat finetune`: your captions (or class labels) + images -> finetuned model -> held-out report -> chat
commands."""

from __future__ import annotations

import argparse
from pathlib import Path

#: CLI flag -> FinetuneConfig key (flags override the --config file, KEY=VALUE overrides both).
FLAGS = {
    "captions": "captions",
    "images": "images",
    "labels": "labels",
    "image_folder": "image_folder",
    "multi_label": "multi_label",
    "dataset": "dataset",
    "out": "out",
    "test_ids": "test_ids",
    "val_ids": "val_ids",
    "split": "split",
    "lang": "lang",
    "vision": "vision",
    "llm": "llm",
    "hardware": "hardware",
}


def _help(key: str) -> str:
    """The help text of a ``FinetuneConfig`` key: declared once, on the config field."""
    from thinchat.recipes.finetune import FinetuneConfig

    return FinetuneConfig.__dataclass_fields__[key].metadata["help"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="your captions + images (or a datasets dataset) -> finetuned model + held-out report, resumable",
        description="Convert (with grounded question turns), build, train the projector and a LoRA, and "
        "report base vs finetuned on held-out slides; a re-run reuses every unchanged step. "
        "See docs/own-data.md.",
    )
    parser.add_argument("--captions", default=None, help="captions file (TSV/CSV/JSONL/COCO) or .txt folder")
    parser.add_argument("--images", default=None, help="directory holding the images")
    parser.add_argument("--labels", default=None, metavar="FILE", help=_help("labels"))
    parser.add_argument("--image-folder", default=None, metavar="DIR", help=_help("image_folder"))
    parser.add_argument("--multi-label", default=None, action="store_true", help=_help("multi_label"))
    parser.add_argument(
        "--dataset",
        default=None,
        help="a saved datasets.DatasetDict, an imagefolder folder with metadata, or a hub id (network)",
    )
    parser.add_argument("--out", default=None, help="output folder (default checkpoints/mine)")
    parser.add_argument("--test-ids", default=None, metavar="FILE", help="slide ids held out for the report")
    parser.add_argument("--val-ids", default=None, metavar="FILE", help="slide ids for the validation loss")
    parser.add_argument("--split", default=None, help="train,val,test ratios (default 0.9,0.05,0.05)")
    parser.add_argument("--lang", choices=["auto", "en", "zh"], default=None, help="caption language")
    parser.add_argument("--vision", default=None, help="vision tower (default dinov2-small)")
    parser.add_argument("--llm", default=None, help="LM (default: the offline preset for the language)")
    parser.add_argument(
        "--hardware", choices=["auto", "cpu", "gpu"], default=None, help="recipe to use (default: auto)"
    )
    parser.add_argument("--config", default=None, help="YAML with FinetuneConfig keys (a recipe)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys")
    parser.set_defaults(func=run)


def load(args: argparse.Namespace):
    """The FinetuneConfig from --config, the flags and KEY=VALUE, with a clear error for a stage YAML."""
    from thinchat.config import apply_overrides, from_dict, read_yaml
    from thinchat.errors import ConfigError
    from thinchat.recipes.finetune import FinetuneConfig
    from thinchat.train.config import STAGE_CLASSES

    data = read_yaml(args.config)
    stage_keys = {f for cls in STAGE_CLASSES.values() for f in cls.__dataclass_fields__}
    recipe_keys = set(FinetuneConfig.__dataclass_fields__)
    foreign = sorted(k for k in data if k in stage_keys and k not in recipe_keys)
    if foreign:
        raise ConfigError(
            f"{args.config}: {', '.join(foreign[:5])} are training-stage keys, not finetune keys; pass a "
            "stage YAML as projector_config=... / lora_config=..., or single keys as "
            "train_overrides=[key=value]"
        )
    data.update({key: value for flag, key in FLAGS.items() if (value := getattr(args, flag)) is not None})
    return from_dict(FinetuneConfig, apply_overrides(data, args.overrides))


def run(args: argparse.Namespace) -> int:
    from thinchat.recipes.finetune import run_finetune

    config = load(args)
    summary = run_finetune(config)
    print(Path(summary["report"]).read_text(encoding="utf-8"))
    print(f"whole run: {summary['seconds']:.0f} s; report: {summary['report']}")
    print("Chat with the result:")
    for command in summary["chat"]:
        print(f"  {command}")
    return 0
