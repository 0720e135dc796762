"""Composition of every supported LM family x vision tower into a standard Llava checkpoint."""

from __future__ import annotations

import itertools

import pytest
import torch

from thinchat.testing import LM_FAMILIES, TOWERS, tiny_image, tiny_llava

QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe 石英"}]}]
ANSWER = {"role": "assistant", "content": [{"type": "text", "text": "Quartz 45%"}]}


def _inputs(processor, messages, n_images=1, **kwargs):
    text = processor.apply_chat_template(messages, tokenize=False, **kwargs)
    images = [tiny_image(seed=i) for i in range(n_images)]
    return processor(images=images, text=text, return_tensors="pt")


@pytest.mark.parametrize(("lm", "tower"), list(itertools.product(LM_FAMILIES, TOWERS)))
def test_build_train_generate_save_reload(lm, tower, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model, processor = tiny_llava(lm, tower)
    batch = _inputs(processor, [*QUESTION, ANSWER])
    # No BERT token_type_ids (generate() rejects them) and exactly one image's worth of image tokens.
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
    n_image_tokens = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == model.config.image_seq_length > 0

    labels = batch["input_ids"].clone()
    out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    projector_grad = model.model.multi_modal_projector.linear_1.weight.grad
    assert projector_grad is not None and projector_grad.abs().sum() > 0

    prompt = _inputs(processor, QUESTION, add_generation_prompt=True)
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[0] == 1 and 1 <= generated.shape[1] - prompt["input_ids"].shape[1] <= 4

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    reprocessor = AutoProcessor.from_pretrained(tmp_path)
    model.eval()
    rebatch = _inputs(reprocessor, [*QUESTION, ANSWER])
    assert torch.equal(rebatch["input_ids"], batch["input_ids"])
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, reloaded(**rebatch).logits, atol=1e-6)
    assert reprocessor.chat_template == processor.chat_template


@pytest.mark.parametrize("tower", TOWERS)
def test_cls_token_handling_per_tower(tower):
    model, processor = tiny_llava("llama", tower, image_size=28)
    # 28 px / patch 14 = 2x2 patches; CLIP and DINOv2 drop their CLS token, SigLIP has none.
    assert model.config.image_seq_length == 4
    batch = _inputs(processor, QUESTION)
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 4
    assert model.config.vision_feature_select_strategy == ("full" if tower == "siglip" else "default")
    features = model.get_image_features(pixel_values=_inputs(processor, QUESTION)["pixel_values"])
    features = features.pooler_output if hasattr(features, "pooler_output") else features
    assert tuple(torch.cat(list(features)).shape[-2:]) == (4, model.config.text_config.hidden_size)


def test_two_images_in_one_prompt_end_to_end():
    model, processor = tiny_llava("qwen2", "clip")
    two = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "PPL and XPL"}],
        }
    ]
    batch = _inputs(processor, [*two, ANSWER], n_images=2)
    assert batch["pixel_values"].shape[0] == 2
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 2 * model.config.image_seq_length
    assert torch.isfinite(model(**batch, labels=batch["input_ids"]).loss)
    prompt = _inputs(processor, two, n_images=2, add_generation_prompt=True)
    assert model.generate(**prompt, max_new_tokens=3, do_sample=False).shape[1] > prompt["input_ids"].shape[1]
    # Different second images change the answer distribution: both images reach the LM.
    other = dict(prompt)
    other["pixel_values"] = prompt["pixel_values"].clone()
    other["pixel_values"][1] = -prompt["pixel_values"][1]
    with torch.no_grad():
        assert not torch.allclose(model(**prompt).logits[0, -1], model(**other).logits[0, -1])


def test_image_count_mismatch_is_a_clear_error():
    model, processor = tiny_llava("llama", "dinov2")
    text = processor.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    with pytest.raises(ValueError, match="(?i)image"):
        batch = processor(images=[tiny_image(0), tiny_image(1)], text=text, return_tensors="pt")
        model(**batch)


def test_gpt2_tied_embeddings_are_untied_and_copied():
    model, _ = tiny_llava("gpt2", "clip")
    assert model.config.text_config.tie_word_embeddings is False
    embed = model.get_input_embeddings().weight
    assert model.lm_head.weight.data_ptr() != embed.data_ptr()
    # The copy happened before the <image> row was appended, so all original rows agree.
    n = model.lm_head.weight.shape[0]
    assert torch.equal(model.lm_head.weight[: n - 1], embed[: n - 1])


def test_llama_tied_embeddings_stay_tied():
    model, _ = tiny_llava("llama", "dinov2")
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_generation_stops_at_end_of_turn_token():
    for lm, token in [("llama", "<|im_end|>"), ("gemma3", "<end_of_turn>"), ("gpt2", "<|endoftext|>")]:
        model, processor = tiny_llava(lm, "dinov2")
        stop_id = processor.tokenizer.convert_tokens_to_ids(token)
        eos = model.generation_config.eos_token_id
        assert stop_id in (eos if isinstance(eos, list) else [eos]), lm


def test_feature_layer_override_selects_that_hidden_state():
    from thinchat.errors import ModelSpecError
    from thinchat.model.compose import compose_llava
    from thinchat.testing import tiny_lm, tiny_tokenizer, tiny_tower

    tokenizer = tiny_tokenizer("llama")
    tower, image_processor = tiny_tower("dinov2", 28)
    lm = tiny_lm("llama", vocab_size=len(tokenizer) + 1)
    model, processor, _ = compose_llava(tower, image_processor, lm, tokenizer, feature_layer=1)
    assert model.config.vision_feature_layer == 1
    pixels = _inputs(processor, QUESTION)["pixel_values"]
    with torch.no_grad():
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[1][:, 1:]
        features = model.get_image_features(pixel_values=pixels)
    features = features.pooler_output if hasattr(features, "pooler_output") else features
    expected = model.model.multi_modal_projector(hidden)
    torch.testing.assert_close(torch.cat(list(features)).reshape(expected.shape), expected)
    n = tower.config.num_hidden_layers
    with pytest.raises(ModelSpecError, match=f"has {n} blocks"):
        compose_llava(tower, image_processor, lm, tokenizer, feature_layer=n + 1)
