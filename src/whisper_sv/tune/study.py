"""Hyper-parameter studies: Optuna samplers over :func:`whisper_sv.train.run.train` runs.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from whisper_sv.core.config import need
from whisper_sv.core.run_folder import MetricsRow
from whisper_sv.train.config import TrainConfig, planned_steps
from whisper_sv.tune.report import (
    SeedStats,
    TrialRow,
    best_trial,
    read_seed_stats,
    seeds_markdown,
    trial_rows,
    trials_markdown,
    write_report,
)
from whisper_sv.tune.runner import (
    DB_FILE,
    MAX_RETRIES,
    STUDY_FILE,
    STUDY_NAME,
    Outcome,
    log_tail,
    read_json,
    recover,
    run_training,
    study_lock,
    wer_rows,
    write_json,
)
from whisper_sv.tune.space import ParamSpec, SearchSpace, load_space, show

if TYPE_CHECKING:
    import optuna

    from whisper_sv.data.store import FeatureStore

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
    "read_seed_stats",
    "seeds_markdown",
    "trial_config",
    "trials_markdown",
    "tune",
    "write_report",
]

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


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class TuneOptions:
    """How a study runs (``whisper-sv tune``); the searched options are the SearchSpace."""

    sampler: Literal["grid", "random", "tpe"] = "tpe"  # search strategy; grid: every combination
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
    keep_models: bool = False  # keep best/ of every trial, not only the study's best
    max_failures: int = 3  # stop a study after this many failed trials in one call
    poll_s: float = 1.0  # how often a running trial's metrics.csv is read, seconds
    # where the trials live: sqlite:///F.db, postgresql://..., journal:FILE; "": STUDY/study.db
    storage: str = ""
    worker: bool = False  # join the existing study in `storage` (one of N machines/processes)
    heartbeat_s: int = 60  # a shared storage's trial heartbeat; 3 missed: the trial is retried

    def __post_init__(self) -> None:
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


def trial_config(
    base: TrainConfig,
    params: Mapping[str, Any],
    options: TuneOptions,
    train_items: int | FeatureStore,
    cache_dir: Path,
) -> tuple[TrainConfig, int]:
    """(the TrainConfig of a trial, its planned steps); ValueError when it cannot run.

    ``train_items`` is the store the trial trains on, or the number of items an epoch walks
    (clips; packed windows when ``pack_clips > 1``). With a store the count is train's own:
    :func:`whisper_sv.train.data_plan.train_units` for the trial's settings.
    """
    from whisper_sv.core.config import from_mapping, to_dict

    data = {**to_dict(base), **params}
    if options.steps:
        data.update(max_steps=options.steps, epochs=0.0)
    elif options.equal_epochs:
        data.update(max_steps=0, epochs=float(options.equal_epochs))
    cfg = from_mapping(TrainConfig, data)
    steps = planned_steps(cfg, _units(train_items, cfg))
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


def _units(train_items: int | FeatureStore, cfg: TrainConfig) -> int:
    if isinstance(train_items, int):
        return train_items
    from whisper_sv.train.data_plan import train_units

    return train_units(train_items, cfg)


# --------------------------------------------------------------------------- results
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
    store: FeatureStore  # what every trial trains on (its step plan counts train's way)
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

    def train_run(self, run: Path, on_eval: Callable[[int, MetricsRow], bool] | None) -> Outcome:
        """Train ``run`` with its options file ``RUN.yaml`` in a child process (log:
        ``RUN.log``), watched until it ends, is pruned or runs out of time."""
        return run_training(
            self.features,
            run,
            run.with_suffix(".yaml"),
            self.model,
            run.with_suffix(".log"),
            on_eval=on_eval,
            time_budget_s=self.options.time_budget_s,
            poll_s=self.options.poll_s,
        )

    def objective(self, trial: optuna.Trial) -> float:
        params = self.space.suggest(trial)
        run = self._trial_folder(trial)
        try:
            cfg, steps = trial_config(self.base, params, self.options, self.store, self.cache_dir)
        except ValueError as e:
            trial.set_user_attr("error", str(e))
            self.failures += 1
            raise _TrialFailed(str(e)) from e
        trial.set_user_attr("planned_steps", steps)
        _write_train_yaml(cfg, run.with_suffix(".yaml"))
        log.info(
            "trial %d: %s (%d steps)",
            trial.number,
            ", ".join(f"{k}={show(v)}" for k, v in params.items()),
            steps,
        )

        def on_eval(k: int, row: MetricsRow) -> bool:
            trial.report(float(row.wer), k)
            return self.options.prune and trial.should_prune()

        try:
            out = self.train_run(run, on_eval)
        except BaseException:
            # Ctrl+C (or any crash of this process): a re-run retries the trial.
            trial.set_user_attr("interrupted", True)
            raise
        return self._score(trial, out, run)

    def _trial_folder(self, trial: optuna.Trial) -> Path:
        """The trial's run folder; a retry takes over the interrupted trial's folder."""
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
        return run

    def _score(self, trial: optuna.Trial, out: Outcome, run: Path) -> float:
        """The trial's objective from its training outcome; records what happened."""
        import optuna

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
            msg = f"{why}: {log_tail(run.with_suffix('.log'))}"
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
        best = best_trial(study)
        for t in study.get_trials(deepcopy=False):
            if t.state.is_finished() and (best is None or t.number != best.number):
                shutil.rmtree(self.run_dir(t.number) / "best", ignore_errors=True)
        write_report(self.root)


