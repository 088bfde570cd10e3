"""The commands that build and train models: ``features``, ``train``, ``export``, ``demo``,
``pipeline`` and ``average`` (each an ``add_<name>_command`` parser and a ``_cmd_<name>``
action)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from whisper_sv.cli.options import (
    IndexOfCount,
    UserError,
    add_config_flags,
    add_model_flag,
    add_progress_flag,
    add_set_flag,
    field_comments,
    option_flag,
    options_from,
)

# --------------------------------------------------------------------------- features


def add_features_command(sub: argparse._SubParsersAction) -> None:
    """The ``features`` command: every BuildOptions field is a flag."""
    from whisper_sv.data.feature_work import BuildOptions as B

    p = sub.add_parser(
        "features",
        help="feature pipeline: source -> feature store",
        description="Decode, check, augment, log-mel and tokenize a source into a feature "
        "store (Parquet shards + manifest.json + rejects.tsv). Re-runs skip finished shards.",
    )
    p.add_argument(
        "--source",
        default="synthetic",
        help="synthetic | commonvoice:DIR | manifest:TSV | hf:NAME[:CONFIG]",
    )
    p.add_argument(
        "--source-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="source option, e.g. train=100 (repeatable)",
    )
    p.add_argument(
        "--out",
        help="store folder to write (created; an existing store is resumed); not given: "
        "only with --report",
    )
    p.add_argument(
        "--report",
        metavar="STORE",
        help="print STORE's per-split summary and write STORE/report.png (not given: build)",
    )
    option_flag(p, B, "model", metavar="REF")
    option_flag(p, B, "splits", "--split", metavar="SPLIT[,SPLIT]")
    option_flag(p, B, "limit", metavar="N")
    option_flag(p, B, "workers", metavar="N")
    option_flag(p, B, "shard", type=IndexOfCount(), metavar="I/N")
    option_flag(p, B, "shard_size", metavar="N")
    for name in ("language", "task", "normalize_text", "sentence_case"):
        option_flag(p, B, name)
    option_flag(p, B, "max_duration_s", "--max-duration", metavar="S")
    option_flag(p, B, "max_label_tokens", metavar="N")
    option_flag(p, B, "noise_snr_db", "--noise-snr", metavar="DB")
    option_flag(p, B, "speed", metavar="F,F,...")
    option_flag(p, B, "augment_splits", metavar="SPLIT[,SPLIT]")
    option_flag(p, B, "seed")
    option_flag(p, B, "silence_dbfs", metavar="DB")
    option_flag(p, B, "chunk_size", metavar="N")
    option_flag(p, B, "progress")
    option_flag(p, B, "engine", choices=("local", "ray"))
    option_flag(p, B, "ray_address", metavar="ADDR")
    p.set_defaults(func=_cmd_features)


def _cmd_features(args: argparse.Namespace) -> int:
    from whisper_sv.data import features
    from whisper_sv.data.feature_work import BuildOptions

    if args.report:
        table, png = features.report(args.report)
        print(table)
        print(f"plots: {png}")
        return 0
    if not args.out:
        raise UserError("give --out STORE (or --report STORE)")
    from whisper_sv.core.config import parse_overrides
    from whisper_sv.data.sources import open_source

    options = options_from(BuildOptions, args)
    source = open_source(args.source, **parse_overrides(args.source_opt))
    summary = features.build_store(source, args.out, options)
    print(summary.table())
    print(
        f"{summary.processed} inputs in {summary.seconds:.1f} s ({summary.clips_per_s:.0f} clips/s); "
        f"shards written {summary.shards_written}, skipped (done before) {summary.shards_skipped}; "
        f"store {summary.path} (config {summary.config.hash()})"
    )
    return 0


# --------------------------------------------------------------------------- train


def add_train_command(sub: argparse._SubParsersAction) -> None:
    """The ``train`` command: TrainConfig comes from --config and --set."""
    p = sub.add_parser(
        "train",
        help="training pipeline: feature store -> run folder",
        description="Fine-tune Whisper on a feature store. Re-running on an existing run "
        "folder continues it from its last checkpoint. Data-parallel: prefix with "
        "`torchrun --nproc_per_node N -m whisper_sv`. Training options (TrainConfig) come "
        "from --config and --set.",
    )
    p.add_argument("--features", required=True, metavar="STORE", help="feature store folder")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    add_model_flag(p)
    add_config_flags(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (an error if there is none)",
    )
    add_progress_flag(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    import os

    from whisper_sv.core.config import load_options, parse_overrides
    from whisper_sv.core.run_folder import metrics_markdown
    from whisper_sv.train.run import TrainConfig, train

    cfg = load_options(TrainConfig, args.config, parse_overrides(args.overrides))
    result = train(
        args.features,
        args.out,
        model=args.model,
        config=cfg,
        resume=args.resume,
        progress=args.progress,
    )
    if os.environ.get("RANK", "0") == "0":  # one report under torchrun
        print(metrics_markdown(result.rows), end="")
        best = (
            f"best WER {result.best_wer:.2f} at step {result.best_step}"
            if result.best_wer is not None
            else "no validation split: best/ is the last step"
        )
        stop = " (early stop)" if result.stopped_early else ""
        print(
            f"{result.step}/{result.max_steps} steps{stop}, {result.samples_per_s:.2f} samples/s; "
            f"{best}; run folder: {result.run}"
        )
    return 0


# --------------------------------------------------------------------------- export


def add_export_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a run or model to CTranslate2",
        description="Write the CTranslate2 folder faster-whisper loads offline (model.bin, "
        "tokenizer.json, preprocessor_config.json) for a run's best checkpoint or any model.",
    )
    p.add_argument("run", metavar="RUN", help="run folder (its best/) or any model reference")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (not given: RUN/ct2)")
    p.add_argument(
        "--quantization",
        default="float16",
        help="weight type (quantise further at load time, e.g. compute_type=int8)",
    )
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from whisper_sv.train.run import export_run

    out = export_run(args.run, args.out, quantization=args.quantization)
    print(out)
    return 0


# --------------------------------------------------------------------------- demo


def add_demo_command(sub: argparse._SubParsersAction) -> None:
    """The ``demo`` command: every DemoOptions field is a flag."""
    import dataclasses

    from whisper_sv.workflows.demo import DemoOptions

    p = sub.add_parser(
        "demo",
        help="the whole job on synthetic Swedish speech",
        description="synthetic Swedish speech -> feature store -> baseline WER on unseen voices "
        "-> short fine-tune -> WER after -> CTranslate2 export -> one transcript.",
    )
    special = {
        "precision": {"choices": ("auto", "fp32", "bf16", "fp16")},
        "select": {"choices": ("validation", "validation+guards", "guards")},
    }
    for field in dataclasses.fields(DemoOptions):
        if field.name != "train_set":
            option_flag(p, DemoOptions, field.name, **special.get(field.name, {}))
    add_set_flag(p, "train_set", help=field_comments(DemoOptions)["train_set"])
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from whisper_sv.workflows.demo import DemoOptions, run_demo

    run_demo(options_from(DemoOptions, args))
    return 0


# --------------------------------------------------------------------------- pipeline


def add_pipeline_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="features -> train -> evaluate -> export, skipping what is up to date",
        description="Idempotent: schedule it (cron) to retrain when the data grows.",
    )
    from whisper_sv.workflows.pipeline import PipelineConfig as P

    p.add_argument("--config", type=Path, required=True, metavar="YAML", help="pipeline.yaml")
    add_set_flag(p)
    option_flag(p, P, "push_to_hub", metavar="REPO")
    option_flag(p, P, "force")
    p.set_defaults(func=_cmd_pipeline)


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from whisper_sv.core.config import load_options, parse_overrides
    from whisper_sv.workflows.pipeline import PipelineConfig, run_pipeline

    overrides = parse_overrides(args.overrides)
    if args.push_to_hub:
        overrides["push_to_hub"] = args.push_to_hub
    if args.force:
        overrides["force"] = True
    config = load_options(PipelineConfig, args.config, overrides)
    reports = run_pipeline(config)
    for r in reports:
        state = "refused" if r.refused else "ran" if r.ran else "up to date"
        print(f"{r.stage:<9} {state:<11} {r.seconds:7.1f} s  {r.detail}")
    if any(r.refused for r in reports):
        print("whisper-sv: not promoted (see the promote line); --force overrides", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- average


def add_average_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "average",
        help="average a run's top-k checkpoints into a new model",
        description="Average the weights of the K checkpoints of RUN with the lowest "
        "validation WER (metrics.csv) into a transformers model folder, usable as --model. "
        "Train with --set keep_checkpoints=0 so the checkpoints are kept.",
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--top-k", type=int, default=3, metavar="K", help="checkpoints to average")
    p.add_argument("--out", required=True, metavar="DIR", help="model folder to write")
    p.add_argument(
        "--features",
        default=None,
        metavar="STORE",
        help="evaluate the average on STORE's validation split (the run's evaluation settings; "
        "not given: no evaluation)",
    )
    p.set_defaults(func=_cmd_average)


def _cmd_average(args: argparse.Namespace) -> int:
    from whisper_sv.train.averaging import average_checkpoints

    result = average_checkpoints(args.run, args.out, top_k=args.top_k, features=args.features)
    wers = ", ".join(f"{s}: {w:.2f}" for s, w in zip(result.steps, result.wers, strict=True))
    print(f"averaged {len(result.steps)} checkpoints (step: WER {wers}) into {result.out}")
    if result.evaluation is not None:
        ev = result.evaluation
        best = f"{result.best_wer:.2f} (step {result.best_step})" if result.best_wer else "-"
        print(
            f"average: WER {ev.wer:.2f}, CER {ev.cer:.2f} on {ev.n} validation clips; "
            f"best single checkpoint: WER {best}"
        )
    return 0
