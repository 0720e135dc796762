"""`thinchat finetune`: your captions (or class labels) + images -> finetuned model -> held-out report -> chat
commands."""

from __future__ import annotations

import argparse
from pathlib import Path

#: FinetuneConfig keys that are also options (``--image-folder`` for ``image_folder``): given, they override
#: the --config file; KEY=VALUE overrides both. Spelling, choices and help come from the config's fields.
FLAGS = (
    "captions", "images", "labels", "image_folder", "multi_label", "dataset", "out", "test_ids", "val_ids",
    "split", "lang", "vision", "llm", "hardware",
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    from thinchat.config import add_arguments
    from thinchat.recipes.finetune import FinetuneConfig

    parser = subparsers.add_parser(
        "finetune",
        help="your captions + images (or a datasets dataset) -> finetuned model + held-out report, resumable",
        description="Convert (with grounded question turns), build, train the projector and a LoRA, and "
        "report base vs finetuned on held-out slides; a re-run reuses every unchanged step. "
        "See docs/own-data.md.",
    )
    add_arguments(parser, FinetuneConfig, FLAGS, unset=True)
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
    data.update({key: value for key in FLAGS if (value := getattr(args, key)) is not None})
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
