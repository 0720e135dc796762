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

from data_tools.configs import ConvertConfig
from data_tools.convert import convert
from thinchat.cli import build_parser

PAIRS: list[tuple[type, Callable]] = [(ConvertConfig, convert)]


@pytest.mark.parametrize(("cls", "function"), PAIRS, ids=lambda x: getattr(x, "__name__", ""))
def test_fields_are_the_parameters_with_the_same_defaults(cls: type, function: Callable) -> None:
    parameters = inspect.signature(function).parameters
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) == set(parameters)
    for name, parameter in parameters.items():
        if parameter.default is not inspect.Parameter.empty:
            assert fields[name].default == parameter.default, name


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


#: The spellings of `thinchat data convert`'s options before they came from ConvertConfig.
CONVERT_FLAGS = {
    "--captions", "--images", "--labels", "--image-folder", "--multi-label", "--out", "--format",
    "--format-out", "--lang", "--multi-turn", "--qa-turns", "--no-qa-negatives", "--lexicon", "--questions",
    "--split", "--test-ids", "--val-ids", "--seed", "--strict", "--max-pixels", "--encoding",
    "--allow-outside-images",
}  # fmt: skip


def test_convert_flags_keep_their_spelling() -> None:
    convert_parser = _subparser(_subparser(build_parser(), "data"), "convert")
    flags = {flag for action in convert_parser._actions for flag in action.option_strings}
    assert flags == CONVERT_FLAGS | {"-h", "--help"}
