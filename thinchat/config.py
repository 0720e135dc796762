"""Typed stage configs: a dataclass per stage, loaded from YAML and overridden with ``key=value``.

Why not a dict: a typo in a YAML key or an override must fail before any model is loaded, with the
closest valid key suggested, and values must arrive with the type the code expects.
Dataclass fields carry their help text in ``metadata["help"]`` (as peft's ``LoraConfig`` does), which
``describe()`` prints for ``--help``-style listings and ``add_arguments()`` turns into a command's options:
a setting is declared once, on its field, and the command line, YAML and Python callers share it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from thinchat.errors import ConfigError

T = TypeVar("T")


def field(
    default: Any = dataclasses.MISSING,
    *,
    help: str,  # noqa: A002
    flags: tuple[str, ...] = (),
    metavar: str | None = None,
    **kwargs: Any,
) -> Any:
    """A dataclass field with help text; mutable defaults go through ``default_factory``.

    ``flags`` and ``metavar`` are for ``add_arguments``: the option's spellings where they are not
    ``--the-field-name`` (``("--format",)`` for ``fmt``), and the placeholder ``--help`` shows.
    """
    metadata: dict[str, Any] = {"help": help}
    if flags:
        metadata["flags"] = tuple(flags)
    if metavar is not None:
        metadata["metavar"] = metavar
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, key) for v in value]
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = annotation(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}") from exc
        if annotation is int and isinstance(value, float) and value != int(value):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, prefix=f"{key}.")
    return value


def _unknown_key(cls: type, key: str, prefix: str) -> ConfigError:
    """The error for a key ``cls`` lacks: what replaced it (``cls.REPLACED_KEYS``), else the closest name."""
    replaced = getattr(cls, "REPLACED_KEYS", {}).get(key)
    if replaced:
        return ConfigError(f"config key '{prefix}{key}' of {cls.__name__} was replaced: {replaced}")
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
    return ConfigError(f"unknown config key '{prefix}{key}' for {cls.__name__}{hint}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and coercing types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(cls, key, prefix)
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML scalars) to a nested mapping."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        dotted, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = data
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The mapping in a YAML config file (empty when ``path`` is None) with ``key=value`` overrides applied."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (see configs/ for examples)")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
        data = resolve_relative_paths(loaded or {}, path.parent)
    return apply_overrides(data, overrides or [])


def resolve_relative_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """String values that name an existing file or folder relative to ``folder`` (the config file's) but
    not relative to the working directory become ``folder / value``; every other value is kept.

    Why this rule: a recipe copied next to its data (``my/recipe.yaml`` with ``data: train.json``) works
    from any directory, while the bundled configs, whose paths are written relative to the repository root
    (``deepspeed: configs/zero2.json``), keep meaning what they meant. Values given as CLI overrides are
    not touched: they are relative to the working directory.
    """

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if not isinstance(value, str) or not value.strip() or "\n" in value or Path(value).is_absolute():
            return value
        try:
            if Path(value).exists() or not (folder / value).exists():
                return value
        except OSError:  # a name too long for the file system: not a path
            return value
        return str(folder / value)

    return {key: resolve(value) for key, value in data.items()}


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) plus CLI overrides."""
    return from_dict(cls, read_yaml(path, overrides))


def to_dict(obj: Any) -> dict[str, Any]:
    """The config as plain data, for saving next to a checkpoint."""
    return dataclasses.asdict(obj)


def describe(cls: type) -> str:
    """One line per key: name, type, default and help text."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        )
        type_name = getattr(hints[f.name], "__name__", str(hints[f.name]))
        lines.append(f"{f.name} ({type_name}, default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def _default(f: dataclasses.Field) -> Any:
    """The field's default value (a fresh one for a factory), or ``MISSING`` for a required field."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _flags(f: dataclasses.Field, annotation: Any) -> tuple[str, ...]:
    """The option strings: the field's ``flags``, else ``--name-with-dashes`` (``--no-name`` for a switch
    that is on by default, since giving the flag turns it off)."""
    if "flags" in f.metadata:
        return f.metadata["flags"]
    name = f.name.replace("_", "-")
    return (f"--no-{name}",) if _scalar(annotation) is bool and f.default is True else (f"--{name}",)


def _scalar(annotation: Any) -> Any:
    """The type a command-line value has: ``int`` for ``int | None``, the first of a union otherwise."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation


def _takes_value(annotation: Any) -> bool:
    """Whether the option is followed by a value named by a metavar: not a switch, not a choice."""
    scalar = _scalar(annotation)
    return scalar is not bool and typing.get_origin(scalar) is not typing.Literal


def _argument(f: dataclasses.Field, annotation: Any, unset: bool) -> dict[str, Any]:
    """``add_argument`` keywords for field ``f``; ``unset``: default None (the option overrides a file)."""
    default = _default(f)
    kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help")}
    if (
        unset
        and default not in (dataclasses.MISSING, None, "", False, [])
        and "default" not in kwargs["help"]
    ):
        kwargs["help"] += f" (default {default})"  # the option's own default (None) says nothing
    if "metavar" in f.metadata:
        kwargs["metavar"] = f.metadata["metavar"]
    elif "flags" in f.metadata and _takes_value(annotation):
        # named as argparse names a value of that flag, not after the field (choices show as {a,b})
        kwargs["metavar"] = f.metadata["flags"][0].lstrip("-").replace("-", "_").upper()
    if unset or default is not dataclasses.MISSING:
        kwargs["default"] = None if unset else default
    else:
        kwargs["required"] = True
    scalar = _scalar(annotation)
    if scalar is bool and default is True:  # the flag turns it off
        kwargs.update({"action": "store_const", "const": False} if unset else {"action": "store_false"})
    elif scalar is bool:
        kwargs["action"] = "store_true"
    elif typing.get_origin(scalar) is typing.Literal:
        kwargs["choices"] = list(typing.get_args(scalar))
    elif scalar in (int, float):
        kwargs["type"] = scalar
    elif typing.get_origin(scalar) in (list, tuple):
        kwargs["type"] = _list_type(f.name, scalar)
    elif scalar is not str and scalar is not Any:
        raise TypeError(f"{f.name}: no command-line option for a {annotation} field")
    return kwargs


def _list_type(name: str, annotation: Any) -> Any:
    """argparse type of a list field: comma-separated values, each coerced as the field's items are
    (``"42,84"`` -> ``[42, 84]``); a bad item is argparse's usage error, naming the option."""
    import argparse

    def parse(text: str) -> list[Any]:
        try:
            return _coerce(text, annotation, name)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (comma-separated values, e.g. 1,2)") from exc

    return parse


def add_arguments(parser: Any, cls: type, names: Iterable[str] | None = None, *, unset: bool = False) -> None:
    """Add one option per field of ``cls`` to an ``argparse`` parser (``names``: those fields, in that
    order), spelled and documented as the field says (``field(help=, flags=, metavar=)``).

    Why: a setting declared on its config field reaches the command line without a second declaration of
    its default, type, choices or help, and ``from_args`` reads it back by the field name.
    Types map as ``int``/``float`` -> ``type``, ``Literal`` -> ``choices``, ``bool`` -> a switch
    (``store_false`` when on by default), ``list[X]`` -> comma-separated ``X`` values (``--sizes 42,84``),
    ``X | None`` -> ``X``; a field without a default is required.
    ``unset=True`` makes every default None, for options that override a config file only when given.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names if names is not None else fields:
        f = fields[name]
        parser.add_argument(*_flags(f, hints[name]), **_argument(f, hints[name], unset))


def from_args(cls: type[T], args: Any) -> T:
    """``cls`` from the parsed options ``add_arguments`` added (attributes named as the fields), coerced
    and validated as a YAML config is; fields the parser lacks keep their defaults."""
    names = [f.name for f in dataclasses.fields(cls) if hasattr(args, f.name)]
    return from_dict(cls, {name: getattr(args, name) for name in names})
