"""The training recipe shared by ``thinchat quickstart`` and ``thinchat finetune``: conversations ->
base -> replay data -> stage 1 (projector) -> stage 2 (LoRA) -> held-out report.

Why one module: the quickstart is this recipe on synthetic slides, the one command is this recipe on the
user's slides; keeping one code path means what the quickstart's CI proves holds for the user's run too.
Each step is the same Python API the individual commands use, and a re-run reuses every step whose inputs
did not change (a fingerprint of the step's settings is stored beside its output, in ``<name>_state.json``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from thinchat.errors import ConfigError
from thinchat.recipes.settings import RecipeSettings

log = logging.getLogger(__name__)

#: The offline LM preset per caption language.
LANG_PRESETS = {"en": "smollm2-135m-instruct", "zh": "gemma3-270m"}
#: Where the bundled configs live when the working directory is not the repository root.
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


def fingerprint(*parts: Any) -> str:
    """A short stable hash of a step's settings."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Steps:
    """Runs a step unless its output exists with the same fingerprint (so re-runs reuse work)."""

    def __init__(self, root: Path, name: str = "quickstart"):
        self.name = name
        self.state_file = root / f"{name}_state.json"
        self.state: dict[str, str] = (
            json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        )
        self.invalidated = False

    def run(self, step: str, fingerprint: str, done: Path, action: Callable[[bool], Any]) -> None:
        if not self.invalidated and self.state.get(step) == fingerprint and done.exists():
            log.info("%s: %s is up to date, reusing %s", self.name, step, done)
            return
        self.invalidated = True  # every later step depends on this one
        start = time.perf_counter()
        log.info("%s: %s ...", self.name, step)
        interrupted = self.state.get(f"{step} (started)") == fingerprint
        self._save(**{f"{step} (started)": fingerprint})
        action(interrupted)
        self._save(**{step: fingerprint})
        log.info("%s: %s done in %.0f s", self.name, step, time.perf_counter() - start)

    def _save(self, **entries: str) -> None:
        self.state.update(entries)
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self.state, indent=1))


@dataclass
class RecipeResult:
    """What the recipe leaves behind: the models, the report and stage 2's step budget."""

    base: Path
    finetuned: Path
    report_dir: Path
    report: dict[str, Any]
    budget: dict[str, Any]
    #: the vision tower the model reads: the configured spec, or stage 0's adapted tower directory
    vision: str = ""


def config_path(path: str) -> str:
    """``path`` as given when it exists, else the bundled ``configs/`` file of that name (any CWD)."""
    if Path(path).is_file() or not path.startswith("configs/"):
        return path
    bundled = CONFIGS_DIR / Path(path).name
    return str(bundled) if bundled.is_file() else path


def _build_base(config: RecipeSettings, steps: Steps, llm: str, base: Path) -> None:
    """The untrained Llava (tower, projector, LM) that stage 1 starts from and the report compares."""
    from thinchat.model.compose import build

    # max_tiles joins the fingerprint only when on, so a base built before tiles existed is reused
    tiles = [config.max_tiles] if config.max_tiles > 1 else []
    steps.run(
        "build",
        fingerprint(
            config.vision,
            llm,
            config.image_size,
            config.feature_layer,
            config.seed,
            config.pixel_shuffle,
            *tiles,
        ),
        base / "config.json",
        lambda _: build(
            config.vision,
            llm,
            base,
            image_size=config.image_size,
            seed=config.seed,
            feature_layer=config.feature_layer,
            pixel_shuffle=config.pixel_shuffle,
            max_tiles=config.max_tiles,
        ),
    )


def _make_replay_data(config: RecipeSettings, steps: Steps, llm: str, base: Path, replay: Path) -> None:
    """The base model's own answers, mixed into stage 2 so it keeps its general chat."""
    from data_tools.replay import make_replay

    steps.run(
        "replay",
        fingerprint(config.vision, llm, config.seed, config.lang),
        replay,
        lambda _: make_replay(base, replay, lang=config.lang, holdout_every=4),
    )


