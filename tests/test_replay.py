"""Replay data: the base model's own answers as text-only entries, and the chat-retention score on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_tools.replay import load_replay_questions, make_replay
from thinchat.errors import DataFormatError
from thinchat.eval.text_retention import load_text_entries, text_retention
from thinchat.model.loading import load_pretrained
from thinchat.train.data import mix_text_only
from thinchat.train.sources import open_samples


@pytest.fixture(scope="module")
def talking_llava_dir(tmp_path_factory) -> Path:
    """A tiny Llava whose greedy answers are letters: its LM head scores only "a" (+sum h) and "b" (-sum h),
    so one of them always wins (a random tiny model answers with newlines, which strip to nothing)."""
    import torch

    from thinchat.testing import tiny_llava

    model, processor = tiny_llava(seed=0)
    vocab = processor.tokenizer.get_vocab()
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[vocab["a"]] = 1.0
        model.lm_head.weight[vocab["b"]] = -1.0
    path = tmp_path_factory.mktemp("talking_llava")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_silent_model_writes_nothing(tiny_llava_dir: Path, tmp_path: Path) -> None:
    # The random tiny model answers with whitespace only: every answer is empty, so nothing is written.
    with pytest.raises(DataFormatError, match="every replay answer was empty"):
        make_replay(tiny_llava_dir, tmp_path / "r.json", lang="en", max_new_tokens=3)
    assert not (tmp_path / "r.json").exists()


def test_replay_answers_are_the_models_own(talking_llava_dir: Path, tmp_path: Path) -> None:
    tiny_llava_dir = talking_llava_dir
    pool = tmp_path / "pool.yaml"
    questions = ["What is quartz?", "Name a rock.", "What is porosity?", "什么是石英？"]
    pool.write_text(
        "en: ['What is quartz?', 'Name a rock.', 'What is porosity?']\nzh: ['什么是石英？']\n",
        encoding="utf-8",
    )
    out = tmp_path / "replay.json"
    summary = make_replay(tiny_llava_dir, out, lang="both", questions=pool, max_new_tokens=6, holdout_every=2)
    kept = json.loads(out.read_text(encoding="utf-8"))
    held = json.loads(Path(summary["heldout"]).read_text(encoding="utf-8"))
    assert (
        summary["questions"] == 4 and summary["written"] + summary["heldout_written"] + summary["empty"] == 4
    )
    order = load_replay_questions(pool, "both")  # zh first, then en
    assert sorted(order) == sorted(questions) and summary["empty"] == 0
    assert [e["conversations"][0]["value"] for e in kept] == order[0::2]
    assert [e["conversations"][0]["value"] for e in held] == order[1::2]
    for entry in kept + held:
        assert "image" not in entry and entry["conversations"][1]["value"]
    # Greedy: the same model gives the same answers again.
    again = make_replay(
        tiny_llava_dir, tmp_path / "again.json", lang="both", questions=pool, max_new_tokens=6
    )
    assert again["written"] == 4 - summary["empty"]
    answers = {
        e["id"]: e["conversations"][1]["value"] for e in json.loads((tmp_path / "again.json").read_text())
    }
    for entry in kept + held:
        assert answers[entry["id"]] == entry["conversations"][1]["value"]
    # The entries train as text-only samples and mix in at a ratio.
    samples = list(open_samples(out))
    assert all(not s.images for s in samples)
    assert len(mix_text_only([], samples, None, 0)) == len(samples)
    # Their loss under the model that wrote them is what chat retention reports.
    model, processor = load_pretrained(tiny_llava_dir)
    score = text_retention(model, processor, load_text_entries(out))
    assert score["n_samples"] == len(kept) and score["answer_tokens"] > 0 and score["loss"] > 0


def test_replay_answers_in_fp32_where_inference_would_run_bf16(talking_llava_dir, tmp_path, monkeypatch):
    """The answers are training data: a host whose bf16 matmuls measure faster writes what any other
    host writes, so the replay model is loaded in fp32 whatever the inference default."""
    import torch

    import thinchat.model.loading as loading
    from thinchat import precision

    monkeypatch.setattr(precision, "inference_dtype", lambda device="cpu": torch.bfloat16)
    loaded, real = [], loading.load_pretrained

    def spy(*args, **kwargs):
        model, processor = real(*args, **kwargs)
        loaded.append(model.dtype)
        return model, processor

    monkeypatch.setattr(loading, "load_pretrained", spy)
    make_replay(talking_llava_dir, tmp_path / "r.json", lang="en", max_new_tokens=3)
    assert loaded == [torch.float32]
    assert real(talking_llava_dir)[0].dtype == torch.bfloat16  # the default it overrides


def test_replay_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="not found"):
        load_replay_questions(tmp_path / "missing.yaml", "en")
    bad = tmp_path / "bad.yaml"
    bad.write_text("en: what\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="expected lists of questions under en"):
        load_replay_questions(bad, "en")
    bad.write_text("en: [a?, b]: c\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad\.yaml:1: not valid YAML"):
        load_replay_questions(bad, "en")
    assert len(load_replay_questions(None, "both")) == 2 * len(load_replay_questions(None, "en"))
    with_image = tmp_path / "img.json"
    with_image.write_text(
        json.dumps(
            [
                {
                    "image": "a.png",
                    "conversations": [
                        {"from": "human", "value": "<image>\nq"},
                        {"from": "gpt", "value": "a"},
                    ],
                }
            ]
        ),
        encoding="utf-8",
    )
    with pytest.raises(DataFormatError, match="entry 0 .*expected a text-only entry"):
        load_text_entries(with_image)
