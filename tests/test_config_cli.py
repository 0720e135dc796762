"""``thinchat.config.add_arguments`` / ``from_args``: a config field declared once becomes a command option.

Why: the options of ``thinchat data ...`` (and others) are generated from their config dataclasses; these
tests pin the mapping (spelling, type, choices, switches, required, override mode) the commands rely on.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from thinchat.config import add_arguments, field, from_args
from thinchat.errors import ConfigError


@dataclass(kw_only=True)
class Demo:
    out: str = field(help="required: no default")
    fmt: Literal["a", "b"] = field("a", flags=("--format",), help="choices from the Literal")
    n_items: int = field(3, help="an int")
    rate: float | None = field(None, help="optional float")
    lexicon_path: str | None = field(None, flags=("--lexicon", "--lex"), help="renamed flag")
    strict: bool = field(False, help="a switch")
    negatives: bool = field(True, help="on by default: --no-negatives turns it off")
    maybe: bool | None = field(None, help="a switch whose default means 'decide later'")

    def validate(self) -> None:
        if self.n_items < 0:
            raise ConfigError("n_items: expected 0 or more")


def _parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser, Demo, **kwargs)
    return parser


def test_defaults_types_and_spelling() -> None:
    config = from_args(Demo, _parser().parse_args(["--out", "o"]))
    assert config == Demo(out="o")
    args = ["--out", "o", "--format", "b", "--n-items", "5", "--rate", "0.5", "--lex", "L", "--strict"]
    config = from_args(Demo, _parser().parse_args([*args, "--no-negatives", "--maybe"]))
    assert config == Demo(
        out="o", fmt="b", n_items=5, rate=0.5, lexicon_path="L", strict=True, negatives=False, maybe=True
    )


def test_required_choices_and_validation() -> None:
    with pytest.raises(SystemExit):  # --out is required (argparse exits even with exit_on_error=False)
        _parser().parse_args([])
    with pytest.raises(argparse.ArgumentError):
        _parser().parse_args(["--out", "o", "--format", "c"])
    with pytest.raises(ConfigError, match="n_items"):
        from_args(Demo, _parser().parse_args(["--out", "o", "--n-items", "-1"]))


def test_help_and_metavar_come_from_the_field() -> None:
    text = _parser().format_help()
    assert "choices from the Literal" in text and "--lexicon LEXICON, --lex LEXICON" in text
    assert "--maybe" in text and "{a,b}" in text


def test_unset_mode_leaves_every_option_none_until_given() -> None:
    parser = _parser(names=["fmt", "negatives", "strict"], unset=True)
    assert vars(parser.parse_args([])) == {"fmt": None, "negatives": None, "strict": None}
    given = vars(parser.parse_args(["--no-negatives", "--strict", "--format", "b"]))
    assert given == {"fmt": "b", "negatives": False, "strict": True}
    assert "choices from the Literal (default a)" in " ".join(parser.format_help().split())


def test_eval_options_are_evaluates_defaults_and_probes_are_declared_once() -> None:
    """``thinchat eval`` passes ``EvalOptions`` to ``evaluate``: same names, same defaults; the recipes'
    ``question_probes`` is the same field (default and help) as the eval command's."""
    import dataclasses
    import inspect

    from thinchat.commands.eval import EvalOptions
    from thinchat.eval import evaluate
    from thinchat.recipes.finetune import FinetuneConfig
    from thinchat.recipes.quickstart import QuickstartConfig

    parameters = inspect.signature(evaluate).parameters
    for f in dataclasses.fields(EvalOptions):
        assert f.default == parameters[f.name].default, f.name
    probes = {cls: cls.__dataclass_fields__["question_probes"] for cls in (FinetuneConfig, QuickstartConfig)}
    expected = EvalOptions.__dataclass_fields__["question_probes"]
    for field_ in probes.values():
        assert (field_.default, field_.metadata) == (expected.default, expected.metadata)


def test_list_fields_take_comma_separated_values() -> None:
    @dataclass(kw_only=True)
    class Sweep:
        sizes: list[int] = field([42], metavar="PX[,PX...]", help="sizes")

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser, Sweep)
    assert from_args(Sweep, parser.parse_args([])) == Sweep(sizes=[42])
    assert from_args(Sweep, parser.parse_args(["--sizes", "84,168"])) == Sweep(sizes=[84, 168])
    assert from_args(Sweep, parser.parse_args(["--sizes=-2, 6"])) == Sweep(sizes=[-2, 6])
    with pytest.raises(argparse.ArgumentError, match="expected int, got 'x'"):
        parser.parse_args(["--sizes", "84,x"])
    assert "--sizes PX[,PX...]" in parser.format_help()
