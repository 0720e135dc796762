"""The evaluation sample: one question about one slide with its references, as read from converted data.

The format of what evaluation scores, below the readers that make it: ``thinchat.eval.data`` reads a
test JSON's images into these samples, ``thinchat.clipcap.evaldata`` an import directory's stored
embeddings. ``reference_exchange`` is the one rule for which exchange of an entry is scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from thinchat.conversation import Entry, Exchange
from thinchat.errors import DataFormatError

IMAGE_TOKEN = "<image>"


@dataclass
class EvalSample:
    """One question about one slide (zero, one or two images) with every reference answer for it."""

    id: str
    images: list[Path]
    image_names: list[str]
    question: str
    references: list[str]
    lang: str
    entry_ids: list[str] = field(default_factory=list)
    #: earlier LLaVA turns of the same conversation (a follow-up question); the images are in the first
    history: list[dict] = field(default_factory=list)
    #: the slide's class labels (an entry's ``labels``, written by ``data convert --labels``); empty for a
    #: captioned slide
    labels: tuple[str, ...] = ()

    def conversation(self) -> list[dict]:
        """The prompt as a LLaVA ``conversations`` list: the earlier turns, then the question."""
        return [*self.history, {"from": "human", "value": self.question}]


@dataclass
class Skipped:
    """A sample that was not scored, and why (shown in the report)."""

    id: str
    reason: str


def reference_exchange(entry: Entry) -> Exchange:
    """The exchange a test entry is scored on (``Entry.description``): its question, and its answer as the
    reference; an entry without both cannot be scored, so it is refused rather than skipped."""
    exchange = entry.description()
    if exchange is not None and not exchange.question:
        raise DataFormatError(f"{entry.where}: no human turn with a text 'value' to use as the question")
    if exchange is None or not exchange.answer.strip():
        raise DataFormatError(
            f"{entry.where}: no non-empty gpt turn to use as the reference answer; every test entry needs one"
        )
    return exchange
