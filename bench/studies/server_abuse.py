"""Server abuse cases (issue 16) against a real ``thinchat serve``: memory, responsiveness, refusals.

Starts ``thinchat serve`` as a child process on a free 127.0.0.1 port and, while a prober times
``GET /health`` every 0.1 s, runs bounded abuse cases: clients that hang up on long non-streaming
answers, concurrent requests with four 4096x4096 PNGs each, a 14 MB body of 400,001 messages, a
2**70 seed, a body of 2.8 million stop strings, and a flood of concurrent requests. Prints JSON: the
server's RSS before and after (and its peak), the slowest ``/health`` answer and whether every one
came within 1 s, and per case the status codes and time taken.

    python bench/studies/server_abuse.py [--from_pretrained DIR] [--max-seconds 300] [--out FILE]

Only loopback traffic (127.0.0.1), a fixed number of requests, and a wall-clock bound. Without
``--from_pretrained`` it serves a tiny random checkpoint (the server's own costs, not a real model's).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _util import emit_report
from bench_server import tiny_checkpoint

HOST = "127.0.0.1"


def rss_mib(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of ``pid`` in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = round(int(rest.split()[0]) / 1024, 1)
    return {"rss": values.get("VmRSS", 0.0), "peak": values.get("VmHWM", 0.0)}


class HealthProbe(threading.Thread):
    """Times ``GET /health`` every ``interval`` seconds until stopped."""

    def __init__(self, base: str, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.url, self.interval = base + "/health", interval
        self.latencies: list[float] = []
        self.failures = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop_event.is_set():
                start = time.perf_counter()
                try:
                    client.get(self.url).raise_for_status()
                    self.latencies.append(time.perf_counter() - start)
                except httpx.HTTPError:
                    self.failures += 1
                self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=15)


def png_uri(side: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def post(url: str, body: bytes, timeout: float) -> str:
    """The status code as text, or the client-side outcome (``timeout``, ``error``)."""
    try:
        response = httpx.post(
            url, content=body, headers={"content-type": "application/json"}, timeout=timeout
        )
        return str(response.status_code)
    except httpx.TimeoutException:
        return "client_gave_up"
    except httpx.HTTPError:
        return "error"


def run_case(url: str, bodies: list[bytes], timeout: float, workers: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        outcomes = list(pool.map(lambda b: post(url, b, timeout), bodies))
    return {
        "requests": len(bodies),
        "outcomes": dict(Counter(outcomes)),
        "seconds": round(time.perf_counter() - start, 2),
    }


def until_idle(base: str, deadline: float) -> float | None:
    """Seconds until ``/health`` reports nothing running or queued (None if not before ``deadline``)."""
    start = time.perf_counter()
    while time.monotonic() < deadline:
        health = httpx.get(base + "/health", timeout=10).json()
        if health["running"] == 0 and health["queued"] == 0:
            return round(time.perf_counter() - start, 2)
        time.sleep(0.05)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from_pretrained", default=None, help="checkpoint to serve (default: tiny random)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop starting cases after this")
    parser.add_argument(
        "--long-tokens",
        type=int,
        default=400,
        help="max_tokens of the requests whose clients hang up (default 400: fits the tiny model's context)",
    )
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()

    from thinchat.server import ServeProcess

    tmp = tempfile.TemporaryDirectory()
    model_dir = (
        Path(args.from_pretrained) if args.from_pretrained else tiny_checkpoint(Path(tmp.name) / "tiny")
    )
    name = model_dir.name
    deadline = time.monotonic() + args.max_seconds

    def ask(**extra) -> dict:
        return {
            "model": name,
            "messages": [{"role": "user", "content": "Describe this thin section."}],
            **extra,
        }

    def encode(body: dict) -> bytes:
        return json.dumps(body).encode()

    big_images = encode(
        {
            "model": name,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": png_uri(4096)}}] * 4
                    + [{"type": "text", "text": "Describe."}],
                }
            ],
            "max_tokens": 4,
        }
    )
    cases = {
        "non_streaming_clients_hang_up_after_1s": ([encode(ask(max_tokens=args.long_tokens))] * 4, 1.0, 4),
        "four_4096px_pngs_x8_concurrent": ([big_images] * 8, 120.0, 8),
        "400001_messages_14MB": (
            [encode({"model": name, "messages": [{"role": "user", "content": "x"}] * 400_001})],
            120.0,
            1,
        ),
        "seed_2_pow_70": ([encode(ask(seed=2**70, max_tokens=4))], 30.0, 1),
        "2_8M_stop_strings": ([encode(ask(stop=["a"] * 2_800_000, max_tokens=4))], 120.0, 1),
        "flood_40_concurrent": ([encode(ask(max_tokens=8))] * 40, 120.0, 40),
    }
    print(f"big-image body {len(big_images) / 1024:.0f} KiB; serving {model_dir}", file=sys.stderr)
    results: dict = {
        "model": "tiny-random (server overhead only)" if not args.from_pretrained else str(model_dir)
    }
    with ServeProcess(["--from_pretrained", str(model_dir)], host=HOST) as proc:
        base = f"http://{HOST}:{proc.port}"
        url = base + "/v1/chat/completions"
        post(url, encode(ask(max_tokens=4)), 120.0)  # warm-up: first generation loads lazy parts
        pid = proc.process.pid
        results["rss_mib_before"] = rss_mib(pid)
        probe = HealthProbe(base)
        probe.start()
        results["cases"] = {}
        for case, (bodies, timeout, workers) in cases.items():
            if time.monotonic() > deadline:
                results["cases"][case] = "skipped: --max-seconds reached"
                continue
            results["cases"][case] = run_case(url, bodies, timeout, workers)
            results["cases"][case]["seconds_until_idle"] = until_idle(base, deadline)
            results["cases"][case]["rss_mib_after"] = rss_mib(pid)["rss"]
        start = time.perf_counter()
        after = post(url, encode(ask(max_tokens=4)), 120.0)
        results["normal_request_after_abuse"] = {
            "status": after,
            "seconds": round(time.perf_counter() - start, 2),
        }
        probe.stop()
        results["rss_mib_after"] = rss_mib(pid)
        worst = max(probe.latencies, default=float("nan"))
        results["health"] = {
            "probes": len(probe.latencies),
            "failures": probe.failures,
            "max_seconds": round(worst, 3),
            "over_1s": sum(1 for t in probe.latencies if t > 1.0),
            "stayed_under_1s": probe.failures == 0 and worst < 1.0,
        }
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    emit_report(results, args.out, indent=1)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
