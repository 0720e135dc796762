"""Queueing, concurrency and disconnect handling of the server, with a controllable stand-in engine.

Why a stand-in: these tests need generation that blocks until the test releases it, to observe a full
queue (429), a responsive event loop while the model is busy, and a slot freed when a client hangs up.
The model path itself is covered by test_server.py.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from thinchat.generation import GenerationSettings
from thinchat.server import BackgroundServer, ServerSettings


class _Tokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


class BlockingEngine:
    """Yields ``pieces`` one by one, each after ``gate`` is set; records concurrency and closes."""

    name = "blocking"
    settings = GenerationSettings(max_new_tokens=16)
    tokenizer = _Tokenizer()

    def __init__(self, pieces=("alpha ", "beta ", "gamma"), delay: float = 0.0):
        self.pieces = pieces
        self.delay = delay
        self.gate = threading.Event()
        self.active = 0
        self.max_active = 0
        self.started = 0
        self.closed = 0
        self._lock = threading.Lock()

    def count_tokens(self, messages, images):
        return 5

    def looked(self, messages, images):
        return messages

    def stream_messages(self, messages, images, **overrides):
        with self._lock:
            self.active += 1
            self.started += 1
            self.max_active = max(self.max_active, self.active)
        try:
            for piece in self.pieces:
                if not self.gate.wait(timeout=30):
                    raise RuntimeError("test gate never opened")
                time.sleep(self.delay)
                yield piece
        finally:
            with self._lock:
                self.active -= 1
                self.closed += 1


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def _health(server) -> dict:
    return httpx.get(server.url.removesuffix("/v1") + "/health", timeout=5).json()


def test_queue_full_gives_429_and_model_runs_one_at_a_time():
    engine = BlockingEngine()
    with BackgroundServer(engine, ServerSettings(max_concurrency=1, max_queue=1)) as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=30)

        def call():
            return client.chat.completions.create(
                model="blocking", messages=[{"role": "user", "content": "hi"}]
            )

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(call)
            _wait(lambda: engine.started == 1)
            second = pool.submit(call)
            _wait(lambda: _health(server)["queued"] == 1)
            health = _health(server)  # the event loop answers while the model is busy
            assert health["running"] == 1 and health["queued"] == 1
            with pytest.raises(openai.RateLimitError) as err:
                call()
            assert err.value.status_code == 429 and err.value.body["code"] == "queue_full"
            engine.gate.set()
            answers = [first.result(timeout=30), second.result(timeout=30)]
        assert [a.choices[0].message.content for a in answers] == ["alpha beta gamma"] * 2
        assert engine.max_active == 1
        _wait(lambda: _health(server)["running"] == 0)
        assert _health(server)["served"] == 2


def test_client_disconnect_frees_the_model():
    # 100,000 pieces at 2 ms each: only a cancelled generation ends within the test's timeouts.
    engine = BlockingEngine(pieces=tuple(f"p{i} " for i in range(100_000)), delay=0.002)
    with BackgroundServer(engine, ServerSettings(max_concurrency=1, max_queue=0)) as server:
        body = {"model": "blocking", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        engine.gate.set()
        with httpx.stream("POST", server.url + "/chat/completions", json=body, timeout=30) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            assert next(lines).startswith("data: ")
        # The client hung up after one event: the generator is closed and the slot is free again.
        _wait(lambda: engine.closed == 1)
        assert engine.started == 1
        _wait(lambda: _health(server)["running"] == 0)
        engine.pieces, engine.delay = ("ok",), 0.0
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=30)
        answer = client.chat.completions.create(
            model="blocking", messages=[{"role": "user", "content": "again"}]
        )
        assert answer.choices[0].message.content == "ok"
