"""The lazy sample sources give what the list path gives, fail the same way, and train from a DatasetDict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_helpers import save_tiny, tiny_overrides, write_dataset

from thinchat.conversation import parse_entry, read_llava_json
from thinchat.errors import DataFormatError
from thinchat.train.data import as_sample, first_turns, mix_text_only, split_turns
from thinchat.train.sources import open_samples

QUESTIONS = [
    ("Is there quartz?", "Yes.", "presence"),
    ("Which feldspar is present?", "Plagioclase.", "which"),
]


def typed_dataset(root: Path) -> tuple[Path, Path]:
    """A set whose entries have 1-3 exchanges with ``turn_types`` (describe first, last or absent),
    text-only entries among them, and a separate text-only file."""
    path = write_dataset(root, n=8, two_images=True, text_only=3)
    entries = json.loads(path.read_text(encoding="utf-8"))
    for i, entry in enumerate(entries[:8]):
        extra = QUESTIONS[: i % 3]
        describe = entry["conversations"]
        if i % 2:  # the description after the questions: <image> moves to the first turn
            prompt = describe[0]["value"]
            conv = []
            for k, (q, a, _) in enumerate(extra):
                conv += [{"from": "human", "value": ("<image>\n<image>\n" if k == 0 else "") + q}]
                conv += [{"from": "gpt", "value": a}]
            conv += [
                {"from": "human", "value": prompt if not extra else prompt.replace("<image>\n", "")},
                describe[1],
            ]
            types = [t for _, _, t in extra] + ["describe"]
        else:
            conv = list(describe)
            for q, a, _ in extra:
                conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
            types = ["describe"] + [t for _, _, t in extra]
        entry["conversations"] = conv
        if i != 6:  # one entry without types: never separated
            entry["turn_types"] = types
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    text = root / "text.json"
    text.write_text(
        json.dumps(
            [
                {
                    "id": f"x{k}",
                    "conversations": [{"from": "human", "value": f"Q{k}"}, {"from": "gpt", "value": "A"}],
                }
                for k in range(4)
            ]
        ),
        encoding="utf-8",
    )
    return path, text


def read_all(path):
    """Every entry of ``path`` parsed at once into a list of samples, by the one reader of the format."""
    path, entries = read_llava_json(path, "", split="train")
    return [as_sample(parse_entry(entry, i, str(path)), path.parent) for i, entry in enumerate(entries)]


def list_path(path, text, max_turns, layout, ratio):
    """The trainer's data as it was built before the lazy sources: lists of samples."""
    samples = [first_turns(s, max_turns) for s in read_all(path)]
    samples = [part for s in samples for part in split_turns(s, layout)]
    return list(mix_text_only(samples, read_all(text), ratio, seed=3))


def same(a, b, where=True) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.id, x.messages, x.images, x.turn_types) == (y.id, y.messages, y.images, y.turn_types)
        if where:
            assert x.where == y.where


@pytest.mark.parametrize(
    ("max_turns", "layout", "ratio"),
    [
        (None, "split_description", None),
        (None, "split_description", 0.3),
        (2, "split_description", 0.6),
        (None, "per_exchange", 0.3),
        (2, "per_exchange", None),
        (1, "conversation", None),
        (None, "conversation", 0.2),
    ],
)
def test_lazy_json_source_equals_the_list_path(tmp_path, max_turns, layout, ratio):
    path, text = typed_dataset(tmp_path)
    expected = list_path(path, text, max_turns, layout, ratio)
    lazy = open_samples(path, max_turns=max_turns, layout=layout)
    mixed = mix_text_only(lazy, open_samples(text), ratio, seed=3)
    same(list(mixed), expected)
    if layout != "conversation" and max_turns is None:
        assert any(s.id.endswith("#1") for s in mixed)


def test_lazy_datasetdict_source_equals_the_list_path_and_the_lengths_agree(tmp_path):
    from thinchat.hfdata import write_datasetdict
    from thinchat.testing import tiny_llava
    from thinchat.train.dataset import SupervisedDataset

    path, _ = typed_dataset(tmp_path)
    entries = json.loads(path.read_text(encoding="utf-8"))
    hf = write_datasetdict({"train": entries, "val": entries[:4]}, tmp_path, tmp_path / "hf", {})
    listed = [part for s in read_all(hf) for part in split_turns(s, "per_exchange")]  # via as_llava_json
    lazy = open_samples(hf, layout="per_exchange")
    same(lazy, listed, where=False)
    assert "(split train): entry 1 (id s001)" in lazy[1].where
    assert all(image.is_file() for s in lazy for image in s.images)
    assert len(open_samples(hf, split="val")) == 4

    _, processor = tiny_llava()
    from_list = SupervisedDataset(listed, processor, max_length=256)
    from_lazy = SupervisedDataset(lazy, processor, max_length=256)
    assert from_lazy.lengths == from_list.lengths
    for i in range(len(from_list)):
        a, b = from_list[i], from_lazy[i]
        assert a["input_ids"].tolist() == b["input_ids"].tolist() and a["labels"].equal(b["labels"])
        assert a.keys() == b.keys() and (
            "pixel_values" not in a or a["pixel_values"].equal(b["pixel_values"])
        )


def test_a_malformed_row_fails_up_front_with_file_and_entry(tmp_path):
    from thinchat.hfdata import write_datasetdict

    path = write_dataset(tmp_path, n=4, two_images=True)
    entries = json.loads(path.read_text(encoding="utf-8"))
    entries[2]["conversations"][0]["value"] = (
        "<image>\nDescribe this thin section."  # 1 placeholder, 2 images
    )
    path.write_text(json.dumps(entries), encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"train\.json: entry 2 \(id s002\): 1 <image> placeholder"):
        open_samples(path)
    hf = write_datasetdict({"train": entries}, tmp_path, tmp_path / "hf", {})
    with pytest.raises(
        DataFormatError, match=r"hf \(split train\): entry 2 \(id s002\): 1 <image> placeholder"
    ):
        open_samples(hf)
    entries[1]["conversations"][1]["from"] = "robot"
    path.write_text(json.dumps(entries), encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"entry 1 \(id s001\): turn 1 has unknown speaker 'robot'"):
        open_samples(path)


def test_a_datasetdict_split_trains_one_step(tmp_path):
    from thinchat.hfdata import write_datasetdict
    from thinchat.train.config import load_train_config
    from thinchat.train.run import load_data, train

    path = write_dataset(tmp_path / "data", n=6, text_only=2)
    entries = json.loads(path.read_text(encoding="utf-8"))
    hf = write_datasetdict({"train": entries, "val": entries[:2]}, tmp_path / "data", tmp_path / "hf", {})
    base = save_tiny(tmp_path / "base")
    config = load_train_config(
        None,
        tiny_overrides(
            "lora", base, hf, tmp_path / "out", val_data=hf, max_steps=1, save_steps=1, text_only_ratio=0.25
        ),
    )
    train_set, val_set = load_data(config)
    assert not isinstance(train_set, list) and len(val_set) == 2
    out = train(config)
    assert (out / "adapter_model.safetensors").is_file()
    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["global_step"] == 1
