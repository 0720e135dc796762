"""The chunked LM head + cross-entropy equals the plain one, in value and gradient, and the trainer uses it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from train_helpers import write_typed_slide

from thinchat.testing import tiny_llava
from thinchat.train.dataset import Collator, SupervisedDataset
from thinchat.train.linear_ce import fusable_head, linear_cross_entropy
from thinchat.train.sources import open_samples
from thinchat.train.trainer import lm_loss, logits_only_where_scored, model_inputs


def plain_loss(hidden, weight, targets, row_weights):
    return (F.cross_entropy(hidden @ weight.t(), targets, reduction="none") * row_weights).sum()


@pytest.mark.parametrize("chunk", [1000, 300, 7])  # one chunk, chunks with a short last one, many
def test_values_and_gradients_equal_the_plain_loss_in_fp32(chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g).requires_grad_()
    weight = (torch.randn(1000, 16, generator=g) * 0.5).requires_grad_()
    targets = torch.randint(0, 1000, (37,), generator=g)
    targets[:3] = torch.tensor([0, 999, 299])  # the first and last vocabulary rows, a chunk's edge
    row_weights = torch.rand(37, generator=g) * 3
    expected = plain_loss(hidden, weight, targets, row_weights)
    want = torch.autograd.grad(expected, (hidden, weight))
    got_loss = linear_cross_entropy(hidden, weight, targets, row_weights, chunk=chunk)
    got = torch.autograd.grad(got_loss, (hidden, weight))
    assert torch.allclose(got_loss, expected, rtol=1e-5)
    assert torch.allclose(got[0], want[0], atol=1e-5)
    assert torch.allclose(got[1], want[1], atol=1e-5)


def test_a_frozen_head_gets_no_gradient_and_unit_weights_are_the_default():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(5, 8, generator=g).requires_grad_()
    weight = torch.randn(50, 8, generator=g)
    targets = torch.randint(0, 50, (5,), generator=g)
    loss = linear_cross_entropy(hidden, weight, targets, chunk=16)
    assert torch.allclose(loss, F.cross_entropy(hidden @ weight.t(), targets, reduction="sum"), rtol=1e-5)
    loss.backward()
    assert hidden.grad is not None and weight.grad is None


def test_under_bf16_autocast_it_matches_the_plain_loss_to_bf16_precision():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(64, 32, generator=g).requires_grad_()
    weight = (torch.randn(3000, 32, generator=g) * 0.2).bfloat16()
    targets = torch.randint(0, 3000, (64,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")
        got = linear_cross_entropy(hidden, weight, targets, chunk=512)
    (want,) = torch.autograd.grad(expected, hidden)
    (grad,) = torch.autograd.grad(got, hidden)
    assert grad.dtype == torch.float32  # the hidden states' own dtype, not autocast's
    assert torch.allclose(got.float(), expected, rtol=2e-3)
    assert torch.allclose(grad, want, rtol=1e-2, atol=2e-3)  # the plain gradient is rounded to bf16


def test_only_a_plain_whole_bias_free_linear_head_is_fused():
    assert fusable_head(torch.nn.Linear(8, 50, bias=False), 50)
    assert not fusable_head(torch.nn.Linear(8, 50, bias=True), 50)
    assert not fusable_head(torch.nn.Embedding(50, 8), 50)
    partitioned = torch.nn.Linear(8, 50, bias=False)
    partitioned.weight = torch.nn.Parameter(torch.empty(0))  # as DeepSpeed ZeRO-3 leaves it between calls
    assert not fusable_head(partitioned, 50)


def test_the_trainer_loss_runs_the_head_on_no_position_and_trains_lora_alike(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, processor = tiny_llava("llama", "dinov2")
    samples = list(open_samples(write_typed_slide(tmp_path)))
    batch = Collator(processor.tokenizer.pad_token_id)([SupervisedDataset(samples, processor, 512)[0]])
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    for param in lora.parameters():
        if param.requires_grad:
            torch.nn.init.normal_(param, std=0.1)  # B starts at zero: give A and B both a gradient
    trained = [p for p in lora.parameters() if p.requires_grad]
    inputs = model_inputs(lora, batch, None)
    head_rows = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: head_rows.append(args[0].shape[0]))
    fused = lm_loss(lora, inputs)
    fused_grads = torch.autograd.grad(fused, trained)
    hook.remove()
    plain = lora(**logits_only_where_scored(inputs)).loss
    plain_grads = torch.autograd.grad(plain, trained)
    assert head_rows == [0]  # the model's own head ran on no position: the loss ran it
    assert torch.allclose(fused, plain, rtol=1e-5)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_a_well_predicted_target_keeps_its_small_gradient_in_bf16():
    # Late in training the target's softmax is ~0.99: its gradient (p - 1) x W is 1% of W, which a
    # bf16 rounding of p x W before taking off the one-hot would swamp (relative error 0.6 instead of
    # the plain path's 0.03 from its bf16 logits).
    g = torch.Generator().manual_seed(3)
    weight = (torch.randn(4096, 64, generator=g) * 0.1).bfloat16()
    targets = torch.randint(0, 4096, (32,), generator=g)
    hidden = (weight[targets].float() * 30 + torch.randn(32, 64, generator=g) * 0.1).requires_grad_()
    exact = F.cross_entropy(hidden.double() @ weight.double().t(), targets, reduction="sum")
    (want,) = torch.autograd.grad(exact, hidden)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, targets, chunk=512)
    (got,) = torch.autograd.grad(loss, hidden)
    assert 0.002 < loss.item() / 32 < 0.05  # the targets are well predicted
    assert float((got.double() - want).norm() / want.norm()) < 0.05


@pytest.mark.parametrize("bf16", [True, False])
def test_the_trainer_runs_the_loss_head_in_the_forward_precision(tmp_path, monkeypatch, bf16):
    # Trainer autocasts the model's forward only (accelerate wraps it); the loss runs the head outside
    # that forward and must run it in the same precision, not in the fp32 of an fp32 base's weights.
    from transformers import TrainingArguments

    from thinchat.train import linear_ce
    from thinchat.train.trainer import ThinchatTrainer

    model, processor = tiny_llava("llama", "dinov2")
    samples = list(open_samples(write_typed_slide(tmp_path)))
    batch = Collator(processor.tokenizer.pad_token_id)([SupervisedDataset(samples, processor, 512)[0]])
    args = TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True, bf16=bf16, report_to="none")
    trainer = ThinchatTrainer(model=model, args=args)
    seen = []
    apply = linear_ce._LinearCrossEntropy.apply
    monkeypatch.setattr(linear_ce._LinearCrossEntropy, "apply", lambda *a: seen.append(a[-1]) or apply(*a))
    loss = trainer.compute_loss(trainer.model, dict(batch))
    assert seen == [torch.bfloat16 if bf16 else torch.float32]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        plain = model(**logits_only_where_scored(model_inputs(model, dict(batch), None))).loss
    assert torch.allclose(loss, plain, rtol=1e-2 if bf16 else 1e-5)


def test_the_chunk_keeps_the_block_near_4_mb_and_no_rows_cost_nothing():
    from thinchat.train.linear_ce import chunk_for

    assert [chunk_for(r) for r in (1, 64, 160, 512, 952, 5000)] == [65536, 16384, 4096, 2048, 2048, 2048]
    hidden = torch.zeros(0, 8, requires_grad=True)
    loss = linear_cross_entropy(hidden, torch.randn(50, 8), torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad.shape == (0, 8)
