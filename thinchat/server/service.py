"""The chat service behind the routes: auth, the served model, admission and one request's way to the
model (parse, check, queue, decode images, look first, start generating).

Why this shape: one model serves every request, so requests are admitted up to a bound before their body
is read (the rest get a 429 at once rather than waiting forever), are checked cheaply (size, counts, image
headers) off the event loop, wait their turn on a semaphore, decode their images only once they hold the
model, and generate on a worker thread (``thinchat.server.completion``).
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING, Any

import pydantic_core
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from thinchat.errors import ThinchatError
from thinchat.server.admission import (
    ClientGoneError,
    DisconnectWatch,
    Gate,
    Ticket,
    drain_before_refusal,
    read_body,
)
from thinchat.server.api_errors import APIError, engine_error, validation_error
from thinchat.server.completion import Generation
from thinchat.server.inputs import PendingImage, check_counts, check_stop, decode_images, plan_inputs
from thinchat.server.schemas import ChatCompletion, ChatCompletionRequest, ModelCard
from thinchat.server.settings import ServerSettings
from thinchat.server.streaming import ThreadedIterator

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


#: Sampling divides the logits by the temperature; below this they can overflow to inf (a NaN softmax).
#: Such temperatures decode greedily, which is their limit.
MIN_SAMPLING_TEMPERATURE = 1e-3


def request_overrides(req: ChatCompletionRequest) -> dict[str, Any]:
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


class ChatService:
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
            overrides = request_overrides(req)
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
                raise engine_error(exc) from exc
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
    ) -> Generation:
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
            raise engine_error(exc) from exc
        except BaseException:
            bridge.cancel()
            raise
        max_new = overrides.get("max_new_tokens", self.engine.settings.max_new_tokens)
        return Generation(self.engine, self.model_name, messages, images, bridge, first, stops, max_new)
