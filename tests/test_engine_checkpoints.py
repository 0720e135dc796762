"""The engine loads every checkpoint kind the project writes: base, LoRA adapter, merged export, other LMs."""

from __future__ import annotations

import json

import pytest
import torch

from thinchat.chat.session import ChatSession
from thinchat.engine import ChatEngine
from thinchat.errors import ModelSpecError, PromptTooLongError
from thinchat.testing import enliven, tiny_image, tiny_llava

QUESTION = "Describe this thin section."


def randomise(module, seed: int, scale: float = 0.5) -> None:
    enliven(module, seed, scale)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A base dir, a LoRA adapter dir laid out as `thinchat train` writes it, and the peft model itself."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("ckpts")
    model, processor = tiny_llava("llama", "dinov2", image_size=28)
    randomise(model, 0)
    base = root / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=r"model\.language_model\..*\.(q_proj|v_proj)",
        modules_to_save=["multi_modal_projector"],
    )
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():  # a "trained" adapter: non-zero B matrices and a changed projector
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.5)
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    processor.save_pretrained(adapter)
    (adapter / "thinchat_checkpoint.json").write_text(json.dumps({"base_model": "../base", "stage": "lora"}))
    return base, adapter, peft_model.eval()


def test_lora_adapter_loads_merged_and_answers_like_peft(checkpoints, tmp_path):
    base, adapter, peft_model = checkpoints
    images = [tiny_image(1), tiny_image(2)]
    tuned = ChatEngine.from_pretrained(adapter)
    assert (
        type(tuned.model).__name__ == "LlavaForConditionalGeneration"
    )  # merged in memory: no adapter overhead
    answer = tuned.describe(images, QUESTION, max_new_tokens=12)
    # reference: the unmerged peft model through the plain processor path
    processor = tuned.processor
    text = processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": QUESTION}],
            }
        ],
        add_generation_prompt=True,
    )
    inputs = processor(images=images, text=text, return_tensors="pt")
    out = peft_model.generate(
        **inputs,
        max_new_tokens=12,
        do_sample=False,
        repetition_penalty=1.1,
        eos_token_id=tuned.stop_token_ids,
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    reference = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer == reference.strip()
    assert answer != ChatEngine.from_pretrained(base).describe(images, QUESTION, max_new_tokens=12)

    from thinchat.train.export import export

    merged = export(adapter, tmp_path / "merged", merge=True)
    assert ChatEngine.from_pretrained(merged).describe(images, QUESTION, max_new_tokens=12) == answer


def test_gemma_template_stops_at_end_of_turn(tiny_gemma_dir):
    engine = ChatEngine.from_pretrained(tiny_gemma_dir)
    tokenizer = engine.tokenizer
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in engine.stop_token_ids
    session = ChatSession(engine, system="Answer in the language of the question.")
    session.ask(QUESTION, images=[tiny_image(5)], max_new_tokens=6)
    session.ask("见到哪些副矿物？", max_new_tokens=6)
    assert engine.last_reused_tokens == 0  # sliding-window caches are not cut back: full prefill
    prompt = engine.render(session.history, 1)
    assert prompt.startswith("<bos><start_of_turn>user\nAnswer in the language of the question.\n\n<image>")
    assert prompt.count("<end_of_turn>") == 4


def test_gpt2_plain_template_and_its_position_limit():
    model, processor = tiny_llava("gpt2", "clip", image_size=28)
    engine = ChatEngine(model, processor)
    assert engine.context_limit == 256  # the tiny GPT-2 has 256 positions
    assert processor.tokenizer.eos_token_id in engine.stop_token_ids
    assert isinstance(engine.describe([tiny_image(6)], QUESTION, max_new_tokens=5), str)
    with pytest.raises(PromptTooLongError, match="256 positions"):
        engine.stream_messages([{"role": "user", "content": "quartz " * 300}], [], max_new_tokens=5)


def test_bfloat16_weights_and_a_missing_checkpoint(checkpoints, tmp_path):
    base, _, _ = checkpoints
    engine = ChatEngine.from_pretrained(base, dtype="bf16")
    assert engine.model.dtype == torch.bfloat16
    assert isinstance(engine.describe([tiny_image(7)], QUESTION, max_new_tokens=5), str)
    with pytest.raises(ModelSpecError, match="not found"):
        ChatEngine.from_pretrained(tmp_path / "missing")
