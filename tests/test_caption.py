"""`thinchat caption`: slide discovery, PPL/XPL pairing, resumable append-only output, corrupt images."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from thinchat.cli import main
from thinchat.errors import DataFormatError, ImageError
from thinchat.eval.caption import TSV_HEADER, CaptionWriter, discover_slides
from thinchat.testing import tiny_llava

torch.set_flush_denormal(True)


def make_folder(root, n_good=4, corrupt=True):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        Image.new("RGB", (16, 16), (40 * i, 10, 200)).save(root / f"s{i}.png")
    if corrupt:
        (root / "s9_corrupt.jpg").write_bytes(b"\xff\xd8\xff truncated jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    model, processor = tiny_llava()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def test_discover_pairs_and_incomplete_sets(tmp_path):
    for name in ("A_ppl.png", "A_xpl.png", "B_xpl.png", "C.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    slides = discover_slides([tmp_path], ("_ppl", "_xpl"))
    assert [(s.id, [p.name for p in s.paths], s.error) for s in slides] == [
        ("A", ["A_ppl.png", "A_xpl.png"], None),
        ("B", ["B_xpl.png"], "incomplete set: has _xpl, missing _ppl"),
        ("C", ["C.png"], None),
    ]
    with pytest.raises(ImageError, match="no such file"):
        discover_slides([tmp_path / "nope"])


def test_tsv_escaping_round_trip_and_truncated_tail(tmp_path):
    out = tmp_path / "r.tsv"
    writer = CaptionWriter(out)
    writer.write([{"id": "a\tb", "images": ["x.png"], "caption": "line1\nline2\\n"}])
    writer.write([{"id": "c", "images": ["c.png"], "caption": "ok"}])
    with out.open("a", encoding="utf-8") as fh:
        fh.write("d\td.png\thalf-writ")  # a crash in the middle of a row
    again = CaptionWriter(out)
    assert again.done == {"a\tb", "c"}
    assert out.read_text(encoding="utf-8").splitlines() == [
        TSV_HEADER, "a\\tb\tx.png\tline1\\nline2\\\\n", "c\tc.png\tok",
    ]  # fmt: skip


def test_foreign_output_file_is_refused(tmp_path):
    out = tmp_path / "r.tsv"
    out.write_text("name\tvalue\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="header"):
        CaptionWriter(out)
    bad = tmp_path / "r.jsonl"
    bad.write_text('{"id": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"r\.jsonl:2"):
        CaptionWriter(bad)


def test_corrupt_image_reported_rest_captioned_and_resume(tmp_path, ckpt, capsys):
    folder = make_folder(tmp_path / "slides")
    out = tmp_path / "results.tsv"
    argv = ["caption", "--from_pretrained", ckpt, "--images", str(folder), "--out", str(out),
            "--batch-size", "3", "--max-new-tokens", "3", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 1  # partial failure is signalled
    err = capsys.readouterr().err
    assert "s9_corrupt.jpg" in err and "1 slide(s) could not be captioned" in err
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == TSV_HEADER and [line.split("\t")[0] for line in lines[1:]] == [
        f"s{i}"
        for i in range(4)  # the ids data convert gives these images
    ]

    # Interrupted run: keep 2 finished rows plus half a row, add a new slide, rerun.
    out.write_text("\n".join(lines[:3]) + "\ns2\tpartial", encoding="utf-8")
    before = out.read_bytes()[: len("\n".join(lines[:3]) + "\n")]
    Image.new("RGB", (16, 16), (1, 2, 3)).save(folder / "s5.png")
    assert main(argv) == 1
    after = out.read_text(encoding="utf-8").splitlines()
    assert out.read_bytes().startswith(before)  # finished rows untouched
    assert [line.split("\t")[0] for line in after[1:]] == ["s0", "s1", "s2", "s3", "s5"]
    capsys.readouterr()
    (folder / "s9_corrupt.jpg").unlink()
    assert main(argv) == 0  # nothing left to do
    assert out.read_text(encoding="utf-8").splitlines() == after
    assert "0 to caption" in capsys.readouterr().out


def test_jsonl_with_pairs(tmp_path, ckpt):
    folder = tmp_path / "pairs"
    folder.mkdir()
    for stem in ("X", "Y"):
        for suffix, colour in (("_ppl", (200, 200, 200)), ("_xpl", (10, 10, 10))):
            Image.new("RGB", (16, 16), colour).save(folder / f"{stem}{suffix}.png")
    out = tmp_path / "r.jsonl"
    argv = ["caption", "--from_pretrained", ckpt, "--images", str(folder), "--out", str(out),
            "--pair-suffixes", "_ppl,_xpl", "--max-new-tokens", "2", "--device", "cpu", "--prompt", "Describe."]  # fmt: skip
    assert main(argv) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["X", "Y"]
    assert [p.rsplit("/", 1)[-1] for p in rows[0]["images"]] == ["X_ppl.png", "X_xpl.png"]
    assert all(isinstance(r["caption"], str) for r in rows)
