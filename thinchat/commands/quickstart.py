"""`thinchat quickstart`: the whole pipeline on the embedded default, offline, on a CPU."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="synthesise slides, build, train (projector + LoRA) and evaluate base vs finetuned, offline",
    )
    parser.add_argument(
        "--config", default=None, help="YAML with QuickstartConfig keys (configs/quickstart*.yaml)"
    )
    parser.add_argument("--lang", choices=["en", "zh"], default=None, help="en: SmolLM2; zh: Gemma-3-270m")
    parser.add_argument("--check", action="store_true", help="exit 1 when the thresholds are not met")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from thinchat.config import load_config
    from thinchat.recipes.quickstart import QuickstartConfig, run_quickstart
    from thinchat.recipes.recipe import chat_commands

    overrides = list(args.overrides)
    if args.lang:
        overrides.append(f"lang={args.lang}")
    config = load_config(QuickstartConfig, args.config, overrides)
    summary = run_quickstart(config)
    report = summary["report"]
    print(Path(report).read_text(encoding="utf-8"))
    f1, cider = summary["mineral_f1"], summary["cider_d"]
    print(
        f"mineral-term F1 (finetuned): {f1['finetuned']:.3f} (base {f1['base']:.3f}), "
        f"needs >= {f1['threshold']}: {'OK' if f1['ok'] else 'NOT MET'}"
    )
    print(
        f"CIDEr-D finetuned / base: {cider['finetuned']:.3f} / {cider['base']:.3f} = {cider['ratio']:.1f}x, "
        f"needs >= {cider['threshold_ratio']}x: {'OK' if cider['ok'] else 'NOT MET'}"
    )
    for key, label in (
        ("yes_no_accuracy", "yes/no accuracy (balanced), asked directly"),
        ("followup_yes_no_accuracy", "yes/no accuracy (balanced) as every interface asks (looking first)"),
        ("followup_consistency", "yes/no answers agreeing with its own description (looking first)"),
        ("answer_form", "answered in the form asked"),
        ("which_accuracy", "which-of accuracy"),
    ):
        if key in summary:
            item = summary[key]
            value = "n/a" if item["finetuned"] is None else f"{item['finetuned']:.3f}"
            print(
                f"{label} (finetuned): {value}, needs >= {item['threshold']}: "
                f"{'OK' if item['ok'] else 'NOT MET'}"
            )
    gaps = summary.get("image_reliance_gap")
    if gaps:
        print(
            "image reliance (answer loss with another slide's images minus own, nats/token; ~0 = the "
            "model ignores the slide): " + ", ".join(f"{name} {gap:+.3f}" for name, gap in gaps.items())
        )
    print(f"whole run: {summary['seconds']:.0f} s")
    print("Chat with the result:")
    for command in chat_commands(summary["finetuned"]):
        print(f"  {command}")
    ok = all(item["ok"] for item in summary.values() if isinstance(item, dict) and "ok" in item)
    return 0 if ok or not args.check else 1
