"""``ChatEngine.generate_batch``: the one path for batched greedy answers (eval, caption, replay).

Why these checks: evaluation used to render and generate through the processor on its own, apart from
the engine. The batch path now renders like a chat; its answers must be the same greedy text that the
processor path gives (kept here as the reference) for every tiny LM family, and a left-padded batch
must answer each row as it would alone.
"""

from __future__ import annotations

import pytest
import torch

from thinchat.conversation import llava_to_messages
from thinchat.engine import ChatEngine
from thinchat.errors import ConfigError, PromptTooLongError
from thinchat.testing import LM_FAMILIES, tiny_image, tiny_llava

CONVERSATIONS = [
    [{"from": "human", "value": "<image>\n描述这张薄片。石英约占多少？"}],
    [{"from": "human", "value": "<image>\n<image>\nDescribe."}],
    [{"from": "human", "value": "hi"}],
]


def _images() -> list[list]:
    return [[tiny_image(0)], [tiny_image(1), tiny_image(2)], []]


def _processor_path(model, processor, conversations, images, max_new_tokens: int) -> list[str]:
    """The reference: the processor renders, tokenizes (left-padded) and encodes pixels itself."""
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [
        processor.apply_chat_template(llava_to_messages(c), add_generation_prompt=True, tokenize=False)
        for c in conversations
    ]
    flat = [image for row in images for image in row]
    inputs = processor(images=flat or None, text=texts, padding=True, return_tensors="pt")
    inputs.pop("token_type_ids", None)
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


@pytest.mark.parametrize("lm", LM_FAMILIES)
def test_the_engine_batch_gives_the_processor_paths_greedy_text(lm: str) -> None:
    for seed in (0, 5):
        model, processor = tiny_llava(lm=lm, seed=seed)
        engine = ChatEngine(model, processor, reuse_prefix=False)
        messages = [llava_to_messages(c) for c in CONVERSATIONS]
        answers = engine.generate_batch(messages, _images(), 12)
        assert answers == _processor_path(model, processor, CONVERSATIONS, _images(), 12), (lm, seed)


def test_a_left_padded_batch_answers_each_row_as_alone() -> None:
    model, processor = tiny_llava(lm="qwen2", seed=5)  # a seed whose random outputs are not empty
    engine = ChatEngine(model, processor, reuse_prefix=False)
    messages = [llava_to_messages(c) for c in CONVERSATIONS]
    batched = engine.generate_batch(messages, _images(), 12)
    single = [engine.generate_batch([m], [i], 12)[0] for m, i in zip(messages, _images(), strict=True)]
    assert batched == single and any(batched)


def test_a_batch_prompt_over_the_budget_is_refused_as_a_single_prompt_is() -> None:
    """One generation path: a batch row is rendered, counted and held to the context like one prompt,
    so eval and captioning refuse what the chat and the server refuse, with the same message."""
    model, processor = tiny_llava(lm="gpt2", seed=0)  # 256 positions
    engine = ChatEngine(model, processor, reuse_prefix=False)
    short = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    long = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "quartz " * 300}]}]
    with pytest.raises(PromptTooLongError, match=r"only \d+ fit") as single:
        engine.generate_text(long, [tiny_image(0)], max_new_tokens=8)
    with pytest.raises(PromptTooLongError) as batch:
        engine.generate_batch([short, long], [[tiny_image(1)], [tiny_image(0)]], 8)
    assert str(batch.value) == str(single.value)
    with pytest.raises(ConfigError) as single_config:
        engine.generate_text(short, [tiny_image(1)], max_new_tokens=256)
    with pytest.raises(ConfigError) as batch_config:
        engine.generate_batch([short], [[tiny_image(1)]], 256)
    assert str(batch_config.value) == str(single_config.value)
    assert engine.generate_batch([short], [[tiny_image(1)]], 8) == [
        engine.generate_text(
            short, [tiny_image(1)], max_new_tokens=8, temperature=0.0, repetition_penalty=1.0
        ).strip()
    ]


def _rows_fold(hidden: torch.Tensor) -> bool:
    """True when ``hidden`` [batch, positions, width] views as one [batch * positions, width] matrix
    without a copy: the condition under which ``torch.matmul`` runs the LM head as one product."""
    return hidden.stride(0) == hidden.stride(1) * hidden.size(1)


@pytest.mark.parametrize("lm", ["gemma3", "qwen2"])
def test_the_lm_head_gets_one_foldable_row_per_answer_in_every_generate(lm: str) -> None:
    """Generate's default ``logits_to_keep=1`` hands the LM head a slice whose batch stride spans the
    prompt; torch then runs a batched product against an expanded weight, which bf16 CPU kernels copy
    (4.4 s instead of 0.013 s for Gemma3's vocabulary). The engine keeps the last position by index."""
    model, processor = tiny_llava(lm=lm, seed=0)
    seen: list[tuple[tuple[int, ...], bool]] = []

    def record(_module, args) -> None:
        seen.append((tuple(args[0].shape), _rows_fold(args[0])))

    model.lm_head.register_forward_pre_hook(record)
    engine = ChatEngine(model, processor, reuse_prefix=False)
    messages = [llava_to_messages(c) for c in CONVERSATIONS]
    engine.generate_batch(messages, _images(), 4)
    engine.generate_text(messages[0], _images()[0], max_new_tokens=4)
    prompts = [shape for shape, _ in seen if shape[1] == 1]
    assert len(prompts) == len(seen) >= 2, seen  # one position per row, prefill included
    assert all(folds for _, folds in seen), seen
    sliced = torch.zeros(3, 7, 5)[:, -1:, :]
    assert not _rows_fold(sliced)  # what generate's own default passes: the check can fail
