"""Crash-safe checkpoints: completion markers, newest-complete lookup, rotation, and the run fingerprint.

Why: ``transformers.Trainer`` writes ``checkpoint-N`` in place; a save killed by a full disk or SIGKILL
leaves a half-written directory that ``get_last_checkpoint`` would happily resume from. Here a checkpoint
counts only once ``thinchat_complete.json`` is written (atomically, last), ``--resume`` takes the newest
complete one, rotation never deletes the newest complete one, and a run directory remembers which base
model and stage made it so a resume from another model is refused before training.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from thinchat.errors import ConfigError

log = logging.getLogger(__name__)

COMPLETE = "thinchat_complete.json"
RUN_META = "thinchat_run.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write via a temporary file, fsync, then rename: readers see the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def checkpoint_dirs(output_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-N`` directory, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))
    ]
    return sorted(found)


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file() and (path / "trainer_state.json").is_file()


def mark_complete(path: Path, step: int) -> None:
    write_json_atomic(path / COMPLETE, {"step": step})


def newest_complete(output_dir: Path) -> Path | None:
    complete = [p for _, p in checkpoint_dirs(output_dir) if is_complete(p)]
    return complete[-1] if complete else None


def set_aside_incomplete(output_dir: Path) -> list[Path]:
    """Rename half-written ``checkpoint-N`` dirs to ``incomplete-checkpoint-N`` (kept for inspection)."""
    moved = []
    for _, path in checkpoint_dirs(output_dir):
        if not is_complete(path):
            target = path.with_name("incomplete-" + path.name)
            if target.exists():
                shutil.rmtree(target)
            path.rename(target)
            log.warning("%s was not completely written (killed or disk full); moved to %s", path, target.name)
            moved.append(target)
    return moved


def rotate(output_dir: Path, keep: int) -> None:
    """Delete the oldest complete checkpoints beyond ``keep``; the newest complete one always stays."""
    complete = [p for _, p in checkpoint_dirs(output_dir) if is_complete(p)]
    for path in complete[: max(0, len(complete) - max(1, keep))]:
        shutil.rmtree(path, ignore_errors=True)


#: Config keys that change the shapes or the set of trained weights: a resume must keep them.
SHAPE_KEYS = ("lora_r", "lora_target", "tower_lora", "unfreeze_tower", "train_projector", "quant_type")


def fingerprint(model_dir: Path, stage: str, config: Any = None) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the base model's architecture, the stage, the LoRA shape."""
    model_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    text = model_config.get("text_config", {})
    vision = model_config.get("vision_config", {})
    shape = {key: getattr(config, key) for key in SHAPE_KEYS if hasattr(config, key)}
    return {
        **shape,
        "stage": stage,
        "base_model": str(model_dir.resolve()),
        "text_model_type": text.get("model_type"),
        "text_hidden_size": text.get("hidden_size") or text.get("n_embd"),
        "text_layers": text.get("num_hidden_layers") or text.get("n_layer"),
        "vocab_size": text.get("vocab_size"),
        "vision_model_type": vision.get("model_type"),
        "vision_hidden_size": vision.get("hidden_size"),
        "image_seq_length": model_config.get("image_seq_length"),
    }


def check_resume(output_dir: Path, current: dict[str, Any]) -> None:
    """Refuse to resume a run directory made from another model or stage."""
    meta_file = output_dir / RUN_META
    if not meta_file.is_file():
        raise ConfigError(
            f"{output_dir}: no {RUN_META}, so it is not a thinchat training run; point --resume at the "
            "output_dir of an earlier `thinchat train`"
        )
    saved = json.loads(meta_file.read_text(encoding="utf-8"))
    keys = [k for k in current if k != "base_model"]
    diff = [
        f"{k}: run has {saved.get(k)!r}, config has {current[k]!r}"
        for k in keys
        if saved.get(k) != current[k]
    ]
    if diff:
        raise ConfigError(
            f"{output_dir} was trained from another model or stage and cannot be resumed with this config ("
            + "; ".join(diff)
            + "). Use a new output_dir, or the config of that run"
        )
    if saved.get("base_model") != current["base_model"]:
        log.warning(
            "resuming %s: base model moved from %s to %s (same architecture)",
            output_dir,
            saved.get("base_model"),
            current["base_model"],
        )


def is_main_process() -> bool:
    """Rank 0 of a launcher-started job (or a plain run): the one process that renames and writes run files."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve_resume(output_dir: Path, resume: str | bool | None, current: dict[str, Any]) -> str | None:
    """The checkpoint path to resume from (``resume`` True: newest complete one in ``output_dir``).

    ``None`` (start from step 0) when the run directory holds no complete checkpoint yet.
    """
    if not resume:
        return None
    run_dir = output_dir if resume is True else Path(resume)
    if _CHECKPOINT.match(run_dir.name) and run_dir.is_dir():
        if not is_complete(run_dir):
            raise ConfigError(
                f"{run_dir}: this checkpoint was not completely written; resume from its run directory"
            )
        check_resume(run_dir.parent, current)
        return str(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: directory not found")
    check_resume(run_dir, current)
    if is_main_process():  # other ranks skip torn checkpoints via newest_complete without renaming
        set_aside_incomplete(run_dir)
    latest = newest_complete(run_dir)
    if latest is None:
        # The run's first save failed (disk full) or it was stopped before one: there is nothing to lose,
        # so --resume, which the failed save advises, starts the run again instead of refusing.
        log.warning("%s: no complete checkpoint yet; starting the run again from step 0", run_dir)
        return None
    log.info("resuming from %s", latest)
    return str(latest)
