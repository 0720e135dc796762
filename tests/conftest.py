"""Shared fixtures: tiny random Llava checkpoints, offline by construction."""

from __future__ import annotations

import os

import pytest

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
