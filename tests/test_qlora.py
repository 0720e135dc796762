"""Stage qlora on CPU (bitsandbytes quantises to 4 bit there too): float tower / projector / head, train,
resume, export merged in bf16."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from train_helpers import save_tiny, tiny_overrides, write_dataset

from thinchat.errors import ThinchatError
from thinchat.train.config import load_train_config
from thinchat.train.model_setup import qlora_skip_modules
from thinchat.train.run import train
from thinchat.train.stages import load_base

bnb = pytest.importorskip("bitsandbytes", reason="stage qlora needs bitsandbytes (thinchat[qlora])")


def _losses(run_dir) -> list[float]:
    state = json.loads(sorted(run_dir.glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("qlora")
    return {"root": root, "data": write_dataset(root / "data", n=8), "base": save_tiny(root / "base")}


def test_skip_modules_are_the_models_own_names_and_keep_tower_projector_head_float(setup):
    names = qlora_skip_modules(setup["base"])
    assert names == ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
    config = load_train_config(
        None, tiny_overrides("qlora", setup["base"], setup["data"], setup["root"] / "x")
    )
    model, _ = load_base(config)
    kinds = {name: type(module) for name, module in model.named_modules()}
    quantised = [name for name, kind in kinds.items() if kind is bnb.nn.Linear4bit]
    assert quantised and all(name.startswith("model.language_model.") for name in quantised)
    for prefix in names:
        linears = [n for n, kind in kinds.items() if n.startswith(prefix) and kind is torch.nn.Linear]
        assert linears, f"{prefix} has no float linear layer"
        weights = [p for n, p in model.named_parameters() if n.startswith(prefix)]
        assert all(p.dtype.is_floating_point for p in weights), prefix


def test_qlora_trains_saves_a_float_projector_resumes_and_exports_merged_bf16(setup):
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    from thinchat.train.export import export

    out = setup["root"] / "run"
    overrides = tiny_overrides(
        "qlora",
        setup["base"],
        setup["data"],
        out,
        bf16=True,
        learning_rate=0.02,
        projector_lr=0.02,
        warmup_ratio=0,
        feature_cache=True,
        max_steps=4,
        save_steps=2,
    )
    train(load_train_config(None, overrides))
    losses = _losses(out)
    assert losses[-1] < losses[0]
    adapter = load_file(out / "adapter_model.safetensors")
    projector = {k: v for k, v in adapter.items() if "multi_modal_projector" in k}
    assert projector and all(v.dtype.is_floating_point for v in projector.values())
    assert any("lora_A" in k and "language_model" in k for k in adapter)
    assert not any("vision_tower" in k for k in adapter)

    train(load_train_config(None, [*overrides, "max_steps=6"]), resume=True)
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and len(_losses(out)) == 6

    merged = export(out, setup["root"] / "merged", dtype="bfloat16")
    model = LlavaForConditionalGeneration.from_pretrained(merged)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any("lora" in name or "Linear4bit" in type(m).__name__ for name, m in model.named_modules())
    trained = adapter[next(k for k in projector if k.endswith("linear_1.weight"))]
    assert torch.allclose(
        model.model.multi_modal_projector.linear_1.weight.float(), trained.float(), atol=1e-2
    )


def test_qlora_without_bitsandbytes_says_what_to_install(setup, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    config = load_train_config(
        None, tiny_overrides("qlora", setup["base"], setup["data"], setup["root"] / "none")
    )
    with pytest.raises(ThinchatError, match=r"thinchat\[qlora\]"):
        train(config)
    assert not (setup["root"] / "none").exists()
