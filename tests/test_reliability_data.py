"""Data tools on hostile or unusual input (issue 16): every row is converted or skipped with file:line and a
reason, never merged into another row, never a traceback; image references stay inside ``--images``;
pseudo-label file names cannot inject TSV rows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_tools.convert import convert
from data_tools.pseudo_label import pseudo_label
from data_tools.sources import Row, read_tsv
from thinchat.errors import DataFormatError


def _png(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    d = tmp_path / "img"
    d.mkdir()
    for i in range(1, 5):
        _png(d / f"{i:04d}.png", seed=i)
    return d


def _balanced(summary: dict) -> None:
    assert summary["rows_in"] == summary["rows_out"] + summary["rows_skipped"]
    for item in summary["skipped"]:
        assert item["file"] and item["reason"]


def _captions(out: Path) -> dict[str, str]:
    rows = json.loads(out.read_text(encoding="utf-8"))
    return {Path(r["image"][0]).stem: r["conversations"][1]["value"] for r in rows}


# ----- item 6: an unclosed quote must not merge rows --------------------------------------------------
def test_csv_unclosed_quote_is_skipped_not_merged(tmp_path: Path, images: Path) -> None:
    cap = tmp_path / "c.csv"
    cap.write_text(
        'image,caption\n0001.png,"Quartz 5" inch grains\n0002.png,"calcite cement\n'
        "0003.png,dolomite\n0004.png,pyrite\n",
        encoding="utf-8",
    )
    out = tmp_path / "o.json"
    summary = convert(cap, images, out)
    _balanced(summary)
    assert summary["rows_in"] == 4 and summary["rows_out"] == 2
    assert _captions(out) == {"0003": "dolomite", "0004": "pyrite"}
    reasons = {s["line"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {2, 3}
    assert "unclosed quote" in reasons[3] and "quot" in reasons[2]


def test_csv_quote_closed_on_a_later_row_is_not_merged(tmp_path: Path, images: Path) -> None:
    cap = tmp_path / "c.csv"
    cap.write_text(
        'image,caption\n0001.png,"calcite cement\n0002.png,dolomite"\n0003.png,"two\nlines"\n',
        encoding="utf-8",
    )
    out = tmp_path / "o.json"
    summary = convert(cap, images, out)
    _balanced(summary)
    assert summary["skipped"][0]["line"] == 2 and "unclosed quote" in summary["skipped"][0]["reason"]
    assert _captions(out)["0003"] == "two\nlines"  # a legitimate multi-line field still works
    assert "0001" not in _captions(out)


# ----- item 7: tracebacks become skipped rows or clear errors ------------------------------------------
def test_deeply_nested_jsonl_line_is_skipped(tmp_path: Path, images: Path) -> None:
    cap = tmp_path / "c.jsonl"
    deep = "[" * 100_000 + "]" * 100_000
    lines = [
        json.dumps({"image": "0001.png", "caption": "quartz"}),
        '{"image": "0002.png", "caption": ' + deep + "}",
        '{"image": ' + "[" * 900 + '"0003.png"' + "]" * 900 + ', "caption": "x"}',
        json.dumps({"image_id": "0004", "caption": "pyrite"}),
    ]
    cap.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "o.json"
    summary = convert(cap, images, out)
    _balanced(summary)
    assert summary["rows_out"] == 2 and _captions(out) == {"0001": "quartz", "0004": "pyrite"}
    assert [s["line"] for s in summary["skipped"]] == [2, 3]


def test_deeply_nested_coco_is_a_clear_error_or_skipped_annotation(tmp_path: Path, images: Path) -> None:
    cap = tmp_path / "coco.json"
    cap.write_text('{"annotations": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8")
    with pytest.raises(DataFormatError, match="nested too deeply"):
        convert(cap, images, tmp_path / "o.json", fmt="coco")
    nested_id = "[" * 900 + "1" + "]" * 900
    cap.write_text(
        '{"images": [{"id": 1, "file_name": "0001.png"}, {"id": ' + nested_id + ', "file_name": "0002.png"}],'
        ' "annotations": [{"image_id": 1, "caption": "a"}, {"image_id": ' + nested_id + ', "caption": "b"}]}',
        encoding="utf-8",
    )
    summary = convert(cap, images, tmp_path / "o.json", fmt="coco")
    _balanced(summary)
    assert summary["rows_out"] == 1 and summary["skipped"][0]["line"] == 2


def test_csv_field_over_the_csv_limit_is_skipped(tmp_path: Path, images: Path) -> None:
    cap = tmp_path / "c.csv"
    cap.write_text(f'image,caption\n0001.png,"{"x" * 200_000}"\n0002.png,calcite\n', encoding="utf-8")
    out = tmp_path / "o.json"
    summary = convert(cap, images, out)
    _balanced(summary)
    assert _captions(out) == {"0002": "calcite"}
    assert summary["skipped"][0]["line"] == 2 and "longer than" in summary["skipped"][0]["reason"]


def test_unknown_encoding_is_a_clear_error(tmp_path: Path, images: Path) -> None:
    cap = tmp_path / "c.tsv"
    cap.write_text("0001\tquartz\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="--encoding 'no-such-codec': unknown text encoding"):
        convert(cap, images, tmp_path / "o.json", encoding="no-such-codec")


# ----- item 8: BOMs decide the encoding ---------------------------------------------------------------
@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-8-sig", "utf-32"])
@pytest.mark.parametrize("fmt", ["tsv", "csv"])
def test_bom_files_convert_every_row_without_being_told(
    tmp_path: Path, images: Path, codec: str, fmt: str
) -> None:
    text = (
        "0001\t石英\r\n0002\tcalcite\r\n0003\tdolomite\r\n"
        if fmt == "tsv"
        else "image,caption\r\n0001.png,石英\r\n0002.png,calcite\r\n0003.png,dolomite\r\n"
    )
    data = text.encode(codec)
    bom = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}.get(codec, b"")
    cap = tmp_path / f"c.{fmt}"
    cap.write_bytes(bom + data)
    out = tmp_path / "o.json"
    summary = convert(cap, images, out)  # default --encoding utf-8: the BOM decides
    _balanced(summary)
    assert summary["rows_out"] == 3
    assert _captions(out) == {"0001": "石英", "0002": "calcite", "0003": "dolomite"}


def test_utf16_without_bom_with_encoding_and_jsonl_coco_folder(tmp_path: Path, images: Path) -> None:
    cap = tmp_path / "c.tsv"
    cap.write_bytes("0001\tquartz\n0002\t方解石\n".encode("utf-16-le"))
    assert convert(cap, images, tmp_path / "a.json", encoding="utf-16")["rows_out"] == 2
    jl = tmp_path / "c.jsonl"
    jl.write_bytes(
        b"\xff\xfe" + (json.dumps({"image": "0001.png", "caption": "q"}) + "\n").encode("utf-16-le")
    )
    assert convert(jl, images, tmp_path / "b.json")["rows_out"] == 1
    coco = tmp_path / "coco.json"
    body = {"images": [{"id": 1, "file_name": "0001.png"}], "annotations": [{"image_id": 1, "caption": "q"}]}
    coco.write_bytes(b"\xfe\xff" + json.dumps(body).encode("utf-16-be"))
    assert convert(coco, images, tmp_path / "c.json")["rows_out"] == 1
    (images / "0001.txt").write_bytes(b"\xff\xfe" + "石英".encode("utf-16-le"))
    summary = convert(None, images, tmp_path / "d.json")
    _balanced(summary)
    assert _captions(tmp_path / "d.json") == {"0001": "石英"}


# ----- item 9: references stay inside --images ---------------------------------------------------------
def test_image_references_are_confined_to_the_images_directory(tmp_path: Path, images: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    _png(outside / "secret.png")
    (outside / "notes.png").write_text("not an image")
    os.symlink(outside / "secret.png", images / "link.png")
    os.symlink(tmp_path / "no-such-file.png", images / "dangling.png")
    refs = [
        "../outside/secret.png",  # exists, is an image
        "../outside/notes.png",  # exists, is not an image
        "../outside/missing.png",  # does not exist
        str(outside / "secret.png"),  # absolute
        "/etc/passwd",
        "/no/such/file",
        "link.png",
        "link",
        "dangling.png",
        "0001.png",
    ]
    cap = tmp_path / "c.tsv"
    cap.write_text("".join(f"{r}\tcaption {i}\n" for i, r in enumerate(refs)), encoding="utf-8")
    out = tmp_path / "o.json"
    summary = convert(cap, images, out)
    _balanced(summary)
    assert summary["rows_out"] == 1
    reasons = [s["reason"] for s in summary["skipped"]]
    assert len(reasons) == 9
    # One message shape for all of them: nothing tells whether the outside file exists or is an image.
    for ref, reason in zip(refs[:9], reasons, strict=True):
        assert reason.startswith(f"image reference {ref!r} points outside the images directory"), reason
        assert "not found" not in reason and "readable" not in reason
    allowed = convert(cap, images, tmp_path / "p.json", allow_outside_images=True)
    _balanced(allowed)
    assert allowed["rows_out"] == 5  # the outside image by relative, absolute and link paths, and 0001


# ----- item 11: pseudo-label ids with TAB / newline cannot inject rows ---------------------------------
class _Teacher:
    def __init__(self) -> None:
        self.calls = 0

    def generate(self, images: list, prompt: str) -> str:
        self.calls += 1
        return "quartz\tand\ncalcite"


def test_pseudo_label_file_names_cannot_inject_tsv_rows(tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    _png(slides / "good.png")
    _png(slides / "evil\n0002\tinjected.png")
    _png(slides / "tab\there.png")
    out = tmp_path / "labels.tsv"
    stats = pseudo_label(_Teacher(), out, images=slides, rate=0)
    assert stats["written"] == 1 and stats["skipped"] == 2 and stats["failed"] == 0
    rows = [item for item in read_tsv(out, "utf-8")]
    assert all(isinstance(r, Row) for r in rows)
    assert [(r.refs[0], r.caption) for r in rows] == [("good", "quartz and calcite")]
    assert out.read_text(encoding="utf-8").count("\n") == 1


# ----- every format: rows in = out + skipped, or a clear error; never a traceback -------------------------
_NASTY = [
    '"',
    '""',
    "\t",
    "\n",
    "\r",
    "\x00",
    ",",
    "[" * 3000,
    "{",
    "\\",
    "\ufeff",
    "../",
    "/etc/passwd",
    "é",
]


def _mutate(text: str, rng: np.random.Generator) -> bytes:
    chars = list(text)
    for _ in range(int(rng.integers(1, 6))):
        chars.insert(int(rng.integers(0, len(chars) + 1)), _NASTY[int(rng.integers(0, len(_NASTY)))])
    data = "".join(chars).encode("utf-8")
    if rng.random() < 0.2:  # a stray invalid byte
        cut = int(rng.integers(0, len(data) + 1))
        data = data[:cut] + b"\xff" + data[cut:]
    if rng.random() < 0.2:
        data = b"\xff\xfe" + "".join(chars).encode("utf-16-le")
    return data


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl", "coco"])
def test_mutated_inputs_keep_the_row_invariant(tmp_path: Path, images: Path, fmt: str) -> None:
    valid = {
        "tsv": "0001\tquartz\n0002\tcalcite, fine\n0003\tdolomite\n",
        "csv": 'image,caption\n0001.png,quartz\n0002.png,"calcite, ""fine"""\n0003.png,"two\nlines"\n',
        "jsonl": '{"image": "0001.png", "caption": "quartz"}\n{"image": ["0002.png"], "caption": ["a", "b"]}\n',
        "coco": json.dumps(
            {"images": [{"id": 1, "file_name": "0001.png"}], "annotations": [{"image_id": 1, "caption": "q"}]}
        ),
    }[fmt]
    rng = np.random.default_rng(16)
    for i in range(40):
        cap = tmp_path / f"m{i}.{fmt}"
        cap.write_bytes(_mutate(valid, rng))
        try:
            summary = convert(cap, images, tmp_path / f"o{i}.json", fmt=fmt)
        except DataFormatError:
            continue  # a clear, typed error (e.g. COCO that is no longer JSON, or no row converted)
        _balanced(summary)
        assert all(item["line"] is not None for item in summary["skipped"])


# ----- control characters in captions (issue 29, item 3) ----------------------------------------------


def test_control_characters_are_removed_from_captions_and_counted(tmp_path: Path, images: Path) -> None:
    """A NUL, an escape sequence, a bell and a carriage return leave the caption; newline and tab stay."""
    rows = [
        {"image": "0001", "caption": "Quartz\x00 grains\x1b[31m with\x07 calcite.\r\nSecond line\tkept."},
        {"image": "0002", "caption": "Clean caption about zircon."},
        {"image": "0003", "caption": "\x00\x01\x02"},  # nothing but control characters: an empty caption
    ]
    captions = tmp_path / "c.jsonl"
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out.json"
    summary = convert(captions, images, out)
    converted = _captions(out)
    assert converted["0001"] == "Quartz grains[31m with calcite.\nSecond line\tkept."
    assert converted["0002"] == "Clean caption about zircon."
    assert not any(ch in text for text in converted.values() for ch in "\x00\x1b\x07\r")
    assert summary["control_characters_removed"] == {"rows": 2, "characters": 7}
    assert [(s["line"], s["reason"]) for s in summary["skipped"]] == [(3, "empty caption")]
    _balanced(summary)
