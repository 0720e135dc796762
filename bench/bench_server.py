"""Server throughput: requests/s and p50/p95 latency of ``thinchat serve`` under a bounded loopback load.

Starts the real command (``thinchat serve`` as a child process on a free 127.0.0.1 port), then runs
``--clients`` concurrent OpenAI clients, each sending ``--requests`` chat completions with one slide
(a data URI) and a short ``max_tokens``. Half the requests stream, so time to first token under load
is measured too. The load is bounded in count and in time (``--max-seconds``); only loopback traffic.
The model runs one request at a time, so requests/s is the single-model rate and latency includes queueing.

    python bench/bench_server.py [--from_pretrained DIR] [--clients 4] [--requests 10] [--max-tokens 16] [--out FILE]

Without ``--from_pretrained`` it benchmarks a tiny random checkpoint (labelled ``tiny-random``: the
numbers then measure the server's overhead, not a real model).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import emit_report

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sandstone_ppl.png"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def slide_uri() -> str:
    from PIL import Image

    if EXAMPLE.is_file():
        data = EXAMPLE.read_bytes()
    else:
        buf = io.BytesIO()
        Image.new("RGB", (224, 224), (180, 160, 140)).save(buf, "PNG")
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def tiny_checkpoint(out: Path) -> Path:
    import torch

    from thinchat.testing import tiny_llava

    torch.set_flush_denormal(True)
    model, processor = tiny_llava("llama", "dinov2", image_size=28)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def one_request(client, model: str, uri: str, max_tokens: int, stream: bool) -> dict:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": uri}},
                {"type": "text", "text": "Describe this thin section."},
            ],
        }
    ]
    start = time.perf_counter()
    first = None
    if stream:
        for chunk in client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True
        ):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
    else:
        client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
    return {"latency": time.perf_counter() - start, "ttft": first, "stream": stream}


def run_load(url: str, model: str, clients: int, requests: int, max_tokens: int, max_seconds: float) -> dict:
    """``clients`` threads x ``requests`` each; stops starting new requests after ``max_seconds``."""
    import openai

    uri = slide_uri()
    deadline = time.monotonic() + max_seconds
    # Warm-up (loads kernels, caches the slide's features) outside the measurement.
    warm = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
    one_request(warm, model, uri, max_tokens, stream=False)

    def worker(index: int) -> list[dict]:
        client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
        results = []
        for i in range(requests):
            if time.monotonic() > deadline:
                break
            try:
                results.append(one_request(client, model, uri, max_tokens, stream=(index + i) % 2 == 1))
            except openai.APIError as exc:
                results.append({"error": f"{type(exc).__name__}: {exc}"})
        return results

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for batch in pool.map(worker, range(clients)) for r in batch]
    wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    latencies = [r["latency"] for r in ok]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    return {
        "requests_ok": len(ok),
        "requests_failed": len(results) - len(ok),
        "errors": sorted({r["error"] for r in results if "error" in r})[:5],
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(ok) / wall, 3) if wall > 0 else None,
        "latency_p50_s": round(statistics.median(latencies), 4) if latencies else None,
        "latency_p95_s": round(percentile(latencies, 95), 4) if latencies else None,
        "ttft_stream_p50_s": round(statistics.median(ttfts), 4) if ttfts else None,
        "ttft_stream_p95_s": round(percentile(ttfts, 95), 4) if ttfts else None,
        "stopped_by_time_limit": len(results) < clients * requests,
    }


def machine() -> dict:
    """CPU model and core count, recorded next to the numbers."""
    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    # The load average says whether other processes shared the cores during the run (it skews latency).
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--from_pretrained",
        "--from-pretrained",
        dest="from_pretrained",
        default=None,
        help="checkpoint to serve (default: a tiny random one, labelled as such)",
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--requests", type=int, default=10, help="requests per client (default 10)")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens per request (default 16)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop starting requests after this")
    parser.add_argument("--dtype", default=None, help="server dtype (float32 default, bfloat16)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    from thinchat.server import ServeProcess

    with tempfile.TemporaryDirectory() as tmp:
        if args.from_pretrained:
            checkpoint, label = Path(args.from_pretrained), Path(args.from_pretrained).name
        else:
            checkpoint, label = tiny_checkpoint(Path(tmp) / "tiny"), "tiny-random (server overhead only)"
        serve_args = [
            "--from_pretrained",
            str(checkpoint),
            "--served-model-name",
            "bench",
            "--max-queue",
            str(max(16, args.clients)),
            "--max-image-pixels",
            str(4096 * 4096),
        ]
        if args.dtype:
            serve_args += ["--dtype", args.dtype]
        with ServeProcess(serve_args) as proc:
            load = run_load(proc.url, "bench", args.clients, args.requests, args.max_tokens, args.max_seconds)
    report = {
        "bench": "server",
        "checkpoint": label,
        "clients": args.clients,
        "requests_per_client": args.requests,
        "max_tokens": args.max_tokens,
        "image": EXAMPLE.name if EXAMPLE.is_file() else "224x224 solid",
        "max_concurrency": 1,
        **load,
        "machine": machine(),
    }
    emit_report(report, args.out, indent=2, ensure_ascii=False)
    return report


if __name__ == "__main__":
    main()
