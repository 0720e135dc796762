"""Tower adaptation (stage 0): LoRA on the tower trained on the described terms, merged into a plain Llava."""

from __future__ import annotations

import json

import pytest
import torch

from thinchat.errors import ConfigError, DataFormatError
from thinchat.testing import tiny_image
from thinchat.train.tower import TOWER_STATS, TowerConfig, adapt_tower, dihedral, load_tower_config

DESCRIPTIONS = [
    "Framework grains are quartz with calcite.",
    "The slide shows quartz and feldspar.",
    "Calcite fills the pores; feldspar is altered.",
    "Quartz grains only.",
    "Feldspar and calcite.",
    "Quartz, feldspar and calcite.",
]


def _write_set(tmp_path, descriptions=DESCRIPTIONS):
    entries = []
    for i, text in enumerate(descriptions):
        image = tmp_path / f"slide{i}.png"
        tiny_image(seed=i, size=40).save(image)
        entries.append(
            {
                "id": f"s{i}",
                "image": str(image),
                "conversations": [
                    {"from": "human", "value": "<image>\nIs there quartz?"},
                    {"from": "gpt", "value": "Yes."},
                    {"from": "human", "value": "Describe this thin section."},
                    {"from": "gpt", "value": text},
                ],
            }
        )
    path = tmp_path / "train.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def test_dihedral_gives_eight_distinct_views_and_undoes_itself():
    x = torch.arange(9.0).reshape(1, 3, 3)
    views = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(views) == 8
    assert torch.equal(dihedral(dihedral(x, 1), 3), x)  # four quarter turns
    assert torch.equal(dihedral(dihedral(x, 4), 4), x)  # a flip twice


def test_adapt_tower_changes_only_the_tower_and_saves_a_plain_llava(tiny_llava_dir, tmp_path):
    from safetensors.torch import load_file

    from thinchat.model.checkpoint import load_llava

    out = tmp_path / "tower"
    config = TowerConfig(
        model=str(tiny_llava_dir),
        data=str(_write_set(tmp_path)),
        output_dir=str(out),
        epochs=3,
        batch_size=4,
        learning_rate=5e-2,
    )
    stats = adapt_tower(config)

    assert stats["terms"] == ["calcite", "feldspar", "quartz"]  # named in 3-5 of the 6 descriptions
    assert stats["slides"] == 6 and len(stats["loss_per_epoch"]) == 3
    assert json.loads((out / TOWER_STATS).read_text())["terms"] == stats["terms"]
    before = load_file(tiny_llava_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert set(after) == set(before)  # merged: no LoRA keys, loads as the same Llava
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("vision_tower" in k for k in changed)
    model, _ = load_llava(out)
    assert (
        model.config.vision_feature_layer
        == json.loads((tiny_llava_dir / "config.json").read_text())["vision_feature_layer"]
    )


def test_no_term_named_often_enough_is_refused_with_the_way_out(tiny_llava_dir, tmp_path):
    data = _write_set(tmp_path, ["A thin section.", "Another one.", "Quartz."])
    config = TowerConfig(model=str(tiny_llava_dir), data=str(data), output_dir=str(tmp_path / "t"), epochs=1)
    with pytest.raises(DataFormatError, match=r"no lexicon term .* set epochs=0"):
        adapt_tower(config)


def test_config_is_checked_and_loads_from_the_bundled_yaml():
    with pytest.raises(ConfigError, match="epochs >= 0"):
        TowerConfig(epochs=-1)
    with pytest.raises(ConfigError, match="stage: tower"):
        TowerConfig(stage="lora")
    config = load_tower_config("configs/tower_cpu.yaml", ["epochs=2"])
    assert config.epochs == 2 and config.rotations and config.rank == 8
