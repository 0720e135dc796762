"""Interface strings of the web demo (zh / en), loaded from ``strings.yaml`` next to this module.

Why data rather than code: translators edit one YAML file, and a test checks that every language
defines every key, so a missing translation fails CI instead of showing a raw key to a user.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import yaml

from thinchat.errors import ConfigError

DEFAULT_LANG = "zh"


@cache
def all_strings() -> dict[str, dict[str, str]]:
    """``{lang: {key: text}}`` for every language in ``strings.yaml``."""
    text = resources.files("thinchat.web").joinpath("strings.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def languages() -> tuple[str, ...]:
    return tuple(all_strings())


def strings(lang: str) -> dict[str, str]:
    """The strings of ``lang``; a ``ConfigError`` naming the choices for an unknown language."""
    table = all_strings()
    if lang not in table:
        raise ConfigError(f"unknown interface language {lang!r}; choose one of {', '.join(table)}")
    return table[lang]
