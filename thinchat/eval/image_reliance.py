"""Does the model look at the slide? Answer loss with each sample's own images vs another sample's.

Why: a small VLM finetuned on a few hundred reports can reach a low caption loss, and decent BLEU, by
writing the majority template while ignoring the pixels; term F1 then stalls near what always naming
the commonest minerals scores. Caption metrics cannot tell the two apart, a counterfactual can: score
the reference answers once with the right images and once with the images rotated by one sample (every
sample gets a different slide's pixels, the text is unchanged). The difference in mean answer loss, in
nats per answer token, is the model's image reliance: about 0 when it ignores the images, clearly
positive when the images inform its answers. It needs only forward passes, no generation.
"""

from __future__ import annotations

from typing import Any

from thinchat.evalsample import EvalSample

DEFAULT_SAMPLES = 16


def answer_loss(model: Any, processor: Any, messages: list[dict], images: list[Any]) -> tuple[float, int]:
    """Summed negative log-likelihood of the assistant tokens, and how many there are.

    A checkpoint built with tiles (:mod:`thinchat.model.tiling`) is shown each image as its global
    view and tiles, as the chat engine and training show it.
    """
    import torch

    from thinchat.model.tiling import expand_tiles, max_tiles_of
    from thinchat.train.dataset import IGNORE_INDEX, tokenize_messages

    max_tiles = max_tiles_of(getattr(model, "config", None))
    if max_tiles > 1 and images:
        from thinchat.model.compose import input_size

        tile_size = max(input_size(processor.image_processor))
        messages, images = expand_tiles(messages, images, max_tiles, tile_size)
    encoded = tokenize_messages(processor, messages, images)
    device = next(model.parameters()).device
    input_ids = torch.tensor([encoded["input_ids"]], device=device)
    labels = torch.tensor([encoded["labels"]], device=device)
    inputs: dict[str, Any] = {"input_ids": input_ids}
    if encoded["pixel_values"] is not None:
        weight = next(model.parameters())
        inputs["pixel_values"] = encoded["pixel_values"].to(device, weight.dtype)
    with torch.no_grad():
        logits = model(**inputs).logits[0, :-1].float()
    targets = labels[0, 1:]
    keep = targets != IGNORE_INDEX
    nll = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
    return float(nll), int(keep.sum())


def image_reliance(
    model: Any, processor: Any, samples: list[EvalSample], limit: int = DEFAULT_SAMPLES, seed: int = 0
) -> dict[str, Any] | None:
    """Mean answer loss (nats/token) with own vs rotated images over ``limit`` image samples.

    The samples are drawn across the whole set (seeded), not the first ``limit``: a test file sorted by
    class would otherwise pair slides of one class, whose swapped images tell the model nothing new.
    Samples are grouped by image count so a rotated sample always gets as many images as it has
    ``<image>`` tokens. Returns None when fewer than two samples have images (nothing to swap).
    """
    import random

    from thinchat.conversation import llava_to_messages
    from thinchat.images import load_image

    eligible = [s for s in samples if s.images and s.references]
    picked = sorted(random.Random(seed).sample(range(len(eligible)), min(limit, len(eligible))))
    chosen = [eligible[i] for i in picked]
    groups: dict[int, list[EvalSample]] = {}
    for sample in chosen:
        groups.setdefault(len(sample.images), []).append(sample)
    pairs = [
        (group[i], group[(i + 1) % len(group)])
        for group in groups.values()
        if len(group) > 1
        for i in range(len(group))
    ]
    if not pairs:
        return None
    own_nll = other_nll = 0.0
    n_tokens = 0
    for sample, donor in pairs:
        messages = llava_to_messages(
            [*sample.conversation(), {"from": "gpt", "value": sample.references[0]}], where=sample.id
        )
        nll, count = answer_loss(model, processor, messages, [load_image(p) for p in sample.images])
        swapped, _ = answer_loss(model, processor, messages, [load_image(p) for p in donor.images])
        own_nll, other_nll, n_tokens = own_nll + nll, other_nll + swapped, n_tokens + count
    own, other = own_nll / n_tokens, other_nll / n_tokens
    return {
        "n_samples": len(pairs),
        "answer_tokens": n_tokens,
        "loss_own_images": round(own, 4),
        "loss_other_images": round(other, 4),
        "gap": round(other - own, 4),
    }
