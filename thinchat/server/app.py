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
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from PIL import Image

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


class _ChatService:
    """What every route shares: the engine, the operator's settings and the admission gate.

    Why a class: the handlers need the same few things (limits, the served model's name, the gate); one
    object holding them lets each step of a request be a short method instead of a closure in
    :func:`create_app`.
    """

    def __init__(self, engine: Any, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.limits = settings.limits()
        self.model_name = settings.served_model_name or engine.name
        self.created = int(time.time())
        self._gate: Gate | None = None

    def gate(self) -> Gate:
        """The admission gate, created lazily: its semaphore belongs to the server's event loop."""
        if self._gate is None:
            self._gate = Gate(self.settings.max_concurrency, self.settings.max_queue)
        return self._gate

    def check_auth(self, request: Request) -> None:
        """Refuse (401) a request without the configured bearer key; compared in constant time."""
        if self.settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.settings.api_key.encode()
        ):
            raise APIError(
                401,
                "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def health(self) -> dict:
        """The gate's counters: what a load balancer or the soak benchmark watches."""
        g = self.gate()
        return {
            "status": "ok",
            "model": self.model_name,
            "running": g.running,
            "queued": g.admitted - g.running,
            "served": g.served,
            "abandoned": g.abandoned,
        }

    def model_card(self, model_id: str) -> ModelCard:
        """The card of the served model; any other id is a 404 naming the one served."""
        if model_id != self.model_name:
            raise APIError(
                404,
                f"model '{model_id}' does not exist; this server serves '{self.model_name}'",
                param="model",
                code="model_not_found",
            )
        return ModelCard(id=self.model_name, created=self.created)

    def parse(self, body: bytes) -> ChatCompletionRequest:
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
            check_counts(raw.get("messages"), raw.get("stop"), self.limits)
        try:
            return ChatCompletionRequest.model_validate(raw)
        except ValidationError as exc:
            raise validation_error(exc) from exc

    def check_model(self, req: ChatCompletionRequest) -> None:
        """Refuse (404) a request for a model this server does not serve."""
        if req.model != self.model_name:
            raise APIError(
                404,
                f"model '{req.model}' does not exist; this server serves '{self.model_name}' (see GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    async def chat_completions(self, request: Request) -> ChatCompletion | Response:
        """Admit, read, check, queue and answer one chat request; a client that hangs up gets a 499."""
        try:
            self.check_auth(request)
            ticket = self.gate().ticket()  # 429 before the body is read: bounded memory for queued requests
        except APIError as exc:
            # Drain the body first, or the refusal may never arrive.
            await drain_before_refusal(request, exc, self.settings.max_request_bytes)
            raise
        watch: DisconnectWatch | None = None
        try:
            body = await read_body(request, self.settings.max_request_bytes)
            # Parsing and the cheap checks (counts, base64, image headers) run off the event loop.
            req = await run_in_threadpool(self.parse, body)
            del body
            self.check_model(req)
            overrides = _overrides(req)
            stops = check_stop(req.stop, self.limits)
            messages, pending = await run_in_threadpool(plan_inputs, req.messages, self.limits)
            watch = DisconnectWatch(request)
            await ticket.acquire(watch)
            return await self._generate(req, messages, pending, overrides, stops, ticket, watch)
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
        self,
        req: ChatCompletionRequest,
        messages: list[dict],
        pending: list[PendingImage],
        overrides: dict[str, Any],
        stops: list[str],
        ticket: Ticket,
        watch: DisconnectWatch,
    ) -> ChatCompletion | StreamingResponse:
        """Generate once the request holds the model: decode its images, look first if asked, answer."""
        images = await watch.race(run_in_threadpool(decode_images, pending, self.limits))
        if self.settings.look_first if req.look_first is None else req.look_first:
            try:  # the slide's description: generated once per slide (kept by the engine), then reused
                messages = await watch.race(run_in_threadpool(self.engine.looked, messages, images))
            except ThinchatError as exc:
                raise _engine_error(exc) from exc
        generation = await self._start(messages, images, overrides, stops, ticket, watch)
        if not req.stream:
            return await generation.completion(watch)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return generation.streaming_response(include_usage)

    async def _start(
        self,
        messages: list[dict],
        images: list[Image.Image],
        overrides: dict[str, Any],
        stops: list[str],
        ticket: Ticket,
        watch: DisconnectWatch,
    ) -> _Generation:
        """Start generating on a worker thread and wait for the first piece.

        Why wait: engine errors (context too long, bad settings) surface with the first piece, and then
        they can still be an ordinary 400, before any header is sent.
        """
        # From here the generation thread owns the ticket: it closes it when it ends (done or cancelled).
        bridge = ThreadedIterator(
            lambda: self.engine.stream_messages(messages, images, **overrides), on_finish=ticket.finish
        )
        ticket.hand_over()
        try:
            first = await watch.race(bridge.next_piece())
        except ThinchatError as exc:
            raise _engine_error(exc) from exc
        except BaseException:
            bridge.cancel()
            raise
        max_new = overrides.get("max_new_tokens", self.engine.settings.max_new_tokens)
        return _Generation(self, messages, images, bridge, first, stops, max_new)


class _Generation:
    """One request's running generation, from its first piece on, answered as JSON or as an SSE stream.

    Why a class: both answer shapes share the stop matching, the token counts and the completion's id;
    the worker thread is cancelled whenever the pieces stop being read (done, stopped or client gone).
    """

    def __init__(
        self,
        service: _ChatService,
        messages: list[dict],
        images: list[Image.Image],
        bridge: ThreadedIterator,
        first: str | None,
        stops: list[str],
        max_new: int,
    ) -> None:
        self.engine = service.engine
        self.model_name = service.model_name
        self.messages = messages
        self.images = images
        self.bridge = bridge
        self.first = first
        self.max_new = max_new
        self.completion_id, self.created_at = new_completion_id(), int(time.time())
        self.matcher = StopMatcher(stops)

    async def pieces(self) -> AsyncIterator[str]:
        """The generated text, cut at the first stop sequence; the thread is cancelled when it ends."""
        piece = self.first
        try:
            while piece is not None:
                out = self.matcher.feed(piece)
                if out:
                    yield out
                if self.matcher.stopped:
                    return
                piece = await self.bridge.next_piece()
            tail = self.matcher.flush()
            if tail:
                yield tail
        finally:
            self.bridge.cancel()

    async def usage_and_reason(self, text: str, stopped: bool) -> tuple[Usage, str]:
        """Token counts and the finish reason (``length`` when the token budget ran out, else ``stop``)."""
        prompt = await run_in_threadpool(count_prompt_tokens, self.engine, self.messages, self.images)
        # Re-tokenising can overcount (e.g. byte tokens decoded to U+FFFD); the model made at most max_new.
        completion = min(self.max_new, await run_in_threadpool(count_completion_tokens, self.engine, text))
        reason = "length" if not stopped and completion >= self.max_new else "stop"
        return Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        ), reason

    async def completion(self, watch: DisconnectWatch) -> ChatCompletion:
        """The whole answer as one JSON completion."""
        try:
            text = await watch.race(collect(self.pieces()))  # a client that hangs up cancels generation
        except ThinchatError as exc:
            raise _engine_error(exc) from exc
        usage, reason = await self.usage_and_reason(text, stopped=self.matcher.stopped)
        return ChatCompletion(
            id=self.completion_id,
            created=self.created_at,
            model=self.model_name,
            usage=usage,
            choices=[Choice(message=AssistantMessage(content=text), finish_reason=reason)],
        )

    def chunk(
        self, delta: Delta, reason: str | None = None, usage: Usage | None = None, empty: bool = False
    ) -> ChatCompletionChunk:
        """One streamed chunk of this completion (``empty``: no choices, the usage-only last chunk)."""
        choices = [] if empty else [ChunkChoice(delta=delta, finish_reason=reason)]
        return ChatCompletionChunk(
            id=self.completion_id,
            created=self.created_at,
            model=self.model_name,
            choices=choices,
            usage=usage,
        )

    async def events(self, include_usage: bool) -> AsyncIterator[bytes]:
        """The SSE events: role, content deltas, finish reason, usage if asked, ``[DONE]``."""
        parts: list[str] = []
        try:
            yield sse(self.chunk(Delta(role="assistant", content="")))
            async for piece in self.pieces():
                parts.append(piece)
                yield sse(self.chunk(Delta(content=piece)))
        except ThinchatError as exc:  # mid-stream: headers are gone, send the error as an event
            yield sse(_engine_error(exc).body())
            yield sse("[DONE]")
            return
        finally:
            self.bridge.cancel()  # also when the client left before the first piece was sent
        text = "".join(parts)
        usage, reason = await self.usage_and_reason(text, stopped=self.matcher.stopped)
        yield sse(self.chunk(Delta(), reason))
        if include_usage:
            yield sse(self.chunk(Delta(), usage=usage, empty=True))
        yield sse("[DONE]")

    def streaming_response(self, include_usage: bool) -> StreamingResponse:
        """The answer as a server-sent event stream, unbuffered by proxies."""
        return StreamingResponse(
            self.events(include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def _add_info_routes(app: FastAPI, service: _ChatService) -> None:
    """``/health`` and the model listing: cheap routes that never wait for the model."""

    @app.get("/health")
    async def health() -> dict:
        return service.health()

    @app.get("/v1/models")
    async def models(request: Request) -> ModelList:
        service.check_auth(request)
        return ModelList(data=[ModelCard(id=service.model_name, created=service.created)])

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> ModelCard:
        service.check_auth(request)
        return service.model_card(model_id)


def _add_chat_route(app: FastAPI, service: _ChatService) -> None:
    """``POST /v1/chat/completions``, answered as JSON or as an SSE stream."""

    # No return annotation: FastAPI must not build a response model from it (the route returns either a
    # ChatCompletion or a Response, as before).
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await service.chat_completions(request)


def create_app(engine: Any, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` (a ``thinchat.engine.ChatEngine`` or anything with its API)."""
    service = _ChatService(engine, settings or ServerSettings())
    app = FastAPI(title="thinchat", description="OpenAI-compatible chat completions for thin-section images")
    install_error_handlers(app)
    _add_info_routes(app, service)
    _add_chat_route(app, service)
    return app
