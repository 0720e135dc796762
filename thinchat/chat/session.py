"""A multi-turn conversation on a :class:`~thinchat.engine.ChatEngine` (CLI and web demo state).

Why separate from the engine: the engine is shared (one model, one lock, one image-feature cache) while
each user has their own history, slide and settings. A session holds whole :class:`Turn` objects so
truncation drops whole turns and keeps the current slide visible (see :mod:`thinchat.chat.history`).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from thinchat.chat.history import Turn, current_images, render
from thinchat.chat.look import is_description_question
from thinchat.conversation import messages_to_llava
from thinchat.errors import ThinchatError
from thinchat.images import image_key

if TYPE_CHECKING:
    from thinchat.engine import ChatEngine


class Exchange(NamedTuple):
    """One question of :meth:`ChatSession.exchanges` and its answer's pieces; ``look``: the description
    a look-first session asks for before the user's question."""

    question: str
    pieces: Iterator[str]
    look: bool


class ChatSession:
    """History, the images to show with the next question, and the per-session system prompt."""

    def __init__(self, engine: ChatEngine, system: str | None = None, look_first: bool = False):
        """``look_first``: the first question about a new slide is answered after the model's own
        description of it (:meth:`exchanges`)."""
        self.engine = engine
        self.system = system
        self.look_first = look_first
        self.turns: list[Turn] = []
        self._pending: list[Any] = []
        self._pending_sources: list[str | None] = []
        #: Oldest turns left out of the last prompt to fit the context (0 = the whole history was shown).
        self.dropped_turns = 0

    # ----- state -----------------------------------------------------------------------------------
    @property
    def history(self) -> list[dict[str, Any]]:
        """The whole conversation as transformers chat messages (system prompt included)."""
        messages, _ = render(self.turns, 0, self.system)
        return messages

    @property
    def images(self) -> list[Any]:
        """The slide under discussion: images waiting for the next question, else the latest shown."""
        return list(self._pending) if self._pending else list(current_images(self.turns)[1])

    @property
    def image_sources(self) -> list[str | None]:
        """Labels of :attr:`images` (file names given to :meth:`set_images`; None when unknown)."""
        if self._pending:
            return list(self._pending_sources)
        return next((list(t.sources) for t in reversed(self.turns) if t.images), [])

    def set_images(self, images: list[Any], sources: list[str | None] | None = None) -> None:
        """Switch slide: the next question is asked about ``images`` (``[]`` withdraws pending images).

        ``sources`` (file names or URLs) only label the images in :meth:`transcript`.
        """
        sources = list(sources) if sources is not None else [None] * len(images)
        if len(sources) != len(images):
            raise ThinchatError(f"set_images: {len(images)} image(s) but {len(sources)} source name(s)")
        self._pending, self._pending_sources = list(images), sources

    def reset(self) -> None:
        """Forget the conversation and the pending images (the image-feature cache stays warm)."""
        self.turns.clear()
        self._pending, self._pending_sources = [], []
        self.dropped_turns = 0

    # ----- asking ----------------------------------------------------------------------------------
    def stream(self, text: str, images: list[Any] | None = None, **overrides: Any) -> Iterator[str]:
        """Ask ``text`` (about ``images`` if given, else the pending/current slide); yield answer pieces.

        The turn is appended once the answer ends; if the caller stops early (Ctrl-C, a web "stop"), the
        partial answer is kept. Errors (empty question, prompt too long) raise before the first piece
        and leave the session unchanged.
        """
        turn, (messages, shown) = self._prepare(text, images, overrides)
        pieces = self.engine.stream_messages(messages, shown, **overrides)  # validates before streaming
        return self._run(turn, pieces, append=True)

    def exchanges(self, text: str, images: list[Any] | None = None, **overrides: Any) -> Iterator[Exchange]:
        """The exchanges that answer ``text``, in order, each with its answer's pieces to stream.

        With :attr:`look_first` and a new slide (images not yet asked about), the model first describes
        the slide (:meth:`thinchat.engine.ChatEngine.look`: the description question in the language
        of ``text``, decoded greedily and kept per slide, as the server and evaluation ask it); ``text``
        then comes as a follow-up. Why: a finetuned model answers a presence question more often right
        after its own description than alone after the images (docs/experiments.md). A question that
        asks for the description itself is not preceded by one. Otherwise the one exchange is ``text``.
        Consume each answer before taking the next exchange; errors raise as in :meth:`stream`.
        """
        _check_question(text)  # before the description is asked for
        if images is not None:
            self.set_images(images)
        if self.look_first and self._pending and not is_description_question(text.strip()):
            question, pieces = self.engine.look(list(self._pending), text)
            turn = Turn(question=question, images=list(self._pending), sources=list(self._pending_sources))
            yield Exchange(question, self._run(turn, pieces, append=True), look=True)
        yield Exchange(text.strip(), self.stream(text, **overrides), look=False)

    def ask(self, text: str, images: list[Any] | None = None, **overrides: Any) -> str:
        """Ask and return the whole answer (no streaming thread)."""
        turn, (messages, shown) = self._prepare(text, images, overrides)
        answer = self.engine.generate_text(messages, shown, **overrides)
        turn.answer = answer.strip()
        self._commit(turn)
        return answer

    def regenerate(self, **overrides: Any) -> Iterator[str]:
        """Redo the last answer (e.g. with another temperature); yields the new answer's pieces."""
        if not self.turns:
            raise ThinchatError("nothing to regenerate: ask a question first")
        last = self.turns[-1]
        turn = Turn(question=last.question, images=last.images, sources=last.sources)
        settings = self.engine.resolve(**overrides)
        messages, shown, dropped = self.engine.fit_turns([*self.turns[:-1], turn], self.system, settings)
        pieces = self.engine.stream_messages(messages, shown, **overrides)
        self.dropped_turns = dropped
        return self._run(turn, pieces, append=False)

    def _prepare(self, text: str, images: list[Any] | None, overrides: dict[str, Any]):
        _check_question(text)
        if images is not None:
            self.set_images(images)
        turn = Turn(question=text.strip(), images=list(self._pending), sources=list(self._pending_sources))
        settings = self.engine.resolve(**overrides)
        messages, shown, dropped = self.engine.fit_turns([*self.turns, turn], self.system, settings)
        self.dropped_turns = dropped
        return turn, (messages, shown)

    def _run(self, turn: Turn, pieces: Iterator[str], append: bool) -> Iterator[str]:
        answer: list[str] = []
        try:
            for piece in pieces:
                answer.append(piece)
                yield piece
        except GeneratorExit:  # the caller stopped early: keep what it has shown
            self._finish(turn, answer, append)
            raise
        finally:
            pieces.close()  # cancels the generation and releases the engine lock
        self._finish(turn, answer, append)

    def _finish(self, turn: Turn, answer: list[str], append: bool) -> None:
        turn.answer = "".join(answer).strip()
        if append:
            self._commit(turn)
        else:
            self.turns[-1].answer = turn.answer

    def _commit(self, turn: Turn) -> None:
        self.turns.append(turn)
        self._pending, self._pending_sources = [], []

    # ----- saving ----------------------------------------------------------------------------------
    def transcript(self) -> dict[str, Any]:
        """JSON-serialisable record in the dataset format (``image`` + ``conversations``) plus metadata.

        Images are listed by source (when known) and by pixel hash, so a saved chat can be reviewed and,
        with the image files, reused as a training example.
        """
        records = messages_to_llava([m for m in self.history if m["role"] != "system"])
        sources = [s for turn in self.turns for s in turn.sources]
        hashes = [image_key(image) for turn in self.turns for image in turn.images]
        out: dict[str, Any] = {
            "id": _dt.datetime.now(_dt.timezone.utc).strftime("chat-%Y%m%dT%H%M%SZ"),
            "model": self.engine.name,
            "system": self.system,
            "settings": self.engine.settings.to_dict(),
            "conversations": records,
            "image_sha256": hashes,
        }
        if sources and all(s is not None for s in sources):
            out["image"] = sources
        elif sources:
            out["image_sources"] = sources
        return out


def _check_question(text: object) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ThinchatError("empty message: type a question")