def _adapt_tower(
    config: RecipeSettings, steps: Steps, splits: dict[str, Path], base: Path, out: Path
) -> tuple[Path, str]:
    """Stage 0 where ``tower_config`` is set (``thinchat.train.tower``): the Llava stage 1 starts from,
    and the vision tower it reads (the configured spec, or the adapted tower's own directory)."""
    if not config.tower_config:
        return base, config.vision
    from thinchat.train.tower import (
        TOWER_STATS,
        VISION_TOWER_DIR,
        adapt_tower,
        described_slides,
        load_tower_config,
    )

    overrides = [f"model={base}", f"data={splits['train']}", f"output_dir={out}", f"seed={config.seed}"]
    tower = load_tower_config(config_path(config.tower_config), overrides)
    if tower.epochs == 0:
        return base, config.vision
    if not described_slides(splits["train"], tower.min_term_count)[1]:
        log.warning(
            "%s: stage 0 (tower) skipped: no lexicon term or class is named in at least %d of the "
            "training descriptions, so the tower has nothing to learn; stage 1 reads the tower as built",
            steps.name, tower.min_term_count,
        )  # fmt: skip
        return base, config.vision
    steps.run("tower", fingerprint(asdict(tower)), out / TOWER_STATS, lambda _: adapt_tower(tower))
    return out, str(out / VISION_TOWER_DIR)


@dataclass(frozen=True)
class _StageRunner:
    """Trains one stage as a reusable step; holds what both stages share (settings, splits, overrides)."""

    config: RecipeSettings
    steps: Steps
    splits: dict[str, Path]
    user_overrides: list[str]

    def __call__(
        self, name: str, yaml_path: str, model: Path, out: Path, done: Path, extra: tuple[str, ...] = ()
    ) -> None:
        from thinchat.train.config import load_train_config
        from thinchat.train.run import train

        overrides = [
            f"model={model}",
            f"data={self.splits['train']}",
            f"val_data={self.splits['val']}",
            f"output_dir={out}",
            f"seed={self.config.seed}",
            *extra,
            *self.user_overrides,
        ]
        stage_config = load_train_config(config_path(yaml_path), overrides)
        stage_fingerprint = fingerprint(asdict(stage_config))

        def run_stage(interrupted: bool) -> None:
            if interrupted:  # same settings, killed before the end: continue from its last checkpoint
                train(stage_config, resume="auto")
                return
            # New settings: this folder is the recipe's own, so start over rather than resume a run
            # made with other settings.
            if out.exists():
                shutil.rmtree(out)
            train(stage_config)

        self.steps.run(name, stage_fingerprint, done, run_stage)


def _stage2_extra_overrides(
    config: RecipeSettings, stage2_overrides: tuple[str, ...], lora_steps: int, replay: Path
) -> tuple[str, ...]:
    """Stage 2's own overrides: the caller's, the time budget's step cap, and the replay data if any."""
    return (
        *stage2_overrides,
        *budget_overrides(config.stage2_seconds, lora_steps),
        *(
            (f"text_data={replay}", f"text_only_ratio={config.text_only_ratio}")
            if config.text_only_ratio > 0
            else ()
        ),
    )


def _evaluate_checkpoints(
    config: RecipeSettings,
    steps: Steps,
    base: Path,
    finetuned: Path,
    replay: Path,
    test: Path,
    report_dir: Path,
) -> dict[str, Any]:
    """The held-out report comparing base and finetuned; returns report.json's content."""
    from thinchat.eval import evaluate

    steps.run(
        "evaluate",
        fingerprint(
            config.eval_limit,
            config.max_new_tokens,
            config.reliance_samples,
            config.question_probes,
            config.text_only_ratio,
            "look_first=finetuned",  # asked as every interface asks them; the base model only directly
        ),
        report_dir / "report.json",
        lambda _: evaluate(
            {"base": str(base), "finetuned": str(finetuned)},
            test,
            report_dir,
            batch_size=config.eval_batch_size,
            max_new_tokens=config.max_new_tokens,
            limit=config.eval_limit,
            reliance_samples=config.reliance_samples,
            question_probes=config.question_probes,
            text_data=replay.with_name(f"{replay.stem}_heldout.json") if config.text_only_ratio > 0 else None,
            look_first=("finetuned",),
        ),
    )
    return json.loads((report_dir / "report.json").read_text(encoding="utf-8"))


