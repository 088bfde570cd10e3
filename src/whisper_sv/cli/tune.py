"""The commands over many runs: ``tune`` (hyper-parameter search) and ``experiment``."""

from __future__ import annotations

import argparse
from pathlib import Path

from whisper_sv.cli.options import (
    add_config_flags,
    add_model_flag,
    add_progress_flag,
    add_set_flag,
    option_flag,
    options_from,
)

# --------------------------------------------------------------------------- tune


def add_tune_command(sub: argparse._SubParsersAction) -> None:
    """The ``tune`` command: every TuneOptions field is a flag."""
    from whisper_sv.tune.study import TuneOptions as T

    p = sub.add_parser(
        "tune",
        help="hyper-parameter search (grid / random / TPE) over training runs",
        description="An Optuna study over `whisper-sv train`: each trial is a run folder in "
        "STUDY/trials/NNNN scored by its best validation WER; the median pruner stops trials "
        "that fall behind. The study lives in STUDY/study.db: re-running the same command "
        "continues it. Writes STUDY/report.md and plots. Base training options (TrainConfig) "
        "come from --config and --set.",
    )
    p.add_argument("--features", required=True, metavar="STORE", help="feature store folder")
    p.add_argument(
        "--space", required=True, metavar="YAML", help="search space (see examples/space.yaml)"
    )
    p.add_argument("--out", required=True, metavar="STUDY", help="study folder")
    option_flag(p, T, "sampler")
    option_flag(p, T, "trials", metavar="N")
    option_flag(p, T, "model", metavar="REF")
    add_config_flags(p)
    budget = p.add_mutually_exclusive_group()
    option_flag(budget, T, "steps", metavar="N")
    option_flag(budget, T, "equal_epochs", metavar="E")
    option_flag(p, T, "time_budget_s", "--time-budget", metavar="S")
    option_flag(p, T, "evals_per_trial", "--evals", metavar="N")
    for name in ("prune", "prune_startup_trials", "prune_after_evals", "tpe_startup_trials"):
        option_flag(p, T, name)
    option_flag(p, T, "seeds", metavar="S,S,...")
    option_flag(p, T, "repeat")
    option_flag(p, T, "seed")
    option_flag(p, T, "keep_models")
    option_flag(p, T, "max_failures", metavar="N")
    option_flag(p, T, "poll_s", "--poll", metavar="S")
    option_flag(p, T, "storage", metavar="URL")
    option_flag(p, T, "worker")
    option_flag(p, T, "heartbeat_s", "--heartbeat", metavar="S")
    add_progress_flag(p)
    p.set_defaults(func=_cmd_tune)


def _cmd_tune(args: argparse.Namespace) -> int:
    from whisper_sv.core.config import load_options, parse_overrides
    from whisper_sv.train.run import TrainConfig
    from whisper_sv.tune.study import TuneOptions, seeds_markdown, trials_markdown, tune

    options = options_from(TuneOptions, args)
    base = load_options(TrainConfig, args.config, parse_overrides(args.overrides))
    result = tune(args.features, args.out, args.space, options, base=base, progress=args.progress)
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


# --------------------------------------------------------------------------- experiment


def add_experiment_command(sub: argparse._SubParsersAction) -> None:
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
    add_set_flag(p)
    add_model_flag(p)
    add_progress_flag(p)
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
        progress=args.progress,
    )
    print(result.question)
    print(result.table(), end="")
    print(f"report: {result.report}")
    return 0
