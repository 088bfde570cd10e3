"""Hyper-parameter studies: Optuna samplers over :func:`whisper_sv.train.train` runs.

A study is a folder::

    STUDY/study.db            Optuna storage (SQLite): every trial, its params and WER curve
    STUDY/study.yaml          what the study searches and on what (checked on a re-run)
    STUDY/trials/0003/        trial 3: an ordinary run folder (metrics.csv, best/, ...)
    STUDY/trials/0003.yaml    its training options; 0003.log: its training log
    STUDY/seeds/t0003-s1/     trial 3's settings repeated with seed 1 (``--seeds``)
    STUDY/cache/              encoder outputs shared by every trial (frozen encoder)
    STUDY/report.md           trials table, best settings, seed spread, plots (*.png)

Each trial runs ``python -m whisper_sv train`` in a child process and watches its
``metrics.csv``: every evaluation's WER is reported to Optuna, and the median pruner (or the
time budget) stops a trial by ending that process. ``train()`` has no per-evaluation hook, and
running it in segments (resume with a larger ``max_steps``) would change the learning-rate
schedule, which decays towards ``max_steps``; a child process keeps the schedule exact, frees all
memory between trials and turns a crash or an out-of-memory kill into one failed trial.

A study resumes: a re-run with the same ``--out`` loads ``study.db``, marks trials left
running by a killed process as failed, retries them (their run folder resumes from its last
checkpoint) and runs until ``trials`` trials have finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from whisper_sv.registry import MetricsRow, read_metrics_csv
from whisper_sv.train import TrainConfig

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

__all__ = [
    "ParamSpec",
    "SearchSpace",
    "SeedStats",
    "TrialRow",
    "TuneOptions",
    "TuneResult",
    "load_space",
    "planned_steps",
    "tune",
    "write_report",
]

STUDY_NAME = "whisper-sv"
STUDY_FILE = "study.yaml"
DB_FILE = "study.db"
REPORT = "report.md"
MAX_RETRIES = 2  # times a trial cut off by a killed study is retried
_SPEC_KEYS = ("type", "low", "high", "log", "step", "values", "choices")
_TYPES = ("float", "int", "categorical")
# Study settings a re-run may change and still continue the same study.
_RESUMABLE = frozenset(
    {
        "sampler",
        "trials",
        "seed",
        "seeds",
        "repeat",
        "time_budget_s",
        "prune",
        "prune_startup_trials",
        "prune_after_evals",
        "tpe_startup_trials",
        "keep_models",
        "max_failures",
    }
)


# --------------------------------------------------------------------------- search space


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
            return ", ".join(_show(v) for v in self.values)
        scale = " log" if self.log else ""
        step = f" step {_show(self.step)}" if self.step is not None else ""
        return f"{_show(self.low)} .. {_show(self.high)}{scale}{step}"

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
    field_type = hints[name]
    if kind == "categorical":
        extra = sorted(k for k in ("low", "high", "log", "step", "values") if k in spec)
        if extra:
            raise ValueError(f"{name}: a categorical takes only `choices`, not {extra}")
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{name}: a categorical needs a non-empty list `choices: [...]`")
        if len({json.dumps(c, sort_keys=True, default=str) for c in choices}) != len(choices):
            raise ValueError(f"{name}: choices lists a value twice: {choices}")
        return ParamSpec(name, "categorical", values=tuple(choices))
    if field_type is not (int if kind == "int" else float) and not (
        kind == "float" and field_type is int
    ):
        want = {int: "int", float: "float"}.get(field_type)
        fix = f"use type: {want}" if want else "use type: categorical with choices"
        raise ValueError(f"{name} is a {_type_name(field_type)} option: {fix}")
    if kind == "float" and field_type is int:
        raise ValueError(f"{name} is an integer option: use type: int")
    if "choices" in spec:
        raise ValueError(f"{name}: `choices` is for type: categorical; use `values` for {kind}")
    if "values" in spec:
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
    from whisper_sv.config import from_mapping, to_dict

    data = to_dict(base)
    for p in space.params:
        for v in p.values or (p.low, p.high):
            try:
                from_mapping(TrainConfig, {**data, p.name: v})
            except ValueError as e:
                raise ValueError(f"{p.name}: value {v!r} is not usable: {e}") from e


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return str(v).lower() if isinstance(v, bool) else str(v)


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class TuneOptions:
    """How a study runs (``whisper-sv tune``); the searched options are the SearchSpace."""

    sampler: Literal["grid", "random", "tpe"] = "tpe"  # grid: every combination of the values
    trials: int = 0  # finished trials wanted in the study; 0: the grid size (grid) or 10
    seed: int = 0  # sampler seed (the order of grid points, random and TPE draws)
    model: str | None = None  # model every trial starts from (None: bundled:base)
    steps: int = 0  # optimizer steps per trial; 0: the base config's max_steps/epochs
    equal_epochs: float = 0.0  # every trial sees E x train clips (steps from its batch size)
    evals_per_trial: int = 4  # evaluations per trial (= pruning points); 0: base eval_steps
    time_budget_s: float = 0.0  # stop a trial after this many seconds (its best WER counts)
    prune: bool = True  # median pruner: stop a trial worse than the median at an evaluation
    prune_startup_trials: int = 2  # finished trials before the pruner may stop one
    prune_after_evals: int = 1  # first evaluation at which a trial may be stopped
    tpe_startup_trials: int = 0  # random trials before TPE models the results; 0: auto
    seeds: tuple[int, ...] = ()  # repeat over these seeds (trials use the first)
    repeat: Literal["best", "each"] = "best"  # what --seeds repeats: the best or every config
    keep_models: bool = False  # keep best/ of every trial (default: only the study's best)
    max_failures: int = 3  # stop a study after this many failed trials in one call
    poll_s: float = 1.0  # how often a running trial's metrics.csv is read, seconds
    storage: str = ""  # Optuna storage URL (study_storage); "": study.db in the study folder
    worker: bool = False  # join the existing study in `storage` (one of N machines/processes)
    heartbeat_s: int = 60  # a shared storage's trial heartbeat; 3 missed: the trial is retried

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(
            self.sampler in ("grid", "random", "tpe"),
            f"sampler must be grid, random or tpe (got {self.sampler!r})",
        )
        need(self.trials >= 0, f"trials must be >= 0 (got {self.trials}); 0 picks a default")
        need(self.steps >= 0, f"steps must be >= 0 (got {self.steps}); 0 uses the base config")
        need(self.equal_epochs >= 0, f"equal_epochs must be >= 0 (got {self.equal_epochs})")
        need(
            not (self.steps and self.equal_epochs),
            "give either steps (the same steps for every trial) or equal_epochs (the same "
            "samples for every trial), not both",
        )
        need(self.evals_per_trial >= 0, "evals_per_trial must be >= 0 (0: base eval_steps)")
        need(self.time_budget_s >= 0, "time_budget_s must be >= 0 (0: no limit)")
        need(self.prune_startup_trials >= 0, "prune_startup_trials must be >= 0")
        need(self.prune_after_evals >= 1, "prune_after_evals must be >= 1")
        need(self.tpe_startup_trials >= 0, "tpe_startup_trials must be >= 0 (0: auto)")
        need(len(set(self.seeds)) == len(self.seeds), f"seeds lists a seed twice: {self.seeds}")
        need(self.repeat in ("best", "each"), f"repeat must be best or each ({self.repeat!r})")
        need(self.max_failures >= 1, "max_failures must be >= 1")
        need(self.poll_s > 0, "poll_s must be > 0")
        need(self.heartbeat_s >= 1, f"heartbeat_s must be >= 1 (got {self.heartbeat_s})")


def planned_steps(cfg: TrainConfig, n_train: int, processes: int = 1) -> int:
    """Optimizer steps ``train()`` will plan for ``cfg`` on ``n_train`` clips (its formula)."""
    if cfg.max_steps:
        return cfg.max_steps
    global_batch = cfg.batch_size * cfg.grad_accum * processes
    return max(1, math.ceil(cfg.epochs * n_train / global_batch))


def trial_config(
    base: TrainConfig,
    params: Mapping[str, Any],
    options: TuneOptions,
    n_train: int,
    cache_dir: Path,
) -> tuple[TrainConfig, int]:
    """(the TrainConfig of a trial, its planned steps); ValueError when it cannot run."""
    from whisper_sv.config import from_mapping, to_dict

    data = {**to_dict(base), **params}
    if options.steps:
        data.update(max_steps=options.steps, epochs=0.0)
    elif options.equal_epochs:
        data.update(max_steps=0, epochs=float(options.equal_epochs))
    cfg = from_mapping(TrainConfig, data)
    steps = planned_steps(cfg, n_train)
    if options.evals_per_trial:
        every = max(1, math.ceil(steps / options.evals_per_trial))
        data.update(eval_steps=every, save_steps=every)
    # A trial's checkpoint is only needed to resume it; the shared cache lets every trial
    # reuse the encoder outputs the first one computed; exports are made for the winner only.
    data.update(keep_checkpoints=1, export_ct2=False)
    if not base.cache_dir:
        data["cache_dir"] = str(cache_dir)
    cfg = from_mapping(TrainConfig, data)
    if cfg.warmup_steps >= steps and cfg.lr_schedule != "constant":
        raise ValueError(
            f"warmup_steps ({cfg.warmup_steps}) must be below the trial's {steps} steps: "
            f"lower warmup_steps (--set warmup_steps=...) or give more steps"
        )
    return cfg, steps


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TrialRow:
    """One trial of a study, as the report shows it."""

    number: int  # Optuna's trial number (its folder is trials/NNNN)
    params: dict[str, Any]  # the searched options
    wer: float | None  # best validation WER (the objective), percent
    cer: float | None  # validation CER at that evaluation, percent
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    seconds: float | None  # wall time of the trial
    steps: int | None  # optimizer steps done
    note: str = ""  # why it stopped, retries, errors


@dataclass(frozen=True)
class SeedStats:
    """One configuration trained with several seeds."""

    trial: int  # the trial whose settings were repeated
    params: dict[str, Any]  # its searched options
    seeds: tuple[int, ...]  # seeds run
    wers: tuple[float, ...]  # best validation WER of each seed, percent
    cers: tuple[float, ...]  # CER at that evaluation, percent
    seconds: tuple[float, ...]  # training wall time of each seed run

    @property
    def mean(self) -> float:
        return sum(self.wers) / len(self.wers)

    @property
    def std(self) -> float:
        """Sample standard deviation (0 for one seed)."""
        n = len(self.wers)
        if n < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((w - m) ** 2 for w in self.wers) / (n - 1))

    @property
    def min(self) -> float:
        return min(self.wers)

    @property
    def max(self) -> float:
        return max(self.wers)

    @property
    def cer_mean(self) -> float:
        return sum(self.cers) / len(self.cers) if self.cers else float("nan")


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` left in the study folder."""

    study: Path  # the study folder
    trials: tuple[TrialRow, ...]  # every trial, in number order
    best: TrialRow | None  # the complete trial with the lowest WER
    seeds: tuple[SeedStats, ...]  # --seeds repetitions
    report: Path  # STUDY/report.md
    plots: tuple[Path, ...]  # PNGs written next to the report
    options: TuneOptions  # options used
    base: TrainConfig  # the trials' options before the searched ones
    space: SearchSpace  # what was searched


