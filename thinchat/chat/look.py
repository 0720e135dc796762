"""Looking first: the model describes a slide before it answers the first question about it.

Why: a small finetuned model decides a yes/no verdict on the answer's first token, before the knowledge
that its own description of the same slide shows is used; asked right after that description, it agrees
with it (docs/experiments.md, "Answers that follow from what the model sees"). Every interface (the
chat demos, the OpenAI-compatible server, batch captioning, ``thinchat eval``) therefore lays a
conversation out the same way: each user message that shows images is preceded by one exchange in which
those images are shown with a description question, in the language of the user's question, and the
model's description is the answer. This module holds that layout; the engine
(:meth:`thinchat.engine.ChatEngine.looked`) supplies the descriptions, cached per image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from thinchat.domain.language import language_of
from thinchat.domain.questions import load_questions

#: ``describe(first_image, n_images, look_question) -> description`` for one image-bearing message.
Describe = Callable[[int, int, str], str]


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
