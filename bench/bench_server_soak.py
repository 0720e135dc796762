"""Soak test of ``thinchat serve``: a steady, mixed, misbehaving load for a set time, reported per minute.

Why: the abuse study (bench/studies/server_abuse.py) throws each hostile case once; a server can pass all of them
and still leak memory, file descriptors or threads, or lose a model slot after hours of ordinary traffic
with the odd burst and hang-up. This bench runs ``thinchat serve`` as a child process on a free 127.0.0.1
port and, for ``--duration`` seconds, ``--clients`` clients mix streaming and non-streaming chats, one and
two turns, slides at 96, 384 and 1024 px (one view or PPL + XPL), bad requests, clients that hang up
(while streaming, while waiting, mid-upload) and ``Connection: close`` clients; a burster sends more
requests than the server admits every ``--burst-every`` seconds. A probe samples the server's RSS, open
file descriptors and threads and ``/health`` every second.

    python bench/bench_server_soak.py [--from_pretrained DIR] [--duration 600] [--clients 4] [--out FILE]

It prints JSON: per ``--window`` seconds (default a minute) the requests by outcome, p50/p95/p99 latency
of answered requests and time to first token of streamed ones, RSS, fds, threads and the load average;
then the verdict. It exits 1 on any 5xx, a reset or other transport error, a request the server did not
answer within ``--request-timeout``, a status a request should never get, an error in the server's log,
an RSS drift above ``--rss-drift-mb`` (100) between the first and the last minute after the warm-up, or a
model slot not coming back (``/health`` running and queued back to 0 within 30 s of the end).

Only loopback traffic; every loop stops at the deadline and every request has a timeout. Without
``--from_pretrained`` it serves a tiny random checkpoint (the server's own costs, not a real model's).
Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import base64
import errno
import io
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import emit_report
from bench_server import machine, percentile, tiny_checkpoint

HOST = "127.0.0.1"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SIDES = (96, 384, 1024)
#: Outcomes that fail the run whatever the request was.
TRANSPORT_FAILURES = ("reset", "transport_error", "client_timeout", "truncated_stream", "stream_error")
#: What the mix's clients do, with weights.
ACTIONS = {
    "chat": 4,
    "stream": 4,
    "multi_turn": 2,
    "close_client": 1,
    "bad": 2,
    "hang_up_stream": 1,
    "hang_up_wait": 1,
    "hang_up_upload": 1,
}


@dataclass
class Record:
    """One request: what it was, when it ended (seconds since start), how, and its timings."""

    kind: str
    end: float
    outcome: str
    latency: float | None = None
    ttft: float | None = None
    expected: tuple[str, ...] = ("200", "429")


@dataclass
class Soak:
    """The shared state of one run: where to send, what to send, when to stop, what happened."""

    base: str
    model: str
    deadline: float
    start: float
    request_timeout: float
    slides: dict[int, list[list[str]]]
    records: list[Record] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return self.base + "/v1/chat/completions"

    def add(self, record: Record) -> None:
        with self.lock:
            self.records.append(record)

    def now(self) -> float:
        return time.monotonic() - self.start


def slide_uris() -> dict[int, list[list[str]]]:
    """Per side: two example slides, each its PPL and XPL views resized to that side, as PNG data URIs.

    A fixed pool (2 slides x PPL or PPL + XPL x 3 sides: 12 image sets), so the server's per-slide caches
    (tower features, the look-first description) reach the steady state a deployment's reach.
    """
    from PIL import Image

    names = sorted(path.name.removesuffix("_ppl.png") for path in EXAMPLES.glob("*_ppl.png"))
    names = [n for n in names if (EXAMPLES / f"{n}_xpl.png").is_file()][:2]
    slides = [[Image.open(EXAMPLES / f"{n}_{v}.png").convert("RGB") for v in ("ppl", "xpl")] for n in names]
    if not slides:  # no examples/: plain colours stand in
        slides = [[Image.new("RGB", (64, 64), (150, 120, 90 + 40 * i + v)) for v in (0, 1)] for i in range(2)]

    def uri(image, side: int) -> str:
        buf = io.BytesIO()
        image.resize((side, side)).save(buf, "PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    return {side: [[uri(view, side) for view in slide] for slide in slides] for side in SIDES}


def chat_body(soak: Soak, rng: random.Random, stream: bool, turns: int = 1, max_tokens: int = 16) -> dict:
    """A chat about one slide of the pool at a random size; ``turns=2`` adds an answer and a follow-up."""
    slide = rng.choice(soak.slides[rng.choice(SIDES)])
    views = slide[: rng.choice((1, 2))]  # the PPL view, or PPL + XPL as in training
    content = [{"type": "image_url", "image_url": {"url": u}} for u in views]
    messages = [
        {"role": "user", "content": [*content, {"type": "text", "text": "Describe this thin section."}]}
    ]
    if turns == 2:
        messages += [
            {"role": "assistant", "content": "Mainly quartz with some calcite cement."},
            {"role": "user", "content": rng.choice(("Is calcite present?", "What is the matrix?"))},
        ]
    return {"model": soak.model, "messages": messages, "max_tokens": max_tokens, "stream": stream}


def bad_bodies(model: str) -> list[tuple[bytes, str]]:
    """Requests the server must refuse, each with its status (a full queue may answer 429 first)."""
    user = {"role": "user", "content": "hi"}

    def enc(body: dict) -> bytes:
        return json.dumps(body).encode()

    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@notbase64@@"}}
    return [
        (b'{"model": "x", "messages": [', "400"),
        (enc({"model": model, "messages": [{"role": "user", "content": [image]}]}), "400"),
        (enc({"model": "no-such-model", "messages": [user]}), "404"),
        (enc({"model": model, "messages": [user], "temperature": 3.5}), "400"),
        (enc({"model": model, "messages": []}), "400"),
        (enc({"model": model, "messages": [{"role": "user", "content": [image] * 5}]}), "400"),
        (enc({"model": model, "messages": [user], "stop": ["a"] * 9}), "400"),
    ]


def transport_outcome(exc: Exception) -> str:
    """``reset`` for a connection reset, ``client_timeout`` for no answer in time, else ``transport_error``."""
    if isinstance(exc, httpx.TimeoutException):
        return "client_timeout"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionResetError) or getattr(cause, "errno", None) == errno.ECONNRESET:
            return "reset"
        cause = cause.__cause__ or cause.__context__
    return "transport_error"


def post(
    soak: Soak,
    client: httpx.Client,
    body: bytes,
    kind: str,
    expected: tuple[str, ...] = ("200", "429"),
    headers: dict[str, str] | None = None,
) -> None:
    """A non-streaming request, recorded with its status and latency."""
    start = time.monotonic()
    try:
        response = client.post(
            soak.url, content=body, headers={"content-type": "application/json", **(headers or {})}
        )
        outcome = str(response.status_code)
    except httpx.HTTPError as exc:
        outcome = transport_outcome(exc)
    soak.add(Record(kind, soak.now(), outcome, time.monotonic() - start, expected=expected))


def stream(soak: Soak, client: httpx.Client, body: dict, kind: str, hang_up: bool = False) -> None:
    """A streamed request: time to the first content, whether it ended with ``[DONE]`` (or hang up early)."""
    start, ttft, outcome = time.monotonic(), None, "truncated_stream"
    try:
        with client.stream("POST", soak.url, json=body) as response:
            if response.status_code != 200:
                response.read()
                outcome = str(response.status_code)
            else:
                for line in response.iter_lines():
                    if hang_up:
                        outcome = "hung_up"
                        break
                    if line == "data: [DONE]":
                        outcome = "200"
                        break
                    if line.startswith('data: {"error"'):
                        outcome = "stream_error"
                        break
                    if ttft is None and '"content":"' in line and '"content":""' not in line:
                        ttft = time.monotonic() - start
    except httpx.HTTPError as exc:
        outcome = transport_outcome(exc)
    expected = ("200", "429", "hung_up") if hang_up else ("200", "429")
    soak.add(Record(kind, soak.now(), outcome, time.monotonic() - start, ttft, expected))


def hang_up_upload(soak: Soak, body: bytes) -> None:
    """Send the headers and half the body, then close: the server must count it abandoned, not fail."""
    port = int(soak.base.rsplit(":", 1)[1])
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection((HOST, port), timeout=10) as sock:
            sock.sendall(head + body[: len(body) // 2])
        outcome = "hung_up"
    except OSError:
        outcome = "transport_error"
    soak.add(Record("hang_up_upload", soak.now(), outcome, expected=("hung_up",)))


def one_action(soak: Soak, client: httpx.Client, rng: random.Random, action: str) -> None:
    """Do one of ``ACTIONS`` and record its outcome."""
    if action in ("chat", "multi_turn", "close_client"):
        body = chat_body(soak, rng, stream=False, turns=2 if action == "multi_turn" else 1)
        headers = {"Connection": "close"} if action == "close_client" else None
        post(soak, client, json.dumps(body).encode(), action, headers=headers)
    elif action in ("stream", "hang_up_stream"):
        body = chat_body(soak, rng, stream=True, turns=rng.choice((1, 2)))
        stream(soak, client, body, action, hang_up=action == "hang_up_stream")
    elif action == "bad":
        data, status = rng.choice(bad_bodies(soak.model))
        post(soak, client, data, "bad", expected=(status, "429"))
    elif action == "hang_up_wait":  # a non-streaming client that gives up after 0.3 s
        body = json.dumps(chat_body(soak, rng, stream=False, max_tokens=64)).encode()
        start = time.monotonic()
        try:
            response = client.post(soak.url, content=body, timeout=0.3)
            outcome = str(response.status_code)
        except httpx.TimeoutException:
            outcome = "hung_up"
        except httpx.HTTPError as exc:
            outcome = transport_outcome(exc)
        soak.add(
            Record(action, soak.now(), outcome, time.monotonic() - start, expected=("200", "429", "hung_up"))
        )
    elif action == "hang_up_upload":
        hang_up_upload(soak, json.dumps(chat_body(soak, rng, stream=False)).encode())


def client_loop(soak: Soak, index: int, seed: int) -> None:
    """Draw actions by weight until the deadline; one keep-alive connection per client."""
    rng = random.Random(seed * 1000 + index)
    names, weights = list(ACTIONS), list(ACTIONS.values())
    with httpx.Client(timeout=soak.request_timeout) as client:
        while time.monotonic() < soak.deadline:
            one_action(soak, client, rng, rng.choices(names, weights)[0])


def burst_loop(soak: Soak, size: int, every: float, seed: int) -> None:
    """Every ``every`` seconds, ``size`` requests at once (more than the server admits): 200 or 429."""
    rng = random.Random(seed)
    next_burst = time.monotonic() + every / 2
    while time.monotonic() < soak.deadline:
        if time.monotonic() < next_burst:
            time.sleep(min(0.5, max(0.0, next_burst - time.monotonic())))
            continue
        bodies = [json.dumps(chat_body(soak, rng, stream=False, max_tokens=4)).encode() for _ in range(size)]
        # Half the burst says Connection: close: a refusal must still reach a client whose connection closes.
        closing = [{"Connection": "close"} if i % 2 else None for i in range(size)]
        with httpx.Client(timeout=soak.request_timeout) as client, ThreadPoolExecutor(size) as pool:
            list(pool.map(lambda b, h: post(soak, client, b, "burst", headers=h), bodies, closing))
        next_burst += every


class ServerProbe(threading.Thread):
    """Samples the server process (RSS, fds, threads) and ``/health`` every ``interval`` seconds."""

    def __init__(self, soak: Soak, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.soak, self.pid, self.interval = soak, pid, interval
        self.samples: list[dict] = []
        self._stop_event = threading.Event()

    def sample(self) -> dict:
        status = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines()
            if ":" in line
        )
        out = {
            "t": self.soak.now(),
            "rss_mib": int(status["VmRSS"].split()[0]) / 1024,
            "peak_mib": int(status["VmHWM"].split()[0]) / 1024,
            "threads": int(status["Threads"]),
            "fds": len(os.listdir(f"/proc/{self.pid}/fd")),
            "load": os.getloadavg()[0],
        }
        try:
            health = httpx.get(self.soak.base + "/health", timeout=5).json()
            out.update(running=health["running"], queued=health["queued"])
        except httpx.HTTPError:
            out.update(running=None, queued=None)
        return out

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.samples.append(self.sample())
            except OSError:  # the server process is gone: nothing left to sample
                return
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=15)


def quantiles(values: list[float]) -> dict[str, float | None]:
    """p50 / p95 / p99 (nearest rank), or None each when nothing was measured."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    return {
        "p50": round(statistics.median(values), 4),
        "p95": round(percentile(values, 95), 4),
        "p99": round(percentile(values, 99), 4),
    }


