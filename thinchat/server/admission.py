"""Admission, model slots and client-disconnect handling for the server.

Why a module of its own: a request costs memory and time in stages (body bytes, parsed JSON, decoded
pixels, model time), and each stage must be bounded before it is paid for. A request is admitted (or
answered 429) before its body is read, so at most ``max_concurrency + max_queue`` bodies are in memory;
it waits for a model slot without blocking the event loop; and while it waits or generates, a watcher
notices the client hanging up, so a client that leaves never keeps the model busy (streaming or not).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

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


async def read_body(request: Request, limit: int) -> bytes:
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
