"""Looking first: the model describes a slide before it answers the first question about it.

Why: a small finetuned model decides a yes/no verdict on the answer's first token, before the knowledge
that its own description of the same slide shows is used; asked right after that description, it agrees
with it (docs/experiments.md, "Answers that follow from what the model sees"). Every interface (the
chat demos, the OpenAI-compatible server, batch captioning, ``thinchat eval``) therefore lays a
conversation out the same way: each user message that shows images is preceded by one exchange in which
those images are shown with a description question, in the language of the user's question, and the
model's description is the answer. This module holds that layout and the kept descriptions
(:class:`Descriptions`); the engine (:meth:`thinchat.engine.ChatEngine.looked`) supplies them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from thinchat.domain.language import language_of
from thinchat.domain.questions import load_questions
from thinchat.images import image_key

#: ``describe(first_image, n_images, look_question) -> description`` for one image-bearing message.
Describe = Callable[[int, int, str], str]
#: How many slides' look-first descriptions an engine keeps (LRU); a few KB each.
LOOK_CACHE_SIZE = 256


def look_question(text: str) -> str:
    """The description question asked before ``text``, in ``text``'s language (the training data's
    first description question, so the model meets a prompt it was trained on)."""
    return load_questions().describe[language_of(text)][0]


def is_description_question(text: str) -> bool:
    """True when ``text`` is one of the training data's description questions (looking first would ask
    the same thing twice)."""
    pools = load_questions().describe
    return text in pools["zh"] or text in pools["en"]


def _parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _text(parts: Sequence[dict[str, Any]]) -> str:
    return " ".join(p.get("text", "") for p in parts if p.get("type") == "text").strip()


def insert_looks(messages: Sequence[dict[str, Any]], describe: Describe) -> list[dict[str, Any]]:
    """``messages`` with a look exchange before every user message that shows images.

    The images move to the look message (same order, so the image list that goes with the messages is
    unchanged) and the user's message keeps its text. A message that asks for the description itself
    (any of the training data's description questions, which includes a look a client re-sends) is
    left as it is, so looking twice changes nothing.
    """
    out: list[dict[str, Any]] = []
    seen = 0
    for message in messages:
        parts = _parts(message)
        images = [p for p in parts if p.get("type") == "image"]
        text = _text(parts)
        if message.get("role") != "user" or not images or is_description_question(text):
            out.append(message)
            seen += len(images)
            continue
        question = look_question(text)
        description = describe(seen, len(images), question)
        seen += len(images)
        out.append({"role": "user", "content": [*images, {"type": "text", "text": question}]})
        out.append({"role": "assistant", "content": [{"type": "text", "text": description}]})
        out.append({**message, "content": [p for p in parts if p.get("type") != "image"]})
    return out


def look_messages(question: str, n_images: int) -> list[dict[str, Any]]:
    """The one user message that asks ``question`` about ``n_images`` images (the look exchange's ask)."""
    return [
        {
            "role": "user",
            "content": [*({"type": "image"} for _ in range(n_images)), {"type": "text", "text": question}],
        }
    ]


class Descriptions:
    """The descriptions a model gave when it looked, kept per (look question, pixels of each image).

    Why keep them: a slide is described once, whichever interface asks first, and every later question
    about it (another turn, another request re-sending the image, a batch) is laid out with the same
    description. LRU-bounded and thread-safe (the server shares one engine across requests).
    """

    def __init__(self, size: int = LOOK_CACHE_SIZE) -> None:
        self.size = size
        self._kept: OrderedDict[tuple[str, ...], str] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(question: str, images: Sequence[Any]) -> tuple[str, ...]:
        return (question, *(image_key(image) for image in images))

    def get(self, key: tuple[str, ...]) -> str | None:
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        return None

    def put(self, key: tuple[str, ...], description: str) -> None:
        with self._lock:
            self._kept[key] = description
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)

    def keep(self, key: tuple[str, ...], pieces: Iterator[str]) -> Iterator[str]:
        """``pieces`` passed through, the description kept once they were streamed to their end (a
        stream closed early cancels the generation and keeps nothing)."""
        parts: list[str] = []
        try:
            for piece in pieces:
                parts.append(piece)
                yield piece
        finally:
            pieces.close()  # type: ignore[attr-defined]  (cancels the generation when stopped early)
        self.put(key, "".join(parts).strip())


def at_once(text: str) -> Iterator[str]:
    """A kept answer as a closable stream of one piece (callers close what they stream)."""
    yield text
