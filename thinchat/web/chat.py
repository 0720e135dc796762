"""The web demo's event handlers: per-browser chat sessions on one shared :class:`ChatEngine`.

Why separate from the layout: these functions hold the behaviour (streaming, regenerate, clear, image
switching, error toasts) and can be tested without a browser; ``app.py`` only wires them to components.
Sessions live here, keyed by an id kept in each browser's ``gr.State``, so gradio never copies a session
(which references the model) and a bounded number of sessions is kept.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from thinchat.chat.session import ChatSession
from thinchat.errors import ImageError, ThinchatError
from thinchat.images import DEFAULT_MAX_PIXELS, load_image
from thinchat.web.strings import DEFAULT_LANG, languages, strings

log = logging.getLogger(__name__)

#: Browser sessions kept in memory (least recently used dropped first).
MAX_SESSIONS = 256

History = list[dict[str, Any]]


class WebChat:
    """Handlers bound to one engine. ``state`` (a ``gr.State``) holds ``{"id", "shown"}`` per browser."""

    def __init__(
        self, engine: Any, *, max_image_pixels: int = DEFAULT_MAX_PIXELS, look_first: bool = False
    ) -> None:
        """``look_first``: see :class:`~thinchat.chat.session.ChatSession`."""
        self.engine = engine
        self.max_image_pixels = max_image_pixels
        self.look_first = look_first
        self._sessions: OrderedDict[str, Any] = OrderedDict()

    # ----- sessions --------------------------------------------------------------------------------
    def _session(self, state: dict | None) -> tuple[Any, dict]:
        state = dict(state or {})
        sid = state.get("id")
        if sid not in self._sessions:
            sid = uuid.uuid4().hex
            self._sessions[sid] = ChatSession(self.engine, look_first=self.look_first)
            state = {"id": sid, "shown": None}
        self._sessions.move_to_end(sid)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return self._sessions[sid], state

    def _load_views(self, ppl: str | None, xpl: str | None, lang: str) -> tuple[list[Any], list[str]]:
        """Decoded images for the uploaded views, PPL first; a toast (``gr.Error``) for a bad file."""
        s = strings(lang)
        images, names = [], []
        for path, key, short in ((ppl, "ppl", "PPL"), (xpl, "xpl", "XPL")):
            if not path:
                continue
            try:
                images.append(load_image(path, max_pixels=self.max_image_pixels, name=s[key]))
            except ImageError as exc:
                # The upload's path is in gradio's temp folder on the server: never show it.
                error = str(exc).replace(str(path), s[key])
                raise gr.Error(
                    s["bad_image"].format(view=s[key], error=error), print_exception=False
                ) from exc
            names.append(short)
        return images, names

    def check_upload(self, payload: Any, lang: str, *, view: str) -> Any:
        """Keep an uploaded view that is a readable image within the pixel cap; clear it with a toast if not.

        Gets gradio's raw upload payload (``preprocess=False``), so gradio never opens the file itself;
        the toast names the view, never the file's path in gradio's temp folder on the server.
        """
        path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)
        if not path:
            return gr.skip()
        s = strings(lang if lang in languages() else DEFAULT_LANG)
        try:
            with Image.open(path) as img:
                width, height = img.size
            if width * height > self.max_image_pixels:
                error = s["too_large"].format(pixels=width * height, limit=self.max_image_pixels)
            else:
                return gr.skip()
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
            error = s["unreadable"]
        gr.Warning(s["bad_image"].format(view=s[view], error=error))
        return None

    @staticmethod
    def _overrides(temperature: float, top_p: float, max_tokens: float) -> dict[str, Any]:
        return {"temperature": float(temperature), "top_p": float(top_p), "max_new_tokens": int(max_tokens)}

    # ----- handlers --------------------------------------------------------------------------------
    def submit(
        self,
        text: str,
        ppl: str | None,
        xpl: str | None,
        history: History | None,
        state: dict | None,
        temperature: float,
        top_p: float,
        max_tokens: float,
        lang: str,
    ) -> Iterator[tuple[History, dict, str]]:
        """Ask ``text`` about the uploaded views; yields (chat history, state, textbox) as the answer streams."""
        s = strings(lang)
        history = list(history or [])
        session, state = self._session(state)
        if not (text or "").strip():
            gr.Warning(s["empty_message"])
            yield history, state, text
            return
        views = (ppl, xpl)
        images = None
        label = ""
        if any(views) and list(views) != state.get("shown"):
            images, names = self._load_views(ppl, xpl, lang)
            label = s["new_slide"].format(views=" + ".join(names)) + "\n"
        overrides = self._overrides(temperature, top_p, max_tokens)

        def pieces() -> Iterator[str | None]:
            # One user/assistant pair per exchange: a look-first description, then the question.
            for k, exchange in enumerate(session.exchanges(text, images=images, **overrides)):
                shown = (label if k == 0 else "") + exchange.question
                history.extend([{"role": "user", "content": shown}, {"role": "assistant", "content": ""}])
                yield None
                yield from exchange.pieces

        yield from self._stream(pieces, history, state, lang)
        if images is not None:
            state["shown"] = list(views)
        if session.dropped_turns:
            gr.Warning(s["truncated"].format(n=session.dropped_turns))
        yield history, state, ""

    def regenerate(
        self,
        history: History | None,
        state: dict | None,
        temperature: float,
        top_p: float,
        max_tokens: float,
        lang: str,
    ) -> Iterator[tuple[History, dict, str]]:
        """Redo the last answer with the current sliders."""
        s = strings(lang)
        history = list(history or [])
        session, state = self._session(state)
        if not session.turns or len(history) < 2:
            gr.Warning(s["no_history"])
            yield history, state, gr.skip()
            return
        history[-1] = {"role": "assistant", "content": ""}
        overrides = self._overrides(temperature, top_p, max_tokens)
        yield from self._stream(lambda: session.regenerate(**overrides), history, state, lang)

    def clear(self, state: dict | None) -> tuple[History, dict, str]:
        """Forget the conversation; the uploaded views are sent again with the next question."""
        session, state = self._session(state)
        session.reset()
        state["shown"] = None
        return [], state, ""

    def _stream(self, start, history: History, state: dict, lang: str) -> Iterator[tuple[History, dict, Any]]:
        """Run ``start()`` (a piece iterator) and grow the last assistant message; errors become toasts.
        A ``None`` piece starts a new answer (the iterator has added its message to ``history``)."""
        answer = ""
        try:
            for piece in start():
                answer = "" if piece is None else answer + piece
                history[-1] = {"role": "assistant", "content": answer}
                yield list(history), state, gr.skip()
        except ThinchatError as exc:
            log.info("web demo refused a request: %s", exc)
            raise gr.Error(strings(lang)["error"].format(error=exc), print_exception=False) from exc
