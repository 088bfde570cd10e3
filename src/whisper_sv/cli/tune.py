"""The commands over many runs: ``tune`` (hyper-parameter search) and ``experiment``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from whisper_sv.cli.options import UserError, _comma_list, option_flag

if TYPE_CHECKING:
    from whisper_sv.tune.study import TuneOptions


# --------------------------------------------------------------------------- tune


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="hyper-parameter search (grid / random / TPE) over training runs",
        description="An Optuna study over `whisper-sv train`: each trial is a run folder in "
        "STUDY/trials/NNNN scored by its best validation WER; the median pruner stops trials "
        "that fall behind. The study lives in STUDY/study.db: re-running the same command "
        "continues it. Writes STUDY/report.md and plots.",
    )
    p.add_argument("--features", required=True, metavar="STORE", help="feature store folder")
    p.add_argument(
        "--space", required=True, metavar="YAML", help="search space (see examples/space.yaml)"
    )
    p.add_argument("--out", required=True, metavar="STUDY", help="study folder")
    p.add_argument(
        "--sampler", choices=("grid", "random", "tpe"), default="tpe", help="search strategy"
    )
    p.add_argument(
        "--trials",
        type=int,
        default=0,
        help="finished trials wanted in the study (0: the grid size, or 10)",
    )
    p.add_argument("--model", default=None, metavar="REF", help="model to start from")
    p.add_argument("--config", default=None, metavar="YAML", help="base training options")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one base training option (repeatable)",
    )
    _add_tune_budget(p)
    _add_tune_storage(p)
    p.set_defaults(func=_cmd_tune)


def _add_tune_budget(p: argparse.ArgumentParser) -> None:
    """The flags of what one trial may spend, and of the seeds and models it leaves."""
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps", type=int, default=0, help="optimizer steps per trial (0: base max_steps)"
    )
    budget.add_argument(
        "--equal-epochs",
        type=float,
        default=0.0,
        metavar="E",
        help="every trial sees E x the train clips (steps = E * clips / batch size)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        metavar="S",
        help="stop a trial after S seconds (0: no limit)",
    )
    p.add_argument(
        "--evals",
        type=int,
        default=4,
        metavar="N",
        help="evaluations per trial, the pruning points (0: base eval_steps)",
    )
    p.add_argument("--no-prune", action="store_true", help="run every trial to its end")
    p.add_argument(
        "--seeds",
        default="",
        metavar="S,S,...",
        help="repeat over these seeds (trials use the first) and report mean and spread",
    )
    p.add_argument(
        "--repeat",
        choices=("best", "each"),
        default="best",
        help="what --seeds repeats: the best trial's settings or every configuration",
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument(
        "--keep-models",
        action="store_true",
        help="keep best/ of every trial, not only the best trial's",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_tune_storage(p: argparse.ArgumentParser) -> None:
    """The flags of where the trials live and of workers joining the study."""
    from whisper_sv.tune.study import TuneOptions as T

    option_flag(
        p,
        T,
        "storage",
        metavar="URL",
        help="where the trials live: sqlite:///F.db, postgresql://..., journal:FILE "
        "(not given: STUDY/study.db)",
    )
    option_flag(
        p,
        T,
        "worker",
        help="join the study already in --storage and run its trials (one of N machines)",
    )
    option_flag(
        p,
        T,
        "heartbeat_s",
        "--heartbeat",
        metavar="S",
        help="seconds between a trial's heartbeats in a database --storage; "
        "a trial silent for 3 beats is retried",
    )


def _cmd_tune(args: argparse.Namespace) -> int:
    from whisper_sv.core.config import load_options, parse_overrides
    from whisper_sv.train.run import TrainConfig
    from whisper_sv.tune.study import seeds_markdown, trials_markdown, tune

    options = _tune_options(args)
    base = load_options(TrainConfig, args.config, parse_overrides(args.overrides))
    result = tune(
        args.features, args.out, args.space, options, base=base, progress=not args.no_progress
    )
    names = result.space.names
    print(trials_markdown(result.trials, names), end="")
    if result.seeds:
        print(seeds_markdown(result.seeds, names), end="")
    if result.best is not None:
        params = ", ".join(f"{k}={v}" for k, v in result.best.params.items())
        print(f"best: trial {result.best.number}, WER {result.best.wer:.2f} ({params})")
    else:
        print("no trial completed")
    print(f"report: {result.report}")
    return 0


def _tune_options(args: argparse.Namespace) -> TuneOptions:
    """The TuneOptions of a parsed ``tune`` command line."""
    from whisper_sv.tune.study import TuneOptions

    try:
        seeds = tuple(int(s) for s in _comma_list([args.seeds]))
    except ValueError as err:
        raise UserError(f"--seeds takes integers like 0,1,2 ({err})") from err
    return TuneOptions(
        sampler=args.sampler,
        trials=args.trials,
        seed=args.seed,
        model=args.model,
        steps=args.steps,
        equal_epochs=args.equal_epochs,
        evals_per_trial=args.evals,
        time_budget_s=args.time_budget,
        prune=not args.no_prune,
        seeds=seeds,
        repeat=args.repeat,
        keep_models=args.keep_models,
        storage=args.storage,
        worker=args.worker,
        heartbeat_s=args.heartbeat_s,
    )


# --------------------------------------------------------------------------- experiment


def _add_experiment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="experiments: voices | noise | speaker | forgetting | general",
        description="voices: 1 vs 8 synthetic voices at equal data, tested on unseen voices. "
        "noise: noise augmentation at several SNRs, tested clean and noisy. speaker: "
        "fine-tune on some of one real speaker's words (../shared/data/sv-words), test on the "
        "held-out words. forgetting: anti-forgetting methods at equal compute, scored on real "
        "held-out speech, long-form and English (--budget takes demo options, e.g. "
        "max_steps=75, and methods=[plain,mix-all]). general: the demo once per "
        "anti-forgetting recipe (recipe, lower-lr, l2sp, distill, top-layers), scored on "
        "general Swedish (cv-dev, out of domain) with error types (--budget takes demo "
        "options and methods=[...]). Re-runs reuse finished stores and runs.",
    )
    p.add_argument(
        "name",
        choices=("voices", "noise", "speaker", "forgetting", "general"),
        help="which experiment",
    )
    p.add_argument(
        "--out", default=None, metavar="DIR", help="folder (not given: experiments/NAME)"
    )
    p.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="experiment option, e.g. steps=60, train_clips=100, snrs=[20,10] (repeatable)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="training option on top of the experiment's recipe (repeatable)",
    )
    p.add_argument("--model", default=None, metavar="REF", help="model to start from")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_experiment)


def _cmd_experiment(args: argparse.Namespace) -> int:
    from whisper_sv.core.config import from_mapping, parse_overrides
    from whisper_sv.workflows.experiments import ExperimentOptions, run_experiment

    budget = parse_overrides(args.budget)
    if args.model:
        budget["model"] = args.model
    if args.name == "forgetting":
        from whisper_sv.workflows.forgetting import run_study

        methods = budget.pop("methods", None)
        extra = tuple(args.overrides)
        out = Path(args.out or "experiments/forgetting")
        run_study(out, methods, **budget, **({"train_set": extra} if extra else {}))
        print(f"report: {out / 'results.md'}")
        return 0
    if args.name == "general":
        from whisper_sv.workflows.general_study import run_general_study

        methods = budget.pop("methods", None)
        extra = tuple(args.overrides)
        out = Path(args.out or "experiments/general")
        run_general_study(out, methods, **budget, **({"train_set": extra} if extra else {}))
        print((out / "results.md").read_text(encoding="utf-8"), end="")
        print(f"report: {out / 'results.md'}")
        return 0
    options = from_mapping(ExperimentOptions, budget)
    result = run_experiment(
        args.name,
        args.out,
        options,
        train_overrides=parse_overrides(args.overrides),
        progress=not args.no_progress,
    )
    print(result.question)
    print(result.table(), end="")
    print(f"report: {result.report}")
    return 0
