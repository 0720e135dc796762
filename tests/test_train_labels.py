"""Label masks come from the chat template: per LM family, token by token; truncation and data checks."""

from __future__ import annotations

import json

import pytest
from train_helpers import typed_slide_entry, write_typed_slide

from thinchat.conversation import count_images, llava_to_messages
from thinchat.errors import DataFormatError
from thinchat.model.chat_templates import choose_template, end_of_turn_token
from thinchat.testing import LM_FAMILIES, tiny_image, tiny_llava
from thinchat.train.data import Sample, first_turns, mix_text_only, split_turns
from thinchat.train.dataset import IGNORE_INDEX, Collator, SupervisedDataset, tokenize_messages
from thinchat.train.sources import open_samples

ANSWERS = ["Quartz grains are subrounded.", "zircon 锆石."]


def two_turn_sample(tmp_path, n_images: int = 2) -> Sample:
    paths = []
    for i in range(n_images):
        path = tmp_path / f"slide_{i}.png"
        tiny_image(seed=i).save(path)
        paths.append(path)
    conversations = [
        {"from": "human", "value": "<image>\n" * n_images + "Describe this thin section."},
        {"from": "gpt", "value": ANSWERS[0]},
        {"from": "human", "value": "Accessory minerals?"},
        {"from": "gpt", "value": ANSWERS[1]},
    ]
    return Sample("s1", llava_to_messages(conversations), paths, "test entry")


