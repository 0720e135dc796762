"""``parse_entry``, the one reader of a converted entry: typed exchanges, the description, the errors."""

from __future__ import annotations

import pytest

from thinchat.conversation import Exchange, parse_entry
from thinchat.errors import DataFormatError


def typed_entry() -> dict:
    """Two questions, then the description, with both views shown in the first question."""
    return {
        "id": "s1",
        "image": ["a.png", "b.png"],
        "lang": "en",
        "labels": ["sandstone"],
        "turn_types": ["presence", "describe"],
        "conversations": [
            {"from": "human", "value": "<image>\n<image>\nIs calcite present?"},
            {"from": "gpt", "value": "No."},
            {"from": "human", "value": "Describe the slide."},
            {"from": "gpt", "value": "Quartz (about 60%)."},
        ],
    }


def test_an_entry_reads_as_typed_exchanges_and_keys():
    entry = parse_entry(typed_entry(), 3, "train.json")
    assert entry.where == "train.json: entry 3 (id s1)" and entry.id == "s1"
    assert entry.images == ["a.png", "b.png"] and entry.placeholders == 2
    assert entry.exchanges == [
        Exchange("<image>\n<image>\nIs calcite present?", "No.", "presence"),
        Exchange("Describe the slide.", "Quartz (about 60%).", "describe"),
    ]
    assert (entry.lang, entry.labels, entry.image_embedding) == ("en", ("sandstone",), None)
    assert [m["role"] for m in entry.messages] == ["user", "assistant", "user", "assistant"]


def test_the_description_is_asked_with_the_images_in_front():
    entry = parse_entry(typed_entry(), 0, "t.json")
    assert entry.description() == Exchange(
        "<image>\n<image>\nDescribe the slide.", "Quartz (about 60%).", "describe"
    )
    untyped = {k: v for k, v in typed_entry().items() if k != "turn_types"}
    assert parse_entry(untyped, 0, "t.json").description() == Exchange(
        "<image>\n<image>\nIs calcite present?", "No."
    )
    only_question = {"conversations": [{"from": "human", "value": "hi"}]}
    assert parse_entry(only_question, 0, "t.json").description() is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"turn_types": ["describe"]},
            r"t\.json: entry 0 \(id s1\): 'turn_types' must list one type per answer",
        ),
        (
            {"conversations": [{"from": "robot", "value": "x"}]},
            r"entry 0 \(id s1\): turn 0 has unknown speaker",
        ),
        ({"image": 5}, "'image' must be a path or a list of paths"),
    ],
)
def test_a_malformed_entry_names_file_index_and_id(change, message):
    with pytest.raises(DataFormatError, match=message):
        parse_entry({**typed_entry(), **change}, 0, "t.json")
    with pytest.raises(DataFormatError, match=r"t\.json: entry 2 \(id 2\): expected an object"):
        parse_entry(["not", "an", "entry"], 2, "t.json")
