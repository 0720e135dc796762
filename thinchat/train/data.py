"""Training samples from converted entries: their checks, their layouts, and text-only entries mixed in.

Why check everything up front: a malformed turn or an ``<image>`` count that does not match the images
would otherwise surface hours into a run (or, worse, silently shift image features onto the wrong tokens).
``as_sample`` turns an entry read by ``thinchat.conversation.parse_entry`` into a sample, with errors
naming the file, the entry index and id; the trainer's lazy sources (``thinchat/train/sources.py``) run
both on every entry up front and again on access.
"""

from __future__ import annotations

import logging
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinchat.conversation import Entry
from thinchat.errors import DataFormatError

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One training entry: chat messages whose image parts match ``images`` (absolute paths) in order."""

    id: str
    messages: list[dict[str, Any]]
    images: list[Path] = field(default_factory=list)
    where: str = ""
    turn_types: list[str] | None = (
        None  # one per exchange, from the converter (``describe``, ``presence``...)
    )


def as_sample(entry: Entry, image_root: Path, max_images: int = 4, check_files: bool = True) -> Sample:
    """``entry`` (from ``thinchat.conversation.parse_entry``; images relative to ``image_root``) as a
    training sample, checked for what training needs beyond the format.

    Raises ``DataFormatError`` naming ``entry.where`` for an entry without an answer to learn from, an
    ``<image>`` count that is not the image count (image features would land on the wrong tokens),
    more than ``max_images`` images, or (``check_files``) an image file that is missing.
    """
    where = entry.where
    if not entry.exchanges:
        raise DataFormatError(f"{where}: has no 'gpt' turn, so there is nothing to learn from it")
    images = [image_root / name for name in entry.images]
    placeholders = entry.placeholders
    if placeholders != len(images):
        raise DataFormatError(
            f"{where}: {placeholders} <image> placeholder(s) but {len(images)} image(s); "
            "put one <image> in the human turns per listed image"
        )
    if len(images) > max_images:
        raise DataFormatError(f"{where}: {len(images)} images, more than max_images={max_images}")
    if check_files:
        for image in images:
            if not image.is_file():
                raise DataFormatError(f"{where}: image file not found: {image}")
    return Sample(entry.id, entry.messages, images, where, entry.turn_types)


TURN_LAYOUTS = ("conversation", "split_description", "per_exchange", "isolated")


def split_turns(sample: Sample, layout: str) -> list[Sample]:
    """``sample`` as the training samples of ``layout`` (one of ``TURN_LAYOUTS``).

    Why: in one shuffled conversation, a question asked after the description, or after another answer
    that names the same mineral (a which-of answer, a quoted clause), can be answered by copying from the
    context, so many question turns teach copying instead of reading the image; evaluation and a user's
    first question have no such context.

    - ``conversation``: the entry as converted, one sample.
    - ``split_description``: the description exchange and the question exchanges as two samples.
    - ``per_exchange``: every exchange its own sample, so each answer sees only the images and its own
      question, as in evaluation; the images are encoded again per exchange (more tokens per turn).
    - ``isolated``: one sample, as converted; the dataset packs its exchanges so that each sees only the
      images and itself (``thinchat.train.exchanges``): ``per_exchange``'s answers at the conversation's cost.

    Each new sample shows all the slide's images at its start and is named ``<id>#<k>``; samples
    without the converter's turn types, or with a single exchange, come back unchanged.
    """
    if layout not in TURN_LAYOUTS:
        raise ValueError(f"turn_layout must be one of {', '.join(TURN_LAYOUTS)}, got {layout!r}")
    types = sample.turn_types
    if layout in ("conversation", "isolated") or not types or len(types) < 2:
        return [sample]
    if layout == "split_description":
        if "describe" not in types:
            return [sample]
        groups = [
            [i for i, t in enumerate(types) if t == "describe"],
            [i for i, t in enumerate(types) if t != "describe"],
        ]
    else:
        groups = [[i] for i in range(len(types))]
    lead, exchanges, images = _exchanges(sample)
    parts = []
    for k, group in enumerate(groups):
        messages = lead + [dict(m) for i in group for m in exchanges[i]]
        first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[first_user] = {**messages[first_user], "content": images + messages[first_user]["content"]}
        kinds = [types[i] for i in group]
        parts.append(Sample(f"{sample.id}#{k}", messages, sample.images, sample.where, kinds))
    return parts


def _exchanges(
    sample: Sample,
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """The leading system messages, the exchanges (user turns up to an answer) with their image parts
    removed, and those image parts in order."""
    lead: list[dict[str, Any]] = []
    exchanges: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    for message in sample.messages:
        content = message["content"]
        if message["role"] == "user" and isinstance(content, list):
            images += [p for p in content if p["type"] == "image"]
            message = {**message, "content": [p for p in content if p["type"] != "image"]}
        if message["role"] == "system" and not exchanges and not current:
            lead.append(message)
            continue
        current.append(message)
        if message["role"] == "assistant":
            exchanges.append(current)
            current = []
    return lead, exchanges, images


def first_turns(sample: Sample, max_turns: int | None) -> Sample:
    """``sample`` cut after its ``max_turns``-th answer, never before the last turn that shows an image."""
    if max_turns is None:
        return sample
    answers = 0
    last_image = max(
        (
            i
            for i, m in enumerate(sample.messages)
            if isinstance(m["content"], list) and any(p["type"] == "image" for p in m["content"])
        ),
        default=-1,
    )
    for i, message in enumerate(sample.messages):
        if message["role"] == "assistant":
            answers += 1
            if answers >= max_turns and i > last_image:
                types = sample.turn_types[:answers] if sample.turn_types else None
                return Sample(sample.id, sample.messages[: i + 1], sample.images, sample.where, types)
    return sample


class Picked(Sequence[Sample]):
    """The samples ``parts[p][i]`` for each ``(p, i)`` picked, in order: a mix that holds two index
    arrays rather than the samples, so a lazy source stays lazy."""

    def __init__(self, parts: list[Sequence[Sample]], picks: list[tuple[int, int]]) -> None:
        self.parts = parts
        self._part = array("b", (p for p, _ in picks))
        self._index = array("q", (i for _, i in picks))

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]  # type: ignore[return-value]
        return self.parts[self._part[index]][self._index[index]]

    def has_images(self, index: int) -> bool:
        return has_images(self.parts[self._part[index]], self._index[index])


def has_images(samples: Sequence[Sample], index: int) -> bool:
    """Whether ``samples[index]`` shows images, asked of the source without parsing where it can say."""
    probe = getattr(samples, "has_images", None)
    return probe(index) if probe is not None else bool(samples[index].images)


def mix_text_only(
    samples: Sequence[Sample], extra_text: Sequence[Sample], ratio: float | None, seed: int
) -> Sequence[Sample]:
    """Return the epoch's samples with text-only entries making up ``ratio`` of them.

    Why a ratio: a small domain set would otherwise drown (or be drowned by) general language data;
    Multimodal-GPT mixes the two at a fixed proportion so the LM keeps its language ability.
    With ``ratio=None`` every entry (image or text-only, from both files) is used once. The draw picks
    indices, so a list and a lazy source of the same entries give the same mix.
    """
    flags = [has_images(samples, i) for i in range(len(samples))]
    with_images = [(0, i) for i, flag in enumerate(flags) if flag]
    text_pool = [(0, i) for i, flag in enumerate(flags) if not flag]
    text_pool += [(1, i) for i in range(len(extra_text))]
    del flags
    parts = [samples, extra_text]
    if ratio is None:
        return Picked(parts, with_images + text_pool)
    if not text_pool:
        if ratio > 0:
            raise DataFormatError(f"text_only_ratio={ratio} but no text-only entries exist (set text_data)")
        return Picked(parts, with_images)
    if not with_images:
        return Picked(parts, text_pool)
    wanted = round(ratio / (1.0 - ratio) * len(with_images))
    rng = random.Random(seed)
    if wanted <= len(text_pool):
        chosen = rng.sample(text_pool, wanted)
    else:
        chosen = [text_pool[rng.randrange(len(text_pool))] for _ in range(wanted)]
    log.info(
        "mixing %d text-only entries with %d image entries (ratio %.2f)", len(chosen), len(with_images), ratio
    )
    return Picked(parts, with_images + chosen)
