"""The OpenAI-compatible FastAPI app: ``/v1/chat/completions`` (JSON or SSE), ``/v1/models``, ``/health``.

Why this shape: one model serves every request, so requests are admitted up to a bound (the rest get a
429 at once rather than waiting forever), wait their turn on a semaphore without blocking the event loop,
and generate on a worker thread. Every refusal is a 4xx in OpenAI's error shape, so the ``openai`` client
raises a typed exception and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from thinchat.errors import ImageError, PromptTooLongError, ThinchatError
from thinchat.server.api_errors import APIError, install_error_handlers, validation_error
from thinchat.server.inputs import InputLimits, to_engine_inputs
from thinchat.server.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    Usage,
    new_completion_id,
)
from thinchat.server.streaming import StopMatcher, ThreadedIterator, sse
from thinchat.server.usage import count_completion_tokens, count_prompt_tokens

log = logging.getLogger(__name__)


@dataclass
class ServerSettings:
    """Operator-controlled limits and access rules (``thinchat serve`` flags)."""

    api_key: str | None = None
    allow_dirs: tuple[Path, ...] = field(default_factory=tuple)
    max_concurrency: int = 1
    max_queue: int = 16
    max_image_pixels: int = 4096 * 4096
    max_images: int = 4
    max_request_bytes: int = 20 * 1024 * 1024
    served_model_name: str | None = None

    def limits(self) -> InputLimits:
        dirs = tuple(Path(d).resolve(strict=True) for d in self.allow_dirs)
        return InputLimits(
            max_image_pixels=self.max_image_pixels, max_images=self.max_images, allow_dirs=dirs
        )


class _Gate:
    """Admission (bounded queue -> 429) and the model slots (semaphore) for one engine."""

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        self.slots = asyncio.Semaphore(max_concurrency)
        self.capacity = max_concurrency + max_queue
        self.admitted = 0
        self.running = 0
        self.served = 0

    def admit(self) -> None:
        if self.admitted >= self.capacity:
            raise APIError(
                429,
                f"server busy: {self.admitted} requests running or queued (limit "
                f"{self.capacity}); retry later",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        self.admitted += 1

    def leave(self) -> None:
        self.admitted -= 1


def _engine_error(exc: ThinchatError) -> APIError:
    if isinstance(exc, PromptTooLongError):
        return APIError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, ImageError):
        return APIError(400, str(exc), param="messages", code="invalid_image")
    return APIError(400, str(exc), code="invalid_request")


def _overrides(req: ChatCompletionRequest) -> dict[str, Any]:
    """Generation overrides for the engine: only what the request set, so engine defaults apply otherwise."""
    if req.n != 1:
        raise APIError(400, "only n=1 is supported", param="n", code="unsupported_value")
    out: dict[str, Any] = {}
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is not None:
        out["max_new_tokens"] = max_tokens
    for name in ("temperature", "top_p", "seed", "repetition_penalty"):
        value = getattr(req, name)
        if value is not None:
            out[name] = value
    return out


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it passes ``limit`` bytes, before buffering it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(
            413,
            f"request body of {declared} bytes exceeds the limit of {limit} bytes; send "
            "smaller images or raise --max-request-bytes",
            code="request_too_large",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(
                413,
                f"request body exceeds the limit of {limit} bytes; send smaller images or raise "
                "--max-request-bytes",
                code="request_too_large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(engine: Any, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` (a ``thinchat.engine.ChatEngine`` or anything with its API)."""
    settings = settings or ServerSettings()
    limits = settings.limits()
    model_name = settings.served_model_name or engine.name
    created = int(time.time())
    app = FastAPI(title="thinchat", description="OpenAI-compatible chat completions for thin-section images")
    install_error_handlers(app)
    state: dict[str, _Gate] = {}

    def gate() -> _Gate:  # created lazily: the semaphore belongs to the server's event loop
        if "gate" not in state:
            state["gate"] = _Gate(settings.max_concurrency, settings.max_queue)
        return state["gate"]

    def check_auth(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), settings.api_key.encode()
        ):
            raise APIError(
                401,
                "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.get("/health")
    async def health() -> dict:
        g = gate()
        return {
            "status": "ok",
            "model": model_name,
            "running": g.running,
            "queued": g.admitted - g.running,
            "served": g.served,
        }

    @app.get("/v1/models")
    async def models(request: Request) -> ModelList:
        check_auth(request)
        return ModelList(data=[ModelCard(id=model_name, created=created)])

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> ModelCard:
        check_auth(request)
        if model_id != model_name:
            raise APIError(
                404,
                f"model '{model_id}' does not exist; this server serves '{model_name}'",
                param="model",
                code="model_not_found",
            )
        return ModelCard(id=model_name, created=created)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_auth(request)
        body = await _read_body(request, settings.max_request_bytes)
        try:
            req = ChatCompletionRequest.model_validate_json(body)
        except ValidationError as exc:
            raise validation_error(exc) from exc
        if req.model != model_name:
            raise APIError(
                404,
                f"model '{req.model}' does not exist; this server serves '{model_name}' (see GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        overrides = _overrides(req)
        messages, images = await run_in_threadpool(to_engine_inputs, req.messages, limits)
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        return await _generate(req, messages, images, overrides, stops)

    async def _generate(req, messages, images, overrides, stops):
        g = gate()
        g.admit()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                g.running -= 1
                g.served += 1
                g.leave()
                g.slots.release()

        try:
            await g.slots.acquire()
        except BaseException:
            g.leave()
            raise
        g.running += 1
        try:
            bridge = ThreadedIterator(
                lambda: engine.stream_messages(messages, images, **overrides), on_finish=release
            )
        except BaseException:
            release()
            raise
        try:
            # Engine errors (context too long, bad settings) surface here, before any header is sent.
            first = await bridge.next_piece()
        except ThinchatError as exc:
            raise _engine_error(exc) from exc
        completion_id, created_at = new_completion_id(), int(time.time())
        max_new = overrides.get("max_new_tokens", engine.settings.max_new_tokens)

        matcher = StopMatcher(stops)

        async def pieces() -> AsyncIterator[str]:
            piece = first
            try:
                while piece is not None:
                    out = matcher.feed(piece)
                    if out:
                        yield out
                    if matcher.stopped:
                        return
                    piece = await bridge.next_piece()
                tail = matcher.flush()
                if tail:
                    yield tail
            finally:
                bridge.cancel()

        async def usage_and_reason(text: str, stopped: bool) -> tuple[Usage, str]:
            prompt = await run_in_threadpool(count_prompt_tokens, engine, messages, images)
            # Re-tokenising can overcount (e.g. byte tokens decoded to U+FFFD); the model made at most max_new.
            completion = min(max_new, await run_in_threadpool(count_completion_tokens, engine, text))
            reason = "length" if not stopped and completion >= max_new else "stop"
            return Usage(
                prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
            ), reason

        if not req.stream:
            text = "".join([p async for p in pieces()])
            usage, reason = await usage_and_reason(text, stopped=matcher.stopped)
            return ChatCompletion(
                id=completion_id,
                created=created_at,
                model=model_name,
                usage=usage,
                choices=[Choice(message=AssistantMessage(content=text), finish_reason=reason)],
            )

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(delta: Delta, reason: str | None = None, usage: Usage | None = None, empty=False):
            choices = [] if empty else [ChunkChoice(delta=delta, finish_reason=reason)]
            return ChatCompletionChunk(
                id=completion_id, created=created_at, model=model_name, choices=choices, usage=usage
            )

        async def events() -> AsyncIterator[bytes]:
            yield sse(chunk(Delta(role="assistant", content="")))
            parts: list[str] = []
            try:
                async for piece in pieces():
                    parts.append(piece)
                    yield sse(chunk(Delta(content=piece)))
            except ThinchatError as exc:  # mid-stream: headers are gone, send the error as an event
                yield sse(_engine_error(exc).body())
                yield sse("[DONE]")
                return
            text = "".join(parts)
            usage, reason = await usage_and_reason(text, stopped=matcher.stopped)
            yield sse(chunk(Delta(), reason))
            if include_usage:
                yield sse(chunk(Delta(), usage=usage, empty=True))
            yield sse("[DONE]")

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app
