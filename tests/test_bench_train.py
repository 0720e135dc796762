"""bench_train's loss configurations compute one loss three ways: the bench compares like with like."""

from __future__ import annotations

import torch
from bench_scripts import load_bench

from thinchat.testing import tiny_llava


def test_every_loss_configuration_gives_the_same_loss():
    bench = load_bench("bench_train.py")
    model, _ = tiny_llava("llama", "dinov2")
    ids = torch.randint(5, 300, (2, 24))
    labels = ids.clone()
    labels[:, :10] = -100  # the prompt carries no label
    embeds = model.get_input_embeddings()(ids)
    losses = {
        mode: bench.lm_step_loss(mode, model, {"inputs_embeds": embeds, "labels": labels}) for mode in "egh"
    }
    assert set(bench.CONFIGS) >= set("egh") and {"g", "h"} <= set(bench.CACHED_CONFIGS)
    for mode in "gh":
        assert torch.allclose(losses[mode], losses["e"], rtol=1e-5), (mode, losses)
