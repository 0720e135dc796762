"""`data convert`: every input format, the bad-input corpus, skip accounting, splits, multi-turn facets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_tools.convert import convert
from thinchat.domain.lexicon import load_lexicon
from thinchat.domain.questions import load_questions
from thinchat.domain.reports import classify, facet_answers, split_clauses
from thinchat.errors import DataFormatError

ZH = "泥质呈纤维状、隐晶状，大部分已绢云母化，分布欠均。方解石呈粉晶-细晶状，含铁。硅质围绕颗粒分布。长石具粘土化。少见锆石、电气石等。碎屑长轴大致具定向性。"
EN = "Quartz dominates the framework. K-feldspar shows argillization. Accessory minerals: zircon and pyrite."


def _jpg(path: Path, seed: int = 0, size: int = 48) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def _summary(out: Path) -> dict:
    return json.loads(out.with_name(out.stem + ".summary.json").read_text(encoding="utf-8"))


@pytest.fixture
def images(tmp_path: Path) -> Path:
    d = tmp_path / "img"
    d.mkdir()
    for i in range(1, 5):
        _jpg(d / f"{i:04d}.jpg", seed=i)
    return d


def test_thingpt_tsv(tmp_path: Path, images: Path) -> None:
    cap = tmp_path / "captions.txt"
    cap.write_text(f"0001\t{ZH}\n0002\t{EN}\n\n0003\t石英约占60%。\n", encoding="utf-8")
    out = tmp_path / "out" / "data.json"
    summary = convert(cap, images, out, seed=1)
    rows = _load(out)
    assert [r["id"] for r in rows] == ["0001", "0002", "0003"]
    assert rows[0]["image"] == ["../img/0001.jpg"]
    assert (out.parent / rows[0]["image"][0]).is_file()
    assert [r["lang"] for r in rows] == ["zh", "en", "zh"]
    first = rows[0]["conversations"]
    assert first[0]["from"] == "human" and first[0]["value"].startswith("<image>\n")
    assert first[0]["value"].count("<image>") == 1
    assert first[0]["value"].split("\n", 1)[1] in load_questions().describe["zh"]
    assert rows[1]["conversations"][0]["value"].split("\n", 1)[1] in load_questions().describe["en"]
    assert first[1] == {"from": "gpt", "value": ZH}
    assert summary["rows_in"] == 3 and summary["rows_out"] == 3 and summary["rows_skipped"] == 0
    assert summary["languages"] == {"zh": 2, "en": 1}
    # deterministic under --seed, different under another seed
    again = convert(cap, images, tmp_path / "again.json", seed=1)
    assert [r["conversations"] for r in _load(tmp_path / "again.json")] == [r["conversations"] for r in rows]
    assert again["rows_out"] == 3


def test_csv_jsonl_coco_folder(tmp_path: Path, images: Path) -> None:
    csv_path = tmp_path / "c.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption", "lang"])
        w.writerow(["0001.jpg", "quartz, with commas, and\na newline", "en"])
        w.writerow(["0002", ZH, ""])
    s = convert(csv_path, images, tmp_path / "csv.json")
    rows = _load(tmp_path / "csv.json")
    assert s["format"] == "csv" and len(rows) == 2
    assert rows[0]["conversations"][1]["value"] == "quartz, with commas, and\na newline"

    jl = tmp_path / "c.jsonl"
    jl.write_text(
        json.dumps({"image": "0003.jpg", "caption": EN})
        + "\n"
        + json.dumps(
            {"image": ["0001.jpg", "0002.jpg"], "captions": ["两张图。", "second"]}, ensure_ascii=False
        )
        + "\n",
        encoding="utf-8",
    )
    s = convert(jl, images, tmp_path / "jl.json")
    rows = _load(tmp_path / "jl.json")
    assert s["format"] == "jsonl" and s["rows_in"] == 3 and len(rows) == 3
    assert rows[1]["image"] == ["img/0001.jpg", "img/0002.jpg"]
    assert rows[1]["conversations"][0]["value"].startswith("<image>\n<image>\n")

    coco = tmp_path / "coco.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "0001.jpg"}, {"id": 2, "file_name": "0002.jpg"}],
                "annotations": [
                    {"image_id": 1, "caption": "a"},
                    {"image_id": 1, "caption": "b"},
                    {"image_id": 2, "caption": "c"},
                    {"image_id": 9, "caption": "unknown image"},
                ],
            }
        ),
        encoding="utf-8",
    )
    s = convert(coco, images, tmp_path / "coco_out.json")
    rows = _load(tmp_path / "coco_out.json")
    assert s["format"] == "coco" and [r["id"] for r in rows] == ["0001_1", "0001_2", "0002"]
    assert s["rows_skipped"] == 1 and "image_id 9 is not in 'images'" in s["skipped"][0]["reason"]

    folder = tmp_path / "folder"
    folder.mkdir()
    _jpg(folder / "a.jpg")
    (folder / "a.txt").write_text(EN, encoding="utf-8")
    _jpg(folder / "b_ppl.png".replace(".png", ".jpg"))
    Image.new("RGB", (20, 20)).save(folder / "b_xpl.png")
    Image.new("RGB", (20, 20)).save(folder / "b_ppl.png")
    (folder / "b.txt").write_text("石英\n约占60%。", encoding="utf-8")
    _jpg(folder / "c.jpg")  # no caption
    s = convert(None, folder, tmp_path / "folder.json")
    rows = _load(tmp_path / "folder.json")
    assert s["format"] == "folder" and [r["id"] for r in rows] == ["a", "b"]
    assert [Path(p).name for p in rows[1]["image"]] == ["b_ppl.jpg", "b_xpl.png"]
    assert s["rows_in"] == 3 and "no caption file c.txt" in s["skipped"][0]["reason"]


def test_bad_corpus_skip_accounting(tmp_path: Path, images: Path) -> None:
    d = images
    (d / "zero.jpg").write_bytes(b"")
    data = _jpg(d / "full.jpg", size=128).read_bytes()
    (d / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (d / "text.jpg").write_text("not an image", encoding="utf-8")
    Image.new("L", (400, 400)).save(d / "bomb.png")  # over the --max-pixels cap below
    lines = [
        b"0001\t" + ZH.encode(),
        b"missing\tno such image",
        b"zero\tzero-byte file",
        b"trunc\ttruncated jpeg",
        b"text\tnot an image",
        b"bomb\ttoo many pixels",
        b"0002\t" + "方解石".encode("gb18030") + b" gbk line",
        b"0003\t   ",
        b"0001\t" + ZH.encode(),
        b"0001\tsecond caption of 0001",
        b"no tab here",
        b"full\t" + EN.encode(),
        b"0004\tsee <image> here",
    ]
    cap = tmp_path / "bad.tsv"
    cap.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "bad.json"
    s = convert(cap, d, out, max_pixels=300 * 300)
    reasons = {item["line"]: item["reason"] for item in s["skipped"]}
    assert s["rows_in"] == 13 == s["rows_out"] + s["rows_skipped"]
    assert s["rows_out"] == 3 and len(_load(out)) == 3
    assert "image not found for 'missing'" in reasons[2]
    assert "zero-byte" in reasons[3]
    assert "truncated" in reasons[4]
    assert "not a readable image" in reasons[5]
    assert "exceeds the limit" in reasons[6]
    assert "not valid utf-8" in reasons[7] and "--encoding" in reasons[7]
    assert reasons[8] == "empty caption"
    assert "duplicate" in reasons[9] and "line 1" in reasons[9]
    assert "no TAB" in reasons[11]
    assert "<image> placeholder" in reasons[13]
    assert all(item["file"] == str(cap) for item in s["skipped"])
    assert _summary(out)["rows_skipped"] == 10
    with pytest.raises(DataFormatError, match="--strict: 10 of 13 rows skipped"):
        convert(cap, d, tmp_path / "strict.json", max_pixels=300 * 300, strict=True)
    assert not (tmp_path / "strict.json").exists()
    # a whole file in GB18030 (common in Chinese labs) converts with --encoding
    gbk = tmp_path / "gbk.tsv"
    gbk.write_bytes(f"0001\t{ZH}\n".encode("gb18030"))
    assert convert(gbk, d, tmp_path / "gbk.json", encoding="gb18030")["rows_out"] == 1
    assert _load(tmp_path / "gbk.json")[0]["conversations"][1]["value"] == ZH


def test_csv_without_columns_and_undetectable(tmp_path: Path, images: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("image,notes\n0001.jpg,hello\n0002.jpg,world\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="no rows converted out of 2"):
        convert(bad, images, tmp_path / "o.json")
    summary = _summary(tmp_path / "o.json")
    assert summary["rows_skipped"] == 2 and "no caption column" in summary["skipped"][0]["reason"]
    assert summary["skipped"][0]["line"] == 2
    odd = tmp_path / "odd.txt"
    odd.write_text("just words\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="pass --format"):
        convert(odd, images, tmp_path / "x.json")


def test_splits_by_image_no_leak_and_datasets(tmp_path: Path) -> None:
    d = tmp_path / "img"
    d.mkdir()
    lines = []
    for i in range(20):
        _jpg(d / f"{i:04d}.jpg", seed=i, size=16)
        lines += [f"{i:04d}\tcaption {k} of image {i}" for k in range(5)]  # UCM/Sydney style
    cap = tmp_path / "c.tsv"
    cap.write_text("\n".join(lines), encoding="utf-8")
    out = tmp_path / "ucm.json"
    s = convert(cap, d, out, split="0.8,0.1,0.1", seed=3)
    assert s["splits"] == {"test": 10, "train": 80, "val": 10}
    assert s["images_per_split"] == {"test": 2, "train": 16, "val": 2}
    parts = {name: _load(tmp_path / f"ucm_{name}.json") for name in ("train", "val", "test")}
    images_of = {name: {r["image"][0] for r in rows} for name, rows in parts.items()}
    assert not images_of["train"] & images_of["val"] and not images_of["train"] & images_of["test"]
    assert {r["id"] for r in parts["val"]} >= {
        f"{next(iter(images_of['val']))[4:8]}_{k}" for k in range(1, 6)
    }

    import datasets

    ds = datasets.load_dataset("json", data_files=str(tmp_path / "ucm_train.json"), split="train")
    assert ds.num_rows == 80 and ds.features["image"].feature.dtype == "string"


def test_multi_turn_facets(tmp_path: Path, images: Path) -> None:
    lex = load_lexicon()
    clauses = split_clauses(ZH)
    assert len(clauses) == 6
    assert [classify(c, lex) for c in clauses] == [
        "matrix", "carbonate", "silica", "feldspar_alteration", "accessory", "fabric",
    ]  # fmt: skip
    assert split_clauses("Grain size is 0.12-0.30 mm. Pores (about 6%).") == [
        "Grain size is 0.12-0.30 mm.",
        "Pores (about 6%).",
    ]
    assert facet_answers(EN, lex, "en") == {
        "composition": "Quartz dominates the framework.",
        "feldspar_alteration": "K-feldspar shows argillization.",
        "accessory": "Accessory minerals: zircon and pyrite.",
    }
    cap = tmp_path / "c.tsv"
    cap.write_text(f"0001\t{ZH}\n0002\t石英约占60%。\n", encoding="utf-8")
    s = convert(cap, images, tmp_path / "mt.json", multi_turn=True)
    rows = _load(tmp_path / "mt.json")
    conv = rows[0]["conversations"]
    assert len(conv) == 2 + 2 * 6 and s["turns"] == {"1": 1, "7": 1}
    assert [t["from"] for t in conv] == ["human", "gpt"] * 7
    assert conv[1]["value"] == ZH  # the description first, the follow-ups after it in report order
    facets = ["matrix", "carbonate", "silica", "feldspar_alteration", "accessory", "fabric"]
    pools = load_questions()
    for k, (facet, clause) in enumerate(zip(facets, clauses, strict=True), start=1):
        assert conv[2 * k]["value"] in pools.facets[facet]["zh"] and conv[2 * k + 1]["value"] == clause
    assert "<image>" not in "".join(t["value"] for t in conv[2:])
    assert "turn_types" not in rows[0] and s["grounded_questions"] == {}  # no grounded questions asked
    assert len(rows[1]["conversations"]) == 2  # one facet only: no follow-up


def test_question_pools_size() -> None:
    pools = load_questions()
    assert len(pools.describe["zh"]) >= 20 and len(pools.describe["en"]) >= 20
    assert len(set(pools.describe["zh"])) == len(pools.describe["zh"])


def _nested_images(root: Path) -> Path:
    """``a.jpg``, ``sub/b.jpg``, the pair ``sub/c_ppl.jpg`` + ``sub/c_xpl.jpg`` and ``deep/x/d.jpg``."""
    for k, name in enumerate(("a.jpg", "sub/b.jpg", "sub/c_ppl.jpg", "sub/c_xpl.jpg", "deep/x/d.jpg")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _jpg(root / name, seed=k)
    return root


def test_jsonl_pair_ids_in_subfolders_match_caption(tmp_path: Path) -> None:
    from thinchat.eval.caption import discover_slides

    img = _nested_images(tmp_path / "img")
    cap = tmp_path / "c.jsonl"
    rows = [
        {"image": "a.jpg", "caption": EN},
        {"image": "sub/b.jpg", "caption": ZH},
        {"image": ["sub/c_xpl.jpg", "sub/c_ppl.jpg"], "caption": EN},  # a pair in any order
        {"image": "deep/x/d.jpg", "caption": ZH},
    ]
    cap.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    convert(cap, img, tmp_path / "out.json")
    converted = {r["id"] for r in _load(tmp_path / "out.json")}
    assert converted == {"a", "sub_b", "sub_c", "deep_x_d"}
    assert converted == {s.id for s in discover_slides([img], ("_ppl", "_xpl"))}


def test_csv_and_coco_single_images_in_subfolders_match_caption(tmp_path: Path) -> None:
    from thinchat.eval.caption import discover_slides

    img = _nested_images(tmp_path / "img")
    names = ["a.jpg", "sub/b.jpg", "sub/c_ppl.jpg", "sub/c_xpl.jpg", "deep/x/d.jpg"]
    expected = {s.id for s in discover_slides([img])}  # no pairing: one slide per image
    assert expected == {"a", "sub_b", "sub_c_ppl", "sub_c_xpl", "deep_x_d"}
    csv_file = tmp_path / "c.csv"
    csv_file.write_text("image,caption\n" + "".join(f"{n},{EN}\n" for n in names), encoding="utf-8")
    coco = tmp_path / "coco.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
                "annotations": [{"image_id": i, "caption": EN} for i in range(len(names))],
            }
        ),
        encoding="utf-8",
    )
    for source in (csv_file, coco):
        out = tmp_path / f"{source.stem}.json"
        convert(source, img, out)
        assert {r["id"] for r in _load(out)} == expected, source.name


def test_tsv_field_ids_keep_their_name(tmp_path: Path) -> None:
    """A TSV field id names its slide (both views or one); a file path is named like ``caption`` names it."""
    img = tmp_path / "img"
    img.mkdir()
    _jpg(img / "0001_ppl.jpg", 1), _jpg(img / "0001_xpl.jpg", 2), _jpg(img / "0002_ppl.jpg", 3)
    (img / "sub").mkdir()
    _jpg(img / "sub" / "0003.jpg", 4)
    cap = tmp_path / "c.tsv"
    cap.write_text(f"0001\t{EN}\n0002\t{EN}\nsub/0003.jpg\t{EN}\n", encoding="utf-8")
    convert(cap, img, tmp_path / "out.json")
    assert [r["id"] for r in _load(tmp_path / "out.json")] == ["0001", "0002", "sub_0003"]
