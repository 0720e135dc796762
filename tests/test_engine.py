"""Chat engine: image-feature caching, equality with the plain processor path, streaming, sessions."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from thinchat.chat.session import ChatSession
from thinchat.engine import ChatEngine
from thinchat.errors import ConfigError, PromptTooLongError, ThinchatError
from thinchat.images import image_key
from thinchat.testing import enliven, tiny_image, tiny_llava

QUESTION = "Describe this thin section."


lively = enliven  # answers that depend on the image and the question (thinchat.testing.enliven)


@pytest.fixture(scope="module")
def engine():
    model, processor = tiny_llava("llama", "dinov2", image_size=28)
    return ChatEngine(lively(model), processor, name="tiny")


def count_tower_calls(engine) -> list[int]:
    calls = [0]
    engine.model.model.vision_tower.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


def naive_answer(engine, messages, images, max_new_tokens=12) -> str:
    """The reference: processor(images, text) -> generate(pixel_values=...), the way Llava is documented."""
    processor = engine.processor
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=images or None, text=text, return_tensors="pt")
    out = engine.model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        repetition_penalty=1.1,
        eos_token_id=engine.stop_token_ids,
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_cached_features_give_the_same_answers_as_the_processor_path(engine):
    ppl, xpl = tiny_image(1), tiny_image(2)
    session = ChatSession(engine)
    first = session.ask(QUESTION, images=[ppl, xpl], max_new_tokens=12)
    second = session.ask("What accessory minerals are present?", max_new_tokens=12)
    history = session.history
    assert first == naive_answer(engine, history[:1], [ppl, xpl])
    assert second == naive_answer(engine, history[:3], [ppl, xpl])
    assert first != second  # the lively model really answers differently
    other = engine.describe([tiny_image(3)], QUESTION, max_new_tokens=12)
    assert other != first.strip()


def test_an_image_is_encoded_once_per_conversation(engine):
    calls = count_tower_calls(engine)
    session = ChatSession(engine)
    session.ask(QUESTION, images=[tiny_image(10)], max_new_tokens=4)
    assert calls[0] == 1
    session.ask("What accessory minerals are present?", max_new_tokens=4)
    session.ask("Is the calcite ferroan?", max_new_tokens=4)
    assert calls[0] == 1  # follow-ups reuse the cached features
    session.set_images([tiny_image(11)])
    session.ask(QUESTION, max_new_tokens=4)
    assert calls[0] == 2  # a new slide is encoded once more
    engine.describe([tiny_image(10)], QUESTION, max_new_tokens=4)
    assert calls[0] == 2  # same pixels, cached across sessions (the OpenAI server re-sends images)


def test_streamed_text_equals_the_whole_answer(engine):
    for seed in (20, 21, 22):
        images = [tiny_image(seed)]
        streamed_session, plain_session = ChatSession(engine), ChatSession(engine)
        for question in (QUESTION, "What accessory minerals are present?"):
            pieces = list(streamed_session.stream(question, images=images, max_new_tokens=16))
            whole = plain_session.ask(question, images=images, max_new_tokens=16)
            assert "".join(pieces) == whole
            images = None
        assert streamed_session.history == plain_session.history


def test_image_switch_and_two_views_per_turn(engine):
    ppl, xpl, other = tiny_image(30), tiny_image(31), tiny_image(32)
    session = ChatSession(engine)
    session.ask(QUESTION, images=[ppl, xpl], max_new_tokens=4)
    session.set_images([other], sources=["slides/other.png"])
    assert session.images == [other]
    session.ask("Now look at this one.", max_new_tokens=4)
    messages, shown, dropped = engine.fit_turns(session.turns, None, engine.settings)
    assert dropped == 0 and [image_key(i) for i in shown] == [image_key(i) for i in (ppl, xpl, other)]
    ids = engine._tokenize(engine.render(messages, shown))["input_ids"]
    assert int((ids == engine.image_token_id).sum()) == 3 * engine.image_seq_length
    assert [m["content"][0] for m in messages if m["role"] == "user"] == [{"type": "image"}] * 2
    assert session.images == [other]


def test_truncation_drops_whole_turns_and_keeps_the_slide(engine):
    session = ChatSession(engine)
    slide = [tiny_image(40), tiny_image(41)]
    long_question = "Describe the matrix, the cements and the accessory minerals of this slide. " * 3
    session.ask(long_question, images=slide, max_new_tokens=8)
    for _ in range(10):
        session.ask(long_question, max_new_tokens=8)
    settings = engine.resolve(max_new_tokens=300)  # budget 512 - 300 = 212 tokens: about two turns
    messages, shown, dropped = engine.fit_turns(session.turns, None, settings)
    assert 0 < dropped < len(session.turns)
    ids = engine._tokenize(engine.render(messages, shown))["input_ids"]
    assert ids.shape[1] <= engine.prompt_budget(settings)
    # the slide of the dropped first turn is re-attached, all of its image tokens intact
    assert [image_key(i) for i in shown] == [image_key(i) for i in slide]
    assert int((ids == engine.image_token_id).sum()) == 2 * engine.image_seq_length
    assert messages[0]["content"][:2] == [{"type": "image"}, {"type": "image"}]
    assert messages[-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": session.turns[-1].answer}],
    }
    assert sum(m["role"] == "user" for m in messages) == len(session.turns) - dropped
    turns_before = len(session.turns)
    answer = "".join(session.stream("Is the calcite ferroan?", max_new_tokens=300))
    assert isinstance(answer, str) and session.dropped_turns > 0 and len(session.turns) == turns_before + 1


def test_a_question_too_long_alone_is_refused_and_the_session_is_unchanged(engine):
    session = ChatSession(engine)
    session.ask(QUESTION, images=[tiny_image(50)], max_new_tokens=4)
    history = session.history
    with pytest.raises(PromptTooLongError, match=r"only \d+ fit"):
        session.stream("quartz " * 600, max_new_tokens=4)
    with pytest.raises(PromptTooLongError):
        engine.stream_messages([{"role": "user", "content": "quartz " * 600}], [])
    assert session.history == history


def test_regenerate_reset_and_transcript(engine):
    session = ChatSession(engine, system="Answer in the language of the question.")
    answer = session.ask(QUESTION, images=[tiny_image(60)], max_new_tokens=10)
    again = "".join(session.regenerate(max_new_tokens=10))
    assert again == answer and len(session.turns) == 1
    sampled = ["".join(session.regenerate(max_new_tokens=10, temperature=1.0, seed=s)) for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]
    assert session.turns[-1].answer == sampled[2].strip()
    record = json.loads(json.dumps(session.transcript(), ensure_ascii=False))
    assert record["system"] == "Answer in the language of the question."
    assert record["conversations"][0] == {"from": "human", "value": "<image>\n" + QUESTION}
    assert record["conversations"][1]["from"] == "gpt" and len(record["image_sha256"]) == 1
    session.reset()
    assert session.history == [{"role": "system", "content": [{"type": "text", "text": record["system"]}]}]
    with pytest.raises(ThinchatError, match="nothing to regenerate"):
        session.regenerate()


def test_one_generation_at_a_time_and_early_close_releases_the_lock(engine):
    session = ChatSession(engine)
    pieces = session.stream(QUESTION, images=[tiny_image(70)], max_new_tokens=64)
    first = next(pieces)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (engine.describe([], "Hello", max_new_tokens=4), done.set()))
    worker.start()
    assert not done.wait(0.5)  # blocked behind the running generation
    pieces.close()  # the user stopped it: partial answer kept, lock released
    worker.join(timeout=30)
    assert done.is_set()
    assert session.turns[-1].answer == first.strip()


def test_bad_input_is_refused_with_a_message(engine):
    session = ChatSession(engine)
    with pytest.raises(ThinchatError, match="empty message"):
        session.ask("   ")
    with pytest.raises(ThinchatError, match="control token '<image>'"):
        session.ask("what is <image> here?")
    with pytest.raises(ThinchatError, match="1 image part"):
        engine.stream_messages(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}], []
        )
    with pytest.raises(ConfigError, match="temperature"):
        session.ask(QUESTION, temperature=-1)
    with pytest.raises(ConfigError, match="unknown generation setting"):
        session.ask(QUESTION, beams=3)
    with pytest.raises(ConfigError, match="no room"):
        session.ask(QUESTION, max_new_tokens=600)
    assert session.turns == []


def test_follow_ups_reuse_the_kv_prefix_with_identical_answers(engine):
    plain = ChatEngine(engine.model, engine.processor, reuse_prefix=False)
    reusing, fresh = ChatSession(engine), ChatSession(plain)
    steps = [
        (QUESTION, [tiny_image(80), tiny_image(81)]),
        ("What accessory minerals are present?", None),
        ("And this slide?", [tiny_image(82)]),
        ("Is the calcite ferroan?", None),
    ]
    reused = []
    for question, images in steps:
        assert reusing.ask(question, images=images, max_new_tokens=10) == fresh.ask(
            question, images=images, max_new_tokens=10
        )
        reused.append(engine.last_reused_tokens)
    assert (
        reused[1] > 2 * engine.image_seq_length
    )  # the first exchange (with both images) came from the cache
    assert reused[3] > reused[2] > reused[1]
    assert plain.last_reused_tokens == 0


def test_the_same_words_about_another_image_never_reuse_its_tokens(engine):
    plain = ChatEngine(engine.model, engine.processor, reuse_prefix=False)
    engine.describe([tiny_image(90)], QUESTION, max_new_tokens=10)
    answer = engine.describe([tiny_image(91)], QUESTION, max_new_tokens=10)
    assert answer == plain.describe([tiny_image(91)], QUESTION, max_new_tokens=10)
    ids = engine._tokenize(engine.render([{"role": "user", "content": [{"type": "image"}]}], 1))["input_ids"][
        0
    ]
    first_image = int((ids == engine.image_token_id).nonzero()[0])
    assert engine.last_reused_tokens <= first_image


def test_a_batch_with_more_images_than_the_feature_cache_holds(engine, monkeypatch):
    import thinchat.engine

    monkeypatch.setattr(thinchat.engine, "FEATURE_CACHE_SIZE", 2)
    images = [tiny_image(40 + i) for i in range(5)]
    features = engine.image_features(images)
    assert len(features) == 5 and len(engine._features) == 2
    assert torch.equal(features[4], engine.image_features([images[4]])[0])  # the newest stay cached
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]] * 5
    answers = engine.generate_batch(messages, [[image] for image in images], 4)
    assert len(answers) == 5
