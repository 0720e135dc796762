"""The main job on what ships with thinchat: synthetic slides -> conversations -> base -> stage 1 ->
LoRA stage 2 -> base-vs-finetuned report, all offline on the embedded presets.

Why a recipe and not a shell script: each step is the same Python API the individual commands use, so
the quickstart exercises the real product, and a re-run reuses every step whose inputs did not change
(a fingerprint of the step's settings is stored beside its output).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from thinchat.config import field

log = logging.getLogger(__name__)

LANG_PRESETS = {"en": "smollm2-135m-instruct", "zh": "gemma3-270m"}


@dataclass
class QuickstartConfig:
    lang: Literal["en", "zh"] = field("en", help="caption language; zh uses the gemma3-270m preset")
    out: str = field("checkpoints/demo", help="where models, data and the report go")
    vision: str = field("dinov2-small", help="vision tower spec")
    llm: str = field("", help="LM spec (default: smollm2-135m-instruct for en, gemma3-270m for zh)")
    image_size: int = field(
        84,
        help="input resolution; 84 px = 36 DINOv2 tokens per view (why this size: docs/experiments.md)",
    )
    feature_layer: int = field(
        8,
        help="tower hidden layer fed to the projector (thinchat build --feature-layer); DINOv2-S middle "
        "layers keep the colour and texture that tell minerals apart (docs/experiments.md)",
    )
    n_slides: int = field(400, help="synthetic slides to generate (split 80/10/10 by slide)")
    synth_size: int = field(224, help="rendered slide size in pixels")
    seed: int = field(0, help="seed for the data and the training runs")
    projector_config: str = field("configs/demo_cpu_projector.yaml", help="stage-1 config")
    lora_config: str = field("configs/demo_cpu.yaml", help="stage-2 config")
    train_overrides: list[str] = field([], help="extra key=value overrides for both stages")
    eval_limit: int = field(40, help="held-out slides scored in the report")
    eval_batch_size: int = field(
        40,
        help="generation batch size for the report (all 40 test slides in one batch; larger batches pay on CPU)",
    )
    max_new_tokens: int = field(160, help="answer length limit in the report")
    qa_turns: int = field(
        6,
        help="grounded question-answer turns per training slide (presence yes/no, which-of, attribute; "
        "thinchat data convert --qa-turns)",
    )
    question_probes: int = field(
        4, help="grounded yes/no questions per held-out slide in the report (plus one which-of)"
    )
    text_only_ratio: float = field(
        0.1,
        help="share of stage-2 samples that replay the base model's own answers to general questions "
        "(thinchat data replay), keeping its chat ability; 0: no replay",
    )
    reliance_samples: int = field(
        8, help="held-out slides for the image-reliance check (own vs another slide's images; 0: off)"
    )
    reference_gflops: float = field(
        0.0,
        help="matmul GFLOP/s (of the precision bf16: auto picks) at which stage 2's max_steps fit the "
        "15-minute budget; the quickstart measures the host and scales the steps by its rate over this one "
        "(docs/experiments.md); 0: use max_steps as it is",
    )
    min_mineral_f1: float = field(0.7, help="threshold: finetuned mineral-term F1")
    min_cider_ratio: float = field(2.0, help="threshold: finetuned CIDEr-D / base CIDEr-D")
    min_yes_no: float = field(0.85, help="threshold: balanced yes/no accuracy on grounded presence questions")
    min_answer_form: float = field(0.95, help="threshold: share of yes/no questions answered with yes or no")
    min_which: float = field(0.80, help="threshold: which-of accuracy")

    def validate(self) -> None:
        from thinchat.errors import ConfigError

        if self.n_slides < 20:
            raise ConfigError(f"n_slides={self.n_slides}: need at least 20 slides for train/val/test splits")
        if self.image_size % 14:
            raise ConfigError(f"image_size={self.image_size}: must be a multiple of 14 (DINOv2 patch size)")


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Steps:
    """Runs a step unless its output exists with the same fingerprint (so re-runs reuse work)."""

    def __init__(self, root: Path):
        self.state_file = root / "quickstart_state.json"
        self.state: dict[str, str] = (
            json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        )
        self.invalidated = False

    def run(self, name: str, fingerprint: str, done: Path, action) -> None:
        if not self.invalidated and self.state.get(name) == fingerprint and done.exists():
            log.info("quickstart: %s is up to date, reusing %s", name, done)
            return
        self.invalidated = True  # every later step depends on this one
        start = time.perf_counter()
        log.info("quickstart: %s ...", name)
        interrupted = self.state.get(f"{name} (started)") == fingerprint
        self._save(**{f"{name} (started)": fingerprint})
        action(interrupted)
        self._save(**{name: fingerprint})
        log.info("quickstart: %s done in %.0f s", name, time.perf_counter() - start)

    def _save(self, **entries: str) -> None:
        self.state.update(entries)
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self.state, indent=1))


def run_quickstart(config: QuickstartConfig) -> dict[str, Any]:
    """Run (or reuse) every step; return the thresholds and the report summary."""
    from data_tools.convert import convert
    from data_tools.replay import make_replay
    from data_tools.synth import generate
    from thinchat.compose import build
    from thinchat.eval import evaluate
    from thinchat.train.config import load_train_config
    from thinchat.train.run import train

    root = Path(config.out)
    data_dir = root / "data"
    llm = config.llm or LANG_PRESETS[config.lang]
    steps = _Steps(root)
    started = time.perf_counter()

    synth_dir = data_dir / "synth"
    steps.run(
        "synth",
        _fingerprint(config.n_slides, config.seed, config.synth_size),
        synth_dir / "labels.json",
        lambda _: generate(synth_dir, config.n_slides, seed=config.seed, lang="both", size=config.synth_size),
    )
    conv = data_dir / f"conversations_{config.lang}.json"
    splits = {s: data_dir / f"conversations_{config.lang}_{s}.json" for s in ("train", "val", "test")}
    steps.run(
        "convert",
        _fingerprint(config.lang, config.seed, config.qa_turns),
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
        ),
    )
    base = root / "base"
    steps.run(
        "build",
        _fingerprint(config.vision, llm, config.image_size, config.feature_layer, config.seed),
        base / "config.json",
        lambda _: build(
            config.vision,
            llm,
            base,
            image_size=config.image_size,
            seed=config.seed,
            feature_layer=config.feature_layer,
        ),
    )

    replay = data_dir / f"replay_{config.lang}.json"
    if config.text_only_ratio > 0:
        steps.run(
            "replay",
            _fingerprint(config.vision, llm, config.seed, config.lang),
            replay,
            lambda _: make_replay(base, replay, lang=config.lang, holdout_every=4),
        )

    def stage(
        name: str, yaml_path: str, model: Path, out: Path, done: Path, extra: tuple[str, ...] = ()
    ) -> None:
        overrides = [
            f"model={model}",
            f"data={splits['train']}",
            f"val_data={splits['val']}",
            f"output_dir={out}",
            f"seed={config.seed}",
            *extra,
            *config.train_overrides,
        ]
        stage_config = load_train_config(yaml_path, overrides)
        fingerprint = _fingerprint(asdict(stage_config))

        def run_stage(interrupted: bool) -> None:
            if interrupted:  # same settings, killed before the end: continue from its last checkpoint
                train(stage_config, resume="auto")
                return
            # New settings: this folder is the quickstart's own, so start over rather than resume a run
            # made with other settings.
            if out.exists():
                shutil.rmtree(out)
            train(stage_config)

        steps.run(name, fingerprint, done, run_stage)

    projector = root / "projector"
    stage("stage 1 (projector)", config.projector_config, base, projector, projector / "config.json")
    lora = root / "lora"
    kind = load_train_config(config.lora_config, []).stage
    # A LoRA stage leaves an adapter beside its base; a full one a whole Llava checkpoint.
    done = lora / ("adapter_config.json" if kind in ("lora", "qlora") else "config.json")
    lora_steps = load_train_config(config.lora_config, list(config.train_overrides)).max_steps
    budget = step_budget(lora_steps, config.reference_gflops)
    log.info("quickstart: stage 2 runs %d steps (%s)", budget["steps"], budget["reason"])
    stage2_overrides = (
        f"max_steps={budget['steps']}",
        *(
            (f"text_data={replay}", f"text_only_ratio={config.text_only_ratio}")
            if config.text_only_ratio > 0
            else ()
        ),
    )
    stage(f"stage 2 ({kind})", config.lora_config, projector, lora, done, stage2_overrides)

    report_dir = root / "report"
    steps.run(
        "evaluate",
        _fingerprint(
            config.eval_limit,
            config.max_new_tokens,
            config.reliance_samples,
            config.question_probes,
            config.text_only_ratio,
        ),
        report_dir / "report.json",
        lambda _: evaluate(
            {"base": str(base), "finetuned": str(lora)},
            splits["test"],
            report_dir,
            batch_size=config.eval_batch_size,
            max_new_tokens=config.max_new_tokens,
            limit=config.eval_limit,
            reliance_samples=config.reliance_samples,
            question_probes=config.question_probes,
            text_data=replay.with_name(f"{replay.stem}_heldout.json") if config.text_only_ratio > 0 else None,
        ),
    )
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    summary = check_thresholds(report, config)
    if report.get("image_reliance"):
        summary["image_reliance_gap"] = {
            name: r["gap"] for name, r in report["image_reliance"].items() if r is not None
        }
    summary["stage2_steps"] = budget
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["report"] = str(report_dir / "report.md")
    summary["finetuned"] = str(lora)
    (root / "quickstart_summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    return summary


#: Within this relative distance of the reference rate the steps stay exactly max_steps, so repeated runs
#: on one machine train the same steps (and give the same scores) despite timing noise.
STEP_DEAD_ZONE = 0.2
#: The scaled budget never leaves [max_steps / 2, 2 * max_steps] and is a multiple of this.
STEP_QUANTUM = 32


def step_budget(max_steps: int, reference_gflops: float, measured: float | None = None) -> dict[str, Any]:
    """Stage-2 steps for this host: ``max_steps`` scaled by the measured matmul rate of the precision
    ``bf16: auto`` chooses, relative to ``reference_gflops``; a faster host trains more within the same time.
    """
    if reference_gflops <= 0:
        return {"steps": max_steps, "reason": "max_steps as configured (reference_gflops: 0)"}
    if measured is None:
        from thinchat.precision import measure_precision

        measured = measure_precision("cpu").gflops
    ratio = measured / reference_gflops
    if abs(ratio - 1.0) <= STEP_DEAD_ZONE:
        steps = max_steps
    else:
        scaled = round(max_steps * ratio / STEP_QUANTUM) * STEP_QUANTUM
        steps = int(min(max(scaled, max_steps // 2), 2 * max_steps))
    return {
        "steps": steps,
        "measured_gflops": round(measured, 1),
        "reference_gflops": reference_gflops,
        "reason": f"matmul {measured:.0f} GFLOP/s vs reference {reference_gflops:.0f}",
    }


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
        ):
            value = _following(report, "finetuned").get(key)
            summary[key] = {
                "finetuned": value,
                "base": _following(report, "base").get(key),
                "threshold": threshold,
                "ok": value is not None and value >= threshold,
            }
    return summary
