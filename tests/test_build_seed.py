"""`thinchat build` is reproducible: the same specs and seed give the same weights."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from thinchat.model.compose import build


def _saved_tiny_parts(root):
    from thinchat.testing import tiny_lm, tiny_tokenizer, tiny_tower

    tokenizer = tiny_tokenizer("llama")
    lm = tiny_lm("llama", len(tokenizer))
    lm.save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    tower, processor = tiny_tower("dinov2")
    tower.save_pretrained(root / "tower")
    processor.save_pretrained(root / "tower")
    return str(root / "tower"), str(root / "lm")


def test_same_seed_same_checkpoint_other_seed_other_projector(tmp_path):
    tower, lm = _saved_tiny_parts(tmp_path)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        build(tower, lm, tmp_path / name, seed=seed)
    a, b, c = (load_file(tmp_path / n / "model.safetensors") for n in "abc")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    projector = next(k for k in a if "multi_modal_projector.linear_1.weight" in k)
    assert not torch.equal(a[projector], c[projector])
