"""Thread count and OpenMP wait policy for the heavy commands (train, caption, eval, chat, serve, web,
probe, finetune, quickstart).

Why: torch sizes its thread pool from the machine's cores, not from what this process may use (its CPU
affinity and the cgroup CPU quota of a container), so a process limited to 2 CPUs on a 64-core host
starts 64 threads that fight over 2 cores. And with libgomp's default wait policy an idle OpenMP team
spins a while before it sleeps: where the engine generates on a fresh thread per request (chat, serve,
web), every finished thread's team competes with the next request (``thinchat serve`` figures:
docs/experiments.md, Server; bench/bench_threads.py), so those commands wait passively. The batch
commands (train, eval, caption, ...) run their parallel regions back to back on one thread, where the
short spin is what keeps both cores busy: passive waiting made batched generation 1.4x and a LoRA step
~5% slower on a 2-core EPYC (docs/performance.md), so they keep libgomp's default. Both variables must
be set before torch loads its OpenMP runtime; values the user set are kept.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(path: Path = CGROUP_CPU_MAX) -> float | None:
    """CPUs the cgroup v2 quota allows (``quota / period``), or None when unlimited or unreadable."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def available_cpus(cgroup_file: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_file)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def passive_omp_threads() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy; warn if torch is already loaded."""
    if "OMP_WAIT_POLICY" in os.environ:
        return
    if "torch" in sys.modules:
        log.debug("torch already imported: OMP_WAIT_POLICY=PASSIVE would have no effect; not set")
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def configure_threads(threads: int | None = None, *, passive: bool = False) -> int:
    """Choose the thread count (``threads``, else ``OMP_NUM_THREADS``, else :func:`available_cpus`),
    export it for torch's OpenMP pool and, with ``passive`` (generation on worker threads), set passive
    waiting; returns the count.
    """
    if threads is not None and threads < 1:  # chat's own --threads 0: torch's choice, i.e. the default
        threads = None
    env = os.environ.get("OMP_NUM_THREADS", "")
    if threads is None:
        threads = int(env) if env.isdigit() and int(env) > 0 else available_cpus()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if passive:
        passive_omp_threads()
    if "torch" in sys.modules:  # already loaded (e.g. in a test): set the pool directly
        sys.modules["torch"].set_num_threads(threads)
    log.debug("threads: %d (OMP_WAIT_POLICY=%s)", threads, os.environ.get("OMP_WAIT_POLICY"))
    return threads
