"""Typed configuration plumbing shared by `curation` and `training`: frozen dataclass trees built from TOML,
dotted overrides and `key=value` flags, with every problem reported at once, naming its option.

It lives in `manifests` because that is the one package both sides may import (DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Check = Callable[[Any, list[str]], None]  # appends range/consistency problems of a built config
_INVALID = object()  # a leaf that failed its type check keeps its default, so range checks can still run


class ConfigError(ValueError):
    """All problems of a config at once, each naming its option."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


def _coerce(value: Any, annotation: Any, name: str, problems: list[str]) -> Any:
    """Check one leaf value against its annotation; ints are accepted where floats are expected."""
    if typing.get_origin(annotation) is tuple:
        kinds = typing.get_args(annotation)
        if isinstance(value, (list, tuple)) and len(value) == len(kinds) and all(type(v) is int for v in value):
            return tuple(value)
        problems.append(f"{name}: expected a list of {len(kinds)} integers, got {value!r}")
        return _INVALID
    args = typing.get_args(annotation)
    allowed = args if args else (annotation,)
    if type(None) in allowed and isinstance(value, str) and value.lower() in ("none", "null", ""):
        value = None
    if value is None:
        if type(None) in allowed:
            return None
        problems.append(f"{name}: must not be empty")
        return _INVALID
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind in (int, str, bool) and type(value) is kind:
            return value
    expected = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    problems.append(f"{name}: expected {expected}, got {value!r}")
    return _INVALID


def _build(cls: type, data: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in sorted(set(data) - known):
        problems.append(f"{prefix}{key}: unknown option (known: {', '.join(sorted(known))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            if isinstance(data[f.name], dict):
                kwargs[f.name] = _build(hint, data[f.name], f"{prefix}{f.name}.", problems)
            else:
                problems.append(f"{prefix}{f.name}: expected a table of options")
        else:
            value = _coerce(data[f.name], hint, prefix + f.name, problems)
            if value is not _INVALID:
                kwargs[f.name] = value
    return cls(**kwargs)


def parse_value(text: str) -> Any:
    """A flag value in TOML syntax (`5`, `0.5`, `true`, `"x"`); bare words are strings; `none` empties an
    option that may be empty."""
    if not text:
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, problems: list[str]) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            problems.append(f"{dotted}: {part} is not a table of options")
            return
    node[leaf] = value


def typed_from_dict(cls: type[T], data: dict[str, Any], check: Check) -> T:
    """A config from its dict form (as saved beside outputs), checked like a file."""
    problems: list[str] = []
    cfg = _build(cls, data, "", problems)
    check(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def load_typed(cls: type[T], check: Check, path: str | os.PathLike | None = None,
               overrides: dict[str, Any] | None = None, assignments: list[str] | None = None) -> T:
    """Config from an optional TOML file, then `overrides` (dotted keys), then `key=value` assignments."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError([f"config file {path}: {exc}"]) from exc
    problems: list[str] = []
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value, problems)
    for assignment in assignments or []:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {assignment!r}: expected key=value")
            continue
        _set_dotted(data, key.strip(), parse_value(text.strip()), problems)
    cfg = _build(cls, data, "", problems)
    check(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg
