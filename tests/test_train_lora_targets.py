"""LoRA goes on the language model only (unless tower LoRA is asked for); the projector trains in full."""

from __future__ import annotations

import re

import pytest

from thinchat.errors import ConfigError
from thinchat.testing import tiny_llava
from thinchat.train.config import load_train_config
from thinchat.train.model_setup import LM_PREFIX, TOWER_PREFIX, lora_targets
from thinchat.train.stages import prepare_model


def lora_module_names(model) -> list[str]:
    return [name for name, module in model.named_modules() if hasattr(module, "lora_A") and name]


@pytest.mark.parametrize(("lm", "tower"), [("llama", "clip"), ("qwen2", "siglip"), ("gpt2", "dinov2")])
def test_all_linear_targets_only_the_language_model(lm, tower):
    model, _ = tiny_llava(lm, tower)
    lm_linear = {
        n
        for n, m in model.named_modules()
        if n.startswith(LM_PREFIX) and type(m).__name__ in ("Linear", "Conv1D")
    }
    config = load_train_config(None, ["stage=lora", "lora_r=4", "lora_alpha=8"])
    wrapped = prepare_model(model, config)
    names = lora_module_names(wrapped)
    assert names and all(f".{LM_PREFIX}" in f".{n}" for n in names), names
    assert not any("vision_tower" in n or "lm_head" in n for n in names)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert all("lora_" in n or "multi_modal_projector" in n for n in trainable)
    assert any("multi_modal_projector" in n and "modules_to_save" in n for n in trainable)
    # Every linear layer of the LM got an adapter (2 layers x all projections).
    assert {n.split("base_model.model.", 1)[-1] for n in names} == lm_linear


def test_named_targets_skip_the_tower_that_has_the_same_names():
    model, _ = tiny_llava("llama", "clip")  # CLIP attention has q_proj / v_proj too
    tower_q = [n for n, _ in model.named_modules() if n.startswith(TOWER_PREFIX) and n.endswith("q_proj")]
    assert tower_q, "the test needs a tower with q_proj layers"
    config = load_train_config(
        None, ["stage=lora", "lora_target=[q_proj, v_proj]", "lora_r=4", "lora_alpha=8"]
    )
    regex = lora_targets(model, config)
    assert not any(re.fullmatch(regex, n) for n in tower_q)
    matched = [n for n, _ in model.named_modules() if re.fullmatch(regex, n)]
    assert sorted(matched) == sorted(
        f"{LM_PREFIX}layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    )
    names = lora_module_names(prepare_model(model, config))
    assert len(names) == 4 and not any("vision_tower" in n for n in names)


def test_tower_lora_is_opt_in():
    model, _ = tiny_llava("llama", "siglip")
    config = load_train_config(None, ["stage=lora", "tower_lora=true", "lora_r=4", "lora_alpha=8"])
    names = lora_module_names(prepare_model(model, config))
    assert any("vision_tower" in n for n in names) and any("language_model" in n for n in names)


def test_unknown_target_lists_the_real_layer_names():
    model, _ = tiny_llava("gpt2", "dinov2")
    config = load_train_config(None, ["stage=lora", "lora_target=[q_proj]"])
    with pytest.raises(
        ConfigError, match=r"lora_target \['q_proj'\] not found under model.language_model.*c_attn"
    ):
        lora_targets(model, config)


def test_projector_stage_trains_only_the_projector():
    model, _ = tiny_llava("llama", "dinov2")
    prepared = prepare_model(model, load_train_config(None, ["stage=projector"]))
    trainable = {n for n, p in prepared.named_parameters() if p.requires_grad}
    assert trainable == {
        n for n, _ in model.model.multi_modal_projector.named_parameters(prefix="model.multi_modal_projector")
    }
