"""The time budget of a training stage (thinchat.train.time_budget) on a fake clock, and end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from thinchat.errors import ConfigError
from thinchat.train.time_budget import BUDGET_FILE, StepBudget, TimeBudgetCallback, read_budget


@pytest.mark.parametrize(
    ("seconds_per_step", "steps"),
    [
        (3.0, 384),  # 16 + (1200 - 57) / 3 = 397 steps fit: the multiple of 32 below
        (1.0, 576),  # a fast host: capped at max_steps
        (10.0, 96),  # a slow host: 16 + 101 = 117 fit, 96 run; the budget holds
        (100.0, 16),  # the calibration alone overran the budget: stop where it is
    ],
)
def test_the_step_count_follows_the_measured_step_time(seconds_per_step: float, steps: int) -> None:
    budget = StepBudget(seconds=1200, cap=576, calibration=16)
    times = [4 * seconds_per_step] + [seconds_per_step] * 15  # a slow first step is left out
    chosen = budget.choose(elapsed=sum(times), step_times=times)
    assert budget.total == chosen["steps"] == steps
    assert chosen["seconds_per_step"] == seconds_per_step and "s/step" in chosen["reason"]


def test_the_callback_sets_the_steps_after_calibration_on_a_fake_clock(tmp_path) -> None:
    now = [0.0]
    budget = StepBudget(seconds=100, cap=64, calibration=4, quantum=8)
    callback = TimeBudgetCallback(budget, tmp_path, clock=lambda: now[0])
    state = SimpleNamespace(max_steps=64, global_step=0, is_world_process_zero=True)
    control = SimpleNamespace(should_training_stop=False, should_save=False)
    callback.on_train_begin(None, state, control)
    for step in range(1, 5):
        now[0] += 2.0  # 2 s a step
        state.global_step = step
        callback.on_step_end(None, state, control)
        if step < 4:
            assert state.max_steps == 64 and read_budget(tmp_path) is None
    # 8 s spent, 92 s left at 2 s/step: 4 + 46 = 50 steps fit -> 48.
    assert state.max_steps == budget.total == 48 and not control.should_training_stop
    assert json.loads((tmp_path / BUDGET_FILE).read_text())["steps"] == 48


def test_the_schedule_warms_up_and_decays_to_zero_at_the_chosen_total() -> None:
    budget = StepBudget(seconds=10, cap=100)
    budget.total = 50
    assert budget.lr_factor(0, 5, "cosine") == 0.0 and budget.lr_factor(5, 5, "cosine") == 1.0
    assert budget.lr_factor(50, 5, "cosine") == pytest.approx(0.0)
    assert budget.lr_factor(27, 5, "cosine") == pytest.approx(0.5, abs=0.04)  # halfway through the decay
    assert budget.lr_factor(50, 5, "linear") == 0.0 and budget.lr_factor(30, 5, "constant_with_warmup") == 1.0
    with pytest.raises(ConfigError, match="lr_scheduler_type one of"):
        budget.scheduler(None, 5, "polynomial")


def test_bad_budgets_are_refused_with_the_setting_named(tmp_path) -> None:
    from thinchat.train.config import load_train_config

    with pytest.raises(ConfigError, match="time_budget_s=-1"):
        load_train_config(None, ["stage=lora", "model=x", "data=y", "time_budget_s=-1", "max_steps=10"])
    with pytest.raises(ConfigError, match="max_steps >= 1 as the cap"):
        load_train_config(None, ["stage=lora", "model=x", "data=y", "time_budget_s=60"])


def test_a_budgeted_stage_stops_where_the_budget_says(tmp_path) -> None:
    from train_helpers import save_tiny, tiny_overrides, write_dataset

    from thinchat.train.config import load_train_config
    from thinchat.train.run import train

    data = write_dataset(tmp_path / "data", n=8)
    base = save_tiny(tmp_path / "base")
    # A budget of a millisecond: the two calibration steps already overran it, so training stops there.
    overrides = tiny_overrides(
        "lora", base, data, tmp_path / "lora", max_steps=40, time_budget_s=0.001, budget_calibration_steps=2
    )
    out = train(load_train_config(None, overrides))
    chosen = read_budget(out)
    assert chosen is not None and chosen["steps"] == 2 and chosen["calibration_steps"] == 2
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["global_step"] == 2 and state["max_steps"] == 2
