"""The study report: ``STUDY/report.md`` (trials, best settings, seed spread) and plots."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from whisper_sv.core.fsutil import atomic_write_text
from whisper_sv.core.run_metrics import format_float
from whisper_sv.models.references import DEFAULT_MODEL
from whisper_sv.train.config import TrainConfig
from whisper_sv.tune.runner import (
    REPORT,
    STUDY_FILE,
    STUDY_NAME,
    open_storage,
    read_json,
    write_json,
)
from whisper_sv.tune.space import SearchSpace, show

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

__all__ = [
    "SeedStats",
    "TrialRow",
    "best_trial",
    "read_seed_stats",
    "seeds_markdown",
    "trial_rows",
    "trials_markdown",
    "write_report",
]


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


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return min(done, key=lambda t: (t.value, t.number)) if done else None


def read_seed_stats(root: Path) -> list[SeedStats]:
    data = read_json(root / "seeds.json") or []
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


def trial_rows(study: optuna.Study) -> list[TrialRow]:
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


# A table cell with no value (not measured, or not searched by that trial).
NA = "-"


def trials_markdown(rows: Sequence[TrialRow], names: Sequence[str]) -> str:
    """The trials table: number, every searched option, WER, CER, state, steps, seconds."""
    head = ["#", *names, "WER", "CER", "state", "steps", "seconds", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    for r in rows:
        cells = [str(r.number)]
        cells += [show(r.params[n]) if n in r.params else NA for n in names]
        cells += [
            format_float(r.wer, missing=NA),
            format_float(r.cer, missing=NA),
            r.state,
            str(r.steps) if r.steps is not None else NA,
            format_float(r.seconds, 0, NA),
            r.note.replace("|", "/") or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seeds_markdown(stats: Sequence[SeedStats], names: Sequence[str]) -> str:
    head = ["trial", *names, "seeds", "WER mean", "WER std", "WER min", "WER max", "CER mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    for s in stats:
        cells = [str(s.trial)] + [show(s.params.get(n, NA)) for n in names]
        cells += [
            ",".join(str(x) for x in s.seeds),
            format_float(s.mean, missing=NA),
            format_float(s.std, missing=NA),
        ]
        cells += [
            format_float(s.min, missing=NA),
            format_float(s.max, missing=NA),
            format_float(s.cer_mean, missing=NA),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(study_dir: str | os.PathLike, *, plots: bool = False) -> tuple[Path, list[Path]]:
    """``STUDY/report.md`` (and, with ``plots``, the PNGs) from the study's database."""
    import optuna

    root = Path(study_dir)
    settings = yaml.safe_load((root / STUDY_FILE).read_text("utf-8"))
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(root))
    rows = trial_rows(study)
    names = list(settings["space"])
    lines = _summary_lines(root, settings, rows)
    lines += _space_lines(settings, names)
    lines += ["## Trials", "", trials_markdown(rows, names).rstrip(), "", "## Best", ""]
    lines += _best_lines(root, settings, best_trial(study))
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
    written = _plots(study, root, stats, names) if plots else []
    pngs = sorted(root.glob("*.png"))
    if pngs:
        lines += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in pngs), ""]
    notes = _plot_notes(root)
    if notes:
        lines += [f"- {n}" for n in notes] + [""]
    path = root / REPORT
    atomic_write_text(path, "\n".join(lines))
    return path, written


def _budget(tune_opts: dict[str, Any], train: dict[str, Any]) -> str:
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
    return budget


def _summary_lines(root: Path, settings: dict[str, Any], rows: Sequence[TrialRow]) -> list[str]:
    """Title and the study's settings: store, model, sampler, pruner, budget, trial counts."""
    tune_opts = settings["tune"]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    pruner = (
        f"median (after {tune_opts['prune_startup_trials']} finished trials, from "
        f"evaluation {tune_opts['prune_after_evals']})"
        if tune_opts["prune"]
        else "none"
    )
    return [
        f"# Study {root.name}",
        "",
        f"- store: `{settings['features']}`",
        f"- model: `{settings['model'] or DEFAULT_MODEL}`",
        f"- sampler: {tune_opts['sampler']} (seed {tune_opts['seed']}); pruner: {pruner}",
        f"- budget: {_budget(tune_opts, settings['train'])}; "
        f"{tune_opts['evals_per_trial'] or 'base eval_steps'} evaluations per trial",
        "- trials: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())),
        "- objective: best validation WER of the trial (percent, normalised text)",
        "",
    ]


# Fixed training options the report lists (the ones that change what a trial's WER means).
_SHOWN_OPTIONS = (
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


def _space_lines(settings: dict[str, Any], names: Sequence[str]) -> list[str]:
    """The search space table and the options every trial shares."""
    from whisper_sv.core.config import from_mapping

    train = settings["train"]
    space = SearchSpace.parse(settings["space"], from_mapping(TrainConfig, train))
    lines = ["## Search space", "", "| option | type | values |", "|---|---|---|"]
    lines += [f"| {p.name} | {p.type} | {p.describe()} |" for p in space.params]
    fixed = {k: v for k, v in train.items() if k not in names and k in _SHOWN_OPTIONS}
    shown = ", ".join(f"{k}={show(v)}" for k, v in fixed.items())
    return [*lines, "", f"Other training options (all trials): {shown}", ""]


def _best_lines(root: Path, settings: dict[str, Any], best: Any) -> list[str]:
    """The best trial and how to train it on its own."""
    if best is None:
        return ["No trial has completed yet.", ""]
    sets = " ".join(f"--set {k}={show(v)}" for k, v in best.params.items())
    model = f" --model {settings['model']}" if settings["model"] else ""
    return [
        f"Trial {best.number}: validation WER **{best.value:.2f} %** with "
        + ", ".join(f"{k} = {show(v)}" for k, v in best.params.items())
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


def _plot_notes(root: Path) -> list[str]:
    return list(read_json(root / ".plots.json") or [])


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
                ", ".join(f"{k}={show(v)}" for k, v in s.params.items()) or str(s.trial)
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
    write_json(root / ".plots.json", notes)
    return written