def _write_train_yaml(cfg: TrainConfig, path: Path) -> None:
    from whisper_sv.core.config import dump_options

    path.parent.mkdir(parents=True, exist_ok=True)
    dump_options(cfg, path)


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
    from whisper_sv.core.config import to_dict

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
    from whisper_sv.models.references import resolve

    mref = resolve(model)
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
    options = options or TuneOptions()
    base = base or TrainConfig()
    if options.seeds:
        base = _with(base, seed=options.seeds[0])
    ctx = _prepare(features, out, space, options, base)
    space = ctx.space
    target = options.trials or (space.grid_size() if options.sampler == "grid" else 10)
    root = ctx.root
    from whisper_sv.tune import storage as study_storage

    # Workers of one study may share its folder (a shared disk): only a lead process locks it.
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext() if options.worker else study_lock(root):
        _write_settings(root, ctx.settings)
        study, sampler, storage = _open_study(root, options, space, target, ctx.settings)
        _run_trials(ctx, study, sampler, target, progress)
        if not options.worker and study_storage.heartbeat_enabled(storage):
            study_storage.settle(study)  # the report waits for the workers' running trials
        seeds = _repeat_seeds(ctx, study) if options.seeds and not options.worker else ()
        report, plots = write_report(root, plots=True)
    rows = trial_rows(study)
    best = best_trial(study)
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


def _prepare(
    features: str | os.PathLike,
    out: str | os.PathLike,
    space: SearchSpace | str | os.PathLike,
    options: TuneOptions,
    base: TrainConfig,
) -> _Study:
    """Every check that can fail before a trial runs; the study's context."""
    from whisper_sv.data.store import open_store

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
    if space.params:
        # The base alone must be trainable too (e.g. warm-up below the steps of a trial).
        probe = {p.name: (p.values[0] if p.values else p.low) for p in space.params}
        if "warmup_steps" not in probe:
            trial_config(base, probe, options, store, root / "cache")
    return _Study(
        root=root,
        features=features,
        model=model,
        space=space,
        base=base,
        options=options,
        store=store,
        settings=_study_settings(features, model, space, base, options),
    )


def _write_settings(root: Path, settings: dict[str, Any]) -> None:
    """``study.yaml``; a re-run must match the study already in ``root``."""
    settings_path = root / STUDY_FILE
    if settings_path.is_file():
        _check_same_study(yaml.safe_load(settings_path.read_text("utf-8")), settings, root)
    elif (root / DB_FILE).exists():
        raise ValueError(f"{root} has {DB_FILE} but no {STUDY_FILE}: not a whisper-sv study")
    settings_path.write_text(yaml.safe_dump(settings, sort_keys=False), "utf-8")