# --------------------------------------------------------------------------- one training run


@dataclass(frozen=True)
class _Outcome:
    rows: tuple[MetricsRow, ...]  # evaluations with a WER (step > 0)
    returncode: int | None  # the process's exit status (None: we stopped it)
    stopped: str  # "" (ran to its end), "pruned", "time budget"
    seconds: float  # wall time

    @property
    def best(self) -> MetricsRow | None:
        rows = [r for r in self.rows if r.wer is not None]
        return min(rows, key=lambda r: (r.wer, r.step)) if rows else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Make the training process end when the study process dies (even by kill -9)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _stop(proc: subprocess.Popen) -> None:
    """End a training process: SIGTERM, then SIGKILL. Its run folder stays consistent (every
    checkpoint is written to a temporary folder and renamed into place)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wer_rows(run: Path) -> list[MetricsRow]:
    try:
        rows = read_metrics_csv(run / "metrics.csv")
    except (OSError, ValueError):  # not there yet
        return []
    return [r for r in rows if r.step > 0 and r.wer is not None]


def _run_training(
    features: Path,
    run: Path,
    config_path: Path,
    model: str | None,
    log_path: Path,
    *,
    on_eval: Callable[[int, MetricsRow], bool] | None,
    time_budget_s: float,
    poll_s: float,
) -> _Outcome:
    """``python -m whisper_sv train`` into ``run``, watched until it ends or is stopped.

    ``on_eval(k, row)`` is called for the k-th evaluation (1-based) as soon as it is in
    ``metrics.csv``; returning True stops the run (pruned).
    """
    cmd = [sys.executable, "-m", "whisper_sv", "train", "--features", str(features)]
    cmd += ["--out", str(run), "--config", str(config_path), "--no-progress"]
    if model:
        cmd += ["--model", model]
    t0 = time.perf_counter()
    reported: set[int] = set()
    stopped = ""
    with open(log_path, "ab") as logf:
        logf.write(f"$ {' '.join(cmd)}\n".encode())
        logf.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        try:
            while True:
                rc = proc.poll()
                rows = _wer_rows(run)
                for k, row in enumerate(rows, 1):
                    if row.step in reported:
                        continue
                    reported.add(row.step)
                    if on_eval is not None and on_eval(k, row):
                        stopped = "pruned"
                        break
                if stopped:
                    break
                if rc is not None:
                    break
                if time_budget_s and time.perf_counter() - t0 > time_budget_s:
                    stopped = "time budget"
                    break
                time.sleep(poll_s)
        finally:
            _stop(proc)
    return _Outcome(
        rows=tuple(_wer_rows(run)),
        returncode=None if stopped else proc.returncode,
        stopped=stopped,
        seconds=time.perf_counter() - t0,
    )


def _log_tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    keep = [ln for ln in text.splitlines() if ln.strip() and "it/s]" not in ln]
    return " | ".join(keep[-lines:])


# --------------------------------------------------------------------------- the study


class _TrialFailed(Exception):
    """A trial that could not produce a WER (bad settings, a crashed training process)."""


@dataclass
class _Study:
    """Everything a trial needs, built once per call of :func:`tune`."""

    root: Path
    features: Path
    model: str | None
    space: SearchSpace
    base: TrainConfig
    options: TuneOptions
    n_train: int
    failures: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def trials_dir(self) -> Path:
        return self.root / "trials"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def run_dir(self, number: int) -> Path:
        return self.trials_dir / f"{number:04d}"

    def objective(self, trial: optuna.Trial) -> float:
        import optuna

        params = self.space.suggest(trial)
        run = self.run_dir(trial.number)
        retry_of = trial.user_attrs.get("retry_of")
        old = self.run_dir(int(retry_of)) if retry_of is not None else None
        if old is not None and old.is_dir() and not run.exists():
            # Continue the interrupted run from its last checkpoint, under the new number.
            os.replace(old, run)
            for ext in (".yaml", ".log"):
                if old.with_suffix(ext).is_file():
                    os.replace(old.with_suffix(ext), run.with_suffix(ext))
        elif run.exists() and old is None:
            shutil.rmtree(run)  # a leftover of a study whose database was replaced
        try:
            cfg, steps = trial_config(self.base, params, self.options, self.n_train, self.cache_dir)
        except ValueError as e:
            trial.set_user_attr("error", str(e))
            self.failures += 1
            raise _TrialFailed(str(e)) from e
        trial.set_user_attr("planned_steps", steps)
        _write_train_yaml(cfg, run.with_suffix(".yaml"))
        log.info(
            "trial %d: %s (%d steps)",
            trial.number,
            ", ".join(f"{k}={_show(v)}" for k, v in params.items()),
            steps,
        )

        def on_eval(k: int, row: MetricsRow) -> bool:
            trial.report(float(row.wer), k)
            return self.options.prune and trial.should_prune()

        try:
            out = _run_training(
                self.features,
                run,
                run.with_suffix(".yaml"),
                self.model,
                run.with_suffix(".log"),
                on_eval=on_eval,
                time_budget_s=self.options.time_budget_s,
                poll_s=self.options.poll_s,
            )
        except BaseException:
            # Ctrl+C (or any crash of this process): a re-run retries the trial.
            trial.set_user_attr("interrupted", True)
            raise
        best = out.best
        trial.set_user_attr("seconds", round(out.seconds, 1))
        trial.set_user_attr("steps", out.rows[-1].step if out.rows else 0)
        if best is not None:
            trial.set_user_attr("cer", best.cer)
            trial.set_user_attr("best_step", best.step)
        if out.stopped == "pruned":
            trial.set_user_attr("stopped", f"pruned after {len(out.rows)} evaluation(s)")
            log.info("trial %d pruned at step %d", trial.number, out.rows[-1].step)
            raise optuna.TrialPruned()
        if out.stopped:
            trial.set_user_attr("stopped", out.stopped)
        if out.returncode not in (0, None) or best is None:
            why = (
                f"training exited with status {out.returncode}"
                if out.returncode not in (0, None)
                else "no evaluation within the time budget"
                if out.stopped
                else "training produced no validation WER (does the store have a validation split?)"
            )
            msg = f"{why}: {_log_tail(run.with_suffix('.log'))}"
            trial.set_user_attr("error", msg[-2000:])
            self.failures += 1
            raise _TrialFailed(msg)
        log.info(
            "trial %d: WER %.2f at step %d (%.0f s)",
            trial.number,
            best.wer,
            best.step,
            out.seconds,
        )
        return float(best.wer)

    def after_trial(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        """Free disk: a finished trial needs no checkpoint; only the best trial keeps best/."""
        from optuna.trial import TrialState

        if frozen.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            shutil.rmtree(self.run_dir(frozen.number) / "checkpoints", ignore_errors=True)
        if self.options.keep_models:
            return
        best = _best_trial(study)
        for t in study.get_trials(deepcopy=False):
            if t.state.is_finished() and (best is None or t.number != best.number):
                shutil.rmtree(self.run_dir(t.number) / "best", ignore_errors=True)
        write_report(self.root)


def _write_train_yaml(cfg: TrainConfig, path: Path) -> None:
    from whisper_sv.config import dump_options

    path.parent.mkdir(parents=True, exist_ok=True)
    dump_options(cfg, path)


def _best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return min(done, key=lambda t: (t.value, t.number)) if done else None


@contextlib.contextmanager
def _study_lock(root: Path) -> Iterator[None]:
    """One tune process per study: trials found RUNNING under the lock are from a dead one."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    path = root / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise ValueError(
                f"another `whisper-sv tune` is running on {root} (pid {f.read().strip() or '?'})"
                "; wait for it or stop it first"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _storage(root: Path, options: TuneOptions | None = None) -> Any:
    from whisper_sv import study_storage

    if options is None:
        return study_storage.open_storage(root)
    url, beat = options.storage or None, options.heartbeat_s
    return study_storage.open_storage(
        root, url, heartbeat_s=beat, max_retries=MAX_RETRIES, shared=options.worker
    )


