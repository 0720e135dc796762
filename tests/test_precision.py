"""``bf16: auto``: the precision is chosen by measuring bf16 and fp32 matmuls (timings mocked here)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from train_helpers import save_tiny, tiny_overrides, write_dataset

from thinchat import precision
from thinchat.train.config import load_train_config
from thinchat.train.run import train


def _fake_rates(monkeypatch, bf16: float, fp32: float) -> None:
    rates = {torch.bfloat16: bf16, torch.float32: fp32}
    monkeypatch.setattr(precision, "matmul_gflops", lambda dtype, device="cpu", **_: rates[dtype])


@pytest.mark.parametrize(
    ("bf16", "fp32", "expected"),
    [
        (278.0, 99.0, torch.bfloat16),  # AMD EPYC with avx512_bf16 (docs/experiments.md)
        (113.0, 255.0, torch.float32),  # Intel Xeon without AMX: bf16 slower
        (1066.0, 116.0, torch.bfloat16),  # Intel Xeon with AMX
        (110.0, 100.0, torch.float32),  # near parity: autocast's casts would eat the gain
    ],
)
def test_cpu_choice_follows_the_measured_rates(monkeypatch, bf16, fp32, expected):
    _fake_rates(monkeypatch, bf16, fp32)
    choice = precision.measure_precision("cpu")
    assert choice.dtype == expected
    assert (choice.bf16_gflops, choice.fp32_gflops) == (bf16, fp32)
    assert choice.gflops == (bf16 if expected == torch.bfloat16 else fp32)
    assert choice.as_dict()["dtype"] == str(expected).removeprefix("torch.")


def test_gpu_choice_is_bf16_where_supported(monkeypatch):
    _fake_rates(monkeypatch, 100.0, 400.0)  # rates do not decide on a GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.measure_precision("cuda").dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.measure_precision("cuda").dtype == torch.float32


def test_resolve_bf16_turns_auto_into_the_measured_choice(monkeypatch):
    config = load_train_config(None, ["bf16=auto", "cpu=true"])
    assert config.bf16 == "auto"
    _fake_rates(monkeypatch, 300.0, 100.0)
    assert precision.resolve_bf16(config).bf16 is True
    _fake_rates(monkeypatch, 100.0, 300.0)
    assert precision.resolve_bf16(config).bf16 is False
    fixed = load_train_config(None, ["bf16=false"])
    assert precision.resolve_bf16(fixed) is fixed


def test_the_real_measurement_is_quick_and_positive():
    start = time.perf_counter()
    choice = precision.measure_precision("cpu")
    assert time.perf_counter() - start < 1.0
    assert choice.bf16_gflops > 0 and choice.fp32_gflops > 0
    assert choice.dtype in (torch.bfloat16, torch.float32)


def test_cpu_configs_default_to_auto():
    for name in (
        "demo_cpu",
        "demo_cpu_long",
        "demo_cpu_projector",
        "finetune_lora_cpu",
        "pretrain_projector_cpu",
    ):
        assert load_train_config(f"configs/{name}.yaml").bf16 == "auto", name


def test_train_runs_the_measured_precision(monkeypatch, tmp_path):
    data = write_dataset(tmp_path / "data", n=4)
    base = save_tiny(tmp_path / "base")
    for bf16_rate, fp32_rate, expected in ((300.0, 100.0, True), (100.0, 300.0, False)):
        _fake_rates(monkeypatch, bf16_rate, fp32_rate)
        out = tmp_path / f"run_{expected}"
        overrides = tiny_overrides("lora", base, data, out, bf16="auto", max_steps=1, save_steps=1)
        train(load_train_config(None, overrides))
        saved = json.loads((out / "thinchat_checkpoint.json").read_text())["config"]
        assert saved["bf16"] is expected
        args = torch.load(out / "checkpoint-1" / "training_args.bin", weights_only=False)
        assert args.bf16 is expected


def test_inference_dtype_is_measured_once_on_cpu(monkeypatch, measured_inference_dtype):
    calls = []

    def rates(bf16: float, fp32: float):
        table = {torch.bfloat16: bf16, torch.float32: fp32}

        def measured(dtype, device="cpu", **_):
            calls.append(dtype)
            return table[dtype]

        return measured

    monkeypatch.setattr(precision, "matmul_gflops", rates(300.0, 100.0))  # an EPYC with avx512_bf16
    assert precision.resolve_dtype(None, "cpu") == torch.bfloat16
    assert precision.resolve_dtype("auto") == torch.bfloat16
    assert len(calls) == 2  # one bf16 and one fp32 matmul for the whole process
    measured_inference_dtype.cache_clear()
    monkeypatch.setattr(precision, "matmul_gflops", rates(113.0, 255.0))  # a Xeon without AMX
    assert precision.resolve_dtype(None, "cpu") == torch.float32
    assert precision.resolve_dtype("bf16", "cpu") == torch.bfloat16  # asked for: no measurement
    assert precision.resolve_dtype(torch.float16) == torch.float16
    assert len(calls) == 4
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.resolve_dtype(None, "cuda") == torch.float32
    assert len(calls) == 4  # a GPU is not measured
    with pytest.raises(precision.ConfigError, match="unknown dtype 'int8'"):
        precision.resolve_dtype("int8")


def test_tests_run_inference_in_fp32_whatever_the_host():
    assert precision.resolve_dtype(None, "cpu") == torch.float32
