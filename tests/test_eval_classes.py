"""The report on labelled slides: per-class accuracy and the confusion matrix on hand-made predictions, the
stratified sample a limited report scores, and the reason a report gives when it asks no question."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from thinchat.eval import evaluate
from thinchat.eval.classes import NONE, class_lines, class_report, plot_confusion
from thinchat.eval.data import load_eval_sample
from thinchat.eval.report import build_report, render_markdown
from thinchat.eval.sampling import allocate, draw_sample, why_no_questions
from thinchat.evalsample import EvalSample
from thinchat.testing import tiny_llava

torch.set_flush_denormal(True)


def _sample(ident: str, labels: tuple[str, ...], reference: str = "") -> EvalSample:
    text = reference or f"The image shows {' and '.join(labels)}."
    return EvalSample(ident, [], [], "<image>\nDescribe.", [text], "en", [ident], labels=labels)


def test_confusion_matrix_and_per_class_accuracy_on_hand_made_predictions(tmp_path: Path) -> None:
    samples = [_sample(f"q{k}", ("quartz",)) for k in range(4)]
    samples += [_sample(f"f{k}", ("feldspar",)) for k in range(3)]
    samples += [_sample(f"l{k}", ("lithic",)) for k in range(2)]
    said = {
        "q0": "The image shows quartz.", "q1": "Quartz.", "q2": "It is feldspar, not quartz.",
        "q3": "A grain.",  # names no class
        "f0": "The image shows plagioclase.",  # a finer term counts for its class
        "f1": "Feldspar.", "f2": "No quartz here; a rock fragment.",  # negated quartz, then the lithic class
        "l0": "The image shows a lithic grain.", "l1": "quartz and feldspar",  # the first named counts
    }  # fmt: skip
    section = class_report(samples, {"tuned": said})
    tuned = section["models"]["tuned"]
    assert section["classes"] == ["feldspar", "lithic", "quartz"] and section["n"] == 9
    assert tuned["confusion"] == {
        "feldspar": {"feldspar": 2, "lithic": 1, "quartz": 0, NONE: 0},
        "lithic": {"feldspar": 0, "lithic": 1, "quartz": 1, NONE: 0},
        "quartz": {"feldspar": 1, "lithic": 0, "quartz": 2, NONE: 1},
    }
    assert tuned["accuracy"] == pytest.approx(5 / 9) and tuned["no_class_named"] == 1
    assert tuned["per_class"]["quartz"] == {"n": 4, "right": 2, "accuracy": 0.5}
    assert section["majority"] == {"class": "quartz", "accuracy": pytest.approx(4 / 9)}

    lines = "\n".join(class_lines(section, ["tuned"]))
    assert "| class named right | 0.56 |" in lines and "| majority class (quartz, always) | 0.44 |" in lines
    assert "| quartz | 1 | 0 | 2 | 1 |" in lines and "| lithic (2) | 0.50 |" in lines
    assert "| linear probe on the tower's features (ceiling) | not computed |" in lines
    chart = plot_confusion({"classes": section}, tmp_path / "confusion.png")
    assert Image.open(chart).size[0] > 100


def test_multi_label_classes_score_every_class_named() -> None:
    samples = [_sample("a", ("calcite", "quartz")), _sample("b", ("quartz",)), _sample("c", ("calcite",))]
    said = {"a": "Quartz and calcite.", "b": "Quartz and calcite.", "c": "Calcite."}
    tuned = class_report(samples, {"tuned": said})["models"]["tuned"]
    assert tuned["accuracy"] == pytest.approx(2 / 3) and "confusion" not in tuned
    assert tuned["per_class"]["calcite"] == {
        "n": 2,
        "right": 2,
        "accuracy": 1.0,
        "precision": pytest.approx(2 / 3),
    }


def test_allocation_gives_every_stratum_a_slide_then_proportional_shares() -> None:
    assert allocate({"a": 100, "b": 10, "c": 1}, 10) == {"a": 8, "b": 1, "c": 1}
    assert allocate({"a": 2, "b": 2}, 3) in ({"a": 2, "b": 1}, {"a": 1, "b": 2})
    samples = [_sample(f"{c}{k}", (c,)) for c in "abcdef" for k in range(3)]
    chosen, drawn = draw_sample(samples, 4, seed=1)
    assert len(chosen) == 4 == len({s.labels for s in chosen}) and drawn["drawn"] == "stratified"


def _sorted_labelled_test_set(root: Path, per_class: int = 8) -> Path:
    """A test JSON sorted by class, as exported class folders give: quartz, then feldspar, then lithic."""
    (root / "img").mkdir(parents=True)
    entries = []
    for cls, colour in (("quartz", (220, 220, 220)), ("feldspar", (160, 120, 90)), ("lithic", (60, 60, 60))):
        name = {"lithic": "rock fragment"}.get(cls, cls)
        for k in range(per_class):
            image = f"img/{cls}_{k}.png"
            Image.new("RGB", (16, 16), tuple(max(0, c - k) for c in colour)).save(root / image)
            conv = [
                {"from": "human", "value": "<image>\nDescribe."},
                {"from": "gpt", "value": f"The image shows {name}."},
            ]
            entries.append(
                {"id": f"{cls}_{k}", "image": [image], "conversations": conv, "lang": "en", "labels": [cls]}
            )
    path = root / "test.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def test_a_test_split_sorted_by_class_gives_a_report_over_every_class(tmp_path: Path) -> None:
    data = _sorted_labelled_test_set(tmp_path / "data")
    samples, _, drawn = load_eval_sample(data, limit=6)
    assert sorted(s.labels[0] for s in samples) == ["feldspar"] * 2 + ["lithic"] * 2 + ["quartz"] * 2
    assert drawn["strata"] == {"feldspar": [2, 8], "lithic": [2, 8], "quartz": [2, 8]}

    model, processor = tiny_llava(seed=0)
    model.save_pretrained(tmp_path / "tuned")
    processor.save_pretrained(tmp_path / "tuned")
    report = evaluate({"tuned": str(tmp_path / "tuned")}, data, tmp_path / "out", batch_size=6,
                      max_new_tokens=3, limit=6, device="cpu", reliance_samples=0, meteor="nltk")  # fmt: skip
    assert report["classes"]["classes"] == ["feldspar", "lithic", "quartz"]
    assert {c: v["n"] for c, v in report["classes"]["models"]["tuned"]["per_class"].items()} == {
        "feldspar": 2, "lithic": 2, "quartz": 2,
    }  # fmt: skip
    following = report["question_following"]["tuned"]["all"]
    assert following["n_no"] > 0 and following["n_which"] > 0  # other classes: 'no' and which-of questions
    text = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "Scored a seeded sample of 6 of the 24 held-out slides (seed 0), stratified by class" in text
    assert "## Classes (6 labelled slides" in text and "Confusion matrix, `tuned`" in text
    assert (tmp_path / "out" / "confusion.png").is_file()


def test_a_report_without_questions_says_why(tmp_path: Path) -> None:
    one_class = [_sample(f"q{k}", ("quartz",)) for k in range(3)]
    assert "all name only quartz" in why_no_questions(one_class, 4)
    assert why_no_questions(one_class, 0) == "not asked (question_probes=0)"
    report, _ = build_report(one_class, [], {"m": {s.id: "Quartz." for s in one_class}}, {"m": "ckpt"}, None)
    report["question_following_note"] = why_no_questions(one_class, 4)
    text = render_markdown(report)
    assert "## Question following" in text and "Not scored: no grounded question could be asked" in text


def test_class_probe_separates_classes_the_features_hold() -> None:
    from thinchat.eval.feature_probe import probe_classes

    torch.manual_seed(0)
    centres = {"quartz": torch.tensor([3.0, 0, 0, 0]), "feldspar": torch.tensor([0, 3.0, 0, 0]),
               "lithic": torch.tensor([0, 0, 3.0, 0])}  # fmt: skip
    labels = [c for c in centres for _ in range(10)]
    x = torch.stack([centres[c] + 0.3 * torch.randn(4) for c in labels])
    result = probe_classes(x[::2], [(c,) for c in labels[::2]], x[1::2], [(c,) for c in labels[1::2]], 0.1)
    assert result["class_accuracy"] == 1.0 and result["n_test"] == 15
    noise = torch.randn(30, 4)  # features that hold nothing about the class: near chance
    chance = probe_classes(
        noise[::2], [(c,) for c in labels[::2]], noise[1::2], [(c,) for c in labels[1::2]], 0.1
    )
    assert chance["class_accuracy"] < 0.8