def _recover(study: optuna.Study, storage: Any) -> int:
    """Fail the trials a killed study left RUNNING and queue a retry of each (same params).

    The retry takes the interrupted trial's run folder, so training continues from its last
    checkpoint. Returns the number of retries queued.
    """
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = 0
    for t in trials:
        interrupted = t.user_attrs.get("interrupted", False)
        if t.state == TrialState.RUNNING:
            tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(tid, "interrupted", True)
            storage.set_trial_state_values(tid, TrialState.FAIL)
            interrupted = True
            log.info("trial %d was cut off by a stopped study: marked failed", t.number)
        retries = int(t.user_attrs.get("retries", 0))
        if interrupted and t.number not in retried and retries < MAX_RETRIES:
            study.enqueue_trial(
                dict(t.params), user_attrs={"retry_of": t.number, "retries": retries + 1}
            )
            log.info("trial %d will be retried (continuing its run folder)", t.number)
            queued += 1
    return queued


def _sampler(options: TuneOptions, space: SearchSpace, target: int, n_existing: int) -> Any:
    import optuna

    # A resumed study must not redraw the values it drew before: offset the seed.
    seed = options.seed + n_existing
    if options.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if options.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = options.tpe_startup_trials or max(2, min(10, target // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def _pruner(options: TuneOptions) -> Any:
    import optuna

    if not options.prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=options.prune_startup_trials,
        n_warmup_steps=options.prune_after_evals,
    )


def _study_settings(
    features: Path, model: str | None, space: SearchSpace, base: TrainConfig, options: TuneOptions
) -> dict[str, Any]:
    from whisper_sv.config import to_dict

    opts = to_dict(options)
    for how in ("poll_s", "storage", "worker", "heartbeat_s"):  # how it runs, not what
        opts.pop(how, None)
    return {
        "features": str(features),
        "model": model,
        "space": space.as_dict(),
        "train": to_dict(base),
        "tune": opts,
    }


def _check_same_study(old: Mapping[str, Any], new: Mapping[str, Any], root: Path) -> None:
    """A re-run must continue the same search (only _RESUMABLE options may change)."""
    diffs = []
    for key in ("features", "model", "space", "train"):
        if old.get(key) != new.get(key):
            diffs.append(key)
    a, b = old.get("tune", {}), new.get("tune", {})
    diffs += sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _RESUMABLE)
    if diffs:
        raise ValueError(
            f"{root} holds a study made with other settings ({', '.join(diffs)} differ); use "
            f"another --out for a new study (a re-run may change only "
            f"{', '.join(sorted(_RESUMABLE))})"
        )


