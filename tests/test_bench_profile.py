"""``bench/_profile.py``: a training step's profiled time sorted into its parts, on a tiny model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from bench_scripts import load_bench


def _profile_module():
    return load_bench("_profile.py")


def test_each_operator_goes_to_one_part():
    prof = _profile_module()
    assert prof.part_of("aten::addmm") == "matmul"
    assert prof.part_of("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention"
    assert prof.part_of("aten::_log_softmax_backward_data") == "softmax + cross-entropy (LM head)"
    assert prof.part_of("aten::_foreach_addcdiv_") == prof.OPTIMIZER
    assert prof.part_of("aten::_to_copy") == "casts and copies"
    assert prof.part_of("aten::rsqrt") == prof.OTHER
    assert prof.part_of("aten::mmx") == prof.OTHER  # exact names, not prefixes


def test_breakdown_adds_up_and_rates_the_matmuls():
    prof = _profile_module()
    events = [
        SimpleNamespace(key="aten::mm", self_cpu_time_total=3e6, flops=6e9),
        SimpleNamespace(key="aten::_foreach_mul_", self_cpu_time_total=0.5e6, flops=0),
        SimpleNamespace(key="aten::mul", self_cpu_time_total=0.5e6, flops=0),
        SimpleNamespace(key="forward", self_cpu_time_total=9e6, flops=0),  # a range: not counted
    ]
    out = prof.breakdown(events, matmul_peak_flops=4e9)
    assert out["profiled_s"] == 4.0
    assert out["parts"]["matmul"] == {"seconds": 3.0, "share": 0.75}
    assert next(iter(out["parts"])) == "matmul"  # largest first
    assert out["matmul"]["achieved_gflops"] == 2.0 and out["matmul"]["of_peak"] == 0.5
    with pytest.raises(ValueError, match="no aten operator time"):
        prof.breakdown(events[3:], 1.0)


def test_a_real_lora_step_profiles_into_parts():
    import torch
    from peft import LoraConfig, get_peft_model

    from thinchat.testing import tiny_llava

    prof = _profile_module()
    model, _ = tiny_llava()
    lm = get_peft_model(model.model.language_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    head = model.lm_head
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-3, foreach=True)

    def step(ids):
        hidden = lm(input_ids=ids).last_hidden_state
        logits = head(hidden)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    ids = torch.randint(0, model.config.text_config.vocab_size, (2, 16))
    out = prof.profile_steps(step, [ids, ids], matmul_peak_flops=1e9)
    assert out["steps"] == 2
    parts = out["parts"]
    assert {"matmul", "softmax + cross-entropy (LM head)", prof.OPTIMIZER} <= set(parts)
    assert sum(p["share"] for p in parts.values()) == pytest.approx(1.0, abs=1e-3)
    assert out["matmul"]["gflop"] > 0 and out["matmul"]["achieved_gflops"] > 0
