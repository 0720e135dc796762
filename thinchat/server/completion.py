"""One chat request's running generation, answered as a JSON completion or as a server-sent event stream.

Why apart from the service: admission and checks end when the request holds the model; from the first
generated piece on, both answer shapes share stop matching, token counts and the completion's id, and
the worker thread must be cancelled whenever the pieces stop being read.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from thinchat.errors import ThinchatError
from thinchat.server.admission import DisconnectWatch
from thinchat.server.api_errors import engine_error
from thinchat.server.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    Usage,
    new_completion_id,
)
from thinchat.server.streaming import StopMatcher, ThreadedIterator, collect, sse
from thinchat.server.usage import count_completion_tokens, count_prompt_tokens

if TYPE_CHECKING:
    from PIL import Image


class Generation:
    """One request's running generation, from its first piece on, answered as JSON or as an SSE stream.

    Why a class: both answer shapes share the stop matching, the token counts and the completion's id;
    the worker thread is cancelled whenever the pieces stop being read (done, stopped or client gone).
    """

    def __init__(
        self,
        engine: Any,
        model_name: str,
        messages: list[dict],
        images: list[Image.Image],
        bridge: ThreadedIterator,
        first: str | None,
        stops: list[str],
        max_new: int,
    ) -> None:
        self.engine = engine
        self.model_name = model_name
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
            raise engine_error(exc) from exc
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
            yield sse(engine_error(exc).body())
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