def per_window(records: list[Record], samples: list[dict], window: float, duration: float) -> list[dict]:
    """Requests by outcome, latency and TTFT quantiles, and the server's gauges, per ``window`` seconds."""
    rows = []
    count = max(1, round(duration / window))
    for i in range(count):  # the last window also takes the requests that ended after the deadline
        low, high = i * window, (i + 1) * window if i < count - 1 else float("inf")
        recs = [r for r in records if low <= r.end < high]
        gauges = [s for s in samples if low <= s["t"] < high]
        answered = [r for r in recs if r.outcome == "200" and r.latency is not None and r.kind != "bad"]
        rows.append(
            {
                "window": i,
                "seconds": [round(low), round(min(high, duration))],
                "load_1m": round(max((s["load"] for s in gauges), default=0.0), 2),
                "requests": dict(sorted(Counter(r.outcome for r in recs).items())),
                "latency_s": quantiles([r.latency for r in answered]),
                "ttft_s": quantiles([r.ttft for r in answered if r.ttft is not None]),
                "rss_mib": round(max((s["rss_mib"] for s in gauges), default=0.0), 1),
                "fds": max((s["fds"] for s in gauges), default=0),
                "threads": max((s["threads"] for s in gauges), default=0),
                "max_queued": max((s["queued"] or 0 for s in gauges), default=0),
            }
        )
    return rows


