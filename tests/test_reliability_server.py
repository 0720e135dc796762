"""Server abuse cases of issue 16, with a controllable stand-in engine on a loopback server: a client that
leaves frees the model in both modes, requests are admitted and counted before any image is decoded, every
out-of-range value is a 4xx, and the API key can come from a file or the environment."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from thinchat.errors import ConfigError
from thinchat.generation import GenerationSettings
from thinchat.server import BackgroundServer, ServerSettings


class _Tokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


class GatedEngine:
    """Yields ``pieces`` (each after ``gate`` opens, ``delay`` apart); counts starts, closes and images."""

    name = "gated"
    settings = GenerationSettings(max_new_tokens=16)
    tokenizer = _Tokenizer()

    def __init__(self, pieces=("ok",), delay: float = 0.0) -> None:
        self.pieces, self.delay = pieces, delay
        self.gate = threading.Event()
        self.started = self.closed = 0
        self.images_seen: list[int] = []
        self.overrides_seen: list[dict] = []

    def count_tokens(self, messages, images):
        return 5

    def looked(self, messages, images):
        return messages

    def stream_messages(self, messages, images, **overrides):
        self.started += 1
        self.images_seen.append(len(images))
        self.overrides_seen.append(overrides)
        try:
            for piece in self.pieces:
                if not self.gate.wait(timeout=60):
                    raise RuntimeError("test gate never opened")
                time.sleep(self.delay)
                yield piece
        finally:
            self.closed += 1


def _wait(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def _health(server) -> dict:
    return httpx.get(server.url.removesuffix("/v1") + "/health", timeout=5).json()


def _post(server, body: dict | bytes, timeout: float = 30) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        server.url + "/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
        timeout=timeout,
    )


def _png_uri(size: tuple[int, int], truncate: bool = False) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, "gray").save(buf, "PNG")
    data = buf.getvalue()
    if truncate:
        data = data[: len(data) // 2]
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _ask(text: str = "hi", *, image: str | None = None, **extra) -> dict:
    content: list[dict] = [{"type": "text", "text": text}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": image}})
    return {"model": "gated", "messages": [{"role": "user", "content": content}], **extra}


# ----- item 1: disconnects cancel non-streaming requests too --------------------------------------------
def test_non_streaming_client_disconnect_frees_the_model() -> None:
    # 100,000 pieces 2 ms apart: only a cancelled generation ends within the test's timeouts.
    engine = GatedEngine(pieces=tuple(f"p{i} " for i in range(100_000)), delay=0.002)
    engine.gate.set()
    with BackgroundServer(engine, ServerSettings(max_concurrency=1, max_queue=0)) as server:
        with pytest.raises(httpx.ReadTimeout):
            _post(server, _ask(), timeout=1.0)  # the client gives up after 1 s and closes the connection
        _wait(lambda: engine.closed == 1)
        _wait(lambda: _health(server)["running"] == 0)
        assert _health(server)["abandoned"] == 1
        engine.pieces, engine.delay = ("again",), 0.0
        answer = _post(server, _ask())
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "again"


def test_queued_client_that_leaves_never_generates() -> None:
    engine = GatedEngine()
    with BackgroundServer(engine, ServerSettings(max_concurrency=1, max_queue=4)) as server:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(_post, server, _ask())
            _wait(lambda: engine.started == 1)
            with pytest.raises(httpx.ReadTimeout):
                _post(server, _ask("queued"), timeout=1.0)
            _wait(lambda: _health(server)["queued"] == 0)
            engine.gate.set()
            assert first.result(timeout=30).status_code == 200
        time.sleep(0.3)
        assert engine.started == 1  # the abandoned request never reached the model


# ----- item 2: admit and count before decoding ------------------------------------------------------------
def test_a_full_queue_refuses_before_reading_or_decoding_the_request() -> None:
    engine = GatedEngine()
    settings = ServerSettings(max_concurrency=1, max_queue=0)
    with BackgroundServer(engine, settings) as server, ThreadPoolExecutor(1) as pool:
        first = pool.submit(_post, server, _ask())
        _wait(lambda: engine.started == 1)
        # Invalid base64: a server that decoded before admitting would answer 400, not 429.
        refused = _post(server, _ask(image="data:image/png;base64,!!!not-base64!!!"))
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
        engine.gate.set()
        assert first.result(timeout=30).status_code == 200


def test_queued_requests_hold_no_decoded_images() -> None:
    engine = GatedEngine()
    with BackgroundServer(engine, ServerSettings(max_concurrency=1, max_queue=2)) as server:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(_post, server, _ask())
            _wait(lambda: engine.started == 1)
            # A truncated PNG passes the header check; its pixels are decoded only once it holds the model.
            second = pool.submit(_post, server, _ask(image=_png_uri((64, 64), truncate=True)))
            _wait(lambda: _health(server)["queued"] == 1)
            time.sleep(0.5)
            assert not second.done()
            engine.gate.set()
            assert first.result(timeout=30).status_code == 200
            answer = second.result(timeout=30)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_image"
        assert engine.started == 1


def test_image_bytes_and_pixels_are_checked_before_decoding() -> None:
    engine = GatedEngine()
    engine.gate.set()
    settings = ServerSettings(max_image_pixels=1024 * 1024, max_image_bytes=64 * 1024)
    with BackgroundServer(engine, settings) as server:
        big = _post(server, _ask(image=_png_uri((4096, 4096))))  # ~50 KB of PNG, 16.7 M pixels
        assert big.status_code == 413 and big.json()["error"]["code"] == "image_too_large"
        assert "pixels exceeds the limit" in big.json()["error"]["message"]
        heavy = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"\0" * 100_000).decode()
        too_many_bytes = _post(server, _ask(image=heavy))
        assert (
            too_many_bytes.status_code == 413
            and "bytes per image" in too_many_bytes.json()["error"]["message"]
        )
        assert _post(server, _ask(image=_png_uri((32, 32)))).status_code == 200
        assert engine.images_seen == [1]


def test_too_many_messages_is_a_fast_400_and_health_stays_responsive() -> None:
    engine = GatedEngine()
    engine.gate.set()
    settings = ServerSettings(max_request_bytes=20 * 1024 * 1024)
    with BackgroundServer(engine, settings) as server:
        body = json.dumps(
            {"model": "gated", "messages": [{"role": "user", "content": "x"}] * 400_001}
        ).encode()
        with ThreadPoolExecutor(1) as pool:
            start = time.monotonic()
            pending = pool.submit(_post, server, body, 60)
            worst = 0.0
            while not pending.done():
                t0 = time.monotonic()
                _health(server)
                worst = max(worst, time.monotonic() - t0)
                time.sleep(0.05)
            answer = pending.result()
            elapsed = time.monotonic() - start
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "too_many_messages"
        assert elapsed < 30 and worst < 1.0, (elapsed, worst)
        assert engine.started == 0


# ----- item 3: out-of-range values are 4xx -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"seed": 2**70}, "seed"),
        ({"seed": -(2**64)}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [str(i) for i in range(10_000)]}, "stop"),
        ({"stop": "x" * 1000}, "stop[0]"),
        ({"frequency_penalty": 7.0}, "frequency_penalty"),
    ],
)
def test_out_of_range_values_are_400(extra: dict, param: str) -> None:
    engine = GatedEngine()
    engine.gate.set()
    with BackgroundServer(engine, ServerSettings()) as server:
        answer = _post(server, _ask(**extra))
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == param
        raw = json.dumps(_ask()).replace('"messages"', '"repetition_penalty": Infinity, "messages"')
        assert _post(server, raw.encode()).status_code == 400
        assert _post(server, _ask(seed=2**64 - 1, stop=["a", "b", "c", "d"])).status_code == 200
        assert engine.started == 1
        # A temperature so small that logits / T overflow decodes greedily (its limit), not a 500.
        assert _post(server, _ask(temperature=1e-300)).status_code == 200
        assert engine.overrides_seen[-1]["temperature"] == 0.0


# ----- item 4: the API key from a file or the environment ------------------------------------------------
def test_api_key_from_file_or_environment(tmp_path) -> None:
    from thinchat.commands.serve import API_KEY_ENV, resolve_api_key

    key_file = tmp_path / "key"
    key_file.write_text("s3cret-from-file\n", encoding="utf-8")
    assert resolve_api_key(None, str(key_file), {}) == "s3cret-from-file"
    assert resolve_api_key(None, None, {API_KEY_ENV: "from-env"}) == "from-env"
    assert resolve_api_key("cli", None, {API_KEY_ENV: "from-env"}) == "cli"
    assert resolve_api_key(None, None, {}) is None
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    for bad in (str(tmp_path / "empty"), str(tmp_path / "missing")):
        with pytest.raises(ConfigError, match="--api-key-file"):
            resolve_api_key(None, bad, {})
    with pytest.raises(ConfigError, match="not both"):
        resolve_api_key("a", str(key_file), {})


def test_serve_reads_the_key_file(tiny_llava_dir, tmp_path) -> None:
    from thinchat.server import ServeProcess

    key_file = tmp_path / "key"
    key_file.write_text("k-123\n", encoding="utf-8")
    with ServeProcess(["--from_pretrained", str(tiny_llava_dir), "--api-key-file", str(key_file)]) as proc:
        assert httpx.get(proc.url + "/models", timeout=10).status_code == 401
        ok = httpx.get(proc.url + "/models", headers={"Authorization": "Bearer k-123"}, timeout=10)
        assert ok.status_code == 200
