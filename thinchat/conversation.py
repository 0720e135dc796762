"""Convert LLaVA ``conversations`` records into transformers chat ``messages`` and back.

Why: datasets use LLaVA's ``{"from": "human"|"gpt", "value": "<image>\\n..."}`` records (what every
LLaVA-style tool reads and writes), while the processor's chat template takes transformers messages
with typed content parts. Keeping the conversion in one place means training, evaluation and the
chat engine render identical prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thinchat.errors import DataFormatError

IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def read_llava_json(path: str | Path, hint: str, split: str | None = None) -> tuple[Path, list[Any]]:
    """The entries of a LLaVA conversation JSON file and the file they came from (images are relative
    to its folder). The one reader of the format: training, evaluation and the ClipCap data.

    ``split``: a directory saved by ``thinchat data convert --format-out hf`` is read as that split.
    ``hint`` says how to get the file when it is missing. Entries are not checked here: each reader
    needs different keys.
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
