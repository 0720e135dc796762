"""Convert LLaVA ``conversations`` records into transformers chat ``messages`` and back.

Why: datasets use LLaVA's ``{"from": "human"|"gpt", "value": "<image>\\n..."}`` records (what every
LLaVA-style tool reads and writes), while the processor's chat template takes transformers messages
with typed content parts. Keeping the conversion in one place means training, evaluation and the
chat engine render identical prompts.
"""

from __future__ import annotations

from typing import Any

from thinchat.errors import DataFormatError

IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


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
