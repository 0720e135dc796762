"""The OpenAI-compatible FastAPI app: ``/v1/chat/completions`` (JSON or SSE), ``/v1/models``, ``/health``.

Why this shape: one model serves every request, so requests are admitted up to a bound before their body
is read (the rest get a 429 at once rather than waiting forever), are checked cheaply (size, counts, image
headers) off the event loop, wait their turn on a semaphore, decode their images only once they hold the
model, and generate on a worker thread. A client that hangs up, streaming or not, frees the model within
a token. Every refusal is a 4xx in OpenAI's error shape, so the ``openai`` client raises a typed exception
and the server keeps serving.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic_core
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from thinchat.errors import ImageError, PromptTooLongError, ThinchatError
from thinchat.server.admission import (
    ClientGoneError,
    DisconnectWatch,
    Gate,
    Ticket,
    drain_before_refusal,
    read_body,
)
from thinchat.server.api_errors import APIError, install_error_handlers, validation_error
from thinchat.server.inputs import (
    InputLimits,
    PendingImage,
    check_counts,
    check_stop,
    decode_images,
    plan_inputs,
)
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
from thinchat.server.streaming import StopMatcher, ThreadedIterator, collect, sse
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
    max_image_bytes: int = 8 * 1024 * 1024
    max_request_bytes: int = 20 * 1024 * 1024
    max_messages: int = 256
    max_stop: int = 4
    served_model_name: str | None = None
    #: Answer a question about images after the model's own description of them (thinchat.chat.look),
    #: as the chat demos do; a request's ``look_first`` field overrides it.
    look_first: bool = True

    def limits(self) -> InputLimits:
        dirs = tuple(Path(d).resolve(strict=True) for d in self.allow_dirs)
        return InputLimits(
            max_image_pixels=self.max_image_pixels,
            max_images=self.max_images,
            max_image_bytes=self.max_image_bytes,
            max_messages=self.max_messages,
            max_stop=self.max_stop,
            allow_dirs=dirs,
        )


def _engine_error(exc: ThinchatError) -> APIError:
    if isinstance(exc, PromptTooLongError):
        return APIError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, ImageError):
        return APIError(400, str(exc), param="messages", code="invalid_image")
    return APIError(400, str(exc), code="invalid_request")


#: Sampling divides the logits by the temperature; below this they can overflow to inf (a NaN softmax).
#: Such temperatures decode greedily, which is their limit.
MIN_SAMPLING_TEMPERATURE = 1e-3


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
    if 0 < out.get("temperature", 0) < MIN_SAMPLING_TEMPERATURE:
        out["temperature"] = 0.0
    return out


def create_app(engine: Any, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` (a ``thinchat.engine.ChatEngine`` or anything with its API)."""
    settings = settings or ServerSettings()
    limits = settings.limits()
    model_name = settings.served_model_name or engine.name
    created = int(time.time())
    app = FastAPI(title="thinchat", description="OpenAI-compatible chat completions for thin-section images")
    install_error_handlers(app)
    state: dict[str, Gate] = {}

    def gate() -> Gate:  # created lazily: the semaphore belongs to the server's event loop
        if "gate" not in state:
            state["gate"] = Gate(settings.max_concurrency, settings.max_queue)
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
            "abandoned": g.abandoned,
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

    def parse(body: bytes) -> ChatCompletionRequest:
        """The validated request; counts are checked on the raw JSON first.

        Why two steps: validating every message of a 400,000-message body holds the GIL for over a
        second (the event loop and /health stall); reading the JSON tree is ~10x cheaper, and the
        message and stop counts are refused from it before any validation.
        """
        try:
            raw = pydantic_core.from_json(body)
        except ValueError as exc:
            raise APIError(
                400, "request body is not valid JSON; send a JSON object", code="invalid_json"
            ) from exc
        if isinstance(raw, dict):
            check_counts(raw.get("messages"), raw.get("stop"), limits)
        try:
            return ChatCompletionRequest.model_validate(raw)
        except ValidationError as exc:
            raise validation_error(exc) from exc

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            check_auth(request)
            ticket = gate().ticket()  # 429 before the body is read: bounded memory for queued requests
        except APIError as exc:
            await drain_before_refusal(request, exc, settings.max_request_bytes)  # the answer must arrive
            raise
        watch: DisconnectWatch | None = None
        try:
            body = await read_body(request, settings.max_request_bytes)
            # Parsing and the cheap checks (counts, base64, image headers) run off the event loop.
            req = await run_in_threadpool(parse, body)
            del body
            if req.model != model_name:
                raise APIError(
                    404,
                    f"model '{req.model}' does not exist; this server serves '{model_name}' (see GET /v1/models)",
                    param="model",
                    code="model_not_found",
                )
            overrides = _overrides(req)
            stops = check_stop(req.stop, limits)
            messages, pending = await run_in_threadpool(plan_inputs, req.messages, limits)
            watch = DisconnectWatch(request)
            await ticket.acquire(watch)
            return await _generate(req, messages, pending, overrides, stops, ticket, watch)
        except ClientGoneError:
            log.info("client disconnected before its answer was ready; generation cancelled")
            ticket.close(abandoned=True)
            return Response(status_code=499)
        except BaseException:
            ticket.close()  # no-op once the generation thread owns the ticket
            raise
        finally:
            if watch is not None:
                watch.stop()

    async def _generate(
        req: ChatCompletionRequest,
        messages: list[dict],
        pending: list[PendingImage],
        overrides: dict[str, Any],
        stops: list[str],
        ticket: Ticket,
        watch: DisconnectWatch,
    ):
        images = await watch.race(run_in_threadpool(decode_images, pending, limits))
        if settings.look_first if req.look_first is None else req.look_first:
            try:  # the slide's description: generated once per slide (kept by the engine), then reused
                messages = await watch.race(run_in_threadpool(engine.looked, messages, images))
            except ThinchatError as exc:
                raise _engine_error(exc) from exc
        # From here the generation thread owns the ticket: it closes it when it ends (done or cancelled).
        bridge = ThreadedIterator(
            lambda: engine.stream_messages(messages, images, **overrides), on_finish=ticket.finish
        )
        ticket.hand_over()
        try:
            # Engine errors (context too long, bad settings) surface here, before any header is sent.
            first = await watch.race(bridge.next_piece())
        except ThinchatError as exc:
            raise _engine_error(exc) from exc
        except BaseException:
            bridge.cancel()
            raise
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
            try:
                text = await watch.race(collect(pieces()))  # a client that hangs up cancels generation
            except ThinchatError as exc:
                raise _engine_error(exc) from exc
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
            parts: list[str] = []
            try:
                yield sse(chunk(Delta(role="assistant", content="")))
                async for piece in pieces():
                    parts.append(piece)
                    yield sse(chunk(Delta(content=piece)))
            except ThinchatError as exc:  # mid-stream: headers are gone, send the error as an event
                yield sse(_engine_error(exc).body())
                yield sse("[DONE]")
                return
            finally:
                bridge.cancel()  # also when the client left before the first piece was sent
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
