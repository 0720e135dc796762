"""Admission, model slots and client-disconnect handling for the server.

Why a module of its own: a request costs memory and time in stages (body bytes, parsed JSON, decoded
pixels, model time), and each stage must be bounded before it is paid for. A request is admitted (or
answered 429) before its body is read, so at most ``max_concurrency + max_queue`` bodies are in memory;
it waits for a model slot without blocking the event loop; and while it waits or generates, a watcher
notices the client hanging up, so a client that leaves never keeps the model busy (streaming or not).
A request refused before its body is read (401, 429, 413) has the rest of its body read and dropped
first, so the answer reaches a client that is still uploading (``drain_before_refusal``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.requests import ClientDisconnect, Request

from thinchat.server.api_errors import APIError

T = TypeVar("T")


class ClientGoneError(Exception):
    """The client closed the connection before the answer was ready."""


class Gate:
    """Admission (bounded queue -> 429) and the model slots (semaphore) for one engine."""

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        self.slots = asyncio.Semaphore(max_concurrency)
        self.capacity = max_concurrency + max_queue
        self.admitted = 0
        self.running = 0
        self.served = 0
        self.abandoned = 0

    def ticket(self) -> Ticket:
        """Admit one request or raise a 429 ``APIError`` at once."""
        if self.admitted >= self.capacity:
            raise APIError(
                429,
                f"server busy: {self.admitted} requests running or queued (limit "
                f"{self.capacity}); retry later",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        self.admitted += 1
        return Ticket(self)


class Ticket:
    """One admitted request: queued, then holding a model slot, then closed (exactly once)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.holds_slot = False
        self.closed = False
        self.worker_owned = False

    async def acquire(self, watch: DisconnectWatch) -> None:
        """Wait for a model slot; ``ClientGoneError`` if the client leaves first (the slot is not kept)."""
        waiter = asyncio.ensure_future(self.gate.slots.acquire())
        try:
            await watch.race(waiter)
        finally:
            # The semaphore may have been granted in the same instant the client left: count it so
            # close() gives it back.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.holds_slot = True
                self.gate.running += 1

    def hand_over(self) -> None:
        """A generation thread now uses the slot: only its :meth:`finish` frees it, however the request ends."""
        self.worker_owned = True

    def close(self, abandoned: bool = False) -> None:
        """The request is over: free the queue place and slot unless a generation thread still uses them."""
        if abandoned:
            self.gate.abandoned += 1
        if not self.worker_owned:
            self.finish()

    def finish(self) -> None:
        """Leave the queue and free the slot (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.gate.admitted -= 1
        if self.holds_slot:
            self.holds_slot = False
            self.gate.running -= 1
            self.gate.served += 1
            self.gate.slots.release()


class DisconnectWatch:
    """Watches the ASGI receive channel for ``http.disconnect`` once the body has been read.

    Why not ``request.is_disconnected()`` in a loop: polling wastes the event loop and reacts late;
    awaiting ``receive`` costs nothing until the client leaves. Stop the watch before handing the
    connection to a ``StreamingResponse``, which listens for the disconnect itself.
    """

    def __init__(self, request: Request) -> None:
        self._task = asyncio.ensure_future(self._listen(request))

    @staticmethod
    async def _listen(request: Request) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    @property
    def gone(self) -> bool:
        return self._task.done() and not self._task.cancelled()

    async def race(self, awaitable: Awaitable[T]) -> T:
        """The result of ``awaitable``, or ``ClientGoneError`` (after cancelling it) if the client leaves first."""
        task = asyncio.ensure_future(awaitable)
        if self._task.cancelled():  # watch stopped: nothing to race against
            return await task
        done, _ = await asyncio.wait({task, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ClientGoneError

    def stop(self) -> None:
        self._task.cancel()


#: A refused request's unread body is read and dropped before the answer, up to this many bytes (or
#: ``--max-request-bytes`` where that is larger) and seconds; a longer or slower body is answered with
#: ``Connection: close`` at once.
DRAIN_MIN_BYTES = 64 * 1024 * 1024
DRAIN_SECONDS = 30.0


async def _drop(chunks: AsyncIterator[bytes], budget: int) -> bool:
    """Read and drop ``chunks`` to their end (True), or stop once they pass ``budget`` bytes (False)."""
    seen = 0
    async for chunk in chunks:
        seen += len(chunk)
        if seen > budget:
            return False
    return True


async def drain_before_refusal(
    request: Request, error: APIError, limit: int, chunks: AsyncIterator[bytes] | None = None, read: int = 0
) -> None:
    """Read and drop the rest of the body of a request about to be refused with ``error`` (bounded).

    Why: an answer sent while the client is still uploading is lost when the connection then closes with
    body bytes unread, because the kernel answers those bytes with a reset and the client sees only the
    reset. uvicorn closes right after the answer when the request said ``Connection: close`` (urllib and
    many other clients do): 13 of 16 clients flooding a full queue with 4-6 MB bodies got a reset instead
    of 429 or 413. Draining costs transfer, not memory: every chunk is dropped as it comes. A client that
    waits for ``100 Continue`` has sent no body and is answered at once (reading would invite the body).
    A body over ``max(limit, DRAIN_MIN_BYTES)`` or slower than ``DRAIN_SECONDS`` is not waited for: its
    answer says ``Connection: close``. ``chunks`` and ``read``: a body already partly read.
    """
    if request.headers.get("expect", "").lower() == "100-continue" and chunks is None:
        return
    budget = max(limit, DRAIN_MIN_BYTES)
    declared = request.headers.get("content-length", "")
    drained = False
    if not (declared.isdigit() and int(declared) > budget):
        try:
            drained = await asyncio.wait_for(_drop(chunks or request.stream(), budget - read), DRAIN_SECONDS)
        except ClientDisconnect:
            return  # nobody left to answer
        except asyncio.TimeoutError:
            drained = False
    if not drained:
        error.headers = {**(error.headers or {}), "Connection": "close"}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it passes ``limit`` bytes, before buffering it all.

    ``ClientGoneError`` when the client hangs up mid-upload (counted as abandoned, not a server error).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        error = APIError(
            413,
            f"request body of {declared} bytes exceeds the limit of {limit} bytes; send "
            "smaller images or raise --max-request-bytes",
            code="request_too_large",
        )
        await drain_before_refusal(request, error, limit)
        raise error
    chunks, size = [], 0
    stream = request.stream()
    try:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                error = APIError(
                    413,
                    f"request body exceeds the limit of {limit} bytes; send smaller images or raise "
                    "--max-request-bytes",
                    code="request_too_large",
                )
                await drain_before_refusal(request, error, limit, stream, size)
                raise error
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise ClientGoneError from exc
    return b"".join(chunks)
