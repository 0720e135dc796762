"""Thread settings under sharing: one job alone and two jobs on the same cores, before and after.

    python bench/bench_threads.py [--seconds 6]

Each job is a separate process answering 16-token requests, each on a fresh thread as thinchat's engine
generates, with a 135M-sized LM's decode matmuls (30 layers of SmolLM2's 576 x 1536 MLP shapes at batch 1:
many short OpenMP regions, the pattern that suffers when idle threads spin). "before": torch's default thread count and libgomp's default (active) waiting, what a heavy
command got without thinchat's settings. "after": what ``thinchat`` sets for a heavy command
(thinchat/threads.py: threads from the CPU affinity and cgroup quota, ``OMP_WAIT_POLICY=PASSIVE``);
"after, --threads 1": the same with one thread per job. Prints JSON: tokens/s per job for each case and
the machine. Keeps to about 6 x (seconds + 3) s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, threading, time
import torch
seconds = float(sys.argv[1])
torch.manual_seed(0)
layers = [(torch.randn(1536, 576) / 24, torch.randn(576, 1536) / 40) for _ in range(30)]
h = torch.randn(1, 576)
def token(h):
    for up, down in layers:
        h = torch.nn.functional.linear(torch.nn.functional.silu(torch.nn.functional.linear(h, up)), down)
    return h / (h.norm() + 1e-6)
def request():  # one answer of 16 tokens, on a fresh thread as the engine generates
    global h
    for _ in range(16):
        h = token(h)
request()
count, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    worker = threading.Thread(target=request)
    worker.start()
    worker.join()
    count += 16
print(json.dumps({"tokens_per_s": count / (time.perf_counter() - start), "threads": torch.get_num_threads()}))
"""


def _env(case: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if case == "after":
        sys.path.insert(0, str(ROOT))
        from thinchat.threads import available_cpus

        env.update(OMP_NUM_THREADS=str(available_cpus()), OMP_WAIT_POLICY="PASSIVE")
    if case == "after, --threads 1":
        env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return env


def run_jobs(case: str, jobs: int, seconds: float) -> list[dict[str, float]]:
    """Start ``jobs`` workers at once with the ``case`` settings; their results."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(seconds)], env=_env(case), stdout=subprocess.PIPE, text=True
        )
        for _ in range(jobs)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds * 4 + 60)
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="timed decode per job")
    args = parser.parse_args()
    report: dict[str, object] = {
        "cpu": _cpu_model(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "date": datetime.date.today().isoformat(),
        "workload": "16-token requests on fresh threads; decode proxy 30 x (576->1536->576) linear, batch 1",
    }
    for case in ("before", "after", "after, --threads 1"):
        for jobs, name in ((1, "alone"), (2, "two jobs sharing")):
            start = time.perf_counter()
            results = run_jobs(case, jobs, args.seconds)
            report[f"{case}: {name}"] = {
                "tokens_per_s_per_job": [round(r["tokens_per_s"], 1) for r in results],
                "threads_per_job": results[0]["threads"],
                "wall_s": round(time.perf_counter() - start, 1),
            }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
