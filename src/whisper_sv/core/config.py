"""Options as frozen dataclasses: load from YAML, override from the command line, save.

Every stage keeps its options in a frozen dataclass next to its code (``TrainConfig`` in
``train_config.py``, ``FeatureConfig`` in ``feature_config.py``...). This module is the one
place that turns YAML files and ``key=value`` overrides into those dataclasses, rejecting
unknown keys and wrong types with a message that names the valid keys, so a typo never
silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from whisper_sv.core.fsutil import atomic_write_text

T = TypeVar("T")


def need(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``: the one check behind every option
    dataclass's validation, so each rule is a line and its message names the fix."""
    if not ok:
        raise ValueError(message)


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-5", "freeze_encoder=true"]`` -> ``{"lr": 1e-05, "freeze_encoder": True}``.

    Values are read as YAML scalars, so numbers, booleans, null and lists (``[a, b]``) work.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {pair!r} is not KEY=VALUE (example: --set lr=1e-5)")
        out[key.strip()] = _scalar(value)
    return out


def _scalar(text: str) -> Any:
    if not text.strip():
        return None
    value = yaml.safe_load(text)
    if isinstance(value, str):
        # YAML 1.1 reads "3e-4" (no dot) as text; people write learning rates that way.
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; convert the safe cases (int -> float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(f"option {name!r}: {value!r} is not {_type_name(tp)}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError(f"option {name!r}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (tuple, list, Sequence):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ValueError(f"option {name!r}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        return tuple(_coerce(name, v, item_tp) for v in value)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"option {name!r}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"option {name!r}: expected true/false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "lr: 3e-4" (no dot) as text.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"option {name!r}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"option {name!r}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"option {name!r}: expected text, got {value!r}")
        return value
    if tp is Path:
        return Path(value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        # A nested options dataclass: its own `coerce` (which may also read a short text
        # form, e.g. GuardSpec's NAME=PATH), else a mapping of its fields.
        if isinstance(value, tp):
            return value
        if hasattr(tp, "coerce"):
            return tp.coerce(value)
        if isinstance(value, Mapping):
            return from_mapping(tp, value)
        raise ValueError(f"option {name!r}: expected a mapping of {tp.__name__} fields")
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build the dataclass ``cls`` from ``data``; unknown keys and wrong types raise ValueError."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for {cls.__name__}; "
            f"valid options: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {key: _coerce(key, value, hints[key]) for key, value in data.items()}
    return cls(**kwargs)


def load_options(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Options from an optional YAML file, then ``overrides`` on top; validated by ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{path}: expected a mapping of option: value at the top level")
        data.update(loaded)
    data.update(overrides or {})
    return from_mapping(cls, data)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain YAML-able data (tuples become lists, paths strings)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(obj)


def dump_options(obj: Any, path: str | Path) -> None:
    """Write a dataclass (or a mapping of them) to YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True))