def _resolve_model(model: str | None) -> str | None:
    """Local model folders by absolute path: trials may run from another working directory."""
    if model is None:
        return None
    from whisper_sv import models

    mref = models.resolve(model)
    return str(mref.path) if mref.path is not None else mref.ref


def tune(
    features: str | os.PathLike,
    out: str | os.PathLike,
    space: SearchSpace | str | os.PathLike,
    options: TuneOptions | None = None,
    *,
    base: TrainConfig | None = None,
    progress: bool = True,
) -> TuneResult:
    """Run (or continue) the study in ``out``: trials of ``space`` on the store ``features``.

    ``base`` holds every training option the space does not search (``--config``/``--set``).
    Runs until ``options.trials`` trials have finished (complete or pruned), then the
    ``options.seeds`` repetitions, then writes ``report.md`` and the plots.
    """
    import optuna
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    from whisper_sv import study_storage
    from whisper_sv.train import open_store

    options = options or TuneOptions()
    base = base or TrainConfig()
    if options.seeds:
        base = _with(base, seed=options.seeds[0])
    root = Path(out).resolve()
    if root.exists() and not root.is_dir():
        raise ValueError(f"--out {root} is a file; give a folder for the study")
    if not isinstance(space, SearchSpace):
        space = load_space(space, base)
    if options.sampler == "grid":
        space.grid()  # names the ranges a grid cannot use, before anything runs
    store = open_store(features)
    features = Path(features).resolve()
    if "validation" not in store.splits() or store.num_rows("validation") == 0:
        raise ValueError(
            f"{features} has no validation clips: trials are scored by validation WER; "
            f"build the store with a validation split"
        )
    model = _resolve_model(options.model)
    n_train = store.num_rows("train")
    if space.params:
        # The base alone must be trainable too (e.g. warm-up below the steps of a trial).
        probe = {p.name: (p.values[0] if p.values else p.low) for p in space.params}
        if "warmup_steps" not in probe:
            trial_config(base, probe, options, n_train, root / "cache")
    target = options.trials or (space.grid_size() if options.sampler == "grid" else 10)
    settings = _study_settings(features, model, space, base, options)

    # Workers of one study may share its folder (a shared disk): only a lead process locks it.
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext() if options.worker else _study_lock(root):
        settings_path = root / STUDY_FILE
        if settings_path.is_file():
            _check_same_study(yaml.safe_load(settings_path.read_text("utf-8")), settings, root)
        elif (root / DB_FILE).exists():
            raise ValueError(f"{root} has {DB_FILE} but no {STUDY_FILE}: not a whisper-sv study")
        settings_path.write_text(yaml.safe_dump(settings, sort_keys=False), "utf-8")

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = _storage(root, options)
        probe_study = study_storage.create_or_join(storage, STUDY_NAME, settings, options.worker)
        if not (options.worker or study_storage.heartbeat_enabled(storage)):
            _recover(probe_study, storage)  # else RUNNING trials may be other workers' live ones
        n_existing = len(probe_study.get_trials(deepcopy=False))
        n_existing += study_storage.seed_salt(options.worker)
        sampler = _sampler(options, space, target, n_existing)
        study = optuna.load_study(
            study_name=STUDY_NAME, storage=storage, sampler=sampler, pruner=_pruner(options)
        )
        ctx = _Study(
            root=root,
            features=features,
            model=model,
            space=space,
            base=base,
            options=options,
            n_train=n_train,
            settings=settings,
        )
        finished = (TrialState.COMPLETE, TrialState.PRUNED)

        def n_done() -> int:
            return len(study.get_trials(deepcopy=False, states=finished))

        bar = tqdm(total=target, initial=min(n_done(), target), desc="trials", disable=not progress)
        while n_done() < target:
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if options.sampler == "grid" and sampler.is_exhausted(study) and not waiting:
                log.info("every grid point has been tried")
                break
            if ctx.failures >= options.max_failures:
                log.warning(
                    "%d trials failed in this run: stopping the study; see the trial logs in %s",
                    ctx.failures,
                    ctx.trials_dir,
                )
                break
            before = n_done()
            study.optimize(
                ctx.objective,
                n_trials=1,
                catch=(_TrialFailed,),
                callbacks=[ctx.after_trial],
                gc_after_trial=False,
            )
            bar.update(n_done() - before)
        bar.close()
        if not options.worker and study_storage.heartbeat_enabled(storage):
            study_storage.settle(study)  # the report waits for the workers' running trials
        seeds = _repeat_seeds(ctx, study) if options.seeds and not options.worker else ()
        report, plots = write_report(root, plots=True)
    rows = _trial_rows(study)
    best = _best_trial(study)
    best_row = next((r for r in rows if best is not None and r.number == best.number), None)
    return TuneResult(
        study=root,
        trials=tuple(rows),
        best=best_row,
        seeds=tuple(seeds),
        report=report,
        plots=tuple(plots),
        options=options,
        base=base,
        space=space,
    )


