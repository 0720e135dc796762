"""Run every benchmark and collect their JSON into ``bench/results.json``.

Each bench script prints one JSON object and is run in its own process (clean memory and thread
state, no cross-talk between measurements), one after another so they do not compete for the cores.
The machine the figures came from is recorded beside them: CPU model, cores, memory, torch version.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "data": ["bench_data.py", "--n", "200"],
    "train": ["bench_train.py"],
    "chat": ["bench_chat.py"],
    "caption": ["bench_caption.py"],
    "lm_head": ["bench_lm_head.py"],
    "server": ["bench_server.py"],
}


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "gpu": None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default=",".join(BENCHES), help="comma-separated subset of " + ",".join(BENCHES)
    )
    parser.add_argument(
        "--from_pretrained", default=None, help="checkpoint for the chat/caption/server benches"
    )
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args()
    results: dict = {"machine": machine(), "benchmarks": {}}
    for name in args.only.split(","):
        command = [sys.executable, str(HERE / BENCHES[name][0]), *BENCHES[name][1:]]
        if args.from_pretrained and name in ("chat", "caption", "server"):
            command += ["--from_pretrained", args.from_pretrained]
        start = time.perf_counter()
        print(f"bench {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        proc = subprocess.run(command, capture_output=True, text=True)
        seconds = round(time.perf_counter() - start, 1)
        if proc.returncode != 0:
            results["benchmarks"][name] = {"error": proc.stderr.strip().splitlines()[-5:], "seconds": seconds}
            print(f"bench {name}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        text = proc.stdout.strip()
        results["benchmarks"][name] = json.loads(text[text.index("{") :])
        results["benchmarks"][name]["seconds"] = seconds
    Path(args.out).write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=1, ensure_ascii=False))
    return 0 if all("error" not in r for r in results["benchmarks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
