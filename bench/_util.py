"""Shared helpers for the benchmarks: the machine's measured FLOP rate, peak memory, model builds.

Why measure the FLOP rate instead of quoting a datasheet: on a shared 2-core VM the achievable matmul
rate (bf16 via AMX/avx512_bf16 or fp32) is what bounds training, and MFU only means something against it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path


def matmul_flops(dtype_name: str, size: int = 2048, seconds: float = 1.5) -> float:
    """Sustained FLOP/s of a ``size``-square matmul loop in ``dtype_name`` ("bfloat16" or "float32")."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up: first call picks kernels and allocates
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    elapsed = time.perf_counter() - start
    return 2 * size**3 * count / elapsed


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, object]:
    """CPU model and core count, for the record next to every number."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):  # what decides the bf16 rate: AMX tiles, AVX-512 bf16, AVX2 only
                flags = sorted(
                    {"amx_bf16", "avx512_bf16", "avx512f", "avx2"} & set(line.split(":", 1)[1].split())
                )
                break
    import torch

    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def default_model_dir(vision: str, llm: str, image_size: int) -> Path:
    """Build (once) and return the offline default Llava used by the benchmarks, under thinchat's cache."""
    from thinchat.model.presets import cache_root

    out = cache_root() / "bench" / f"{vision}_{llm}_{image_size}"
    if not (out / "config.json").is_file():
        from thinchat.model.compose import build

        build(vision, llm, out, image_size=image_size)
    return out


def emit_report(report: object, out: str | Path | None, **dumps: object) -> None:
    """Print ``report`` as JSON and, where ``out`` is given, also write it there (folders made as needed).

    Why one function: every bench and study reports the same way, so its output can be piped or kept as
    a results file with the same text; ``dumps`` are ``json.dumps`` options (``indent``, ``ensure_ascii``).
    """
    text = json.dumps(report, **dumps)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n", encoding="utf-8")
