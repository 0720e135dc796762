"""`thinchat eval` end to end on tiny random checkpoints: structure, counts, determinism, bad checkpoints.

The models are random, so only the shape of the outcome is asserted, never its quality.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from thinchat.cli import main
from thinchat.errors import ModelSpecError
from thinchat.eval import evaluate
from thinchat.testing import tiny_llava

torch.set_flush_denormal(True)


def make_test_set(root):
    """3 entries -> 2 samples (a1/a2 share their PPL+XPL pair) + 2 skipped (missing, corrupt image)."""
    (root / "img").mkdir(parents=True)
    for name, colour in (("a_ppl", (200, 90, 40)), ("a_xpl", (20, 90, 40)), ("b", (0, 0, 255))):
        Image.new("RGB", (16, 16), colour).save(root / "img" / f"{name}.png")
    (root / "img" / "bad.png").write_bytes(b"garbage")
    pair, one = ["img/a_ppl.png", "img/a_xpl.png"], "<image>\nDescribe."

    def entry(eid, image, question, answer):
        return {"id": eid, "image": image,
                "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}  # fmt: skip

    entries = [
        entry("a1", pair, "<image>\n<image>\n描述这张薄片。", "石英约占45%，长石约占20%。"),
        entry("a2", pair, "<image>\n<image>\n描述这张薄片。", "石英为主，少见锆石。"),
        entry("b", "img/b.png", one, "Quartz about 60%, calcite cement."),
        entry("gone", "img/missing.png", one, "x"),
        entry("bad", "img/bad.png", one, "y"),
    ]
    path = root / "test.json"
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    paths = {}
    for name, seed in (("base", 0), ("tuned", 1)):
        model, processor = tiny_llava(seed=seed)
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def test_evaluate_two_checkpoints_writes_everything_deterministically(tmp_path, checkpoints):
    data = make_test_set(tmp_path / "data")
    kwargs = {"batch_size": 2, "max_new_tokens": 4, "meteor": "nltk", "device": "cpu"}
    report = evaluate(checkpoints, data, tmp_path / "out1", **kwargs)
    assert report["counts"]["scored"] == 2 and report["counts"]["skipped"] == 2
    assert set(report["metrics"]["zh"]) == {"base", "tuned"} and set(report["domain"]) == {"base", "tuned"}
    out = tmp_path / "out1"
    for name in (
        "report.md",
        "report.json",
        "chart.png",
        "generations_base.jsonl",
        "generations_tuned.jsonl",
    ):
        assert (out / name).is_file(), name
    rows = (out / "generations_tuned.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 2 and all(isinstance(json.loads(r)["answer"], str) for r in rows)
    # grounded questions, asked alone and again after each model's own description
    following = report["question_following"]["tuned"]["all"]
    assert following["n_yes"] + following["n_no"] > 0
    assert all(f"followup_{key}" in following for key in ("yes_no_accuracy", "answer_form", "which_accuracy"))
    questions = [
        json.loads(r) for r in (out / "questions_tuned.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert questions and all(isinstance(q["followup_answer"], str) for q in questions)
    evaluate(checkpoints, data, tmp_path / "out2", **kwargs)
    assert (out / "report.json").read_bytes() == (tmp_path / "out2" / "report.json").read_bytes()


def test_look_first_only_for_the_named_checkpoints(tmp_path, checkpoints):
    data = make_test_set(tmp_path / "data")
    kwargs = {"batch_size": 2, "max_new_tokens": 4, "meteor": "nltk", "device": "cpu"}
    report = evaluate(checkpoints, data, tmp_path / "out", look_first=("tuned",), **kwargs)
    base, tuned = (report["question_following"][n]["all"] for n in ("base", "tuned"))
    assert base["n_yes"] == tuned["n_yes"] > 0  # both asked the same questions directly
    assert base.get("followup_yes_no_accuracy") is None and tuned["followup_yes_no_accuracy"] is not None
    rows = (tmp_path / "out" / "questions_base.jsonl").read_text(encoding="utf-8").splitlines()
    assert all(json.loads(r).get("followup_answer") is None for r in rows)
    markdown = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| base | tuned |" in markdown and "looking first" in markdown


def test_bad_checkpoint_fails_before_generation(tmp_path, checkpoints):
    data = make_test_set(tmp_path / "data")
    with pytest.raises(ModelSpecError, match="checkpoint directory not found"):
        evaluate({"base": checkpoints["base"], "typo": str(tmp_path / "nope")}, data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_eval_and_clear_error(tmp_path, checkpoints, capsys):
    data = make_test_set(tmp_path / "data")
    argv = ["eval", "--from_pretrained", checkpoints["base"], "--data", str(data), "--out", str(tmp_path / "o"),
            "--batch-size", "3", "--max-new-tokens", "3", "--limit", "1", "--meteor", "nltk", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text(encoding="utf-8"))
    assert report["counts"]["scored"] == 1 and list(report["checkpoints"]) == ["base"]
    empty = tmp_path / "empty.json"
    empty.write_text("[]", encoding="utf-8")
    argv[argv.index("--data") + 1] = str(empty)
    assert main(argv) == 2
    assert "empty reference set" in capsys.readouterr().err


def test_a_prompt_over_the_positions_is_answered_empty_and_the_rest_are_kept(caplog):
    """Looking first can put an untrained model's long description into the prompt; one such prompt is
    answered empty (scored wrong) and named in the log instead of failing the whole report."""
    from types import SimpleNamespace

    from thinchat.eval.runner import generate_for_samples
    from thinchat.evalsample import EvalSample

    samples = [
        EvalSample(i, [], [], f"Is there quartz? {i}", ["Yes."], "en", [i]) for i in ("a", "long", "b")
    ]
    asked = []

    class Engine:
        prompts = SimpleNamespace(
            count_tokens=lambda messages, images: 900 if "long" in str(messages) else 20
        )

        def resolve(self, **overrides):
            return overrides

        def prompt_budget(self, settings):
            return 512 - settings["max_new_tokens"]

        def generate_batch(self, messages, images, max_new_tokens):
            asked.extend(messages)
            return [f"answer {i}" for i in range(len(messages))]

    caplog.set_level("WARNING", logger="thinchat.eval.runner")
    answers = generate_for_samples(Engine(), samples, batch_size=3, max_new_tokens=4)
    assert answers == {"a": "answer 0", "long": "", "b": "answer 1"} and len(asked) == 2
    assert "1 of 3 prompts do not fit the LM's 508 prompt tokens (long)" in caplog.text


def test_the_report_is_scored_in_the_weights_dtype_it_records(tmp_path, checkpoints, monkeypatch):
    import thinchat.model.loading as loading

    loaded = []
    real = loading.load_pretrained

    def spy(path, **kwargs):
        model, processor = real(path, **kwargs)
        loaded.append(next(model.parameters()).dtype)
        return model, processor

    monkeypatch.setattr(loading, "load_pretrained", spy)
    data = make_test_set(tmp_path / "data")
    argv = ["eval", "--from_pretrained", checkpoints["tuned"], "--data", str(data), "--max-new-tokens", "3",
            "--question-probes", "0", "--reliance-samples", "0", "--meteor", "nltk", "--device", "cpu"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "bf16"), "--dtype", "bf16"]) == 0
    assert main([*argv, "--out", str(tmp_path / "auto")]) == 0  # auto: fp32 here (tests pin it)
    assert loaded == [torch.bfloat16, torch.float32]
    for name, dtype in (("bf16", "bfloat16"), ("auto", "float32")):
        report = json.loads((tmp_path / name / "report.json").read_text(encoding="utf-8"))
        assert report["settings"]["dtype"] == dtype
        assert report["counts"]["scored"] == 2
    assert "dtype=bfloat16" in (tmp_path / "bf16" / "report.md").read_text(encoding="utf-8")
