"""Batched greedy generation shared by ``thinchat eval`` and ``thinchat caption``.

Prompts are rendered with the checkpoint's own chat template (the processor carries it), batched with
left padding so every row's new tokens start at the same position, decoded greedily (deterministic,
comparable between checkpoints), and only the new tokens are decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image


def prepare_processor(processor: Any) -> None:
    """Left padding for decoder-only batching; reuse EOS as PAD when the tokenizer has none."""
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def generate_batch(
    model: Any,
    processor: Any,
    conversations: Sequence[list[dict]],
    images: Sequence[list[Image.Image]],
    max_new_tokens: int,
    **generate_kwargs: Any,
) -> list[str]:
    """Answer each LLaVA ``conversations`` prompt (first human turn) about its images, in one batch.

    ``images[i]`` are the images for ``conversations[i]`` in ``<image>`` order (may be empty).
    Call :func:`prepare_processor` once beforehand.
    """
    import torch

    from thinchat.conversation import llava_to_messages

    texts = [
        processor.apply_chat_template(llava_to_messages(conv), add_generation_prompt=True, tokenize=False)
        for conv in conversations
    ]
    flat = [img for row in images for img in row]
    inputs = processor(images=flat or None, text=texts, padding=True, return_tensors="pt")
    inputs.pop("token_type_ids", None)  # BERT-style tokenizers (Chinese GPT-2) add it; generate() rejects it
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    tokenizer = processor.tokenizer
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            **generate_kwargs,
        )
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
