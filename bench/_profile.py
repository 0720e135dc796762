"""Where a training step's CPU time goes: torch.profiler's operator table sorted into the parts a step
is made of, so each part can be set against its own physical limit.

Why: MFU says how far a step is from the matmul rate, not where the rest goes. Each aten operator's
self time (time in the operator minus the operators it calls) is assigned to exactly one part by its
exact name (an operator not listed is "elementwise and other": norms, activations, LoRA's scaling,
embedding lookups, views); the parts' shares then add up to the profiled time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: Exact aten operator names per part. Optimizer kernels are the ``aten::_foreach_*`` family (AdamW with
#: ``foreach``), matched by that prefix; everything else by its full name.
PARTS: dict[str, frozenset[str]] = {
    "matmul": frozenset(
        {
            "aten::mm",
            "aten::addmm",
            "aten::bmm",
            "aten::baddbmm",
            "aten::addbmm",
            "aten::matmul",
            "aten::linear",
        }
    ),
    "attention": frozenset(
        {
            "aten::scaled_dot_product_attention",
            "aten::_scaled_dot_product_flash_attention_for_cpu",
            "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
            "aten::_softmax",
            "aten::_softmax_backward_data",
        }
    ),
    "softmax + cross-entropy (LM head)": frozenset(
        {
            "aten::log_softmax",
            "aten::_log_softmax",
            "aten::_log_softmax_backward_data",
            "aten::nll_loss_forward",
            "aten::nll_loss_backward",
            "aten::nll_loss_nd",
            "aten::nll_loss",
            "aten::cross_entropy_loss",
        }
    ),
    "casts and copies": frozenset(
        {"aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous"}
    ),
}
OPTIMIZER = "optimizer (AdamW)"
OTHER = "elementwise and other"
OPTIMIZER_PREFIX = "aten::_foreach_"


def part_of(name: str) -> str:
    """The part an aten operator's self time belongs to."""
    if name.startswith(OPTIMIZER_PREFIX):
        return OPTIMIZER
    for part, names in PARTS.items():
        if name in names:
            return part
    return OTHER


def breakdown(events: Iterable[Any], matmul_peak_flops: float) -> dict[str, Any]:
    """Seconds and share of the profiled time per part, from ``profiler.key_averages()``.

    ``matmul_peak_flops`` is the rate the host's matmuls reach in the step's precision; the matmul part
    reports the rate it achieved (from the profiler's FLOP counts) against it.
    """
    seconds: dict[str, float] = {}
    matmul_flop = 0.0
    for event in events:
        if not event.key.startswith("aten::"):
            continue  # record_function ranges and python frames: their time is in the ops they call
        part = part_of(event.key)
        seconds[part] = seconds.get(part, 0.0) + event.self_cpu_time_total / 1e6
        if part == "matmul":
            matmul_flop += float(getattr(event, "flops", 0) or 0)
    total = sum(seconds.values())
    if total <= 0:
        raise ValueError("the profile holds no aten operator time: was a step run inside it?")
    parts = {
        part: {"seconds": round(s, 4), "share": round(s / total, 4)}
        for part, s in sorted(seconds.items(), key=lambda item: -item[1])
    }
    matmul_s = seconds.get("matmul", 0.0)
    achieved = matmul_flop / matmul_s if matmul_s else 0.0
    return {
        "profiled_s": round(total, 4),
        "parts": parts,
        "matmul": {
            "gflop": round(matmul_flop / 1e9, 2),
            "achieved_gflops": round(achieved / 1e9, 1),
            "peak_gflops": round(matmul_peak_flops / 1e9, 1),
            "of_peak": round(achieved / matmul_peak_flops, 3) if matmul_peak_flops else None,
        },
    }


def profile_steps(step: Any, batches: list[Any], matmul_peak_flops: float) -> dict[str, Any]:
    """Run ``step(batch)`` for each batch under torch.profiler (CPU, FLOP counting) and break it down."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for batch in batches:
            step(batch)
    result = breakdown(prof.key_averages(), matmul_peak_flops)
    result["steps"] = len(batches)
    return result
