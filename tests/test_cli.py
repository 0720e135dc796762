"""The `thinchat` console script: subcommands register, user errors print one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

from thinchat.cli import COMMAND_MODULES, build_parser, main


def test_every_subcommand_registers():
    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("build", "presets", "data", "train", "export", "chat", "serve", "eval", "caption"):
        assert name in choices
    assert len(COMMAND_MODULES) == len(set(COMMAND_MODULES))


def test_unknown_preset_is_one_clear_line_and_exit_2(tmp_path, capsys):
    code = main(
        ["build", "--vision", "dinov2-smal", "--llm", "smollm2-135m-instruct", "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "thinchat build: error: unknown vision model 'dinov2-smal'" in err
    assert "Did you mean 'dinov2-small'?" in err
    assert "Traceback" not in err


def test_help_is_fast_and_does_not_import_torch():
    code = "import sys; from thinchat.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
