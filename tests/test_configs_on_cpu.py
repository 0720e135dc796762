"""Every config in configs/ on a machine without a GPU: one tiny step, or a one-line refusal (issue 29).

Why: a new user who ran a GPU recipe (``thinchat train --config configs/finetune_lora.yaml``) on a CPU got a
traceback from transformers. Each config is run here as ``thinchat train`` runs it (the CLI's ``main``, on a
tiny model and dataset, ``max_steps=1``); the GPU settings (``bf16``, ``fp16``, ``cpu``, ``deepspeed``,
``gradient_checkpointing``) are left as the file has them. A refusal must be one line that names the
setting and ``cpu=true``; a run must write its model. The DeepSpeed configs also go through the shell
launchers under DeepSpeed's runner. The host rules themselves are checked with an injected ``Host``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from test_clipcap_train import clipcap_dir
from train_helpers import save_tiny, write_dataset

from thinchat.cli import main
from thinchat.errors import ConfigError
from thinchat.train.config import load_train_config
from thinchat.train.host import Host, fit_to_host

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("configs_on_cpu")
    return {
        "root": root,
        "base": save_tiny(root / "base"),
        "data": write_dataset(root / "data", n=4, two_images=True),
        "clipcap": clipcap_dir(root / "clipcap"),
    }


def _tiny_overrides(data: dict, tiny: dict[str, Path], out: Path) -> list[str]:
    """Point a stage config at the tiny model and data, one step; its GPU settings stay as written."""
    stage = data.get("stage", "lora")
    if stage == "tower":  # stage 0: one pass, every mineral the tiny captions name is a target
        values = {"model": tiny["base"], "data": tiny["data"], "output_dir": out, "epochs": 1}
        return [f"{k}={v}" for k, v in {**values, "batch_size": 2, "min_term_count": 1}.items()]
    values = {
        "model": tiny["base"],
        "data": tiny["clipcap"] if stage == "clipcap" else tiny["data"],
        "val_data": "null",
        "output_dir": out,
        "max_steps": 0 if data.get("max_steps") == 0 else 1,  # a closed-form projector fit stays a fit
        "save_steps": 1,
        "eval_steps": 1,
        "report_to": "none",
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "feature_cache_dir": out.parent / f"{out.name}_cache",
    }
    if stage in ("lora", "qlora", "clipcap"):
        values.update({"lora_r": 4, "lora_alpha": 8})
    if stage == "clipcap":
        values["prefix_tokens"] = 2
    return [f"{key}={value}" for key, value in values.items()]


def _refusal_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("thinchat train: error: "), err[-2000:]
    return lines[0]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_runs_one_step_on_the_cpu_or_refuses_in_one_line(path, tiny, capfd, caplog) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out = tiny["root"] / path.stem
    if "stage" not in data:  # a recipe config (thinchat quickstart): `thinchat train` says so in one line
        assert main(["train", "--threads", "1", "--config", str(path)]) == 2
        assert "unknown config key" in _refusal_line(capfd.readouterr().err)
        return
    caplog.set_level(logging.WARNING, logger="thinchat.train.host")
    status = main(["train", "--threads", "1", "--config", str(path), *_tiny_overrides(data, tiny, out)])
    err = capfd.readouterr().err
    if data.get("deepspeed") and not data.get("cpu"):
        line = _refusal_line(err)
        assert status == 2 and "deepspeed: " in line and "cpu=true" in line, line
        assert not out.exists(), "refused before anything was written"
        return
    assert status == 0, err[-3000:]
    assert any((out / name).is_file() for name in ("model.safetensors", "adapter_model.safetensors"))
    said = [r.getMessage() for r in caplog.records if r.name == "thinchat.train.host"]
    if data["stage"] == "tower":  # stage 0 has no GPU settings: it takes a GPU where there is one
        assert not said
    elif not data.get("cpu"):  # written for a GPU: runs on the CPU and says so
        assert any("no GPU on this machine: training on the CPU" in m for m in said), said
        if data.get("bf16") is True or data.get("fp16"):
            assert any("bf16: auto instead of" in m for m in said), said
    else:
        assert not said


def _launcher(script: str, tiny: dict[str, Path], *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LAUNCHER": "deepspeed", "NUM_GPUS": "1", "OMP_NUM_THREADS": "1"}
    args = [f"model={tiny['base']}", f"data={tiny['data']}", "val_data=null", "max_steps=1", "report_to=none"]
    args.append(f"output_dir={tiny['root'] / ('launched_' + script)}")
    return subprocess.run(
        ["bash", str(REPO / "scripts" / script), *args, *extra],
        cwd=REPO,
        env={**env, "MASTER_PORT": str(29500 + os.getpid() % 1000)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("script", "json_name"), [("pretrain_projector.sh", "zero2.json"), ("finetune_full.sh", "zero3.json")]
)
def test_the_gpu_scripts_under_deepspeeds_launcher_refuse_in_one_line(script, json_name, tiny) -> None:
    if shutil.which("deepspeed") is None:
        pytest.skip("DeepSpeed's launcher is not installed")
    result = _launcher(script, tiny)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("thinchat train: error: ")]
    assert len(errors) == 1 and f"deepspeed: configs/{json_name}" in errors[0] and "cpu=true" in errors[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["deepspeed=configs/zero3_offload.json", "cpu=true"], "offloads GPU memory to the CPU"),
        (["deepspeed=configs/zero2.json", "cpu=true"], "needs DeepSpeed's launcher"),
        (["deepspeed=configs/nope.json", "cpu=true"], "deepspeed=configs/nope.json: file not found"),
    ],
)
def test_deepspeed_settings_that_cannot_run_here_are_one_line(
    extra, message, tiny, capfd, monkeypatch
) -> None:
    monkeypatch.chdir(REPO)  # DeepSpeed config paths are relative to the working directory
    config = REPO / "configs" / "finetune_full.yaml"
    out = tiny["root"] / "ds_refused"
    args = [f"model={tiny['base']}", f"data={tiny['data']}", f"output_dir={out}", "max_steps=1", *extra]
    assert main(["train", "--threads", "1", "--config", str(config), *args]) == 2
    assert message in _refusal_line(capfd.readouterr().err)
    assert not out.exists()


def test_host_rules() -> None:
    gpu_recipe = load_train_config(REPO / "configs" / "finetune_qlora.yaml")
    assert gpu_recipe.bf16 is True and not gpu_recipe.cpu and not gpu_recipe.deepspeed
    no_gpu, ampere, old_gpu = Host(False, False, False), Host(True, True, False), Host(True, False, False)
    fitted = fit_to_host(gpu_recipe, no_gpu)
    assert (fitted.cpu, fitted.bf16, fitted.fp16) == (True, "auto", False)
    fp16 = fit_to_host(dataclasses.replace(gpu_recipe, bf16=False, fp16=True), no_gpu)
    assert (fp16.bf16, fp16.fp16) == ("auto", False)
    assert fit_to_host(gpu_recipe, ampere) is gpu_recipe  # a GPU with bf16: untouched
    with pytest.raises(ConfigError, match="bf16: true needs a GPU with bf16"):
        fit_to_host(gpu_recipe, old_gpu)
    on_cpu = dataclasses.replace(gpu_recipe, cpu=True)
    assert fit_to_host(on_cpu, no_gpu) is on_cpu  # cpu: true keeps its own precision
