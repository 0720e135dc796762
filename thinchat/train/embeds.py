"""Turn cached vision-tower features into the LM's ``inputs_embeds``, exactly as ``LlavaModel`` does.

Why: with a frozen tower, the tower's output for an image never changes, so the feature cache
(``thinchat.train.feature_cache``) stores it once. Training then skips the tower: this module applies
the model's *own* (trainable) ``multi_modal_projector`` to those stored features and scatters the
result into the ``<image>`` token positions. ``model(inputs_embeds=..., labels=...)`` then gives the
same loss and gradients as ``model(input_ids=..., pixel_values=..., labels=...)`` (tests check it for
the CLIP, SigLIP and DINOv2 towers, bare and wrapped in peft), and the checkpoint stays a standard
Llava because nothing outside the model's own modules is involved.

The two halves mirror transformers 5.23 ``models/llava/modeling_llava.py``:
``tower_features`` is ``LlavaModel.get_image_features`` without its last line (the projector), and
``merge_image_features`` is the part of ``LlavaModel.forward`` that embeds the ids and calls
``masked_scatter``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from thinchat.model.unwrap import llava_parts, unwrap_llava

if TYPE_CHECKING:
    import torch


def tower_settings(model: Any) -> tuple[int | list[int], str]:
    """``(vision_feature_layer, vision_feature_select_strategy)`` from the Llava config."""
    config = unwrap_llava(model).config
    layer = config.vision_feature_layer
    return (list(layer) if isinstance(layer, (list, tuple)) else int(layer)), str(
        config.vision_feature_select_strategy
    )


def vision_tower(model: Any):
    """The vision tower module of a (possibly wrapped) Llava model."""
    return llava_parts(model)[1].vision_tower


def tower_features(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """The projector's input for ``pixel_values``: shape (n_images, n_tokens, vision_hidden[*n_layers]).

    Same selection as ``LlavaModel.get_image_features``: the hidden state(s) at ``vision_feature_layer``
    (concatenated when it is a list), with the CLS token dropped for the "default" strategy.
    """
    import torch

    layer, strategy = tower_settings(model)
    tower = vision_tower(model)
    # Same call as LlavaModel.get_image_features (select_hidden_states passes the layer as output_hidden_states).
    outputs = tower(pixel_values, return_dict=True, output_hidden_states=layer)
    if isinstance(layer, int):
        selected = outputs.hidden_states[layer]
        return selected[:, 1:] if strategy == "default" else selected
    pool = [outputs.hidden_states[i] for i in layer]
    if strategy == "default":
        pool = [hidden[:, 1:] for hidden in pool]
    return torch.cat(pool, dim=-1)


def project_features(model: Any, image_features: torch.Tensor) -> torch.Tensor:
    """Apply the model's own ``multi_modal_projector`` (trainable, possibly a peft ``modules_to_save`` copy)."""
    _, inner = llava_parts(model)
    projector = inner.multi_modal_projector
    weight = next(projector.parameters())
    return projector(image_features.to(device=weight.device, dtype=weight.dtype))


def merge_image_features(
    model: Any,
    input_ids: torch.Tensor,
    image_features: torch.Tensor | list[torch.Tensor] | None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``inputs_embeds`` for ``input_ids`` with projected ``image_features`` at the ``<image>`` tokens.

    ``image_features`` are the *tower* features (what ``FeatureCache.features_for`` returns): one row
    per image in batch order (sample 0's images first), shape (n_images, n_tokens, vision_hidden), or
    a list of (n_tokens, vision_hidden) tensors. ``None`` or zero images gives plain text embeddings.
    ``attention_mask`` is accepted so callers can pass a batch through unchanged; Llava's merge does
    not use it (padding never holds ``<image>`` tokens), and neither does this function.
    """
    import torch

    del attention_mask  # Llava's merge ignores it; see the docstring.
    llava = unwrap_llava(model)
    embed = llava.get_input_embeddings()
    inputs_embeds = embed(input_ids)
    if isinstance(image_features, (list, tuple)):
        image_features = torch.stack(list(image_features)) if image_features else None
    image_token_id = llava.config.image_token_id
    n_tokens = int((input_ids == image_token_id).sum())
    if image_features is None or image_features.shape[0] == 0:
        if n_tokens:
            raise ValueError(f"the batch has {n_tokens} <image> tokens but no image features were given")
        return inputs_embeds
    return scatter_image_embeds(model, input_ids, project_features(model, image_features), inputs_embeds)


def scatter_image_embeds(
    model: Any, input_ids: torch.Tensor, projected: torch.Tensor, inputs_embeds: torch.Tensor | None = None
) -> torch.Tensor:
    """Put already-projected image embeddings (n_images, n_tokens, text_hidden) at the ``<image>`` tokens.

    The second half of ``merge_image_features``; the ClipCap prefix path (``thinchat.clipcap.train``)
    calls it with its own prefix mapping's output.
    """
    llava = unwrap_llava(model)
    if inputs_embeds is None:
        inputs_embeds = llava.get_input_embeddings()(input_ids)
    image_token_id = llava.config.image_token_id
    n_tokens = int((input_ids == image_token_id).sum())
    flat = projected.reshape(-1, projected.shape[-1]).to(inputs_embeds.device, inputs_embeds.dtype)
    if n_tokens != flat.shape[0]:
        raise ValueError(
            f"image features and <image> tokens do not match: {n_tokens} <image> tokens in the batch, "
            f"{projected.shape[0]} image(s) x {projected.shape[1]} features = {flat.shape[0]}; "
            "was the text truncated through an image, or are the cached features from another image size?"
        )
    mask = (input_ids == image_token_id).unsqueeze(-1).expand_as(inputs_embeds)
    return inputs_embeds.masked_scatter(mask, flat)


def forward_with_features(
    model: Any,
    input_ids: torch.Tensor,
    image_features: torch.Tensor | list[torch.Tensor] | None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
):
    """``model(inputs_embeds=..., attention_mask=..., **kwargs)`` with the merged embeddings.

    Call it on the model exactly as the Trainer holds it (peft-wrapped or not) so LoRA layers run;
    ``kwargs`` carries ``labels`` and anything else the forward accepts (never ``pixel_values``).
    """
    if "pixel_values" in kwargs:
        raise ValueError(
            "forward_with_features replaces pixel_values with cached features; pass one or the other"
        )
    inputs_embeds = merge_image_features(model, input_ids, image_features, attention_mask)
    return model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
