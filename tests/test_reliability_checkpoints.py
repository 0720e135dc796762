"""A disk that fills up at the run's first checkpoint (issue 16 item 12): the error's advice, ``--resume``,
must work, not be refused with "no complete checkpoint"."""

from __future__ import annotations

import errno
import time

import pytest
import torch
from train_helpers import save_tiny, tiny_overrides, write_dataset

from thinchat.errors import ThinchatError
from thinchat.train import checkpoints
from thinchat.train.config import load_train_config
from thinchat.train.run import train


def test_resume_with_no_complete_checkpoint_starts_again(tmp_path) -> None:
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "optimizer.pt").write_bytes(b"torn")
    current = {"stage": "lora", "base_model": "/models/base"}
    checkpoints.write_json_atomic(run / checkpoints.RUN_META, current)
    assert checkpoints.resolve_resume(run, True, current) is None
    assert (run / "incomplete-checkpoint-2").is_dir() and not (run / "checkpoint-2").exists()


def test_first_checkpoint_on_a_full_disk_then_resume_as_advised(tmp_path, monkeypatch) -> None:
    data = write_dataset(tmp_path / "data", n=8)
    base = save_tiny(tmp_path / "base")
    out = tmp_path / "out"
    overrides = tiny_overrides("lora", base, data, out, max_steps=4, save_steps=2)
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        if "checkpoint-2" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    start = time.monotonic()
    with pytest.raises(ThinchatError, match=r"the disk is full.*last complete checkpoint is none.*--resume"):
        train(load_train_config(None, overrides))
    assert time.monotonic() - start < 120
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoints.newest_complete(out) is None

    train(load_train_config(None, overrides), resume=True)  # what the message says to do
    assert checkpoints.newest_complete(out).name == "checkpoint-4"
    assert (out / "incomplete-checkpoint-2").is_dir()  # the torn save, set aside
    assert (out / "adapter_model.safetensors").is_file()