def rss_drift(samples: list[dict], warmup: float, end: float, span: float) -> dict:
    """Median RSS over the first ``span`` seconds after the warm-up and over the last ``span`` seconds."""
    first = [s["rss_mib"] for s in samples if warmup <= s["t"] < warmup + span]
    last = [s["rss_mib"] for s in samples if end - span <= s["t"] <= end]
    if not first or not last:
        return {"first_mib": None, "last_mib": None, "drift_mib": None}
    a, b = statistics.median(first), statistics.median(last)
    return {"first_mib": round(a, 1), "last_mib": round(b, 1), "drift_mib": round(b - a, 1)}


def gauge_change(samples: list[dict], key: str, warmup: float) -> dict:
    """A gauge (fds, threads) at the end of the warm-up and at the last sample: growth there is a leak."""
    after = [s[key] for s in samples if s["t"] >= warmup]
    return {"after_warmup": after[0], "last": after[-1]} if after else {}


def wait_idle(base: str, timeout: float = 30.0) -> dict:
    """``/health`` once running and queued are both 0, or the last answer after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    health: dict = {}
    while time.monotonic() < deadline:
        try:
            health = httpx.get(base + "/health", timeout=5).json()
        except httpx.HTTPError as exc:
            return {"error": f"/health did not answer: {type(exc).__name__}"}
        if health["running"] == 0 and health["queued"] == 0:
            break
        time.sleep(0.2)
    return health


def failures(
    records: list[Record], drift: dict, limit_mb: float, health: dict, log_errors: list[str]
) -> list[str]:
    """Every reason the run fails, in words."""
    out = []
    bad = Counter(r.outcome for r in records if r.outcome.startswith("5") or r.outcome in TRANSPORT_FAILURES)
    out += [f"{n} x {outcome}" for outcome, n in sorted(bad.items())]
    unexpected = Counter(
        (r.kind, r.outcome) for r in records if r.outcome not in r.expected and r.outcome not in bad
    )
    out += [f"{n} x {kind} answered {outcome}" for (kind, outcome), n in sorted(unexpected.items())]
    if drift["drift_mib"] is None:
        out.append("RSS drift not measured: run longer than the warm-up plus two windows")
    elif drift["drift_mib"] > limit_mb:
        out.append(f"RSS drift {drift['drift_mib']} MiB > {limit_mb} MiB after the warm-up")
    if health.get("running") != 0 or health.get("queued") != 0:
        out.append(f"a model slot did not come back: /health {health}")
    if log_errors:
        out.append(f"{len(log_errors)} error lines in the server log, first: {log_errors[0][:200]}")
    return out


def server_log_errors(path: Path) -> list[str]:
    """Lines of the server's output that report an error or start a traceback (any of them fails the run)."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line for line in lines if "Traceback" in line or " ERROR " in line or line.startswith("ERROR")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from_pretrained", default=None, help="checkpoint to serve (default: tiny random)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients of the mix (default 4)")
    parser.add_argument("--max-queue", type=int, default=4, help="the server's --max-queue (default 4)")
    parser.add_argument("--burst-every", type=float, default=30.0, help="seconds between bursts (default 30)")
    parser.add_argument("--window", type=float, default=60.0, help="report window in seconds (default 60)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds before the RSS baseline (default min(60, duration/4))",
    )
    parser.add_argument("--rss-drift-mb", type=float, default=100.0, help="largest RSS drift allowed (MiB)")
    parser.add_argument("--request-timeout", type=float, default=180.0, help="client timeout per request (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.clients < 1 or args.window <= 0:
        parser.error("--duration, --clients and --window must be positive")
    return args


def run_load(soak: Soak, args: argparse.Namespace, capacity: int) -> None:
    """The mix's clients and the burster, until the deadline (each finishes its request in flight)."""
    threads = [
        threading.Thread(target=client_loop, args=(soak, i, args.seed), daemon=True)
        for i in range(args.clients)
    ]
    burst = (soak, capacity + 4, args.burst_every, args.seed)
    threads.append(threading.Thread(target=burst_loop, args=burst, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, soak.deadline - time.monotonic()) + args.request_timeout + 30)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from thinchat.server import ServeProcess

    tmp = tempfile.TemporaryDirectory()
    model_dir = (
        Path(args.from_pretrained) if args.from_pretrained else tiny_checkpoint(Path(tmp.name) / "tiny")
    )
    log_path = Path(tmp.name) / "server.log"
    warmup = args.warmup if args.warmup is not None else min(60.0, args.duration / 4)
    server_args = ["--from_pretrained", str(model_dir), "--max-queue", str(args.max_queue)]
    with ServeProcess(server_args, host=HOST, output=log_path) as proc:
        base = f"http://{HOST}:{proc.port}"
        start = time.monotonic()
        soak = Soak(base, model_dir.name, start + args.duration, start, args.request_timeout, slide_uris())
        probe = ServerProbe(soak, proc.process.pid)
        probe.start()
        run_load(soak, args, capacity=1 + args.max_queue)
        ended = soak.now()
        health = wait_idle(base)
        probe.stop()
    log_errors = server_log_errors(log_path)
    span = min(args.window, max(1.0, (ended - warmup) / 3))
    drift = rss_drift(probe.samples, warmup, min(ended, args.duration), span)
    reasons = failures(soak.records, drift, args.rss_drift_mb, health, log_errors)
    result = {
        "model": str(model_dir) if args.from_pretrained else "tiny-random (server overhead only)",
        "machine": machine(),
        "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "warmup": warmup},
        "windows": per_window(soak.records, probe.samples, args.window, args.duration),
        "totals": dict(sorted(Counter(r.outcome for r in soak.records).items())),
        "latency_s": quantiles([r.latency for r in soak.records if r.outcome == "200" and r.kind != "bad"]),
        "ttft_s": quantiles([r.ttft for r in soak.records if r.ttft is not None]),
        "rss": {**drift, "peak_mib": round(max((s["peak_mib"] for s in probe.samples), default=0.0), 1)},
        "fds": gauge_change(probe.samples, "fds", warmup),
        "threads": gauge_change(probe.samples, "threads", warmup),
        "health_at_end": health,
        "seconds": round(ended, 1),
        "failures": reasons,
        "verdict": "fail" if reasons else "pass",
    }
    emit_report(result, args.out, indent=1)
    tmp.cleanup()
    return 1 if reasons else 0


if __name__ == "__main__":
    raise SystemExit(main())
