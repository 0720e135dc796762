"""Cached-feature path == pixel path: same loss, same projector gradients, bare and under peft LoRA."""

from __future__ import annotations

import pytest
import torch

from thinchat.model.unwrap import unwrap_llava
from thinchat.testing import tiny_image, tiny_llava
from thinchat.train.embeds import forward_with_features, merge_image_features, tower_features


def _batch(processor, n_images: int = 2):
    """Two samples, the first with one image, the second with one image and longer text (padding)."""
    images = [tiny_image(seed) for seed in range(n_images)]
    texts = ["<image>\nDescribe this thin section.", "<image>\nWhat accessory minerals are present? Zircon."]
    processor.tokenizer.padding_side = "right"
    batch = processor(images=images, text=texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    labels[batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<image>")] = -100
    batch["labels"] = labels
    return batch


@pytest.mark.parametrize("tower", ["clip", "siglip", "dinov2"])
def test_loss_and_grads_match_pixel_path(tower):
    model, processor = tiny_llava("llama", tower, image_size=28)
    model.train()
    batch = _batch(processor)
    reference = model(**batch)
    reference.loss.backward()
    ref_grad = model.model.multi_modal_projector.linear_1.weight.grad.clone()
    model.zero_grad()

    with torch.no_grad():
        features = tower_features(model, batch["pixel_values"])
    n_tokens = model.config.image_seq_length
    assert features.shape == (2, n_tokens, model.config.vision_config.hidden_size)
    out = forward_with_features(
        model, batch["input_ids"], features, attention_mask=batch["attention_mask"], labels=batch["labels"]
    )
    out.loss.backward()
    assert reference.loss.item() > 0
    torch.testing.assert_close(out.loss, reference.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits, reference.logits, rtol=1e-4, atol=1e-5)
    grad = model.model.multi_modal_projector.linear_1.weight.grad
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_peft_lora_wrapped_model_matches():
    from peft import LoraConfig, get_peft_model

    model, processor = tiny_llava("qwen2", "clip", image_size=28)
    targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    peft_model = get_peft_model(
        model,
        LoraConfig(r=4, lora_alpha=8, target_modules=targets, modules_to_save=["multi_modal_projector"]),
    )
    # Move LoRA B off zero and the projector copy off the original, so both paths must actually run them.
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.05)
    assert unwrap_llava(peft_model) is model
    batch = _batch(processor)
    reference = peft_model(**batch).loss
    with torch.no_grad():
        features = tower_features(peft_model, batch["pixel_values"])
    loss = forward_with_features(
        peft_model,
        batch["input_ids"],
        features,
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
    ).loss
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    # Disabling the adapter changes the loss: the LoRA layers were really in the path.
    with peft_model.disable_adapter(), torch.no_grad():
        plain = forward_with_features(peft_model, batch["input_ids"], features, labels=batch["labels"]).loss
    assert abs(plain.item() - loss.item()) > 1e-4


def test_list_of_features_and_text_only():
    model, processor = tiny_llava("llama", "dinov2", image_size=28)
    batch = _batch(processor)
    with torch.no_grad():
        features = tower_features(model, batch["pixel_values"])
        stacked = merge_image_features(model, batch["input_ids"], features)
        listed = merge_image_features(model, batch["input_ids"], list(features))
    torch.testing.assert_close(stacked, listed)
    text = processor.tokenizer(["Quartz grains are subrounded."], return_tensors="pt")["input_ids"]
    embeds = merge_image_features(model, text, None)
    torch.testing.assert_close(embeds, model.get_input_embeddings()(text))


def test_mismatch_is_a_clear_error():
    model, processor = tiny_llava("llama", "dinov2", image_size=28)
    batch = _batch(processor)
    with torch.no_grad():
        features = tower_features(model, batch["pixel_values"])
    with pytest.raises(ValueError, match="do not match: 8 <image> tokens"):
        merge_image_features(model, batch["input_ids"], features[:1].repeat(1, 2, 1)[:, :3])
    with pytest.raises(ValueError, match="no image features"):
        merge_image_features(model, batch["input_ids"], None)
    with pytest.raises(ValueError, match="pixel_values"):
        forward_with_features(model, batch["input_ids"], features, pixel_values=batch["pixel_values"])
