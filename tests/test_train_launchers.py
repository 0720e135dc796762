"""The shell launchers on the CPU config, the feature-cache path, and DeepSpeed ZeRO-2 through its launcher."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import save_tiny, tiny_overrides, write_dataset

from thinchat.train.config import load_train_config
from thinchat.train.run import train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    return root, write_dataset(root / "data", n=6, two_images=True), save_tiny(root / "base")


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def losses(run_dir: Path) -> list[float]:
    state = json.loads(sorted(run_dir.glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_finetune_lora_script_with_the_cpu_config_writes_a_checkpoint_cli_demo_loads(tiny):
    root, data, base = tiny
    out = root / "lora_cpu"
    args = [
        f"model={base}",
        f"data={data}",
        f"output_dir={out}",
        "max_steps=2",
        "save_steps=2",
        "report_to=none",
        f"feature_cache_dir={root / 'cache'}",
        "lora_r=8",
        "lora_alpha=16",
    ]
    result = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "finetune_lora.sh"),
            str(REPO / "configs" / "finetune_lora_cpu.yaml"),
            *args,
        ],
        env={**env(), "LAUNCHER": "python"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "adapter_model.safetensors").is_file() and (out / "thinchat_checkpoint.json").is_file()
    assert list((root / "cache").rglob("*.safetensors")), "the CPU config trains from cached tower features"
    image = sorted((data.parent / "images").glob("*_ppl.png"))[0]
    chat = subprocess.run(
        [
            sys.executable,
            str(REPO / "cli_demo.py"),
            "--from_pretrained",
            str(out),
            "--image",
            str(image),
            "--max-new-tokens",
            "4",
        ],
        input="Describe this thin section.\n",
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert chat.returncode == 0, chat.stderr[-3000:]
    # One answer line per question (a random tiny model may answer with its stop token at once: empty line).
    assert chat.stdout.count("\n") == 1 and "error" not in chat.stderr.lower()


def test_feature_cache_path_trains_like_the_pixel_path(tiny):
    root, data, base = tiny
    common = {"max_steps": 3, "save_steps": 3, "learning_rate": 0.01, "warmup_ratio": 0, "lora_dropout": 0}
    pixel = train(load_train_config(None, tiny_overrides("lora", base, data, root / "pixel", **common)))
    cached = train(
        load_train_config(
            None,
            tiny_overrides(
                "lora",
                base,
                data,
                root / "cached",
                feature_cache=True,
                feature_cache_dtype="float32",
                feature_cache_dir=root / "fc",
                **common,
            ),
        )
    )
    assert list((root / "fc").rglob("*.safetensors"))
    assert losses(cached) == pytest.approx(losses(pixel), rel=1e-4)


def test_bash_launcher_rejects_an_unknown_launcher():
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "pretrain_projector.sh")],
        env={**env(), "LAUNCHER": "mpi"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "LAUNCHER must be" in result.stderr


@pytest.mark.slow
def test_deepspeed_zero2_through_the_real_launcher(tiny):
    """`deepspeed --module thinchat train` with configs/zero2.json (DeepSpeed's CPU accelerator here).

    Marked slow: the first run on a machine JIT-builds DeepSpeed's shared-memory comm op (minutes).
    """
    pytest.importorskip("deepspeed")
    root, data, base = tiny
    out = root / "zero2"
    args = [
        f"model={base}",
        f"data={data}",
        f"output_dir={out}",
        "max_steps=2",
        "save_steps=2",
        "report_to=none",
        "feature_cache=false",
        "bf16=false",
        "lora_r=8",
        "lora_alpha=16",
        "per_device_train_batch_size=2",
        f"deepspeed={REPO / 'configs' / 'zero2.json'}",
    ]
    result = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "finetune_lora.sh"),
            str(REPO / "configs" / "finetune_lora_cpu.yaml"),
            *args,
        ],
        env={**env(), "LAUNCHER": "deepspeed", "NUM_GPUS": "1", "MASTER_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "--module" in result.stdout + result.stderr  # really went through deepspeed's runner
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "thinchat_complete.json").is_file()
    assert list(checkpoint.glob("global_step2/*optim_states.pt")), (
        "no ZeRO optimizer shards: DeepSpeed did not run"
    )
    assert (out / "adapter_model.safetensors").is_file()
