"""General chat retention: how far a finetuned model drifted from the base model's own text answers.

Why: finetuning on slide reports can turn the LM into a report writer whatever it is asked. The base
model's greedy answers to held-out general questions (``thinchat data replay --holdout-every``) are
what it "would say"; their mean loss under the base is low by construction, and the rise under a
finetuned model measures what it forgot. Only forward passes, no generation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thinchat.errors import DataFormatError


def load_text_entries(path: str | Path) -> list[list[dict[str, Any]]]:
    """Chat messages of every entry of a text-only LLaVA JSON file (entries with images are refused).

    Read as the trainer reads its text data (``open_samples``), so a file that trains also scores.
    """
    from thinchat.train.sources import open_samples

    samples = open_samples(path, check_files=False)
    with_images = next((i for i in range(len(samples)) if samples.has_images(i)), None)
    if with_images is not None:
        raise DataFormatError(f"{samples[with_images].where}: expected a text-only entry (no 'image')")
    return [s.messages for s in samples]


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
