"""Every YAML in configs/ loads into its stage dataclass; bad keys and values fail with clear messages."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from thinchat.config import load_config
from thinchat.errors import ConfigError
from thinchat.train.config import (
    STAGE_CLASSES,
    FullConfig,
    LoraStageConfig,
    ProjectorConfig,
    QLoraConfig,
    load_train_config,
)
from thinchat.train.tower import TowerConfig, load_tower_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _other_config_class(path: Path, data: dict):
    """The dataclass of a non-training YAML in configs/ (owned by another module): the one whose fields
    are the config's keys, so the config itself says what it is, whatever the file is called."""
    candidates = [pytest.importorskip("thinchat.recipes.quickstart").QuickstartConfig]
    matches = [cls for cls in candidates if set(data) <= {f.name for f in dataclasses.fields(cls)}]
    assert len(matches) == 1, (
        f"{path.name}: keys {sorted(data)} fit {len(matches)} known config classes; add its class to "
        "tests/test_configs.py"
    )
    return matches[0]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_yaml_loads_into_its_dataclass(path):
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if "stage" not in data:
        cls = _other_config_class(path, data)
        assert isinstance(load_config(cls, path), cls)
        return
    if data["stage"] == "tower":  # stage 0 has its own config (thinchat/train/tower.py)
        assert isinstance(load_tower_config(path), TowerConfig)
        return
    config = load_train_config(path)
    assert type(config) is STAGE_CLASSES[config.stage]
    if config.deepspeed:
        assert (CONFIGS.parent / config.deepspeed).is_file()


def test_stage_defaults_follow_known_recipes():
    projector = load_train_config(None, ["stage=projector"])
    lora = load_train_config(None, ["stage=lora"])
    full = load_train_config(None, ["stage=full"])
    assert isinstance(projector, ProjectorConfig) and projector.learning_rate == 1e-3
    assert isinstance(lora, LoraStageConfig) and (lora.lora_r, lora.lora_alpha, lora.learning_rate) == (
        128,
        256,
        2e-4,
    )
    assert isinstance(full, FullConfig) and full.learning_rate == 2e-5
    assert isinstance(load_train_config(None, ["stage=qlora"]), QLoraConfig)
    assert lora.warmup_ratio == 0.03 and lora.lr_scheduler_type == "cosine"


def test_cpu_configs_are_scaled_down():
    for name in ("demo_cpu.yaml", "finetune_lora_cpu.yaml"):
        config = load_train_config(CONFIGS / name)
        assert config.cpu and config.lora_r <= 32 and config.max_length <= 512 and config.deepspeed is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("learning_rate=5", "learning_rate=5.0 is out of range"),
        ("learning_rate=0", "learning_rate=0.0 is out of range"),
        ("per_device_train_batch_size=0", "per_device_train_batch_size=0 is out of range"),
        ("gradient_accumulation_steps=-2", "gradient_accumulation_steps=-2 is out of range"),
        ("projector_lr=3.0", "projector_lr=3.0 is out of range"),
        ("lora_r=0", "lora_r=0 is out of range"),
        ("learning_rat=1e-4", "did you mean 'learning_rate'"),
        ("stage=lorra", "stage 'lorra' is not one of"),
        ("too_long=drop", "is not one of ['truncate', 'skip']"),
    ],
)
def test_bad_values_fail_with_clear_messages(override, message):
    with pytest.raises(ConfigError) as info:
        load_train_config(CONFIGS / "finetune_lora.yaml", [override])
    assert message in str(info.value)
    assert "finetune_lora.yaml" in str(info.value)


def test_stage_specific_key_in_wrong_stage_is_refused():
    with pytest.raises(ConfigError, match="unknown config key 'lora_r' for ProjectorConfig"):
        load_train_config(CONFIGS / "pretrain_projector.yaml", ["lora_r=8"])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_train_config(CONFIGS / "nope.yaml")


@pytest.mark.parametrize("name", ["zero2.json", "zero3.json", "zero3_offload.json"])
def test_deepspeed_configs_are_valid_json_with_auto_batch(name):
    data = json.loads((CONFIGS / name).read_text())
    assert data["train_micro_batch_size_per_gpu"] == "auto"
    assert data["gradient_accumulation_steps"] == "auto"
    assert data["zero_optimization"]["stage"] == (2 if name == "zero2.json" else 3)
    if name == "zero3_offload.json":
        assert data["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
