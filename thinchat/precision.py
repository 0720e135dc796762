"""Pick the training precision for the host by measuring it: ``bf16: auto``.

Why measure instead of reading CPU flags: the flags do not say which precision is faster. On an AMD
EPYC with avx512_bf16 a bf16 matmul is two to three times faster than fp32; on an Intel Xeon without AMX it
is slower; on a Xeon with AMX, where oneDNN runs bf16 on the tile unit, it is about nine times faster
(rates per machine: docs/experiments.md, Precision). A fixed ``bf16:`` in a config is wrong on some of
them. Two short square matmuls (a few tens of milliseconds in all) tell them apart.

On a GPU the answer does not need a measurement: bf16 autocast where the GPU supports it (Ampere and
newer), fp32 otherwise (fp16 with loss scaling stays an explicit ``fp16: true``). The rates are still
measured there, for the benchmark's MFU.

``measure_precision(device) -> PrecisionChoice(dtype, bf16_gflops, fp32_gflops)`` is the public entry;
``resolve_bf16(config)`` turns a training config's ``bf16: auto`` into true / false.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

from thinchat.errors import ConfigError

log = logging.getLogger(__name__)

#: Weight dtype names a user may write (``--dtype``, ``dtype=``) -> the torch dtype attribute. One table
#: for the engine, the export and every command, so an alias accepted by one is accepted by all.
DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}

#: bf16 must beat fp32 on the matmul by this factor to be chosen on a CPU. Why not 1.0: under autocast
#: only the matmuls run in bf16; casts, norms, softmax and the optimizer stay fp32, so a training step
#: gains much less than the matmul does (figures: docs/experiments.md, Precision). Near
#: parity the casts make bf16 the slower choice.
BF16_MARGIN = 1.25
#: Matmul side on CPU: 512^3 = 0.27 GFLOP, about 1-3 ms on 2 cores at 100-300 GFLOP/s.
CPU_SIZE = 512
#: Matmul side on GPU: big enough to leave launch overhead behind (8192^3: ~1.4 ms at 800 TFLOP/s).
GPU_SIZE = 8192


@dataclass(frozen=True)
class PrecisionChoice:
    """The chosen autocast dtype (``torch.bfloat16`` or ``torch.float32``) and the measured matmul rates."""

    dtype: Any
    bf16_gflops: float
    fp32_gflops: float
    device: str = "cpu"

    @property
    def bf16(self) -> bool:
        import torch

        return self.dtype == torch.bfloat16

    @property
    def gflops(self) -> float:
        """The matmul rate of the chosen precision (what a step budget should scale with)."""
        return self.bf16_gflops if self.bf16 else self.fp32_gflops

    def as_dict(self) -> dict[str, Any]:
        return {
            "dtype": str(self.dtype).replace("torch.", ""),
            "bf16_gflops": round(self.bf16_gflops, 1),
            "fp32_gflops": round(self.fp32_gflops, 1),
            "device": self.device,
        }


def matmul_gflops(dtype: Any, device: str = "cpu", size: int | None = None, budget_s: float = 0.1) -> float:
    """Measured GFLOP/s of a ``size``^3 matmul in ``dtype`` on ``device`` (best of repeated runs).

    Best-of rather than mean: on a shared machine other jobs only ever slow a run down, so the fastest
    repetition is the closest to what the hardware does. Stops after ``budget_s`` seconds.
    """
    import torch

    on_gpu = str(device).startswith("cuda")
    n = size or (GPU_SIZE if on_gpu else CPU_SIZE)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device, dtype)
    b = torch.randn(n, n, generator=generator).to(device, dtype)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(device)

    with torch.no_grad():
        torch.matmul(a, b)  # warm-up: oneDNN / cuBLAS pick and cache their kernels here
        sync()
        best = float("inf")
        start = time.perf_counter()
        repeats = 0
        while repeats < 3 or (time.perf_counter() - start < budget_s and repeats < 50):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            sync()
            best = min(best, time.perf_counter() - t0)
            repeats += 1
    return 2 * n**3 / max(best, 1e-9) / 1e9


def measure_precision(device: str = "cpu") -> PrecisionChoice:
    """Measure bf16 and fp32 matmuls on ``device`` and choose: on CPU the faster (by ``BF16_MARGIN``),
    on CUDA bf16 where supported. Takes well under a second."""
    import torch

    device = str(device)
    bf16 = matmul_gflops(torch.bfloat16, device)
    fp32 = matmul_gflops(torch.float32, device)
    use_bf16 = torch.cuda.is_bf16_supported() if device.startswith("cuda") else bf16 >= BF16_MARGIN * fp32
    choice = PrecisionChoice(torch.bfloat16 if use_bf16 else torch.float32, bf16, fp32, device)
    log.info(
        "precision on %s: bf16 matmul %.0f GFLOP/s, fp32 %.0f GFLOP/s -> %s",
        device,
        bf16,
        fp32,
        "bf16" if use_bf16 else "fp32",
    )
    return choice


def training_device(config: Any) -> str:
    """Where ``thinchat train`` will run this config: the GPU unless ``cpu: true`` or none is there."""
    import torch

    return "cuda" if torch.cuda.is_available() and not getattr(config, "cpu", False) else "cpu"


def resolve_bf16(config: Any) -> Any:
    """``config`` with ``bf16: auto`` replaced by the measured choice (other values pass through)."""
    if getattr(config, "bf16", None) != "auto":
        return config
    choice = measure_precision(training_device(config))
    return dataclasses.replace(config, bf16=choice.bf16)


def default_device() -> str:
    """The GPU when there is one, else the CPU: what every front end means by "no --device given"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def inference_dtype(device: str = "cpu") -> Any:
    """The weights dtype inference runs in when none is asked for: bf16 on a GPU that supports it; on a
    CPU the precision whose matmuls measure faster (:func:`measure_precision`, once per process).

    Why measure on CPU too: evaluation and batch captioning decode many slides at once, so their matmuls
    are compute-bound, and a bf16 matmul is 4x fp32 on an EPYC with avx512_bf16 and several times on a
    Xeon with AMX, but slower on a Xeon without either. With the LM head fed one contiguous row per
    answer (``thinchat.generation.last_position_logits``) a whole report follows the matmul rate: on the
    EPYC the en quickstart's report takes 163 s in bf16 against 330 s, the zh one's 192 s against 455 s,
    its yes/no answers within a question (docs/experiments.md, Evaluation speed).
    """
    import torch

    if str(device).startswith("cuda"):
        return (
            torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        )
    if str(device) != "cpu":
        return torch.float32  # other accelerators: the safe choice, as before any measurement
    return measure_precision("cpu").dtype


def resolve_dtype(dtype: Any, device: str | None = None):
    """``None``/"auto" -> :func:`inference_dtype` on ``device``; names like "bf16" -> torch dtypes;
    torch dtypes pass through."""
    import torch

    if dtype is None or dtype == "auto":
        return inference_dtype(str(device or "cpu"))
    if isinstance(dtype, torch.dtype):
        return dtype
    name = DTYPE_NAMES.get(str(dtype).lower())
    if name is None:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of float32, bfloat16, float16")
    return getattr(torch, name)
