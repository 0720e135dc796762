"""General chat retention: how far a finetuned model drifted from the base model's own text answers.

Why: finetuning on slide reports can turn the LM into a report writer whatever it is asked. The base
model's greedy answers to held-out general questions (``thinchat data replay --holdout-every``) are
what it "would say"; their mean loss under the base is low by construction, and the rise under a
finetuned model measures what it forgot. Only forward passes, no generation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thinchat.errors import DataFormatError


def load_text_entries(path: str | Path) -> list[list[dict[str, Any]]]:
    """Chat messages of every text-only entry of a LLaVA JSON file (entries with images are refused)."""
    from thinchat.conversation import llava_to_messages

    source = Path(path)
    if not source.is_file():
        raise DataFormatError(f"{source}: text data file not found")
    try:
        entries = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{source}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(entries, list) or not entries:
        raise DataFormatError(f"{source}: expected a non-empty JSON list of text-only LLaVA entries")
    out = []
    for index, entry in enumerate(entries):
        where = f"{source}: entry {index}"
        if not isinstance(entry, dict) or entry.get("image"):
            raise DataFormatError(f"{where}: expected a text-only entry (no 'image') with 'conversations'")
        out.append(llava_to_messages(entry.get("conversations"), where=where))
    return out


def text_retention(model: Any, processor: Any, conversations: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Mean answer loss (nats per answer token) of ``conversations`` under ``model``."""
    from thinchat.eval.image_reliance import answer_loss

    total, tokens = 0.0, 0
    for messages in conversations:
        nll, count = answer_loss(model, processor, messages, [])
        total, tokens = total + nll, tokens + count
    return {
        "n_samples": len(conversations),
        "answer_tokens": tokens,
        "loss": round(total / max(tokens, 1), 4),
    }
