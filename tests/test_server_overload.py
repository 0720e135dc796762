"""Over capacity, every request gets a complete HTTP answer (issue 29): 429 or 413, never a reset.

Why these clients: ``urllib`` sends ``Connection: close``, so uvicorn closes the connection right after
the answer; an answer sent while such a client is still uploading used to be lost in the kernel's reset
(7 of 24 clients sending 12 MB at once against ``--max-queue 16``). The flood runs the real
``thinchat serve`` on a tiny model; the protocol cases use raw sockets against a stand-in engine, to send
exactly the bytes a hostile or slow client would. All traffic is 127.0.0.1, bounded in count and time.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
from test_server_limits import BlockingEngine

from thinchat.server import BackgroundServer, ServeProcess, ServerSettings

#: Body sizes of the flood: several MB, as 1024 px slides sent as data URIs are.
IMAGE_SIDE = 1024
MAX_REQUEST_BYTES = 6_000_000


def _noise_png_uri(side: int, seed: int) -> str:
    """A PNG of random pixels (incompressible: about 3 bytes per pixel), as a data URI."""
    import random

    from PIL import Image

    pixels = random.Random(seed).randbytes(side * side * 3)
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(buf, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _body(model: str, uris: list[str]) -> bytes:
    content = [{"type": "image_url", "image_url": {"url": u}} for u in uris] + [
        {"type": "text", "text": "Describe this thin section."}
    ]
    request = {
        "model": model,
        "max_tokens": 2,
        "look_first": False,
        "messages": [{"role": "user", "content": content}],
    }
    return json.dumps(request).encode()


def _urllib_post(url: str, data: bytes | Iterator[bytes], start: threading.Barrier) -> str:
    """The status as text, or the transport error's name (a reset shows up here)."""
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    start.wait(timeout=60)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return str(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        retry_after = exc.headers.get("Retry-After")
        return f"{exc.code}" + (" retry-after" if retry_after else "")
    except (urllib.error.URLError, OSError) as exc:
        return f"transport error: {getattr(exc, 'reason', exc)!r}"


def _chunks(data: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    """The body as an iterable: urllib then sends it chunked, with no Content-Length to refuse early on."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _flood(url: str, bodies: list[bytes | Iterator[bytes]]) -> list[str]:
    """Send every body at once (one thread each, released together) and return the outcomes in order."""
    start = threading.Barrier(len(bodies))
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda data: _urllib_post(url, data, start), bodies))


def test_flood_of_large_bodies_above_the_queue_gets_only_200_429_413(tiny_llava_dir) -> None:
    one = _noise_png_uri(IMAGE_SIDE, seed=1)  # ~4.2 MB as base64
    fits = _body(tiny_llava_dir.name, [one])
    over = _body(tiny_llava_dir.name, [one, one[: len(one) // 2]])  # ~6.3 MB: over the 6 MB limit
    assert len(fits) < MAX_REQUEST_BYTES < len(over)
    args = ["--from_pretrained", str(tiny_llava_dir), "--max-queue", "2"]
    args += ["--max-request-bytes", str(MAX_REQUEST_BYTES), "--max-image-pixels", str(IMAGE_SIDE**2)]
    began = time.monotonic()
    with ServeProcess(args) as proc:
        url = proc.url + "/chat/completions"
        # Wave 1: 12 fitting bodies and 4 over the limit (2 with a Content-Length, 2 chunked) against
        # room for 3. Wave 2: the 4 over the limit alone, so at least 3 are admitted and read (413).
        wave1 = _flood(url, [fits] * 12 + [over] * 2 + [_chunks(over), _chunks(over)])
        wave2 = _flood(url, [over, over, _chunks(over), _chunks(over)])
        health = httpx.get(f"http://{proc.host}:{proc.port}/health", timeout=10).json()
    counts = Counter(wave1 + wave2)
    assert set(wave1[:12]) <= {"200", "429 retry-after"}, counts  # no reset, no 5xx, no 400
    assert set(wave1[12:] + wave2) <= {"413", "429 retry-after"}, counts
    assert counts["429 retry-after"] >= 1 and counts["200"] >= 1 and counts["413"] >= 3, counts
    assert health["running"] == 0 and health["queued"] == 0, health
    assert time.monotonic() - began < 150


def _raw(port: int, head: bytes, body: bytes = b"", pause: float = 0.0, close: bool = False) -> bytes:
    """Send ``head`` and ``body`` on a fresh socket and return what the server sends back (10 s bound)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        if close:
            return b""
        if pause:
            time.sleep(pause)
        answer = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                break
            if not piece:
                break
            answer += piece
            if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                break
        return answer


def _head(length: int, extra: str = "Connection: close\r\n") -> bytes:
    return (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def _health(server: BackgroundServer) -> dict:
    return httpx.get(server.url.removesuffix("/v1") + "/health", timeout=5).json()


@contextlib.contextmanager
def _busy_server(engine: BlockingEngine, **limits) -> Iterator[BackgroundServer]:
    """A server whose one slot is held by a blocked generation, with no queue: every new request is a 429."""
    with BackgroundServer(engine, ServerSettings(max_concurrency=1, max_queue=0, **limits)) as server:
        body = {"model": "blocking", "messages": [{"role": "user", "content": "hi"}]}
        holder = threading.Thread(
            target=lambda: httpx.post(server.url + "/chat/completions", json=body, timeout=60)
        )
        holder.start()
        deadline = time.monotonic() + 10
        while engine.started == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            yield server
        finally:
            engine.gate.set()
            holder.join(timeout=30)


def test_a_refused_body_is_read_before_the_answer_so_a_closing_client_gets_it() -> None:
    engine = BlockingEngine()
    with _busy_server(engine) as server:
        body = b'{"model": "blocking", "messages": []}' + b" " * 15_000_000
        answer = _raw(server.port, _head(len(body)), body)
        assert answer.startswith(b"HTTP/1.1 429"), answer[:80]
        assert b"retry-after: 1" in answer.lower() and b"queue_full" in answer


def test_a_client_waiting_for_100_continue_is_refused_without_being_asked_for_its_body() -> None:
    engine = BlockingEngine()
    with _busy_server(engine) as server:
        answer = _raw(server.port, _head(5_000_000, "Connection: close\r\nExpect: 100-continue\r\n"))
        assert answer.startswith(b"HTTP/1.1 429"), answer[:80]  # no "100 Continue" first


def test_a_body_declared_far_over_the_limit_is_refused_at_once_and_the_connection_closed() -> None:
    engine = BlockingEngine()
    engine.gate.set()
    with BackgroundServer(engine, ServerSettings(max_request_bytes=1000)) as server:
        began = time.monotonic()
        answer = _raw(server.port, _head(10**12, extra=""), b"{")  # a keep-alive client: the server closes
        assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
        assert b"connection: close" in answer.lower() and b"request_too_large" in answer
        assert time.monotonic() - began < 5


def test_a_client_that_hangs_up_mid_upload_is_counted_abandoned_not_an_error(caplog) -> None:
    engine = BlockingEngine()
    engine.gate.set()
    with BackgroundServer(engine, ServerSettings()) as server:
        _raw(server.port, _head(2_000_000), b'{"model": "blocking", ' + b" " * 100_000, close=True)
        deadline = time.monotonic() + 10
        while _health(server)["abandoned"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        health = _health(server)
    assert health["abandoned"] == 1 and health["running"] == 0 and health["queued"] == 0, health
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
