"""Read the converted format (LLaVA ``conversations`` entries); convert turns to chat ``messages`` and back.

Why: datasets use LLaVA's ``{"from": "human"|"gpt", "value": "<image>\\n..."}`` records (what every
LLaVA-style tool reads and writes), while the processor's chat template takes transformers messages
with typed content parts. Keeping the conversion in one place means training, evaluation and the
chat engine render identical prompts. ``parse_entry`` is the one interpretation of an entry
(its images, its exchanges and their types, its id and language) that training, evaluation and the
ClipCap readers share, so they agree on what an entry says and fail on a bad one with the same message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from thinchat.errors import DataFormatError

IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def read_llava_json(path: str | Path, hint: str, split: str | None = None) -> tuple[Path, list[Any]]:
    """The entries of a LLaVA conversation JSON file and the file they came from (images are relative
    to its folder). The one reader of the format: training, evaluation and the ClipCap data.

    ``split``: a directory saved by ``thinchat data convert --format-out hf`` is read as that split.
    ``hint`` says how to get the file when it is missing. Entries are not checked here: ``parse_entry``
    checks one when a reader takes it (a lazy source parses an entry again on each access).
    """
    path = Path(path)
    if split and path.is_dir():
        from thinchat.hfdata import as_llava_json, is_saved_dataset

        if is_saved_dataset(path):
            path = as_llava_json(path, split)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found; {hint}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text ({exc})") from exc
    if not isinstance(entries, list):
        raise DataFormatError(
            f"{path}: expected a JSON list of entries with 'conversations' (LLaVA format), "
            f"got {type(entries).__name__}"
        )
    return path, entries


def entry_images(entry: dict[str, Any], where: str) -> list[str]:
    """An entry's ``image`` field as a list of relative paths (none for a text-only entry)."""
    image = entry.get("image")
    if image is None:
        return []
    names = [image] if isinstance(image, str) else image
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise DataFormatError(f"{where}: 'image' must be a path or a list of paths, got {image!r}")
    return names


def text_to_content(value: str) -> list[dict[str, str]]:
    """Split text on ``<image>`` placeholders into image and text parts, in order."""
    parts: list[dict[str, str]] = []
    for i, chunk in enumerate(value.split(IMAGE_PLACEHOLDER)):
        if i > 0:
            parts.append({"type": "image"})
        if chunk.strip():
            parts.append({"type": "text", "text": chunk.strip()})
    return parts


def llava_to_messages(conversations: list[dict[str, Any]], where: str = "") -> list[dict[str, Any]]:
    """LLaVA records -> chat messages; raises ``DataFormatError`` naming ``where`` on malformed input."""
    if not isinstance(conversations, list) or not conversations:
        raise DataFormatError(f"{where}: 'conversations' must be a non-empty list of turns")
    messages = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataFormatError(f"{where}: turn {i} must be an object with 'from' and 'value'")
        role = ROLES.get(turn["from"])
        if role is None:
            raise DataFormatError(
                f"{where}: turn {i} has unknown speaker '{turn['from']}' (expected human or gpt)"
            )
        value = turn["value"]
        if not isinstance(value, str):
            raise DataFormatError(f"{where}: turn {i} 'value' must be a string")
        content = text_to_content(value) if role == "user" else [{"type": "text", "text": value.strip()}]
        messages.append({"role": role, "content": content})
    return messages


def count_images(messages: list[dict[str, Any]]) -> int:
    return sum(
        1 for m in messages if not isinstance(m["content"], str) for p in m["content"] if p["type"] == "image"
    )