def _open_study(
    root: Path, options: TuneOptions, space: SearchSpace, target: int, settings: dict[str, Any]
) -> tuple[optuna.Study, Any, Any]:
    """(the study, its sampler, its storage), after recovering the trials a killed study left
    running (on a storage with heartbeats the heartbeat does that: RUNNING trials there may
    be other workers' live ones)."""
    import optuna

    from whisper_sv.tune import storage as study_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = study_storage.open_storage(
        root,
        options.storage or None,
        heartbeat_s=options.heartbeat_s,
        max_retries=MAX_RETRIES,
        shared=options.worker,
    )
    probe_study = study_storage.create_or_join(storage, STUDY_NAME, settings, options.worker)
    if not (options.worker or study_storage.heartbeat_enabled(storage)):
        recover(probe_study, storage)
    n_existing = len(probe_study.get_trials(deepcopy=False))
    # Workers starting together must not draw the same values: their sampler seeds differ.
    n_existing += study_storage.seed_salt(options.worker)
    sampler = _sampler(options, space, target, n_existing)
    study = optuna.load_study(
        study_name=STUDY_NAME, storage=storage, sampler=sampler, pruner=_pruner(options)
    )
    return study, sampler, storage


def _run_trials(ctx: _Study, study: optuna.Study, sampler: Any, target: int, progress: bool):
    """Trials until ``target`` have finished, the grid is exhausted or too many failed."""
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    options = ctx.options
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


def _with(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    from whisper_sv.core.config import from_mapping, to_dict

    return from_mapping(TrainConfig, {**to_dict(cfg), **changes})


# --------------------------------------------------------------------------- seeds


def _seed_run_done(run: Path, steps: int) -> bool:
    rows = wer_rows(run)
    return bool(rows) and rows[-1].step >= steps and not (run / "checkpoints").is_dir()


def _seed_result(
    ctx: _Study, t: optuna.trial.FrozenTrial, seed: int
) -> tuple[int, float, float, float] | None:
    """(seed, WER, CER, seconds) of trial ``t``'s settings trained with ``seed`` (None: the
    run failed); a finished seed run is read back, not trained again."""
    if seed == ctx.base.seed and not t.user_attrs.get("stopped"):
        # The trial itself was this seed's run (a resumed run equals a straight one).
        cer = t.user_attrs.get("cer")
        seconds = t.user_attrs.get("seconds", math.nan)
        return (seed, float(t.value), cer or math.nan, seconds)
    run = ctx.root / "seeds" / f"t{t.number:04d}-s{seed}"
    cfg, steps = trial_config(
        _with(ctx.base, seed=seed), dict(t.params), ctx.options, ctx.store, ctx.cache_dir
    )
    if not _seed_run_done(run, steps):
        _write_train_yaml(cfg, run.with_suffix(".yaml"))
        log.info("trial %d settings, seed %d", t.number, seed)
        out = ctx.train_run(run, None)
        if out.returncode not in (0, None) or out.best is None:
            log.warning("seed run %s failed: %s", run.name, log_tail(run.with_suffix(".log")))
            return None
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
        write_json(run.with_suffix(".json"), {"seconds": round(out.seconds, 1)})
    rows = wer_rows(run)
    best = min(rows, key=lambda r: (r.wer, r.step))
    seconds = read_json(run.with_suffix(".json")).get("seconds", math.nan)
    result = (seed, float(best.wer), best.cer or math.nan, seconds)
    if not ctx.options.keep_models:
        shutil.rmtree(run / "best", ignore_errors=True)
    return result


def _repeat_seeds(ctx: _Study, study: optuna.Study) -> list[SeedStats]:
    """Train the best (or every complete) trial's settings once per seed in ``--seeds``."""
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        log.warning("no complete trial: nothing to repeat over seeds")
        return []
    if ctx.options.repeat == "best":
        chosen = [best_trial(study)]
    else:  # one per distinct configuration (a retried trial has the same params)
        seen: dict[str, Any] = {}
        for t in sorted(complete, key=lambda t: t.number):
            seen.setdefault(json.dumps(t.params, sort_keys=True, default=str), t)
        chosen = list(seen.values())
    jobs = [(t, s) for t in chosen for s in ctx.options.seeds]
    results: dict[int, list[tuple[int, float, float, float]]] = {t.number: [] for t in chosen}
    for t, seed in tqdm(jobs, desc="seed runs", disable=len(jobs) < 2):
        result = _seed_result(ctx, t, seed)
        if result is not None:
            results[t.number].append(result)
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
    write_json(
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
