"""Isolated exchanges: a slide's exchanges in one sequence, each attending to the images and itself only.

Why: in a shuffled conversation a question asked after the description, a which-of answer or a quoted
clause can be answered by copying from the context, so many question turns teach copying instead of
reading the image (docs/experiments.md). One sample per exchange (``turn_layout: per_exchange``) removes
that but encodes the images and the prompt again for every exchange. Here the exchanges share one copy of
that prefix: every exchange is rendered as its own sample, the common prefix (system prompt, images) is
kept once and each exchange's remainder follows it with

- an attention mask that lets a token see the prefix and the earlier tokens of its own exchange, and
- position ids that restart after the prefix,

so each exchange's logits equal those of its own ``per_exchange`` sample (tests/test_train_exchanges.py)
at about the token cost of the conversation. The mask is a 4-D tensor that transformers passes through
as given (one per layer type where the LM has sliding-window layers, as Gemma 3 and Qwen2 take them):
it needs ``sdpa`` or ``eager`` attention, since flash-attention kernels take no custom mask.
"""

from __future__ import annotations

from typing import Any

import torch

from thinchat.errors import ConfigError, DataFormatError

#: Exchange id of the shared prefix; exchanges count from 1, padding is ``PAD_EXCHANGE``.
PREFIX_EXCHANGE = 0
PAD_EXCHANGE = -1


def pack_exchanges(
    parts: list[tuple[list[int], list[int]]], image_token_id: int, where: str = ""
) -> tuple[list[int], list[int], list[int]]:
    """``(input_ids, labels, exchange_ids)`` of the rendered exchanges ``parts`` sharing their prefix.

    ``parts`` holds each exchange's ``(input_ids, labels)`` rendered as its own sample, images first.
    The shared prefix is their longest common run of leading tokens that carries no label; it must
    hold every image token, or the exchanges would not see the same images.
    """
    if not parts:
        raise DataFormatError(f"{where}: no exchanges to pack")
    first_ids = parts[0][0]
    prefix = len(first_ids)
    for ids, _ in parts[1:]:
        prefix = min(prefix, len(ids))
        prefix = next((i for i in range(prefix) if ids[i] != first_ids[i]), prefix)
    for _, labels in parts:
        prefix = min(prefix, next((i for i, t in enumerate(labels) if t != -100), len(labels)))
    for ids, _ in parts:
        if image_token_id in ids[prefix:]:
            raise DataFormatError(
                f"{where}: the exchanges do not share their images in a common prefix, so they cannot be "
                "isolated; use turn_layout per_exchange or conversation"
            )
    input_ids = list(first_ids[:prefix])
    labels = list(parts[0][1][:prefix])
    exchange_ids = [PREFIX_EXCHANGE] * prefix
    for k, (ids, part_labels) in enumerate(parts, start=1):
        input_ids += ids[prefix:]
        labels += part_labels[prefix:]
        exchange_ids += [k] * (len(ids) - prefix)
    return input_ids, labels, exchange_ids


def exchange_position_ids(exchange_ids: torch.Tensor) -> torch.Tensor:
    """Positions that restart after the prefix for every exchange (``(batch, length)``, padding 0).

    Exchanges are contiguous runs after the prefix, so a token's position is the prefix length plus its
    offset from the first token of its run.
    """
    index = torch.arange(exchange_ids.shape[1], device=exchange_ids.device).expand_as(exchange_ids)
    prefix = (exchange_ids == PREFIX_EXCHANGE).sum(dim=1, keepdim=True)
    starts = torch.ones_like(exchange_ids, dtype=torch.bool)
    starts[:, 1:] = exchange_ids[:, 1:] != exchange_ids[:, :-1]
    run_start = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    positions = torch.where(exchange_ids == PREFIX_EXCHANGE, index, prefix + index - run_start)
    return positions.masked_fill(exchange_ids == PAD_EXCHANGE, 0)


def exchange_attention_mask(exchange_ids: torch.Tensor) -> torch.Tensor:
    """Boolean ``(batch, 1, length, length)`` mask, True where a query may attend to a key.

    A token sees the earlier prefix tokens and the earlier tokens of its own exchange; a padding token
    sees itself only, so no row is empty (an empty row gives NaN, which reaches the gradients).
    """
    length = exchange_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=exchange_ids.device).tril()
    query = exchange_ids[:, :, None]
    key = exchange_ids[:, None, :]
    allowed = (
        causal & (query != PAD_EXCHANGE) & (key != PAD_EXCHANGE) & ((key == PREFIX_EXCHANGE) | (key == query))
    )
    allowed |= torch.eye(length, dtype=torch.bool, device=exchange_ids.device)
    return allowed[:, None]


def isolate_exchanges(model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with its ``exchange_ids`` turned into the 4-D attention mask and position ids.

    Inputs without ``exchange_ids`` come back unchanged. The mask is boolean for ``sdpa`` and additive
    (0 or the dtype's minimum) for ``eager``, the two forms transformers' attention functions take; an LM
    with sliding-window layers gets ``{"full_attention": ..., "sliding_attention": ...}``.
    """
    if "exchange_ids" not in inputs:
        return inputs
    inputs = dict(inputs)
    exchange_ids = inputs.pop("exchange_ids")
    config = _model_config(model)
    text = getattr(config, "text_config", None) or config
    implementation = (
        getattr(text, "_attn_implementation", None) or getattr(config, "_attn_implementation", None) or "sdpa"
    )
    if implementation not in ("sdpa", "eager"):
        raise ConfigError(
            f"turn_layout isolated needs sdpa or eager attention, the model uses {implementation}; "
            "use turn_layout per_exchange"
        )
    positions = exchange_position_ids(exchange_ids).to(exchange_ids.device)
    mask = exchange_attention_mask(exchange_ids)
    window = getattr(text, "sliding_window", None)
    if window and "sliding_attention" in (getattr(text, "layer_types", None) or ()):
        # Sliding layers see the last ``window`` positions of the exchange's own sample; the LM takes
        # one mask per layer type.
        near = (positions[:, :, None] - positions[:, None, :]) < window
        masks = {"full_attention": mask, "sliding_attention": mask & near[:, None]}
    else:
        masks = {"full_attention": mask}
    if implementation == "eager":
        dtype = next(model.parameters()).dtype
        masks = {
            kind: torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, torch.finfo(dtype).min)
            for kind, m in masks.items()
        }
    inputs["attention_mask"] = masks if len(masks) > 1 else masks["full_attention"]
    inputs["position_ids"] = positions
    return inputs


def _model_config(model: Any) -> Any:
    """The model's config through DDP / DeepSpeed wrappers (``.module``); peft forwards ``.config``."""
    for _ in range(4):
        if hasattr(model, "config"):
            return model.config
        model = getattr(model, "module", None)
    return None