def messages_to_llava(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Chat messages -> LLaVA records (for saving transcripts and pseudo-labels)."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            text = content
        else:
            text = "".join(IMAGE_PLACEHOLDER + "\n" if p["type"] == "image" else p["text"] for p in content)
        out.append(
            {
                "from": {"user": "human", "assistant": "gpt"}.get(message["role"], message["role"]),
                "value": text,
            }
        )
    return out


@dataclass(frozen=True)
class Exchange:
    """One answered question of an entry: the human turn(s) before a gpt turn, that turn and its type.

    ``question`` is the LLaVA text with its ``<image>`` placeholders (human turns that follow one another
    joined by a newline; empty where the answer has no human turn before it). ``turn_type`` is the
    converter's (``describe``, ``presence``...) or None for an entry without ``turn_types``.
    """

    question: str
    answer: str
    turn_type: str | None = None


@dataclass
class Entry:
    """One converted entry, checked: its turns (as written and as chat messages), its exchanges and keys.

    ``where`` (``<file>: entry <index> (id <id>)``) starts every error about the entry, whichever reader
    raises it. ``images`` are the names as written (relative to the file's folder); ``lang`` is the
    entry's declared language (``zh`` or ``en``) or None; ``labels`` its class labels (``data convert
    --labels``); ``image_embedding`` the stored embedding a ClipCap import names instead of images.
    """

    id: str
    where: str
    conversations: list[dict[str, str]]
    messages: list[dict[str, Any]]
    exchanges: list[Exchange]
    images: list[str] = field(default_factory=list)
    turn_types: list[str] | None = None
    lang: str | None = None
    labels: tuple[str, ...] = ()
    image_embedding: str | None = None

    @property
    def placeholders(self) -> int:
        """The ``<image>`` placeholders of the human turns (a gpt turn shows no image)."""
        return count_images(self.messages)

    def description(self) -> Exchange | None:
        """The exchange an evaluation asks: the one typed ``describe``, else the first (None if none).

        A ``describe`` exchange after other questions is asked as a user opening the chat would: with
        the entry's placeholders (those of its first question) in front of the question's own text.
        """
        if not self.exchanges:
            return None
        if not self.turn_types or "describe" not in self.turn_types:
            return self.exchanges[0]
        exchange = self.exchanges[self.turn_types.index("describe")]
        lead = IMAGE_PLACEHOLDER + "\n"
        shown = self.exchanges[0].question.count(IMAGE_PLACEHOLDER)
        text = exchange.question.replace(lead, "").replace(IMAGE_PLACEHOLDER, "")
        return replace(exchange, question=lead * shown + text)


def parse_entry(raw: Any, index: int, source: str) -> Entry:
    """Entry ``index`` of ``source`` (a file, or a split of a saved dataset) as a checked :class:`Entry`.

    Raises ``DataFormatError`` starting ``<source>: entry <index> (id <id>)`` for what no reader can use:
    not an object with ``conversations``, a malformed turn or speaker, a bad ``image`` field, or
    ``turn_types`` that do not give one type per answer. What a reader needs beyond that (an answer to
    learn from, a placeholder per image, an embedding) it checks itself, naming ``entry.where``.
    """
    entry_id = str(raw.get("id", index)) if isinstance(raw, dict) else str(index)
    where = f"{source}: entry {index} (id {entry_id})"
    if not isinstance(raw, dict) or "conversations" not in raw:
        raise DataFormatError(
            f"{where}: expected an object with 'conversations' (and 'image' for image entries)"
        )
    conversations = raw["conversations"]
    messages = llava_to_messages(conversations, where=where)
    images = entry_images(raw, where)
    types = _turn_types(raw.get("turn_types"), messages, where)
    lang = raw.get("lang") if raw.get("lang") in ("zh", "en") else None
    embedding = raw.get("image_embedding")
    return Entry(
        entry_id, where, conversations, messages, _exchanges(conversations, types), images, types, lang,
        _labels(raw.get("labels")), None if embedding is None else str(embedding),
    )  # fmt: skip


def _turn_types(types: Any, messages: list[dict[str, Any]], where: str) -> list[str] | None:
    """The converter's type of each answer; anything but one string per answer is refused, since the
    readers pick exchanges by it (a description to evaluate, a layout to train)."""
    if types is None:
        return None
    answers = sum(1 for m in messages if m["role"] == "assistant")
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types) or len(types) != answers:
        raise DataFormatError(
            f"{where}: 'turn_types' must list one type per answer ({answers}), got {types!r}; "
            "re-run `thinchat data convert` or remove the key"
        )
    return types


def _exchanges(conversations: list[dict[str, str]], types: list[str] | None) -> list[Exchange]:
    """The answered exchanges of checked turns, in order (system turns and an unanswered last question
    are not exchanges)."""
    exchanges: list[Exchange] = []
    asked: list[str] = []
    for turn in conversations:
        role = ROLES[turn["from"]]
        if role == "user":
            asked.append(turn["value"])
        elif role == "assistant":
            kind = types[len(exchanges)] if types else None
            exchanges.append(Exchange("\n".join(asked), turn["value"], kind))
            asked = []
    return exchanges


def _labels(labels: Any) -> tuple[str, ...]:
    """An entry's class labels: its ``labels`` list of class names; any other ``labels`` value is one of
    the extra keys an entry may carry for other tools, and leaves the slide unlabelled."""
    if isinstance(labels, list) and labels and all(isinstance(c, str) and c for c in labels):
        return tuple(labels)
    return ()
