"""The quickstart's stage-2 step budget and its thresholds, on hand-made measurements and reports."""

from __future__ import annotations

import pytest

from thinchat.recipes.quickstart import QuickstartConfig, check_thresholds


def test_a_time_budget_becomes_stage_2_overrides_and_zero_keeps_max_steps(tmp_path) -> None:
    from thinchat.recipes.recipe import budget_overrides, stage2_budget
    from thinchat.train.time_budget import BUDGET_FILE

    assert budget_overrides(1200, 384) == ("time_budget_s=1200", "max_steps=576")
    assert budget_overrides(0, 384) == ()
    assert stage2_budget(tmp_path, 0, 384) == {"steps": 384, "reason": "max_steps as configured"}
    (tmp_path / BUDGET_FILE).write_text('{"steps": 352, "reason": "measured"}')
    assert stage2_budget(tmp_path, 1200, 384)["steps"] == 352


def test_the_replaced_matmul_reference_key_names_its_successor() -> None:
    from thinchat.config import load_config
    from thinchat.errors import ConfigError

    with pytest.raises(
        ConfigError, match="reference_gflops' of QuickstartConfig was replaced: use stage2_seconds"
    ):
        load_config(QuickstartConfig, None, ["reference_gflops=400"])


def _report(
    f1: float,
    yes_no: float | None,
    form: float,
    which: float,
    followup: float | None = 0.8,
    agreement: float | None = 0.97,
) -> dict:
    following = {
        "all": {
            "yes_no_accuracy": yes_no,
            "answer_form": form,
            "which_accuracy": which,
            "followup_yes_no_accuracy": followup,
            "followup_consistency": agreement,
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
    low = check_thresholds(_report(0.72, 0.55, 1.0, 0.85), config)
    assert not low["yes_no_accuracy"]["ok"] and low["mineral_f1"]["ok"]
    missing = check_thresholds(_report(0.72, None, 0.9, 0.85), config)
    assert not missing["yes_no_accuracy"]["ok"] and not missing["answer_form"]["ok"]
    assert missing["yes_no_accuracy"]["base"] is None
    # The answers after the model's own description (what the chat demos ask) have their own floor.
    after = check_thresholds(_report(0.72, 0.9, 1.0, 0.85, followup=0.6), config)
    assert not after["followup_yes_no_accuracy"]["ok"] and after["yes_no_accuracy"]["ok"]
    assert after["followup_yes_no_accuracy"]["threshold"] == config.min_followup_yes_no == 0.65
    assert not check_thresholds(_report(0.72, 0.9, 1.0, 0.85, followup=None), config)[
        "followup_yes_no_accuracy"
    ]["ok"]
    # Answers that contradict the model's own description miss the agreement floor.
    apart = check_thresholds(_report(0.72, 0.9, 1.0, 0.85, agreement=0.9), config)
    assert not apart["followup_consistency"]["ok"] and apart["followup_yes_no_accuracy"]["ok"]
    assert apart["followup_consistency"]["threshold"] == config.min_agreement == 0.95


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