def runs(labels: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each contiguous supervised span."""
    spans, start = [], None
    for i, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return spans


def normalise(text: str) -> str:
    return "".join(text.lower().split())


@pytest.mark.parametrize("lm", LM_FAMILIES)
def test_only_answers_and_their_end_of_turn_token_are_supervised(lm, tmp_path):
    model, processor = tiny_llava(lm, "dinov2")
    tokenizer = processor.tokenizer
    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn_token(choose_template(tokenizer), tokenizer))
    image_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    dataset = SupervisedDataset([two_turn_sample(tmp_path)], processor, max_length=512)
    ids, labels = dataset.items[0].input_ids, dataset.items[0].labels

    supervised = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in supervised)
    assert ids.count(image_id) == 2 * model.config.image_seq_length
    assert not any(ids[i] == image_id for i in supervised)
    spans = runs(labels)
    assert len(spans) == 2, f"{lm}: expected one supervised span per assistant turn, got {spans}"
    for (start, end), answer in zip(spans, ANSWERS, strict=True):
        assert ids[end - 1] == eot_id, f"{lm}: an assistant turn must end with its end-of-turn token"
        text = tokenizer.decode(ids[start : end - 1], skip_special_tokens=False)
        assert normalise(text) == normalise(answer), f"{lm}: supervised {text!r}, expected {answer!r}"
    # Everything before the first answer (system/user prompt, image tokens, role headers) is unsupervised.
    first_start = spans[0][0]
    prompt = tokenizer.decode(ids[:first_start], skip_special_tokens=False)
    assert "describe this thin section" in prompt.lower()
    assert ids.index(image_id) < first_start


@pytest.mark.parametrize("lm", ["llama", "gpt2-chinese"])
def test_item_matches_tokenising_with_the_real_images(lm, tmp_path):
    from PIL import Image

    _, processor = tiny_llava(lm, "dinov2")
    sample = two_turn_sample(tmp_path)
    item = SupervisedDataset([sample], processor, max_length=512)[0]
    real = tokenize_messages(
        processor, sample.messages, [Image.open(p).convert("RGB") for p in sample.images]
    )
    assert item["input_ids"].tolist() == real["input_ids"]
    assert item["labels"].tolist() == real["labels"]
    assert item["pixel_values"].shape == real["pixel_values"].shape
    assert (item["pixel_values"] - real["pixel_values"]).abs().max() < 1e-6


def test_too_long_samples_are_truncated_after_the_last_image_or_skipped(tmp_path):
    _, processor = tiny_llava("llama", "dinov2")
    sample = two_turn_sample(tmp_path)
    full = SupervisedDataset([sample], processor, max_length=512).items[0]
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    last_image = max(i for i, t in enumerate(full.input_ids) if t == image_id)
    first_answer = runs(full.labels)[0][0]

    limit = len(full.input_ids) - 4
    cut = SupervisedDataset([sample], processor, max_length=limit).items[0]
    assert cut.input_ids == full.input_ids[:limit] and cut.labels == full.labels[:limit]
    assert cut.input_ids.count(image_id) == full.input_ids.count(image_id)

    short = Sample("short", sample.messages[:2], sample.images, "short")
    skip = SupervisedDataset([sample, short], processor, max_length=limit, too_long="skip", name="t")
    assert skip.skipped.too_long == 1 and len(skip) == 1 and skip.items[0].sample is short
    with pytest.raises(DataFormatError, match="every sample is longer than max_length"):
        SupervisedDataset([sample], processor, max_length=last_image + 1)
    text_only = Sample(
        "t", llava_to_messages([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x"}])
    )
    no_answer = SupervisedDataset([sample, text_only], processor, max_length=first_answer)
    assert no_answer.skipped.no_answer_left + no_answer.skipped.images_do_not_fit == 1 and len(no_answer) == 1


def test_mixed_batch_of_image_and_text_only_samples_trains(tmp_path):
    import torch

    model, processor = tiny_llava("qwen2", "siglip")
    text_only = Sample(
        "t", llava_to_messages([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Quartz."}])
    )
    dataset = SupervisedDataset([two_turn_sample(tmp_path), text_only], processor, max_length=512)
    batch = Collator(processor.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    assert batch["pixel_values"].shape[0] == 2
    assert batch["attention_mask"][1].sum() == len(dataset.items[1].input_ids)
    assert (batch["labels"][1][batch["attention_mask"][1] == 0] == IGNORE_INDEX).all()
    batch.pop("image_paths")
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss.item() > 0


def write_json(path, entries):
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return path


def test_image_count_mismatch_names_file_and_entry(tmp_path):
    tiny_image().save(tmp_path / "a.png")
    path = write_json(
        tmp_path / "bad.json",
        [
            {
                "id": "x7",
                "image": ["a.png", "a.png"],
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe."},
                    {"from": "gpt", "value": "Quartz."},
                ],
            }
        ],
    )
    with pytest.raises(
        DataFormatError, match=r"bad\.json: entry 0 \(id x7\): 1 <image> placeholder\(s\) but 2"
    ):
        list(open_samples(path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"id": 1,\n "conversations": [}]', r"bad\.json:2: not valid JSON"),
        ('{"conversations": []}', "expected a JSON list"),
        ('[{"id": "a"}]', r"entry 0 \(id a\): expected an object with 'conversations'"),
        (
            '[{"id": "a", "image": "missing.png", "conversations": [{"from": "human", "value": "<image>"}, '
            '{"from": "gpt", "value": "x"}]}]',
            "image file not found",
        ),
        ('[{"conversations": [{"from": "human", "value": "hi"}]}]', "has no 'gpt' turn"),
        ('[{"conversations": [{"from": "robot", "value": "hi"}]}]', "unknown speaker 'robot'"),
    ],
)
def test_malformed_datasets_fail_before_training(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError, match=message):
        list(open_samples(path))


def test_text_only_ratio_sets_the_share_of_text_entries(tmp_path):
    image = [Sample(str(i), [], [tmp_path / "x.png"]) for i in range(30)]
    text = [Sample(f"t{i}", []) for i in range(5)]
    mixed = mix_text_only(image, text, 0.25, seed=0)
    assert len(mixed) == 40 and sum(1 for s in mixed if not s.images) == 10
    assert len(mix_text_only(image, text, None, seed=0)) == 35
    assert sum(1 for s in mix_text_only(image, text, 0.1, seed=0) if not s.images) == 3
    with pytest.raises(DataFormatError, match="no text-only entries"):
        mix_text_only(image, [], 0.2, seed=0)


def test_max_turns_keeps_the_first_exchanges(tmp_path):
    sample = two_turn_sample(tmp_path)
    one = first_turns(sample, 1)
    assert [m["role"] for m in one.messages] == ["user", "assistant"] and one.images == sample.images
    assert first_turns(sample, 2).messages == sample.messages and first_turns(sample, None) is sample
    late = Sample(
        "late",
        llava_to_messages(
            [
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello."},
                {"from": "human", "value": "<image>\nAnd this?"},
                {"from": "gpt", "value": "Quartz."},
            ]
        ),
        [tmp_path / "a.png"],
    )
    assert len(first_turns(late, 1).messages) == 4  # never cut away a turn that shows an image


def test_max_turns_keeps_the_turn_types_of_the_kept_exchanges(tmp_path):
    sample = _typed_sample(tmp_path)
    cut = first_turns(sample, 2)
    assert cut.turn_types == ["presence", "describe"] and len(cut.messages) == 4
    assert [p.turn_types for p in split_turns(cut, "per_exchange")] == [["presence"], ["describe"]]


def _typed_sample(tmp_path):
    (sample,) = list(open_samples(write_typed_slide(tmp_path)))
    assert sample.turn_types == ["presence", "describe", "which"]
    return sample


def _texts(sample):
    return [m["content"][-1]["text"] for m in sample.messages]


def _images_lead(part, sample):
    assert part.images == sample.images
    first = part.messages[0]["content"]
    assert [p["type"] for p in first[:2]] == ["image", "image"]  # both views lead each new sample
    assert count_images(part.messages) == 2


def test_split_description_trains_description_and_questions_apart(tmp_path):
    sample = _typed_sample(tmp_path)
    describe, questions = split_turns(sample, "split_description")
    assert describe.id == "s1#0" and questions.id == "s1#1"
    for part in (describe, questions):
        _images_lead(part, sample)
    assert _texts(describe) == ["Describe the slide.", "Quartz (about 60%) and K-feldspar."]
    assert _texts(questions) == [
        "Is calcite present?",
        "No, there is no calcite in this slide.",
        "Which does it contain: quartz or dolomite?",
        "Quartz.",
    ]
    assert questions.turn_types == ["presence", "which"] and describe.turn_types == ["describe"]
    # the original conversation is untouched, and samples without a separable description pass through
    assert count_images(sample.messages) == 2 and len(sample.messages) == 6
    only = Sample("t", sample.messages[2:4], [], "", ["describe"])
    assert split_turns(only, "split_description") == [only]
    untyped = Sample("u", sample.messages, sample.images)
    assert split_turns(untyped, "split_description") == [untyped]
    no_description = Sample("n", sample.messages, sample.images, "", ["presence", "which", "which"])
    assert split_turns(no_description, "split_description") == [no_description]


def test_per_exchange_gives_every_answer_only_the_images_and_its_question(tmp_path):
    sample = _typed_sample(tmp_path)
    parts = split_turns(sample, "per_exchange")
    assert [p.id for p in parts] == ["s1#0", "s1#1", "s1#2"]
    for part in parts:
        _images_lead(part, sample)
        assert [m["role"] for m in part.messages] == ["user", "assistant"]
    assert [_texts(p) for p in parts] == [
        ["Is calcite present?", "No, there is no calcite in this slide."],
        ["Describe the slide.", "Quartz (about 60%) and K-feldspar."],
        ["Which does it contain: quartz or dolomite?", "Quartz."],
    ]
    assert [p.turn_types for p in parts] == [["presence"], ["describe"], ["which"]]
    assert split_turns(sample, "conversation") == [sample]
    with pytest.raises(ValueError, match="turn_layout must be one of"):
        split_turns(sample, "shuffled")


def test_turn_types_must_match_the_answers(tmp_path):
    tiny_image().save(tmp_path / "a.png")
    tiny_image().save(tmp_path / "b.png")
    entry = typed_slide_entry()
    entry["turn_types"] = ["describe"]
    path = tmp_path / "train.json"
    path.write_text(json.dumps([entry]), encoding="utf-8")
    with pytest.raises(
        DataFormatError, match=r"entry 0 \(id s1\): 'turn_types' must list one type per answer \(3\)"
    ):
        list(open_samples(path))
