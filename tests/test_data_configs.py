"""The ``thinchat data`` configs (data_tools/configs.py) match the functions they are passed to.

Why: each command passes ``**asdict(config)`` to its function, and the function keeps its own keyword
defaults for Python callers; a field missing from the function, or a default that differs between the
two, would make the command and the library disagree without an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable

import pytest

from data_tools.clipcap import import_clipcap
from data_tools.configs import (
    ConvertConfig,
    ImportClipcapConfig,
    PseudoLabelConfig,
    ReplayConfig,
    SynthConfig,
)
from data_tools.convert import convert
from data_tools.pseudo_label import pseudo_label
from data_tools.replay import make_replay
from data_tools.synth import generate
from thinchat.cli import build_parser

#: (config, function, its parameters the command leaves at their defaults or passes by position)
PAIRS: list[tuple[type, Callable, set[str]]] = [
    (ConvertConfig, convert, set()),
    (SynthConfig, generate, set()),
    (ImportClipcapConfig, import_clipcap, {"path"}),
    (ReplayConfig, make_replay, set()),
    (PseudoLabelConfig, pseudo_label, {"retry_wait", "max_pixels"}),
]


@pytest.mark.parametrize(("cls", "function", "not_options"), PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_fields_are_the_parameters_with_the_same_defaults(
    cls: type, function: Callable, not_options: set[str]
) -> None:
    parameters = inspect.signature(function).parameters
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) == set(parameters) - not_options
    for name, parameter in parameters.items():
        if parameter.default is not inspect.Parameter.empty:
            assert name in not_options or fields[name].default == parameter.default, name


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


#: The spellings of `thinchat data convert`'s options before they came from ConvertConfig.
CONVERT_FLAGS = {
    "--captions", "--images", "--labels", "--image-folder", "--multi-label", "--out", "--format",
    "--format-out", "--lang", "--multi-turn", "--qa-turns", "--describe-first", "--no-qa-negatives",
    "--lexicon", "--questions", "--split", "--test-ids", "--val-ids", "--seed", "--strict",
    "--max-pixels", "--encoding", "--allow-outside-images",
}  # fmt: skip


def test_convert_flags_keep_their_spelling() -> None:
    convert_parser = _subparser(_subparser(build_parser(), "data"), "convert")
    flags = {flag for action in convert_parser._actions for flag in action.option_strings}
    assert flags == CONVERT_FLAGS | {"-h", "--help"}


def test_replay_and_pseudo_label_pass_every_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two actions no other test runs end to end: each flag reaches its keyword argument."""
    import data_tools.pseudo_label
    import data_tools.replay
    from thinchat.cli import main

    calls: dict[str, dict] = {}

    def record(name: str) -> Callable:
        def function(**kwargs: object) -> dict:
            calls[name] = kwargs
            return {"failed": 0}

        return function

    monkeypatch.setattr(data_tools.replay, "make_replay", record("replay"))
    monkeypatch.setattr(data_tools.pseudo_label, "pseudo_label", record("pseudo"))
    assert (
        main(["data", "replay", "--model", "m", "--out", "o.json", "--lang", "en", "--batch-size", "2"]) == 0
    )
    assert calls["replay"] == {
        "model_dir": "m", "out": "o.json", "lang": "en", "questions": None, "max_new_tokens": 96,
        "batch_size": 2, "holdout_every": 0,
    }  # fmt: skip
    argv = ["data", "pseudo-label", "--teacher", "http://x", "--out", "c.tsv", "--task", "translate"]
    assert main([*argv, "--captions", "in.tsv", "--rate", "0.5", "--prompt-file", "p.txt"]) == 0
    assert calls["pseudo"] == {
        "images": None, "teacher": "http://x", "out": "c.tsv", "task": "translate", "captions": "in.tsv",
        "prompt_file": "p.txt", "lang": "zh", "rate": 0.5, "retries": 2, "model": "default", "api_key": None,
    }  # fmt: skip
