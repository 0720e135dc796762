"""A training stage that fits a time budget: the step count is set from the run's own measured steps.

Why: predicting a CPU step's time from a matmul benchmark fails on the hosts that matter. On an Intel
Xeon with AMX, bf16 matmuls measure 4-9x fp32, yet a LoRA step runs at ~9% of that rate (attention,
softmax, AdamW, LoRA's thin matmuls and Python dominate), so a budget scaled by the matmul rate ran
the quickstart 2-3x over its time there (docs/performance.md). Here the stage trains
``calibration`` steps, takes the median of their times (the first step, which warms caches and
allocators, left out), and sets the total to what fits the rest of ``seconds``: a multiple of
``quantum`` (so timing noise rarely changes it), never more than ``max_steps`` (the cap), never fewer
than the steps already taken. The learning-rate schedule reads the chosen total, so the warm-up and the
decay to zero fit the shortened run, as they would with the count set up front.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from thinchat.errors import ConfigError

log = logging.getLogger(__name__)

#: Where the chosen budget is written in the stage's output directory (read by the recipes' summaries).
BUDGET_FILE = "step_budget.json"
#: Schedules the budget can stretch: transformers' names.
SCHEDULES = ("cosine", "linear", "constant_with_warmup")


@dataclass
class StepBudget:
    """Seconds of training, the cap on steps, and (once measured) the chosen total."""

    seconds: float
    cap: int
    calibration: int = 16
    quantum: int = 32
    total: int = 0
    chosen: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.cap < 1 or self.calibration < 2 or self.quantum < 1:
            raise ConfigError(
                f"time budget: seconds={self.seconds}, max_steps={self.cap}, calibration={self.calibration}: "
                "need seconds > 0, max_steps >= 1 and at least 2 calibration steps"
            )
        self.total = self.total or self.cap

    def choose(self, elapsed: float, step_times: Sequence[float]) -> dict[str, Any]:
        """Set :attr:`total` from the time spent so far and the measured step times; returns why."""
        done = len(step_times)
        timed = list(step_times[1:]) or list(step_times)
        per_step = statistics.median(timed)
        fit = done + max(0.0, self.seconds - elapsed) / per_step
        steps = int(fit // self.quantum) * self.quantum
        self.total = min(self.cap, max(steps, done))
        self.chosen = {
            "steps": self.total,
            "budget_s": self.seconds,
            "seconds_per_step": round(per_step, 3),
            "calibration_steps": done,
            "elapsed_s": round(elapsed, 1),
            "reason": f"{done} steps at a median {per_step:.2f} s/step: {fit:.0f} steps fit "
            f"{self.seconds:.0f} s; {self.total} (a multiple of {self.quantum}, at most {self.cap})",
        }
        return self.chosen

    def lr_factor(self, step: int, warmup: int, schedule: str) -> float:
        """The learning-rate multiplier at ``step`` for a run of :attr:`total` steps."""
        if step < warmup:
            return step / max(1, warmup)
        if schedule == "constant_with_warmup":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, self.total - warmup))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    def scheduler(self, optimizer: Any, warmup: int, schedule: str) -> Any:
        """A ``LambdaLR`` following :meth:`lr_factor` (it reads the total when it changes)."""
        from torch.optim.lr_scheduler import LambdaLR

        if schedule not in SCHEDULES:
            raise ConfigError(
                f"time_budget_s needs lr_scheduler_type one of {', '.join(SCHEDULES)}, got '{schedule}'"
            )
        return LambdaLR(optimizer, lambda step: self.lr_factor(step, warmup, schedule))


class TimeBudgetCallback(TrainerCallback):
    """Times the first steps of a run and sets its step count from them (:class:`StepBudget`)."""

    def __init__(
        self, budget: StepBudget, output_dir: str | Path, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.budget = budget
        self.output_dir = Path(output_dir)
        self.clock = clock
        self.start = self.last = 0.0
        self.step_times: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.last = self.clock()
        self.step_times = []
        state.max_steps = self.budget.total

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        self.step_times.append(now - self.last)
        self.last = now
        if len(self.step_times) == self.budget.calibration:
            chosen = self.budget.choose(now - self.start, self.step_times)
            state.max_steps = self.budget.total
            if state.global_step >= state.max_steps:  # as Trainer does on reaching max_steps
                control.should_training_stop = True
                control.should_save = args.save_strategy != "no"
            log.info("time budget: %s", chosen["reason"])
            if state.is_world_process_zero:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                (self.output_dir / BUDGET_FILE).write_text(json.dumps(chosen, indent=1), encoding="utf-8")
        return control


def read_budget(output_dir: str | Path) -> dict[str, Any] | None:
    """The budget a stage chose (:data:`BUDGET_FILE`), or None when it ran a fixed step count."""
    path = Path(output_dir) / BUDGET_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