def _with(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    from whisper_sv.config import from_mapping, to_dict

    return from_mapping(TrainConfig, {**to_dict(cfg), **changes})


# --------------------------------------------------------------------------- seeds


def _seed_run_done(run: Path, steps: int) -> bool:
    rows = _wer_rows(run)
    return bool(rows) and rows[-1].step >= steps and not (run / "checkpoints").is_dir()


def _repeat_seeds(ctx: _Study, study: optuna.Study) -> list[SeedStats]:
    """Train the best (or every complete) trial's settings once per seed in ``--seeds``."""
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        log.warning("no complete trial: nothing to repeat over seeds")
        return []
    if ctx.options.repeat == "best":
        chosen = [_best_trial(study)]
    else:  # one per distinct configuration (a retried trial has the same params)
        seen: dict[str, Any] = {}
        for t in sorted(complete, key=lambda t: t.number):
            seen.setdefault(json.dumps(t.params, sort_keys=True, default=str), t)
        chosen = list(seen.values())
    jobs = [(t, s) for t in chosen for s in ctx.options.seeds]
    results: dict[int, list[tuple[int, float, float, float]]] = {t.number: [] for t in chosen}
    for t, seed in tqdm(jobs, desc="seed runs", disable=len(jobs) < 2):
        params = dict(t.params)
        if seed == ctx.base.seed and not t.user_attrs.get("stopped"):
            # The trial itself was this seed's run (a resumed run equals a straight one).
            cer = t.user_attrs.get("cer")
            seconds = t.user_attrs.get("seconds", math.nan)
            results[t.number].append((seed, float(t.value), cer or math.nan, seconds))
            continue
        run = ctx.root / "seeds" / f"t{t.number:04d}-s{seed}"
        cfg, steps = trial_config(
            _with(ctx.base, seed=seed), params, ctx.options, ctx.n_train, ctx.cache_dir
        )
        if not _seed_run_done(run, steps):
            _write_train_yaml(cfg, run.with_suffix(".yaml"))
            log.info("trial %d settings, seed %d", t.number, seed)
            out = _run_training(
                ctx.features,
                run,
                run.with_suffix(".yaml"),
                ctx.model,
                run.with_suffix(".log"),
                on_eval=None,
                time_budget_s=ctx.options.time_budget_s,
                poll_s=ctx.options.poll_s,
            )
            if out.returncode not in (0, None) or out.best is None:
                log.warning("seed run %s failed: %s", run.name, _log_tail(run.with_suffix(".log")))
                continue
            shutil.rmtree(run / "checkpoints", ignore_errors=True)
            _write_json(run.with_suffix(".json"), {"seconds": round(out.seconds, 1)})
        rows = _wer_rows(run)
        best = min(rows, key=lambda r: (r.wer, r.step))
        seconds = _read_json(run.with_suffix(".json")).get("seconds", math.nan)
        results[t.number].append((seed, float(best.wer), best.cer or math.nan, seconds))
        if not ctx.options.keep_models:
            shutil.rmtree(run / "best", ignore_errors=True)
    stats = [
        SeedStats(
            trial=t.number,
            params=dict(t.params),
            seeds=tuple(r[0] for r in results[t.number]),
            wers=tuple(r[1] for r in results[t.number]),
            cers=tuple(r[2] for r in results[t.number]),
            seconds=tuple(r[3] for r in results[t.number]),
        )
        for t in chosen
        if results[t.number]
    ]
    _write_json(
        ctx.root / "seeds.json",
        [
            {
                "trial": s.trial,
                "params": s.params,
                "seeds": list(s.seeds),
                "wers": list(s.wers),
                "cers": list(s.cers),
                "seconds": list(s.seconds),
            }
            for s in stats
        ],
    )
    return stats


def _write_json(path: Path, data: Any) -> None:
    from whisper_sv.registry import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1, default=str))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def read_seed_stats(root: Path) -> list[SeedStats]:
    data = _read_json(root / "seeds.json") or []
    return [
        SeedStats(
            trial=int(d["trial"]),
            params=dict(d["params"]),
            seeds=tuple(d["seeds"]),
            wers=tuple(d["wers"]),
            cers=tuple(d.get("cers", ())),
            seconds=tuple(d.get("seconds", ())),
        )
        for d in data
    ]


