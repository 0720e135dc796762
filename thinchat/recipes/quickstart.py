"""The main job on what ships with thinchat: synthetic slides -> conversations -> base -> stage 1 ->
LoRA stage 2 -> base-vs-finetuned report, all offline on the embedded presets.

Why a synth step plus the shared recipe (thinchat/recipes/recipe.py): the quickstart is ``thinchat finetune`` on
synthetic slides, so its CI result vouches for the one command users run on their own slides. Each step is
the same Python API the individual commands use, and a re-run reuses every step whose inputs did not change.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from thinchat.config import field
from thinchat.recipes.recipe import (
    LANG_PRESETS,
    Steps,
    fingerprint,
    run_recipe,
)
from thinchat.recipes.settings import CommonRecipeConfig, pixel_shuffle_field, tower_config_field

log = logging.getLogger(__name__)


@dataclass
class QuickstartConfig(CommonRecipeConfig):
    lang: Literal["en", "zh"] = field("en", help="caption language; zh uses the gemma3-270m preset")
    out: str = field("checkpoints/demo", help="where models, data and the report go")
    vision: str = field("dinov2-small", help="vision tower spec")
    image_size: int = field(
        168,
        help="input resolution; 168 px = 144 DINOv2 patches per view, 36 LM tokens after pixel_shuffle 2 "
        "(why this size: docs/experiments.md)",
    )
    pixel_shuffle: int = pixel_shuffle_field(2)
    feature_layer: int = field(
        8,
        help="tower hidden layer fed to the projector (thinchat build --feature-layer); DINOv2-S middle "
        "layers keep the colour and texture that tell minerals apart (docs/experiments.md)",
    )
    n_slides: int = field(400, help="synthetic slides to generate (split 80/10/10 by slide)")
    synth_size: int = field(224, help="rendered slide size in pixels")
    tower_config: str = tower_config_field(
        "", "stage 0 costs the quickstart 462 s on 2 cores (docs/experiments.md)"
    )
    projector_config: str = field("configs/demo_cpu_projector.yaml", help="stage-1 config")
    lora_config: str = field("configs/demo_cpu.yaml", help="stage-2 config")
    eval_limit: int = field(40, help="held-out slides scored in the report")
    eval_batch_size: int = field(
        40,
        help="generation batch size for the report (all 40 test slides in one batch; larger batches pay on CPU)",
    )
    qa_turns: int = field(
        6,
        help="grounded question-answer turns per training slide (presence yes/no, which-of, attribute; "
        "thinchat data convert --qa-turns)",
    )
    describe_first: float = field(
        0.0,
        help="share of training slides whose conversation opens with the description, the layout every "
        "interface answers in (thinchat data convert --describe-first)",
    )
    text_only_ratio: float = field(
        0.1,
        help="share of stage-2 samples that replay the base model's own answers to general questions "
        "(thinchat data replay), keeping its chat ability; 0: no replay",
    )
    reliance_samples: int = field(
        8, help="held-out slides for the image-reliance check (own vs another slide's images; 0: off)"
    )
    stage2_seconds: float = field(
        0.0,
        help="seconds of stage-2 training: the run times its first steps and trains as many as fit "
        "(a multiple of 32, at most 1.5x the stage config's max_steps), on any CPU or GPU "
        "(thinchat/train/time_budget.py); 0: the stage config's max_steps",
    )
    min_mineral_f1: float = field(0.6, help="threshold: finetuned mineral-term F1")
    min_cider_ratio: float = field(2.0, help="threshold: finetuned CIDEr-D / base CIDEr-D")
    min_yes_no: float = field(0.6, help="threshold: balanced yes/no accuracy on grounded presence questions")
    min_answer_form: float = field(0.95, help="threshold: share of yes/no questions answered with yes or no")
    min_which: float = field(0.55, help="threshold: which-of accuracy")
    min_followup_yes_no: float = field(
        0.65,
        help="threshold: balanced yes/no accuracy asked after the model's own description, as the chat "
        "demos ask a new slide's first question (looking first)",
    )
    min_agreement: float = field(
        0.95,
        help="threshold: share of yes/no answers, as every interface answers them (looking first), "
        "that agree with the model's own description of the slide",
    )

    def validate(self) -> None:
        from thinchat.errors import ConfigError

        if self.n_slides < 20:
            raise ConfigError(f"n_slides={self.n_slides}: need at least 20 slides for train/val/test splits")
        if self.image_size % 14:
            raise ConfigError(f"image_size={self.image_size}: must be a multiple of 14 (DINOv2 patch size)")


def run_quickstart(config: QuickstartConfig) -> dict[str, Any]:
    """Run (or reuse) every step; return the thresholds and the report summary."""
    from data_tools.convert import convert
    from data_tools.synth import generate
    from thinchat.domain.grounded_qa import vocabulary_digest

    root = Path(config.out)
    data_dir = root / "data"
    llm = config.llm or LANG_PRESETS[config.lang]
    steps = Steps(root, "quickstart")
    started = time.perf_counter()

    synth_dir = data_dir / "synth"
    steps.run(
        "synth",
        fingerprint(config.n_slides, config.seed, config.synth_size),
        synth_dir / "labels.json",
        lambda _: generate(synth_dir, config.n_slides, seed=config.seed, lang="both", size=config.synth_size),
    )
    conv = data_dir / f"conversations_{config.lang}.json"
    splits = {s: data_dir / f"conversations_{config.lang}_{s}.json" for s in ("train", "val", "test")}
    steps.run(
        "convert",
        fingerprint(config.lang, config.seed, config.qa_turns, config.describe_first, vocabulary_digest()),
        splits["test"],
        lambda _: convert(
            synth_dir / f"captions_{config.lang}.tsv",
            synth_dir / "images",
            conv,
            fmt="tsv",
            lang=config.lang,
            split="0.8,0.1,0.1",
            seed=config.seed,
            qa_turns=config.qa_turns,
            describe_first=config.describe_first,
        ),
    )
    result = run_recipe(config, steps, llm, splits)
    report = result.report
    summary = check_thresholds(report, config)
    if report.get("image_reliance"):
        summary["image_reliance_gap"] = {
            name: r["gap"] for name, r in report["image_reliance"].items() if r is not None
        }
    summary["stage2_steps"] = result.budget
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["report"] = str(result.report_dir / "report.md")
    summary["finetuned"] = str(result.finetuned)
    (root / "quickstart_summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    return summary


def _cider(report: dict[str, Any], model: str, lang: str) -> float:
    return float(report["metrics"][lang][model]["CIDEr-D"])


def _term_f1(report: dict[str, Any], model: str) -> float:
    """Micro-averaged F1 (0-1) of the mineral / alteration / cement / matrix terms named (lexicon ids).

    The report states scores on a 0-100 scale, like the caption metrics.
    """
    return float(report["domain"][model]["micro"]["f1"]) / 100.0


def _following(report: dict[str, Any], model: str) -> dict[str, Any]:
    return (report.get("question_following") or {}).get(model, {}).get("all", {})


def check_thresholds(report: dict[str, Any], config: QuickstartConfig) -> dict[str, Any]:
    """Compare the finetuned model with the base against the quickstart's bar."""
    f1 = _term_f1(report, "finetuned")
    cider_base = _cider(report, "base", config.lang)
    cider_ft = _cider(report, "finetuned", config.lang)
    ratio = cider_ft / cider_base if cider_base > 0 else float("inf")
    summary: dict[str, Any] = {
        "mineral_f1": {
            "finetuned": f1,
            "base": _term_f1(report, "base"),
            "threshold": config.min_mineral_f1,
            "ok": f1 >= config.min_mineral_f1,
        },
        "cider_d": {
            "finetuned": cider_ft,
            "base": cider_base,
            "ratio": ratio,
            "threshold_ratio": config.min_cider_ratio,
            "ok": ratio >= config.min_cider_ratio,
        },
    }
    if config.question_probes > 0:
        for key, threshold in (
            ("yes_no_accuracy", config.min_yes_no),
            ("answer_form", config.min_answer_form),
            ("which_accuracy", config.min_which),
            ("followup_yes_no_accuracy", config.min_followup_yes_no),
            ("followup_consistency", config.min_agreement),
        ):
            value = _following(report, "finetuned").get(key)
            summary[key] = {
                "finetuned": value,
                "base": _following(report, "base").get(key),
                "threshold": threshold,
                "ok": value is not None and value >= threshold,
            }
    return summary
