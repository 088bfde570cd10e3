"""The search space of a study: which TrainConfig options are drawn, and how.

A space is a YAML mapping ``option: spec`` (see ``examples/space.yaml``); every mistake is a
ValueError naming the fix, raised before any trial runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from whisper_sv.train.config import TrainConfig

if TYPE_CHECKING:
    import optuna

__all__ = ["ParamSpec", "SearchSpace", "load_space", "show"]

_SPEC_KEYS = ("type", "low", "high", "log", "step", "values", "choices")
_TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class ParamSpec:
    """One searched TrainConfig option (a YAML entry of the space file)."""

    name: str  # TrainConfig field, e.g. "lr"
    type: Literal["float", "int", "categorical"]  # how it is drawn
    low: float | None = None  # range start (float/int)
    high: float | None = None  # range end, included (float/int)
    log: bool = False  # draw on a log scale (float/int ranges)
    step: float | None = None  # spacing of a range's values (float/int)
    values: tuple[Any, ...] = ()  # explicit values (float/int), or the choices (categorical)

    @property
    def discrete(self) -> bool:
        """Whether the values are listed (what a grid needs)."""
        return bool(self.values)

    def describe(self) -> str:
        if self.values:
            return ", ".join(show(v) for v in self.values)
        scale = " log" if self.log else ""
        step = f" step {show(self.step)}" if self.step is not None else ""
        return f"{show(self.low)} .. {show(self.high)}{scale}{step}"

    def suggest(self, trial: optuna.Trial) -> Any:
        """Draw this parameter in ``trial``."""
        if self.values:
            return trial.suggest_categorical(self.name, list(self.values))
        if self.type == "int":
            return trial.suggest_int(
                self.name,
                int(self.low),
                int(self.high),
                step=int(self.step or 1),
                log=self.log,
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.values:
            out["choices" if self.type == "categorical" else "values"] = list(self.values)
        else:
            out.update(low=self.low, high=self.high)
            if self.log:
                out["log"] = True
            if self.step is not None:
                out["step"] = self.step
        return out


@dataclass(frozen=True)
class SearchSpace:
    """The searched options, in file order. Build with :func:`load_space` / :meth:`parse`."""

    params: tuple[ParamSpec, ...]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def grid(self) -> dict[str, list[Any]]:
        """``{name: values}`` for Optuna's GridSampler; every parameter must list its values."""
        ranged = [p.name for p in self.params if not p.discrete]
        if ranged:
            raise ValueError(
                f"the grid sampler needs explicit values, but {', '.join(ranged)} "
                f"{'is a range' if len(ranged) == 1 else 'are ranges'}: write e.g. "
                f"`{ranged[0]}: {{type: float, values: [1e-5, 1e-4, 1e-3]}}` (or use "
                f"--sampler random/tpe for ranges)"
            )
        return {p.name: list(p.values) for p in self.params}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self.params}

    def as_dict(self) -> dict[str, Any]:
        return {p.name: p.as_dict() for p in self.params}

    @classmethod
    def parse(cls, data: Any, base: TrainConfig | None = None) -> SearchSpace:
        """A space from its YAML mapping; every mistake raises ValueError naming the fix.

        ``base`` (the trials' other options) is used to check that every value the space can
        take makes a valid TrainConfig.
        """
        if not isinstance(data, Mapping) or not data:
            raise ValueError(
                "a search space is a mapping of option: spec, e.g. "
                "`lr: {type: float, low: 1e-6, high: 1e-3, log: true}`"
            )
        hints = typing.get_type_hints(TrainConfig)
        params = tuple(_parse_param(str(k), v, hints) for k, v in data.items())
        space = cls(params)
        _check_values(space, base or TrainConfig())
        return space


