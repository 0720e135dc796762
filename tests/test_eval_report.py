"""Test-set loading, report building and writing (no model): skipping, multi-reference, byte identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from thinchat.errors import DataFormatError
from thinchat.eval.data import load_eval_set
from thinchat.eval.meteor import METEOR_NLTK, MeteorScorer
from thinchat.eval.report import build_report, write_report
from thinchat.eval.tokenize import TOKENIZATION


def make_test_set(root: Path) -> Path:
    """4 entries -> 3 samples (two entries share an image), one image missing, one corrupt."""
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 100, 50)).save(root / "images" / "a_ppl.png")
    Image.new("RGB", (16, 16), (20, 100, 50)).save(root / "images" / "a_xpl.png")
    Image.new("RGB", (16, 16), (0, 0, 255)).save(root / "images" / "b.png")
    (root / "images" / "bad.png").write_bytes(b"not a png at all")
    q2 = "<image>\n<image>\n描述这张薄片。"
    entries = [
        {"id": "a1", "image": ["images/a_ppl.png", "images/a_xpl.png"], "lang": "zh",
         "conversations": [{"from": "human", "value": q2}, {"from": "gpt", "value": "石英约占45%，长石约占20%。"},
                           {"from": "human", "value": "副矿物？"}, {"from": "gpt", "value": "锆石。"}]},
        {"id": "a2", "image": ["images/a_ppl.png", "images/a_xpl.png"],
         "conversations": [{"from": "human", "value": q2}, {"from": "gpt", "value": "石英为主，少见锆石。"}]},
        {"id": "b", "image": "images/b.png",
         "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                           {"from": "gpt", "value": "Quartz about 60%, calcite cement."}]},
        {"id": "gone", "image": "images/missing.png",
         "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "x"}]},
        {"id": "bad", "image": "images/bad.png",
         "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "y"}]},
    ]  # fmt: skip
    path = root / "test.json"
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return path


def test_load_groups_references_and_skips_bad_images(tmp_path):
    samples, skipped = load_eval_set(make_test_set(tmp_path))
    assert [s.id for s in samples] == ["a1", "b"]
    assert samples[0].references == ["石英约占45%，长石约占20%。", "石英为主，少见锆石。"]
    assert samples[0].entry_ids == ["a1", "a2"] and samples[0].lang == "zh" and samples[1].lang == "en"
    assert len(samples[0].images) == 2 and samples[0].conversation()[0]["from"] == "human"
    reasons = {s.id: s.reason for s in skipped}
    assert set(reasons) == {"gone", "bad"}
    assert "file not found" in reasons["gone"] and "bad.png" in reasons["bad"]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([], "empty reference set"),
        ({"a": 1}, "expected a JSON list"),
        ([{"id": "x", "conversations": [{"from": "human", "value": "hi"}]}], "no non-empty gpt turn"),
        (
            [{"id": "x", "image": "a.png", "conversations": [{"from": "human", "value": "hi"},
                                                             {"from": "gpt", "value": "yo"}]}],
            "0 <image> placeholders but 1 images",
        ),
    ],
)  # fmt: skip
def test_bad_test_sets_raise(tmp_path, entries, message):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    with pytest.raises(DataFormatError, match=message):
        load_eval_set(path)


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('[\n{"id": 1,\n oops}\n]', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"t\.json:3: not valid JSON"):
        load_eval_set(path)


GENERATIONS = {
    "base": {"a1": "薄片。", "b": "A slide."},
    "finetuned": {"a1": "石英约占40%，少见锆石。", "b": "Quartz about 55% with calcite cement."},
}


def _write(tmp_path: Path, out: str) -> dict[str, Path]:
    samples, skipped = load_eval_set(make_test_set(tmp_path / out / "data"))
    scorer = MeteorScorer("nltk")
    report, records = build_report(
        samples, skipped, GENERATIONS, {"base": "ckpt/base", "finetuned": "ckpt/ft"}, scorer,
        settings={"decoding": "greedy", "max_new_tokens": 8},
    )  # fmt: skip
    return write_report(report, records, tmp_path / out / "report")


def test_report_is_byte_identical_for_identical_inputs(tmp_path):
    first, second = _write(tmp_path, "one"), _write(tmp_path, "two")
    assert first["json"].read_bytes() == second["json"].read_bytes()
    assert first["md"].read_bytes() == second["md"].read_bytes()
    for key in ("generations:base", "generations:finetuned"):
        assert first[key].read_bytes() == second[key].read_bytes()


def test_report_contents(tmp_path):
    paths = _write(tmp_path, "r")
    report = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert report["tokenization"] == TOKENIZATION and report["meteor_variant"] == METEOR_NLTK
    assert report["counts"] == {"scored": 2, "skipped": 2, "references": 3, "by_language": {"en": 1, "zh": 1}}
    zh, en = report["metrics"]["zh"], report["metrics"]["en"]
    assert zh["finetuned"]["BLEU-1"] > zh["base"]["BLEU-1"] and en["finetuned"]["chrF"] > en["base"]["chrF"]
    # finetuned names quartz+zircon (zh) and quartz+calcite+calcareous cement (en): all in the references.
    dom = report["domain"]["finetuned"]
    assert dom["micro"]["precision"] == pytest.approx(100.0)
    assert dom["proportions"]["n_matched"] == 2 and dom["proportions"]["mae"] == pytest.approx(5.0)
    assert report["domain"]["base"]["micro"]["f1"] == 0.0
    md = paths["md"].read_text(encoding="utf-8")
    assert "| metric | base | finetuned |" in md and "Skipped samples (2)" in md and "tok:zh" in md
    rows = [
        json.loads(line) for line in paths["generations:finetuned"].read_text(encoding="utf-8").splitlines()
    ]
    assert [r["id"] for r in rows] == ["a1", "b"] and rows[0]["entry_ids"] == ["a1", "a2"]
    assert rows[0]["images"] == ["images/a_ppl.png", "images/a_xpl.png"] and "BLEU-4" in rows[0]["scores"]
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_answer_diversity_flags_one_template_for_every_slide():
    from thinchat.eval.report import answer_diversity

    refs = ["Quartz 40%, calcite.", "Feldspar 20%, clay.", "Quartz 10%, dolomite.", "Chlorite, mica."]
    same = answer_diversity(["Quartz about 30%.", "Quartz about 45%.", "quartz  about 5%.", "Quartz."], refs)
    assert same["saturated"] and same["top_answer_share"] == 0.75 and same["distinct_answers"] == 2
    varied = answer_diversity(refs, refs)
    assert not varied["saturated"] and varied["distinct_answers"] == 4
    # Alike references (a templated set): alike answers are what it asks for, not saturation.
    assert not answer_diversity(["A quartz grain."] * 4, ["A quartz grain."] * 4)["saturated"]
