"""Multi-turn history as whole turns, and fitting it into the language model's context.

Why turns rather than a flat message list: truncation must drop whole question/answer pairs and never
cut through the hundreds of tokens an image becomes, so the unit of history is a turn that owns its
images. The slide the user is currently talking about must also survive truncation: when the turn that
introduced the current images is dropped, those images are re-attached to the oldest turn that is kept,
so the model still sees the slide it is being asked about.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from thinchat.errors import PromptTooLongError


@dataclass
class Turn:
    """One user question (with the images shown alongside it) and, once generated, the answer."""

    question: str
    images: list[Any] = field(default_factory=list)  # PIL images, shown before the question text
    sources: list[str | None] = field(default_factory=list)  # where each image came from (for transcripts)
    answer: str | None = None

    def assistant_message(self) -> dict[str, Any]:
        return {"role": "assistant", "content": [{"type": "text", "text": self.answer or ""}]}


def current_images(turns: list[Turn]) -> tuple[int | None, list[Any]]:
    """Index of the newest turn that carries images, and those images (the slide under discussion)."""
    for index in range(len(turns) - 1, -1, -1):
        if turns[index].images:
            return index, turns[index].images
    return None, []


def render(turns: list[Turn], start: int, system: str | None) -> tuple[list[dict[str, Any]], list[Any]]:
    """Messages and images for ``turns[start:]``, re-attaching the current images if their turn was dropped."""
    messages: list[dict[str, Any]] = []
    images: list[Any] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    pinned_at, pinned = current_images(turns)
    for index in range(start, len(turns)):
        turn = turns[index]
        shown = list(turn.images)
        if index == start and pinned_at is not None and pinned_at < start:
            shown = list(pinned) + shown
        messages.append(
            {
                "role": "user",
                "content": [*({"type": "image"} for _ in shown), {"type": "text", "text": turn.question}],
            }
        )
        images.extend(shown)
        if turn.answer is not None:
            messages.append(turn.assistant_message())
    return messages, images


def fit(
    turns: list[Turn],
    system: str | None,
    count: Callable[[list[dict[str, Any]], list[Any]], int],
    budget: int,
) -> tuple[list[dict[str, Any]], list[Any], int]:
    """Drop the fewest oldest whole turns so the prompt is at most ``budget`` tokens.

    Returns ``(messages, images, dropped)``. Raises ``PromptTooLongError`` when even the newest turn
    alone (with the current images) does not fit.
    """
    if not turns:
        raise ValueError("fit() needs at least one turn")
    for start in range(len(turns)):
        messages, images = render(turns, start, system)
        needed = count(messages, images)
        if needed <= budget:
            return messages, images, start
    raise PromptTooLongError(
        f"the question with its {len(images)} image(s) needs {needed} prompt tokens, but only {budget} fit "
        "(the model's context minus max_new_tokens); shorten the question, show fewer images, "
        "or lower max_new_tokens"
    )
