"""PiSSA / LoRA-GA initialisation: the saved adapter is a plain LoRA on the unchanged base.

Both inits move part of each weight into the adapter while training. What must hold afterwards: the
output directory, loaded on the *original* base like any adapter, equals W + s (B A - B0 A0), where
(A0, B0) is the adapter as initialised and (A, B) as trained.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import save_tiny, tiny_overrides, write_dataset

from thinchat.errors import ConfigError
from thinchat.train.config import load_train_config
from thinchat.train.lora_init import INITIAL_ADAPTER
from thinchat.train.run import train


def _lora_pairs(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module name: (A, B)}`` from a peft adapter state dict."""
    pairs = {}
    for key, a in state.items():
        if key.endswith("lora_A.weight"):
            name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            pairs[name] = (a, state[key.replace("lora_A", "lora_B")])
    return pairs


@pytest.mark.parametrize(("lora_init", "lm"), [("pissa", "llama"), ("lora_ga", "llama"), ("pissa", "gemma3")])
def test_trained_adapter_converts_to_a_plain_lora_on_the_original_base(tmp_path, lora_init, lm):
    from thinchat.model.loading import load_pretrained

    data = write_dataset(tmp_path / "data", n=8)
    base = save_tiny(tmp_path / "base", lm=lm)  # gemma3: the zh quickstart's LM family
    extra = {"lora_init": lora_init, "lora_ga_batches": 2, "learning_rate": 0.01, "lora_dropout": 0.0}
    out = train(load_train_config(None, tiny_overrides("lora", base, data, tmp_path / "lora", **extra)))

    saved = json.loads((out / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"], saved["init_lora_weights"]) == (16, 32, True)  # rank 2r, plain
    scaling = 16 / 8  # lora_alpha / lora_r of the run
    initial = _lora_pairs(load_file(out / INITIAL_ADAPTER / "adapter_model.safetensors"))
    trained = _lora_pairs(load_file(out / "checkpoint-6" / "adapter_model.safetensors"))  # unconverted
    assert initial.keys() == trained.keys() and initial

    original, _ = load_pretrained(base)
    merged, _ = load_pretrained(out, merge=True)
    weights = dict(original.named_parameters())
    merged_weights = dict(merged.named_parameters())
    moved = 0.0
    for name, (a0, b0) in initial.items():
        assert float((b0 @ a0).abs().max()) > 0, f"{lora_init} left {name} at B0 A0 = 0 (a plain LoRA start)"
        a, b = trained[name]
        expected = weights[f"{name}.weight"] + scaling * (b @ a - b0 @ a0)
        torch.testing.assert_close(merged_weights[f"{name}.weight"], expected, atol=2e-5, rtol=1e-4)
        moved = max(moved, float((expected - weights[f"{name}.weight"]).abs().max()))
    assert moved > 1e-3  # training changed the weights, so the check above compared something


def test_lora_init_is_checked_before_training():
    with pytest.raises(ConfigError, match="lora_init: 'svd' is not one of"):
        load_train_config(None, ["stage=lora", "lora_init=svd"])
    with pytest.raises(ConfigError, match="4-bit under qlora"):
        load_train_config(None, ["stage=qlora", "lora_init=pissa"])


def test_resume_rebuilds_the_residual_base(tmp_path):
    """A PiSSA run resumed from checkpoint-3 ends with the same converted adapter as an uninterrupted one."""
    import shutil

    data = write_dataset(tmp_path / "data", n=8)
    base = save_tiny(tmp_path / "base")
    extra = {"lora_init": "pissa", "learning_rate": 0.01, "lora_dropout": 0.0, "save_total_limit": 2}
    whole = train(load_train_config(None, tiny_overrides("lora", base, data, tmp_path / "whole", **extra)))
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(whole / "checkpoint-3", resumed_dir / "checkpoint-3")
    shutil.copytree(whole / INITIAL_ADAPTER, resumed_dir / INITIAL_ADAPTER)
    shutil.copy(whole / "thinchat_run.json", resumed_dir / "thinchat_run.json")
    config = load_train_config(None, tiny_overrides("lora", base, data, resumed_dir, **extra))
    resumed = train(config, resume=True)

    expected = load_file(whole / "adapter_model.safetensors")
    got = load_file(resumed / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=1e-4)
