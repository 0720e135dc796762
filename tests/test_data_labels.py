"""`data convert --labels / --image-folder`: labelled images -> conversations naming their classes, with
grounded questions over the label set, the duplicate-row rule, stratified splits and a row's own id."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_tools.convert import convert
from thinchat.cli import main
from thinchat.errors import DataFormatError


def _jpg(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def _summary(out: Path) -> dict:
    return json.loads(out.with_name(out.stem + ".summary.json").read_text(encoding="utf-8"))


def _grains(root: Path, classes: dict[str, int]) -> Path:
    """A grains-like set sorted by class: ``labels.csv`` (id,class,ppl,xpl) and ``ppl/`` + ``xpl/`` views."""
    rows, seed = ["id,class,ppl,xpl"], 0
    for cls, n in classes.items():
        for k in range(n):
            ident = f"g_{cls}_{k:02d}"
            for view in ("ppl", "xpl"):
                seed += 1
                _jpg(root / view / f"{ident}.jpg", seed)
            rows.append(f"{ident},{cls},ppl/{ident}.jpg,xpl/{ident}.jpg")
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "labels.csv"


def _turns(entry: dict) -> list[tuple[str, str, str]]:
    conv = entry["conversations"]
    return [
        (kind, conv[2 * k]["value"].replace("<image>\n", ""), conv[2 * k + 1]["value"])
        for k, kind in enumerate(entry["turn_types"])
    ]


def test_labels_file_with_two_views_names_each_class_and_asks_a_sure_no(tmp_path: Path) -> None:
    labels = _grains(tmp_path / "g", {"quartz": 4, "lithic": 3})
    out = tmp_path / "conv.json"
    summary = convert(None, tmp_path / "g", out, labels=labels, qa_turns=6)
    entries = _load(out)
    assert summary["rows_in"] == 7 and summary["rows_out"] == 7 and summary["labels"]["multi_label"] is False
    assert summary["labels"]["terms"] == {"lithic": "rock_fragment", "quartz": "quartz"}
    for entry in entries:
        cls = entry["labels"][0]
        assert entry["id"] == f"g_{cls}_{entry['id'][-2:]}"  # the row's own id, not "ppl_g_..."
        assert [Path(p).parent.name for p in entry["image"]] == ["ppl", "xpl"]  # PPL first
        name = {"quartz": "quartz", "lithic": "rock fragment"}[cls]
        other = {"quartz": "rock fragment", "lithic": "quartz"}[cls]
        turns = _turns(entry)
        assert ("describe" in entry["turn_types"]) and any(
            a == f"The image shows {name}." for _, _, a in turns
        )
        presence = [(q, a) for kind, q, a in turns if kind == "presence"]
        assert any(name in q and a.startswith("Yes") for q, a in presence)
        assert any(other in q and a.startswith("No") for q, a in presence)  # every other class: a sure "no"
        which = [q for kind, q, _ in turns if kind == "which"]
        assert which and name in which[0] and other in which[0]

    convert(None, tmp_path / "g", tmp_path / "zh.json", labels=labels, qa_turns=6, lang="zh")
    zh = _load(tmp_path / "zh.json")
    assert {e["lang"] for e in zh} == {"zh"}
    captions = {a for e in zh for kind, _, a in _turns(e) if kind == "describe"}
    assert captions == {"图中为石英。", "图中为岩屑。"}


def test_umbrella_class_is_asked_but_never_its_finer_terms(tmp_path: Path) -> None:
    labels = _grains(tmp_path / "g", {"feldspar": 4, "quartz": 4})
    out = tmp_path / "conv.json"
    convert(None, tmp_path / "g", out, labels=labels, qa_turns=6)
    text = " ".join(q for e in _load(out) for _, q, _ in _turns(e))
    assert "feldspar" in text and "quartz" in text
    assert not re.search(r"plagioclase|K-feldspar", text, re.IGNORECASE)
    presence = [
        (q, a) for e in _load(out) if e["labels"] == ["feldspar"] for k, q, a in _turns(e) if k == "presence"
    ]
    assert any("feldspar" in q and a.startswith("Yes") for q, a in presence)
    assert any("quartz" in q and a.startswith("No") for q, a in presence)


def test_a_class_the_lexicon_does_not_know_is_used_as_given(tmp_path: Path) -> None:
    labels = _grains(tmp_path / "g", {"granite_A": 3, "quartz": 3})
    out = tmp_path / "conv.json"
    summary = convert(None, tmp_path / "g", out, labels=labels, qa_turns=6)
    assert summary["labels"]["terms"]["granite_A"] is None
    granite = [e for e in _load(out) if e["labels"] == ["granite_A"]]
    turns = [t for e in granite for t in _turns(e)]
    assert {a for k, _, a in turns if k == "describe"} == {"The image shows granite A."}
    assert any("granite A" in q and a.startswith("Yes") for k, q, a in turns if k == "presence")


def test_label_columns_and_multi_valued_cells_are_multi_label(tmp_path: Path) -> None:
    img = tmp_path / "img"
    for k in range(4):
        _jpg(img / f"s{k}.jpg", k)
    flags = tmp_path / "flags.csv"
    flags.write_text("image,quartz,calcite,pyrite\ns0.jpg,1,1,0\ns1.jpg,0,1,0\ns2.jpg,1,0,0\ns3.jpg,0,0,1\n")
    summary = convert(None, img, tmp_path / "a.json", labels=flags, qa_turns=6)
    entries = {e["id"]: e for e in _load(tmp_path / "a.json")}
    assert summary["labels"]["multi_label"] is True and entries["s0"]["labels"] == ["calcite", "quartz"]
    assert {a for k, _, a in _turns(entries["s0"]) if k == "describe"} == {
        "The image shows calcite and quartz."
    }
    cells = tmp_path / "cells.tsv"
    cells.write_text("id\tlabel\ns0\tquartz; calcite\ns3\tpyrite\n")
    convert(None, img, tmp_path / "b.json", labels=cells)
    assert {e["id"]: e["labels"] for e in _load(tmp_path / "b.json")} == {
        "s0": ["calcite", "quartz"],
        "s3": ["pyrite"],
    }


def test_class_folders_with_views_an_empty_class_and_a_stray_image(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    _jpg(root / "quartz" / "a_ppl.jpg", 1), _jpg(root / "quartz" / "a_xpl.jpg", 2)
    _jpg(root / "quartz" / "b.jpg", 3)
    _jpg(root / "calcite" / "ppl" / "c.jpg", 4), _jpg(root / "calcite" / "xpl" / "c.jpg", 5)
    (root / "pyrite").mkdir()
    _jpg(root / "stray.jpg", 6)
    out = tmp_path / "conv.json"
    summary = convert(None, None, out, image_folder=root, qa_turns=4)
    entries = {e["id"]: e for e in _load(out)}
    assert set(entries) == {"quartz_a", "quartz_b", "calcite_c"}
    assert [Path(p).name for p in entries["quartz_a"]["image"]] == ["a_ppl.jpg", "a_xpl.jpg"]
    assert [Path(p).parent.name for p in entries["calcite_c"]["image"]] == ["ppl", "xpl"]
    reasons = {Path(s["file"]).name: s["reason"] for s in summary["skipped"]}
    assert "class folder 'pyrite' has no images" in reasons["pyrite"]
    assert "outside any class folder" in reasons["stray.jpg"]
    assert summary["rows_in"] == 5 == summary["rows_out"] + summary["rows_skipped"]


def test_an_image_under_two_classes_is_reported_or_kept_as_two_labels(tmp_path: Path) -> None:
    img = tmp_path / "img"
    for k in range(3):
        _jpg(img / f"s{k}.jpg", k)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,class\ns0,quartz\ns1,quartz\ns0,lithic\ns2,lithic\ns2,lithic\n")
    out = tmp_path / "single.json"
    summary = convert(None, img, out, labels=labels)
    assert {e["id"] for e in _load(out)} == {"s1", "s2"}  # s0 is left out entirely
    by_line = {s["line"]: s["reason"] for s in summary["skipped"]}
    assert set(by_line) == {2, 4, 6}
    assert (
        "different classes in a single-label set" in by_line[2]
        and "quartz (line 2), lithic (line 4)" in by_line[4]
    )
    assert by_line[6] == "duplicate: same image and class as line 5"

    multi = tmp_path / "multi.json"
    summary = convert(None, img, multi, labels=labels, multi_label=True)
    assert {e["id"]: e["labels"] for e in _load(multi)}["s0"] == ["lithic", "quartz"]
    assert summary["rows_merged"] == 1
    assert summary["labels"]["merged"] == [
        {"file": str(labels), "line": 4, "into": "line 2", "classes": ["lithic", "quartz"]}
    ]
    assert summary["rows_in"] == summary["rows_out"] + summary["rows_skipped"] + summary["rows_merged"]

    folders = tmp_path / "folders"  # the same file content filed under two class folders
    (
        _jpg(folders / "quartz" / "x.jpg", 7),
        _jpg(folders / "lithic" / "x.jpg", 7),
        _jpg(folders / "lithic" / "y.jpg", 8),
    )
    summary = convert(None, None, tmp_path / "f.json", image_folder=folders)
    assert {e["id"] for e in _load(tmp_path / "f.json")} == {"lithic_y"} and summary["rows_skipped"] == 2


def test_splits_are_drawn_within_each_class(tmp_path: Path) -> None:
    labels = _grains(tmp_path / "g", {"feldspar": 10, "lithic": 6, "quartz": 12})  # sorted by class
    out = tmp_path / "conv.json"
    convert(None, tmp_path / "g", out, labels=labels, split="0.5,0.25,0.25")
    test = Counter(e["labels"][0] for e in _load(tmp_path / "conv_test.json"))
    sizes = {"feldspar": 10, "lithic": 6, "quartz": 12}
    assert sum(test.values()) == 7 and all(
        abs(test[c] - n / 4) <= 1 for c, n in sizes.items()
    )  # a quarter of each
    val = Counter(e["labels"][0] for e in _load(tmp_path / "conv_val.json"))
    assert set(val) == {"feldspar", "lithic", "quartz"}


def test_bad_labels_files(tmp_path: Path) -> None:
    img = tmp_path / "img"
    _jpg(img / "s0.jpg", 0)
    no_class = tmp_path / "no_class.csv"
    no_class.write_text("id,notes\ns0,pretty\n")
    with pytest.raises(
        DataFormatError, match=re.escape(f"{no_class}:1: header ['id', 'notes'] has no class column")
    ):
        convert(None, img, tmp_path / "x.json", labels=no_class)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        '{"id": "s0", "class": "quartz"}\n{"id": "s9", "class": "quartz"}\n{"id": "s0"}\nnot json\n'
    )
    summary = convert(None, img, tmp_path / "y.json", labels=rows)
    reasons = {s["line"]: s["reason"] for s in summary["skipped"]}
    assert summary["rows_out"] == 1 and set(reasons) == {2, 3, 4}
    assert "image not found for 's9'" in reasons[2] and reasons[3].startswith("no class")


def test_jsonl_with_ids_and_two_views_takes_test_ids_written_with_those_ids(tmp_path: Path) -> None:
    img = tmp_path / "grains"
    rows = []
    for k in range(6):
        ident = f"20_c2_1_1_{k:03d}"
        _jpg(img / "ppl" / f"{ident}.jpg", 2 * k), _jpg(img / "xpl" / f"{ident}.jpg", 2 * k + 1)
        rows.append(
            {"id": ident, "image": [f"ppl/{ident}.jpg", f"xpl/{ident}.jpg"], "caption": "Quartz grain."}
        )
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ids = tmp_path / "test_ids.txt"
    ids.write_text("20_c2_1_1_001\n20_c2_1_1_004\n", encoding="utf-8")
    out = tmp_path / "conv.json"
    assert main(["data", "convert", "--captions", str(captions), "--images", str(img), "--out", str(out),
                 "--test-ids", str(ids)]) == 0  # fmt: skip
    assert {e["id"] for e in _load(tmp_path / "conv_test.json")} == {"20_c2_1_1_001", "20_c2_1_1_004"}
    # without an id field, the id leaves out the view folders: both views share the name a user writes
    for row in rows:
        del row["id"]
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    convert(captions, img, tmp_path / "derived.json", test_ids=ids)
    assert {e["id"] for e in _load(tmp_path / "derived_test.json")} == {"20_c2_1_1_001", "20_c2_1_1_004"}


def test_chinese_class_names_write_chinese_and_labels_survive_a_datasetdict(tmp_path: Path) -> None:
    from thinchat.hfdata import as_llava_json

    img = tmp_path / "img"
    for k in range(4):
        _jpg(img / f"s{k}.jpg", k)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,class\ns0,石英\ns1,长石\ns2,石英\ns3,长石\n", encoding="utf-8")
    summary = convert(None, img, tmp_path / "zh.json", labels=labels, qa_turns=4)
    entries = _load(tmp_path / "zh.json")
    assert summary["languages"] == {"zh": 4} and summary["labels"]["terms"] == {
        "石英": "quartz",
        "长石": "feldspar",
    }
    assert {a for e in entries for k, _, a in _turns(e) if k == "describe"} == {
        "图中为石英。",
        "图中为长石。",
    }

    hf = tmp_path / "hf"
    convert(None, img, hf, labels=labels, qa_turns=4, split="0.5,0.5", format_out="hf")
    back = _load(as_llava_json(hf, "train"))
    assert back and all(e["labels"] in (["石英"], ["长石"]) for e in back)
