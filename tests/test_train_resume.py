"""Resume after SIGKILL gives the uninterrupted loss curve; a full disk never costs the last good checkpoint."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import save_tiny, tiny_overrides, write_dataset

from thinchat.errors import ThinchatError
from thinchat.train import checkpoints
from thinchat.train.config import load_train_config
from thinchat.train.run import train

REPO = Path(__file__).resolve().parent.parent


def write_config(path: Path, overrides: list[str]) -> Path:
    data = {}
    for item in overrides:
        key, value = item.split("=", 1)
        data[key] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def step_losses(run_dir: Path) -> dict[int, float]:
    state = json.loads((checkpoints.newest_complete(run_dir) / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = write_dataset(root / "data", n=12)
    base = save_tiny(root / "base")
    return root, data, base


def run_config(root, data, base, out, **extra):
    # lora_dropout > 0 and a length-grouped sampler: RNG state and data order both matter on resume.
    values = {
        "learning_rate": 0.01,
        "warmup_ratio": 0.1,
        "max_steps": 8,
        "save_steps": 2,
        "per_device_train_batch_size": 2,
        "lora_dropout": 0.1,
        "num_train_epochs": 3,
    }
    values.update(extra)
    return tiny_overrides("lora", base, data, out, **values)


def test_resume_after_sigkill_reproduces_the_uninterrupted_loss_curve(setup):
    root, data, base = setup
    config = write_config(root / "run.yaml", run_config(root, data, base, root / "killed"))
    # The child trains normally and SIGKILLs itself at step 5: checkpoint-4 is on disk, step 5 is lost.
    script = root / "killed_run.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, signal, sys
        import torch
        from transformers import TrainerCallback
        from thinchat.train.config import load_train_config
        from thinchat.train.run import train

        class Kill(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 5:
                    os.kill(os.getpid(), signal.SIGKILL)

        torch.set_flush_denormal(True)
        train(load_train_config({str(config)!r}), callbacks=[Kill()])
    """)
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    killed = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert checkpoints.newest_complete(root / "killed").name == "checkpoint-4"
    assert not (root / "killed" / "adapter_model.safetensors").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "thinchat", "train", "--config", str(config), "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (root / "killed" / "adapter_model.safetensors").is_file()

    train(load_train_config(None, run_config(root, data, base, root / "straight")))
    expected, got = step_losses(root / "straight"), step_losses(root / "killed")
    assert sorted(expected) == sorted(got) == list(range(1, 9))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-5), (step, got, expected)


def test_a_full_disk_keeps_the_last_good_checkpoint_and_resume_skips_the_torn_one(setup, monkeypatch):
    root, data, base = setup
    out = root / "diskfull"
    real_save = torch.save

    def save_until_full(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(
        ThinchatError, match=r"the disk is full.*last complete checkpoint is .*checkpoint-2.*--resume"
    ):
        train(load_train_config(None, run_config(root, data, base, out, max_steps=6)))
    monkeypatch.setattr(torch, "save", real_save)

    good, torn = out / "checkpoint-2", out / "checkpoint-4"
    assert checkpoints.is_complete(good) and torn.is_dir() and not checkpoints.is_complete(torn)
    assert checkpoints.newest_complete(out) == good
    train(load_train_config(None, run_config(root, data, base, out, max_steps=6)), resume="auto")
    assert (out / "incomplete-checkpoint-4").is_dir()  # set aside, not deleted
    assert checkpoints.newest_complete(out).name == "checkpoint-6"
    assert checkpoints.is_complete(out / "checkpoint-4")  # rewritten by the resumed run
    assert not good.exists()  # rotated away (save_total_limit 2) only after newer complete ones existed


def test_resume_without_a_run_directory_says_what_to_do(setup):
    root, data, base = setup
    from thinchat.errors import ConfigError

    with pytest.raises(ConfigError, match="directory not found"):
        train(load_train_config(None, run_config(root, data, base, root / "r")), resume=str(root / "nowhere"))
    (root / "plain").mkdir()
    with pytest.raises(ConfigError, match="not a thinchat training run"):
        train(load_train_config(None, run_config(root, data, base, root / "plain")), resume=True)
