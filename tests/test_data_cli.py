"""`thinchat data ...` through the real console entry point: output, summary, errors without traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thinchat.cli import main


def test_synth_convert_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    syn = tmp_path / "syn"
    assert (
        main(
            ["data", "synth", "--out", str(syn), "--n", "3", "--size", "64", "--lang", "zh", "--workers", "1"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["slides"] == 3
    (syn / "images" / "00003_ppl.png").write_bytes(b"")  # break one view
    out = tmp_path / "d.json"
    args = ["data", "convert", "--captions", str(syn / "captions_zh.tsv"), "--images", str(syn / "images")]
    assert main([*args, "--out", str(out), "--multi-turn"]) == 0
    printed = capsys.readouterr().out
    assert "rows in 3 = out 2 + skipped 1" in printed and "00003_ppl.png: zero-byte file" in printed
    assert len(json.loads(out.read_text(encoding="utf-8"))) == 2

    assert main([*args, "--out", str(tmp_path / "s.json"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "--strict: 1 of 3 rows skipped" in err and "Traceback" not in err


def test_cli_errors_are_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = ["data", "convert", "--captions", str(tmp_path / "none.tsv"), "--images", str(tmp_path)]
    assert main([*missing, "--out", str(tmp_path / "o.json")]) == 2
    assert "captions file not found" in capsys.readouterr().err
    bad = tmp_path / "x.pkl"
    bad.write_bytes(b"not a pickle")
    assert main(["data", "import-clipcap", str(bad), "--out", str(tmp_path / "c")]) == 2
    assert "not a readable ClipCap feature pickle" in capsys.readouterr().err
