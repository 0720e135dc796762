"""Bridges between the engine's blocking text iterator and the asyncio server, plus SSE framing.

Why a dedicated thread per generation: ``engine.stream_messages`` blocks (model forward passes and the
engine lock). Running the whole iterator in one thread keeps the event loop free to answer /health,
queue other requests and notice disconnects, and keeps the engine's lock acquired and released on the
same thread. A disconnect sets a flag; the thread then closes the iterator so generation stops early.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator

from pydantic import BaseModel

_DONE = object()


class ThreadedIterator:
    """Runs ``factory()`` and iterates it on a daemon thread; ``await next_piece()`` gets each item.

    ``on_finish`` runs on the event loop once the thread is done (success, error or cancel): the server
    frees the model slot there, so a slot can never leak even if the client vanishes before the
    response starts.
    """

    def __init__(
        self, factory: Callable[[], Iterator[str]], on_finish: Callable[[], None] | None = None
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._cancel = threading.Event()
        self._on_finish = on_finish
        self._thread = threading.Thread(
            target=self._run, args=(factory,), daemon=True, name="thinchat-generate"
        )
        self._thread.start()

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        if not self._loop.is_closed():  # the server may have shut down while this thread finished
            self._loop.call_soon_threadsafe(fn, *args)

    def _put(self, item: object) -> None:
        self._call(self._queue.put_nowait, item)

    def _run(self, factory: Callable[[], Iterator[str]]) -> None:
        iterator = None
        try:
            iterator = factory()
            for piece in iterator:
                if self._cancel.is_set():
                    break
                self._put(piece)
            self._put(_DONE)
        except BaseException as exc:  # handed to the awaiting coroutine, which decides what to send
            self._put(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            if self._on_finish is not None:
                self._call(self._on_finish)

    async def next_piece(self) -> str | None:
        """The next text piece, ``None`` at the end; re-raises the iterator's exception."""
        item = await self._queue.get()
        if item is _DONE:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        """Ask the thread to stop after the current piece (the client went away)."""
        self._cancel.set()


class StopMatcher:
    """Cuts a stream at the first of the request's ``stop`` strings, even when it spans pieces.

    Holds back the last ``max(len(stop)) - 1`` characters until it knows they do not start a stop
    string, so no part of a stop string is ever sent.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._buffer = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Text that is safe to send now; sets ``stopped`` once a stop string is seen."""
        if self.stopped:
            return ""
        self._buffer += piece
        hits = [i for i in (self._buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self._buffer = self._buffer[: min(hits)], ""
            return out
        cut = max(0, len(self._buffer) - self._hold)
        out, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return out

    def flush(self) -> str:
        out, self._buffer = ("" if self.stopped else self._buffer), ""
        return out


def sse(payload: BaseModel | dict | str) -> bytes:
    """One server-sent event: ``data: <json>\\n\\n`` (or ``data: [DONE]``)."""
    if isinstance(payload, BaseModel):
        text = payload.model_dump_json(exclude_none=False)
    elif isinstance(payload, dict):
        text = json.dumps(payload, ensure_ascii=False)
    else:
        text = payload
    return f"data: {text}\n\n".encode()


async def collect(pieces: AsyncIterator[str]) -> str:
    """Concatenate an async stream of text pieces."""
    return "".join([piece async for piece in pieces])
