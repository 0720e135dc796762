"""The quickstart's stage-2 step budget and its thresholds, on hand-made measurements and reports."""

from __future__ import annotations

import pytest

from thinchat.recipes.quickstart import QuickstartConfig, check_thresholds, step_budget


@pytest.mark.parametrize(
    ("measured", "steps"),
    [
        (400.0, 384),  # the reference host
        (460.0, 384),  # within the dead zone: timing noise never changes the steps
        (330.0, 384),
        (600.0, 576),  # 1.5x faster: 1.5x the steps, a multiple of 32
        (255.0, 384),  # a slower host (fp32 on a Xeon without AMX) trains max_steps and takes longer
        (100.0, 384),
        (2000.0, 576),  # never over 1.5x
    ],
)
def test_step_budget_follows_the_measured_rate(measured: float, steps: int) -> None:
    assert step_budget(384, 400.0, measured=measured)["steps"] == steps


def test_no_reference_keeps_max_steps() -> None:
    assert step_budget(448, 0.0)["steps"] == 448


def _report(f1: float, yes_no: float | None, form: float, which: float, followup: float | None = 0.8) -> dict:
    following = {
        "all": {
            "yes_no_accuracy": yes_no,
            "answer_form": form,
            "which_accuracy": which,
            "followup_yes_no_accuracy": followup,
        }
    }
    return {
        "metrics": {"en": {"base": {"CIDEr-D": 0.01}, "finetuned": {"CIDEr-D": 1.2}}},
        "domain": {"base": {"micro": {"f1": 0.0}}, "finetuned": {"micro": {"f1": 100 * f1}}},
        "question_following": {"base": {"all": {}}, "finetuned": following},
    }


def test_thresholds_cover_question_following() -> None:
    config = QuickstartConfig()
    ok = check_thresholds(_report(0.72, 0.9, 1.0, 0.85), config)
    assert all(item["ok"] for item in ok.values())
    low = check_thresholds(_report(0.72, 0.6, 1.0, 0.85), config)
    assert not low["yes_no_accuracy"]["ok"] and low["mineral_f1"]["ok"]
    missing = check_thresholds(_report(0.72, None, 0.9, 0.85), config)
    assert not missing["yes_no_accuracy"]["ok"] and not missing["answer_form"]["ok"]
    assert missing["yes_no_accuracy"]["base"] is None
    # The answers after the model's own description (what the chat demos ask) have their own floor.
    after = check_thresholds(_report(0.72, 0.9, 1.0, 0.85, followup=0.65), config)
    assert not after["followup_yes_no_accuracy"]["ok"] and after["yes_no_accuracy"]["ok"]
    assert after["followup_yes_no_accuracy"]["threshold"] == config.min_followup_yes_no == 0.7
    assert not check_thresholds(_report(0.72, 0.9, 1.0, 0.85, followup=None), config)[
        "followup_yes_no_accuracy"
    ]["ok"]


def test_check_room_refuses_a_disk_too_small_for_the_stages(tmp_path, monkeypatch) -> None:
    import shutil
    from collections import namedtuple

    from thinchat.errors import ConfigError
    from thinchat.recipes.recipe import REPORT_BYTES, check_room

    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"\0" * 2**20)  # a 1 MiB "base model"
    usage = namedtuple("usage", "total used free")
    need_lora = int(1.5 * 2**20) + REPORT_BYTES
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(0, 0, need_lora))
    check_room(tmp_path, base, "lora")  # just enough
    with pytest.raises(ConfigError, match=r"GiB free on its disk.*choose another out="):
        check_room(tmp_path, base, "full")  # a full stage 2 saves whole models and optimizer state
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(0, 0, need_lora - 1))
    with pytest.raises(ConfigError, match=str(tmp_path)):
        check_room(tmp_path, base, "lora")
    # Once stage 1 is done, only stage 2's half copy and the report are still to write.
    check_room(tmp_path, base, "lora", stage1_done=True)