def run_recipe(
    config: RecipeSettings,
    steps: Steps,
    llm: str,
    splits: dict[str, Path],
    stage_overrides: tuple[str, ...] = (),
    stage2_overrides: tuple[str, ...] = (),
) -> RecipeResult:
    """Build, train both stages and evaluate on ``splits`` (train/val/test JSON written by a convert step).

    ``stage_overrides`` go to both stages before the user's ``train_overrides`` (the hardware sizing);
    ``stage2_overrides`` to stage 2 only, after them (e.g. its step count).
    """
    from thinchat.train.config import load_train_config

    root = Path(config.out)
    data_dir = root / "data"
    base = root / "base"
    _build_base(config, steps, llm, base)

    projector = root / "projector"
    lora = root / "lora"
    lora_yaml = config_path(config.lora_config)
    kind = load_train_config(lora_yaml, []).stage
    # A LoRA stage leaves an adapter beside its base; a full one a whole Llava checkpoint.
    done = lora / ("adapter_config.json" if kind in ("lora", "qlora") else "config.json")
    if not done.exists():  # a re-run that reuses the stages writes nothing large
        check_room(root, base, kind, stage1_done=(projector / "config.json").exists())

    replay = data_dir / f"replay_{config.lang}.json"
    if config.text_only_ratio > 0:
        _make_replay_data(config, steps, llm, base, replay)
    user_overrides = [*stage_overrides, *config.train_overrides]
    stage = _StageRunner(config, steps, splits, user_overrides)

    tower, vision = _adapt_tower(config, steps, splits, base, root / "tower")
    stage("stage 1 (projector)", config.projector_config, tower, projector, projector / "config.json")
    lora_steps = load_train_config(lora_yaml, [*user_overrides, *stage2_overrides]).max_steps
    stage2_extra = _stage2_extra_overrides(config, stage2_overrides, lora_steps, replay)
    stage(f"stage 2 ({kind})", config.lora_config, projector, lora, done, stage2_extra)

    report_dir = root / "report"
    report = _evaluate_checkpoints(config, steps, base, lora, replay, splits["test"], report_dir)
    budget = stage2_budget(lora, config.stage2_seconds, lora_steps)
    log.info("%s: stage 2 trained %d steps (%s)", steps.name, budget["steps"], budget["reason"])
    return RecipeResult(base, lora, report_dir, report, budget, vision)


#: Room each stage needs, in copies of the base model: stage 1 saves a whole checkpoint; a LoRA stage 2
#: saves adapters (small), a full one a whole model and its optimizer state in each checkpoint.
STAGE1_COPIES = 1.0
STAGE2_COPIES = {"lora": 0.5, "qlora": 0.5, "full": 4.0}
#: Room for the report, the replay data and the logs.
REPORT_BYTES = 256 * 2**20


def check_room(root: Path, base: Path, stage2: str, stage1_done: bool = False) -> None:
    """Fail before the stages when the disk under ``root`` cannot hold what they write.

    Why: the stages run for tens of minutes; a disk that fills in their last save loses that time. The
    need is an estimate from the built base's size (``STAGE1_COPIES``, ``STAGE2_COPIES``), not a promise.
    """
    base_bytes = sum(f.stat().st_size for f in base.rglob("*") if f.is_file())
    copies = STAGE2_COPIES.get(stage2, STAGE2_COPIES["full"]) + (0.0 if stage1_done else STAGE1_COPIES)
    need = int(base_bytes * copies) + REPORT_BYTES
    free = shutil.disk_usage(root).free
    if free < need:
        raise ConfigError(
            f"{root}: {free / 2**30:.1f} GiB free on its disk, but the training stages write about "
            f"{need / 2**30:.1f} GiB (the base model is {base_bytes / 2**30:.2f} GiB); free some space "
            "or choose another out="
        )


def chat_commands(model: Path | str) -> list[str]:
    """The commands that chat with a finished model, printed at the end of a run."""
    return [
        f"python cli_demo.py --from_pretrained {model}",
        f"python web_demo.py --from_pretrained {model}",
    ]


#: A time budget may train up to this many times the stage config's max_steps (a fast host).
STEP_CAP = 1.5


def budget_overrides(seconds: float, max_steps: int) -> tuple[str, ...]:
    """Stage-2 overrides for a time budget of ``seconds`` (``thinchat.train.time_budget``): the steps
    that fit, measured on this host, at most ``STEP_CAP`` x ``max_steps``; none when ``seconds`` is 0."""
    if seconds <= 0:
        return ()
    return (f"time_budget_s={seconds}", f"max_steps={int(STEP_CAP * max_steps)}")


def stage2_budget(output_dir: Path, seconds: float, max_steps: int) -> dict[str, Any]:
    """What stage 2 trained and why: the budget it chose, or the configured step count."""
    from thinchat.train.time_budget import read_budget

    chosen = read_budget(output_dir) if seconds > 0 else None
    return chosen or {"steps": max_steps, "reason": "max_steps as configured"}
