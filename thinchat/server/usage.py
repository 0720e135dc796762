"""Token counts for the ``usage`` field of a completion.

Why recount: the engine's stateless streaming API yields text only. The prompt is counted by the engine
itself (its chat template, image tokens expanded, no image encoded); the completion is re-tokenised,
which can differ from the generated ids by a token where pieces merge.
"""

from __future__ import annotations

from typing import Any


def count_prompt_tokens(engine: Any, messages: list[dict], images: list) -> int:
    """Tokens the model reads for ``messages`` (image tokens expanded) with the generation prompt."""
    return int(engine.count_tokens(messages, images))


def count_completion_tokens(engine: Any, text: str) -> int:
    """Tokens in the generated ``text`` (without special tokens)."""
    return len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])