def load_space(path: str | os.PathLike, base: TrainConfig | None = None) -> SearchSpace:
    """The search space in the YAML file ``path`` (see ``examples/space.yaml``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"search space file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: not valid YAML ({e})") from e
    try:
        return SearchSpace.parse(data, base)
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from e


def _number(name: str, key: str, value: Any) -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)  # YAML 1.1 reads "1e-5" (no dot) as text
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: {key} must be a number, got {value!r}")
    return value


def _parse_param(name: str, spec: Any, hints: Mapping[str, Any]) -> ParamSpec:
    kind = _spec_kind(name, spec, hints)
    if kind == "categorical":
        return _parse_categorical(name, spec)
    _check_numeric_type(name, kind, hints[name])
    if "choices" in spec:
        raise ValueError(f"{name}: `choices` is for type: categorical; use `values` for {kind}")
    if "values" in spec:
        return _parse_values(name, kind, spec)
    return _parse_range(name, kind, spec)


def _spec_kind(name: str, spec: Any, hints: Mapping[str, Any]) -> str:
    """The spec's ``type``, after checking the option exists and the spec's keys."""
    if name not in hints:
        raise ValueError(
            f"{name!r} is not a training option; searchable options: {', '.join(sorted(hints))}"
        )
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"{name}: expected a spec such as {{type: categorical, choices: [...]}}, got "
            f"{spec!r} (fixed values go in the base config or --set {name}=...)"
        )
    unknown = sorted(set(spec) - set(_SPEC_KEYS))
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {unknown}; valid keys: {', '.join(_SPEC_KEYS)}")
    kind = spec.get("type")
    if kind not in _TYPES:
        raise ValueError(f"{name}: type must be one of {', '.join(_TYPES)}, got {kind!r}")
    return kind


def _parse_categorical(name: str, spec: Mapping[str, Any]) -> ParamSpec:
    extra = sorted(k for k in ("low", "high", "log", "step", "values") if k in spec)
    if extra:
        raise ValueError(f"{name}: a categorical takes only `choices`, not {extra}")
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ValueError(f"{name}: a categorical needs a non-empty list `choices: [...]`")
    if len({json.dumps(c, sort_keys=True, default=str) for c in choices}) != len(choices):
        raise ValueError(f"{name}: choices lists a value twice: {choices}")
    return ParamSpec(name, "categorical", values=tuple(choices))


def _check_numeric_type(name: str, kind: str, field_type: Any) -> None:
    """A float/int spec must match the option's type (an int option takes type: int)."""
    if field_type is not (int if kind == "int" else float) and not (
        kind == "float" and field_type is int
    ):
        want = {int: "int", float: "float"}.get(field_type)
        fix = f"use type: {want}" if want else "use type: categorical with choices"
        raise ValueError(f"{name} is a {_type_name(field_type)} option: {fix}")
    if kind == "float" and field_type is int:
        raise ValueError(f"{name} is an integer option: use type: int")


def _parse_values(name: str, kind: str, spec: Mapping[str, Any]) -> ParamSpec:
    extra = sorted(k for k in ("low", "high", "log", "step") if k in spec)
    if extra:
        raise ValueError(f"{name}: give either `values` or a range (low/high), not both")
    values = spec["values"]
    if not isinstance(values, list) or not values:
        raise ValueError(f"{name}: `values` must be a non-empty list")
    nums = [_number(name, "values", v) for v in values]
    if kind == "int" and any(float(v) != int(v) for v in nums):
        raise ValueError(f"{name}: type int takes whole numbers, got {values}")
    nums = [int(v) if kind == "int" else float(v) for v in nums]
    if len(set(nums)) != len(nums):
        raise ValueError(f"{name}: values lists a number twice: {values}")
    return ParamSpec(name, kind, values=tuple(nums))


def _parse_range(name: str, kind: str, spec: Mapping[str, Any]) -> ParamSpec:
    if "low" not in spec or "high" not in spec:
        raise ValueError(
            f"{name}: a {kind} needs `low` and `high` (a range) or `values: [...]` (a list)"
        )
    low, high = _number(name, "low", spec["low"]), _number(name, "high", spec["high"])
    if not low < high:
        raise ValueError(f"{name}: low ({low}) must be below high ({high})")
    log_scale = spec.get("log", False)
    if not isinstance(log_scale, bool):
        raise ValueError(f"{name}: log must be true or false, got {log_scale!r}")
    if log_scale and low <= 0:
        raise ValueError(f"{name}: a log scale needs low > 0 (got {low})")
    step = spec.get("step")
    if step is not None:
        step = _number(name, "step", step)
        if step <= 0:
            raise ValueError(f"{name}: step must be > 0 (got {step})")
        if log_scale and kind == "float":
            raise ValueError(f"{name}: a float range takes `step` or `log: true`, not both")
    if kind == "int":
        if any(float(v) != int(v) for v in (low, high) + ((step,) if step else ())):
            raise ValueError(f"{name}: type int takes whole numbers for low/high/step")
        low, high = int(low), int(high)
        step = int(step) if step is not None else None
        if log_scale and step not in (None, 1):
            raise ValueError(f"{name}: an int range takes `step` or `log: true`, not both")
    else:
        low, high = float(low), float(high)
    return ParamSpec(name, kind, low=low, high=high, log=log_scale, step=step)


def _check_values(space: SearchSpace, base: TrainConfig) -> None:
    """Every listed value and range end must make a valid TrainConfig with ``base``."""
    from whisper_sv.core.config import from_mapping, to_dict

    data = to_dict(base)
    for p in space.params:
        for v in p.values or (p.low, p.high):
            try:
                from_mapping(TrainConfig, {**data, p.name: v})
            except ValueError as e:
                raise ValueError(f"{p.name}: value {v!r} is not usable: {e}") from e


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(show(x) for x in v) + "]"
    return str(v).lower() if isinstance(v, bool) else str(v)