# --------------------------------------------------------------------------- report


def _trial_rows(study: optuna.Study) -> list[TrialRow]:
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        notes = []
        if "retry_of" in t.user_attrs:
            notes.append(f"retry of #{t.user_attrs['retry_of']}")
        if t.user_attrs.get("stopped"):
            notes.append(str(t.user_attrs["stopped"]))
        if t.user_attrs.get("interrupted"):
            notes.append("interrupted")
        if t.user_attrs.get("error"):
            notes.append(str(t.user_attrs["error"])[:160])
        seconds = t.user_attrs.get("seconds")
        if seconds is None and t.datetime_start and t.datetime_complete:
            seconds = (t.datetime_complete - t.datetime_start).total_seconds()
        rows.append(
            TrialRow(
                number=t.number,
                params=dict(t.params),
                wer=t.value if t.value is not None else _last_value(t),
                cer=t.user_attrs.get("cer"),
                state=t.state.name,
                seconds=seconds,
                steps=t.user_attrs.get("steps"),
                note="; ".join(notes),
            )
        )
    return rows


def _last_value(t: optuna.trial.FrozenTrial) -> float | None:
    """A pruned trial's best reported WER (shown, never used as the objective)."""
    values = list(t.intermediate_values.values())
    return min(values) if values else None


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def trials_markdown(rows: Sequence[TrialRow], names: Sequence[str]) -> str:
    """The trials table: number, every searched option, WER, CER, state, steps, seconds."""
    head = ["#", *names, "WER", "CER", "state", "steps", "seconds", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    for r in rows:
        cells = [str(r.number)]
        cells += [_show(r.params[n]) if n in r.params else "-" for n in names]
        cells += [
            _fmt(r.wer),
            _fmt(r.cer),
            r.state,
            str(r.steps) if r.steps is not None else "-",
            _fmt(r.seconds, 0),
            r.note.replace("|", "/") or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seeds_markdown(stats: Sequence[SeedStats], names: Sequence[str]) -> str:
    head = ["trial", *names, "seeds", "WER mean", "WER std", "WER min", "WER max", "CER mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    for s in stats:
        cells = [str(s.trial)] + [_show(s.params.get(n, "-")) for n in names]
        cells += [",".join(str(x) for x in s.seeds), _fmt(s.mean), _fmt(s.std)]
        cells += [_fmt(s.min), _fmt(s.max), _fmt(s.cer_mean)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(study_dir: str | os.PathLike, *, plots: bool = False) -> tuple[Path, list[Path]]:
    """``STUDY/report.md`` (and, with ``plots``, the PNGs) from the study's database."""
    import optuna

    root = Path(study_dir)
    settings = yaml.safe_load((root / STUDY_FILE).read_text("utf-8"))
    study = optuna.load_study(study_name=STUDY_NAME, storage=_storage(root))
    rows = _trial_rows(study)
    names = list(settings["space"])
    best = _best_trial(study)
    tune_opts, train = settings["tune"], settings["train"]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    if tune_opts.get("steps"):
        budget = f"{tune_opts['steps']} steps per trial"
    elif tune_opts.get("equal_epochs"):
        budget = (
            f"{tune_opts['equal_epochs']:g} epochs per trial (equal samples: steps = "
            f"epochs x train clips / batch)"
        )
    else:
        budget = f"base config: max_steps {train['max_steps']}, epochs {train['epochs']}"
    if tune_opts.get("time_budget_s"):
        budget += f", at most {tune_opts['time_budget_s']:g} s each"
    lines = [
        f"# Study {root.name}",
        "",
        f"- store: `{settings['features']}`",
        f"- model: `{settings['model'] or 'bundled:base'}`",
        f"- sampler: {tune_opts['sampler']} (seed {tune_opts['seed']}); pruner: "
        + (
            f"median (after {tune_opts['prune_startup_trials']} finished trials, from "
            f"evaluation {tune_opts['prune_after_evals']})"
            if tune_opts["prune"]
            else "none"
        ),
        f"- budget: {budget}; {tune_opts['evals_per_trial'] or 'base eval_steps'} "
        "evaluations per trial",
        "- trials: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())),
        "- objective: best validation WER of the trial (percent, normalised text)",
        "",
        "## Search space",
        "",
        "| option | type | values |",
        "|---|---|---|",
    ]
    from whisper_sv.config import from_mapping

    space = SearchSpace.parse(settings["space"], from_mapping(TrainConfig, settings["train"]))
    lines += [f"| {p.name} | {p.type} | {p.describe()} |" for p in space.params]
    fixed = {k: v for k, v in train.items() if k not in names}
    lines += [
        "",
        "Other training options (all trials): "
        + ", ".join(
            f"{k}={_show(v)}"
            for k, v in fixed.items()
            if k
            in (
                "lr",
                "batch_size",
                "grad_accum",
                "warmup_steps",
                "lr_schedule",
                "freeze_encoder",
                "cache_encoder",
                "lora_rank",
                "eval_limit",
                "seed",
            )
        ),
        "",
        "## Trials",
        "",
        trials_markdown(rows, names).rstrip(),
        "",
        "## Best",
        "",
    ]
    if best is not None:
        sets = " ".join(f"--set {k}={_show(v)}" for k, v in best.params.items())
        model = f" --model {settings['model']}" if settings["model"] else ""
        lines += [
            f"Trial {best.number}: validation WER **{best.value:.2f} %** with "
            + ", ".join(f"{k} = {_show(v)}" for k, v in best.params.items())
            + f" (run folder `trials/{best.number:04d}`, its options in "
            f"`trials/{best.number:04d}.yaml`).",
            "",
            "Train it on its own:",
            "",
            "```",
            f"whisper-sv train --features {settings['features']} --out RUN{model} "
            f"--config {root / 'trials' / f'{best.number:04d}.yaml'}",
            "```",
            f"(or the base options with {sets}).",
            "",
        ]
    else:
        lines += ["No trial has completed yet.", ""]
    stats = read_seed_stats(root)
    if stats:
        lines += [
            "## Seeds",
            "",
            "Each configuration trained once per seed (data order, dropout, LoRA init); the "
            "spread is what a single run's WER can move by chance.",
            "",
            seeds_markdown(stats, names).rstrip(),
            "",
        ]
    written: list[Path] = []
    if plots:
        written = _plots(study, root, stats, names)
    pngs = sorted(root.glob("*.png"))
    if pngs:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in pngs]
        lines.append("")
    notes = _plot_notes(root)
    if notes:
        lines += [f"- {n}" for n in notes] + [""]
    path = root / REPORT
    from whisper_sv.registry import write_text_atomic

    write_text_atomic(path, "\n".join(lines))
    return path, written


def _plot_notes(root: Path) -> list[str]:
    return list(_read_json(root / ".plots.json") or [])


def _labelled(ax: Any) -> Any:
    ax.set_xlabel("evaluation (1 = first)")
    ax.set_ylabel("validation WER %")
    return ax


def _plots(
    study: optuna.Study, root: Path, stats: Sequence[SeedStats], names: Sequence[str]
) -> list[Path]:
    """history, slice, curves, importance, seeds (PNG); notes for the plots that cannot be."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    # Listed numeric values are categorical to Optuna: matplotlib says so at INFO, per plot.
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    written, notes = [], []

    def save(name: str, make: Callable[[], Any]) -> None:
        path = root / f"{name}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
                ax = make()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 4.5)
            fig.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig)
            written.append(path)
        except Exception as e:  # noqa: BLE001 - a plot must never fail a finished study
            path.unlink(missing_ok=True)
            notes.append(f"{name}.png not drawn: {e}")
            plt.close("all")

    if complete:
        save("history", lambda: ovm.plot_optimization_history(study, target_name="WER"))
        save("slice", lambda: ovm.plot_slice(study, target_name="WER"))
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        # WER at each evaluation of every trial, pruned ones included: what the pruner saw.
        save("curves", lambda: _labelled(ovm.plot_intermediate_values(study)))
    else:
        notes.append("no complete trial: no history or slice plot")
    varied = [n for n in names if len({json.dumps(t.params.get(n)) for t in complete}) > 1]
    if len(complete) >= 2 and varied:
        save("importance", lambda: ovm.plot_param_importances(study, target_name="WER"))
    else:
        (root / "importance.png").unlink(missing_ok=True)
        notes.append(
            "parameter importance needs at least 2 complete trials that differ in a parameter "
            f"(have {len(complete)})"
        )
    if stats:

        def seeds_plot() -> Any:
            fig, ax = plt.subplots()
            labels = [
                ", ".join(f"{k}={_show(v)}" for k, v in s.params.items()) or str(s.trial)
                for s in stats
            ]
            xs = range(len(stats))
            for x, s in zip(xs, stats, strict=True):
                ax.scatter([x] * len(s.wers), s.wers, color="grey", s=12, zorder=2)
            ax.errorbar(
                xs, [s.mean for s in stats], yerr=[s.std for s in stats], fmt="o", capsize=5
            )
            ax.set_xticks(list(xs), labels, rotation=15, ha="right", fontsize=8)
            ax.set_ylabel("validation WER % (mean ± std, dots: seeds)")
            ax.grid(alpha=0.3)
            return ax

        save("seeds", seeds_plot)
    _write_json(root / ".plots.json", notes)
    return written
