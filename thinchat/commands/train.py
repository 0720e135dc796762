"""`thinchat train --config configs/NAME.yaml [key=value ...] [--resume [DIR]]`: run one training stage.

All settings live in the YAML config (one typed dataclass per stage, see thinchat/train/config.py);
``key=value`` overrides change single keys. Heavy imports happen inside ``run`` so ``--help`` is fast.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="stage config YAML (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="DIR",
        help="continue from the newest complete checkpoint of output_dir (or of DIR); "
        "'--resume auto' resumes when a checkpoint exists and starts fresh otherwise",
    )
    parser.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    # Launchers (deepspeed, torch.distributed) pass --local_rank / --local-rank to each process.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    import yaml

    from thinchat.config import read_yaml
    from thinchat.train.config import config_dict, load_train_config

    overrides = list(args.overrides)
    if isinstance(args.resume, str) and "=" in args.resume:  # `--resume key=value`: a bare --resume
        overrides.insert(0, args.resume)
        args.resume = True
    if read_yaml(args.config, overrides).get("stage") == "tower":
        return _run_tower(args, overrides)
    config = load_train_config(args.config, overrides)
    if args.show_config:
        print(yaml.safe_dump(config_dict(config), sort_keys=False, allow_unicode=True))
        return 0
    from thinchat.train.run import train

    out = train(config, resume=args.resume)
    print(f"trained model written to {out}")
    return 0


def _run_tower(args: argparse.Namespace, overrides: list[str]) -> int:
    """Stage 0 (``stage: tower``): adapt the vision tower and write a Llava with it merged."""
    import dataclasses

    import yaml

    from thinchat.train.tower import adapt_tower, load_tower_config

    config = load_tower_config(args.config, overrides)
    if args.show_config:
        print(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False, allow_unicode=True))
        return 0
    adapt_tower(config)
    print(f"Llava with the adapted tower written to {config.output_dir}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a stage (tower, projector, lora, qlora, full, clipcap) from a YAML config",
        description="Train one stage from a YAML config. Example: thinchat train --config configs/demo_cpu.yaml",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
