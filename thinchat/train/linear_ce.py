"""The LM head and its cross-entropy in vocabulary chunks: no fp32 logits, one exp per logit.

Why: with a large vocabulary the loss, not the model, is most of a CPU training step. The zh base
(Gemma 3, 262,145 tokens) spends two thirds of its step in four passes over a [rows, vocab] fp32 tensor:
the logits cast to fp32, log-softmax, the zeroed gradient and log-softmax's backward, each at a tenth
of the memory bandwidth (docs/performance.md, "The zh model's step"). The field's answer is a linear
cross-entropy that never materialises those logits (Liger Kernel's ``LigerFusedLinearCrossEntropyLoss``,
Apple's Cut Cross-Entropy); both are Triton kernels for GPUs, and Cut Cross-Entropy's ``torch.compile``
route lost inside the Trainer on a CPU. This is the same algorithm in plain torch: the forward pass runs
the head over chunks of the vocabulary small enough for the cache, keeps each chunk's
``exp(logit - chunk max)`` in the head's dtype plus a max and a sum per row and chunk; the backward pass
rescales those to probabilities (a multiply, no second exp) and multiplies them back through the head.
The head's matmuls are the same two as autograd's; the elementwise work runs once, in cache.
"""

from __future__ import annotations

from typing import Any

import torch

#: Elements of one [rows, chunk] fp32 block (4 MB): small enough for a CPU's cache, large enough that
#: a few label rows still make few, large matmuls.
BLOCK_ELEMENTS = 1 << 20


def chunk_for(rows: int) -> int:
    """Vocabulary rows per chunk for ``rows`` label rows: a power of two, 2,048 to 65,536, that keeps the
    block near :data:`BLOCK_ELEMENTS` (512 rows or more: 2,048, measured best there; 64 rows: 16,384)."""
    fit = BLOCK_ELEMENTS // max(1, rows)
    return max(2048, min(1 << 16, 1 << (fit.bit_length() - 1 if fit else 0)))


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the head's matmul runs in: autocast's where autocast is on, else the weight's."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, row_weights, chunk, dtype):
        h = hidden.to(dtype)
        starts = range(0, weight.shape[0], chunk)
        rows = torch.arange(h.shape[0], device=h.device)
        # one contiguous [rows, chunk] block per chunk: a column slice of one [rows, vocab] tensor
        # is a strided copy, several times slower than the contiguous one
        scaled = torch.empty(len(starts), h.shape[0], chunk, dtype=dtype, device=h.device)
        maxes = torch.empty(h.shape[0], len(starts), device=h.device)
        sums = torch.empty_like(maxes)
        target_logit = torch.empty(h.shape[0], device=h.device)
        for i, start in enumerate(starts):
            block = torch.mm(h, weight[start : start + chunk].to(dtype).t()).float()
            inside = (targets >= start) & (targets < start + block.shape[1])
            target_logit[inside] = block[rows[inside], targets[inside] - start]
            maxes[:, i] = block.amax(dim=1)
            block.sub_(maxes[:, i : i + 1]).exp_()
            sums[:, i] = block.sum(dim=1)
            scaled[i, :, : block.shape[1]] = block
        lse = torch.logsumexp(maxes + sums.log(), dim=1)
        ctx.save_for_backward(h, weight, targets, row_weights, lse, maxes, scaled)
        ctx.chunk, ctx.hidden_dtype = chunk, hidden.dtype
        return ((lse - target_logit) * row_weights).sum()

    @staticmethod
    def backward(ctx, grad_out):
        h, weight, targets, row_weights, lse, maxes, scaled = ctx.saved_tensors
        per_row = row_weights * grad_out
        # d loss / d logit = weight x (softmax - one-hot); softmax = scaled x exp(chunk max - lse). The
        # one-hot is taken off in fp32 before the cast: a well-predicted target's softmax is close to 1,
        # and rounding it to bf16 first would swamp the small difference that is the gradient.
        rescale = torch.exp(maxes - lse[:, None]) * per_row[:, None]
        rows = torch.arange(h.shape[0], device=h.device)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros(h.shape, device=h.device) if want_h else None
        grad_w = torch.zeros(weight.shape, device=h.device) if want_w else None
        for i, start in enumerate(range(0, weight.shape[0], ctx.chunk)):
            width = min(ctx.chunk, weight.shape[0] - start)
            block = scaled[i, :, :width].float().mul_(rescale[:, i : i + 1])
            inside = (targets >= start) & (targets < start + width)
            block[rows[inside], targets[inside] - start] -= per_row[inside]
            block = block.to(h.dtype)
            if want_h:
                grad_h.add_(torch.mm(block, weight[start : start + ctx.chunk].to(h.dtype)))
            if want_w:
                grad_w[start : start + ctx.chunk] = torch.mm(block.t(), h)
        grad_h = grad_h.to(ctx.hidden_dtype) if want_h else None
        grad_w = grad_w.to(weight.dtype) if want_w else None
        return grad_h, grad_w, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    row_weights: torch.Tensor | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Sum over rows of ``row_weights x cross_entropy(hidden @ weight.T, targets)``, never holding fp32 logits.

    ``hidden`` [rows, d] are the final hidden states at the labelled positions, ``weight`` [vocab, d]
    the LM head (no bias), ``targets`` [rows] the next tokens. The head runs in autocast's dtype where
    autocast is on (as ``F.linear`` would), the softmax in fp32; gradients reach ``hidden`` and, where
    it trains, ``weight``. ``chunk``: vocabulary rows per block (default :func:`chunk_for`).
    """
    if row_weights is None:
        row_weights = torch.ones(targets.shape, device=hidden.device)
    dtype, chunk = compute_dtype(hidden, weight), chunk or chunk_for(hidden.shape[0])
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, row_weights.float(), chunk, dtype)


def fusable_head(head: Any, vocab_size: int) -> bool:
    """True where ``head`` is a plain bias-free ``nn.Linear`` whose whole weight is here.

    Not for a quantised or LoRA-wrapped head (another module type), one with a bias, or one whose
    weight DeepSpeed ZeRO-3 has partitioned away (its local shape is not [vocab, d]): those keep the
    model's own head and the plain loss.
    """
    return (
        type(head) is torch.nn.Linear
        and head.bias is None
        and head.weight.shape[0] == vocab_size
        and head.weight.dim() == 2
    )
