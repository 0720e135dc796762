"""``torch_compile``: the Trainer compiles the model where inductor can build kernels, and trains
uncompiled, saying why, where it cannot (no C++ compiler on a CPU)."""

from __future__ import annotations

import logging
import math

import pytest
from train_helpers import save_tiny, tiny_overrides, write_dataset

from thinchat.train import host as host_module
from thinchat.train.config import load_train_config
from thinchat.train.host import Host, cpu_compiler, fit_to_host
from thinchat.train.run import train

CPU_HOST = Host(gpu=False, bf16_gpu=False, launched=False)


def _config(**extra):
    return load_train_config(None, ["stage=lora", "cpu=true", *(f"{k}={v}" for k, v in extra.items())])


def test_without_a_compiler_training_goes_on_uncompiled_and_says_why(monkeypatch, caplog):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    caplog.set_level(logging.WARNING, logger=host_module.__name__)
    assert cpu_compiler() is None
    fitted = fit_to_host(_config(torch_compile=True), CPU_HOST)
    assert fitted.torch_compile is False
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("torch_compile: no C++ compiler found") and "training uncompiled" in line


def test_a_compiler_or_a_gpu_keeps_the_setting(monkeypatch, caplog):
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}" if name == "g++" else None)
    caplog.set_level(logging.WARNING, logger=host_module.__name__)
    assert fit_to_host(_config(torch_compile=True), CPU_HOST).torch_compile is True
    monkeypatch.setattr("shutil.which", lambda name: None)
    gpu = Host(gpu=True, bf16_gpu=True, launched=False)
    on_gpu = load_train_config(None, ["stage=lora", "torch_compile=true"])
    assert fit_to_host(on_gpu, gpu).torch_compile is True  # inductor's GPU kernels need no C++ compiler
    assert fit_to_host(_config(), CPU_HOST).torch_compile is False and not caplog.records


@pytest.mark.skipif(cpu_compiler() is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_a_compiled_lora_run_trains_and_saves(tmp_path):
    """Two LoRA steps of a tiny model through the compiled forward: dynamo captured graphs, the losses
    are finite and an adapter is written (the compiled wrapper is not what gets saved)."""
    from torch._dynamo.utils import counters

    counters.clear()
    data = write_dataset(tmp_path / "data", n=4)
    base = save_tiny(tmp_path / "base")
    out = tmp_path / "lora"
    overrides = tiny_overrides("lora", base, data, out, max_steps=2, save_steps=2, torch_compile=True)
    train(load_train_config(None, overrides))
    assert counters["stats"]["unique_graphs"] >= 1, dict(counters["stats"])
    assert (out / "adapter_model.safetensors").is_file()
    state = next(out.glob("checkpoint-*/trainer_state.json")).read_text(encoding="utf-8")
    losses = [float(x.split(":")[1].strip(" ,")) for x in state.splitlines() if '"loss"' in x]
    assert losses and all(math.isfinite(x) for x in losses)
