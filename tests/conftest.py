"""Shared fixtures: tiny random Llava checkpoints, offline by construction."""

from __future__ import annotations

import os

import pytest

from thinchat import precision

# Tests never touch the network: make any accidental hub call fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _flush_denormals():
    import torch

    # Random tiny models produce denormal floats that run ~10x slower on CPU.
    torch.set_flush_denormal(True)
    # One thread: tiny models gain nothing from more, and on a busy machine two threads per process
    # collapse throughput (measured: decode 0.3-0.8 tok/s with 2 threads vs 4-7 with 1).
    torch.set_num_threads(1)


_MEASURED_INFERENCE_DTYPE = precision.inference_dtype  # before the session pins it


@pytest.fixture(autouse=True, scope="session")
def _fp32_inference():
    """Inference in fp32 unless a test asks for a dtype: the default is measured per host
    (``thinchat.precision.inference_dtype``), and a test's outcome must not depend on the host. Session
    scope, so models that module-scoped fixtures load are pinned too; ``measured_inference_dtype``
    gives a test the real measurement back."""
    import torch

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "inference_dtype", lambda device="cpu": torch.float32)
        yield


@pytest.fixture
def measured_inference_dtype(monkeypatch):
    """The real, host-measured ``inference_dtype`` for this test (its cache cleared before and after)."""
    real = _MEASURED_INFERENCE_DTYPE
    real.cache_clear()
    monkeypatch.setattr(precision, "inference_dtype", real)
    yield real
    real.cache_clear()


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A saved tiny Llava (Llama-family LM with ChatML, DINOv2 tower, 28 px -> 4 image tokens)."""
    from thinchat.testing import tiny_llava

    model, processor = tiny_llava("llama", "dinov2", image_size=28)
    path = tmp_path_factory.mktemp("tiny_llava")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory):
    """A saved tiny Llava with a Gemma3 LM (Gemma turn format) and a SigLIP tower."""
    from thinchat.testing import tiny_llava

    model, processor = tiny_llava("gemma3", "siglip", image_size=28)
    path = tmp_path_factory.mktemp("tiny_gemma")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
