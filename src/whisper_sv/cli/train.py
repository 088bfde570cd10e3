"""The commands that build and train models: ``features``, ``train``, ``export``, ``demo``,
``pipeline`` and ``average`` (each an ``_add_<name>`` parser and a ``_cmd_<name>`` action)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from whisper_sv.cli.options import UserError, _comma_list, option_flag, options_from

if TYPE_CHECKING:
    from whisper_sv.data.feature_work import BuildOptions


# --------------------------------------------------------------------------- features


def _add_features(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--out", help="store folder to write (created; an existing store is resumed)")
    p.add_argument(
        "--report",
        metavar="STORE",
        help="print STORE's per-split summary and write STORE/report.png",
    )
    p.add_argument(
        "--split",
        action="append",
        default=[],
        help="split(s) to process, repeatable or comma list (default: all)",
    )
    p.add_argument("--limit", type=int, help="first N inputs of each split")
    p.add_argument("--workers", type=int, default=1, help="worker processes (1: in this process)")
    p.add_argument(
        "--shard",
        default="0/1",
        metavar="I/N",
        help="write only shards k with k %% N == I (one store, N machines)",
    )
    p.add_argument("--shard-size", type=int, default=256, help="inputs per shard")
    p.add_argument(
        "--model",
        default="bundled:base",
        help="model whose processor defines mel bins and tokenizer",
    )
    p.add_argument(
        "--normalize-text",
        action="store_true",
        help="train on normalised text (lowercase, no punctuation)",
    )
    p.add_argument(
        "--noise-snr", type=float, metavar="DB", help="augment: add white noise at this SNR (dB)"
    )
    p.add_argument(
        "--speed",
        default="",
        metavar="F,F,...",
        help="augment: speed factors, one drawn per clip, e.g. 0.9,1.0,1.1",
    )
    p.add_argument("--augment-splits", default="train", help="splits to augment (comma list)")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation draws")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from whisper_sv.data.feature_work import BuildOptions as B

    option_flag(
        p,
        B,
        "engine",
        choices=("local", "ray"),
        help="local: worker processes on this machine; ray: shard tasks on a Ray cluster",
    )
    option_flag(
        p,
        B,
        "ray_address",
        metavar="ADDR",
        help="Ray cluster to join (auto, ray://HOST:10001; needs --engine ray); "
        "not given: start one on this machine",
    )
    p.set_defaults(func=_cmd_features)


def _cmd_features(args: argparse.Namespace) -> int:
    from whisper_sv.data import features

    if args.report:
        table, png = features.report(args.report)
        print(table)
        print(f"plots: {png}")
        return 0
    if not args.out:
        raise UserError("give --out STORE (or --report STORE)")
    from whisper_sv.core.config import parse_overrides
    from whisper_sv.data.sources import open_source

    options = _build_options(args)
    source = open_source(args.source, **parse_overrides(args.source_opt))
    summary = features.build_store(source, args.out, options)
    print(summary.table())
    print(
        f"{summary.processed} inputs in {summary.seconds:.1f} s ({summary.clips_per_s:.0f} clips/s); "
        f"shards written {summary.shards_written}, skipped (done before) {summary.shards_skipped}; "
        f"store {summary.path} (config {summary.config.hash()})"
    )
    return 0


def _build_options(args: argparse.Namespace) -> BuildOptions:
    """The BuildOptions of a parsed ``features`` command line."""
    from whisper_sv.data.feature_work import BuildOptions

    index, sep, count = args.shard.partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit()):
        raise UserError(f"--shard takes I/N (e.g. 0/4), got {args.shard!r}")
    try:
        speed = tuple(float(s) for s in _comma_list([args.speed]))
    except ValueError as err:
        raise UserError(f"--speed takes numbers like 0.9,1.1 ({err})") from err
    return BuildOptions(
        model=args.model,
        splits=_comma_list(args.split),
        limit=args.limit,
        workers=args.workers,
        shard=(int(index), int(count)),
        shard_size=args.shard_size,
        normalize_text=args.normalize_text,
        noise_snr_db=args.noise_snr,
        speed=speed,
        augment_splits=_comma_list([args.augment_splits]),
        seed=args.seed,
        progress=not args.no_progress,
        engine=args.engine,
        ray_address=args.ray_address,
    )


# --------------------------------------------------------------------------- train


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="training pipeline: feature store -> run folder",
        description="Fine-tune Whisper on a feature store. Re-running on an existing run "
        "folder continues it from its last checkpoint. Data-parallel: prefix with "
        "`torchrun --nproc_per_node N -m whisper_sv`.",
    )
    p.add_argument("--features", required=True, metavar="STORE", help="feature store folder")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    p.add_argument(
        "--model",
        default=None,
        metavar="REF",
        help="model to start from (default: bundled:base, or the run's own when continuing)",
    )
    p.add_argument("--config", default=None, metavar="YAML", help="training options file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one option (repeatable), e.g. --set lr=1e-5 --set max_steps=200",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (an error if there is none)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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
        progress=not args.no_progress,
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


def _add_export(sub: argparse._SubParsersAction) -> None:
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
        help="weight type (quantise at load time, e.g. compute_type=int8)",
    )
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from whisper_sv.train.run import export_run

    out = export_run(args.run, args.out, quantization=args.quantization)
    print(out)
    return 0


# --------------------------------------------------------------------------- demo


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from whisper_sv.workflows.demo import DemoOptions

    p = sub.add_parser(
        "demo",
        help="the whole job on synthetic Swedish speech",
        description="synthetic Swedish speech -> feature store -> baseline WER on unseen voices "
        "-> short fine-tune -> WER after -> CTranslate2 export -> one transcript.",
    )
    for name in ("out", "model", "seed", "train_clips", "validation_clips", "test_clips"):
        option_flag(p, DemoOptions, name)
    for name in ("pack_clips", "max_steps", "batch_size", "lr", "warmup_steps", "eval_steps"):
        option_flag(p, DemoOptions, name)
    option_flag(p, DemoOptions, "workers")
    option_flag(p, DemoOptions, "precision", choices=("auto", "fp32", "bf16", "fp16"))
    for name in (
        "real_data",
        "guard_clips",
        "general_tolerance",
        "long_form_s",
        "long_form_guard_s",
    ):
        option_flag(p, DemoOptions, name)
    for name in ("real_train", "real_repeat"):
        option_flag(p, DemoOptions, name)
    option_flag(p, DemoOptions, "select", choices=("validation", "validation+guards"))
    for name in ("timestamp_share", "translate_share", "prompt_share", "distill"):
        option_flag(p, DemoOptions, name)
    option_flag(p, DemoOptions, "distill_temperature")
    option_flag(p, DemoOptions, "wise_ft", "--no-wise-ft")
    option_flag(p, DemoOptions, "guard_translation", "--no-guard-translation")
    option_flag(p, DemoOptions, "train_set", "--set", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from whisper_sv.workflows.demo import DemoOptions, run_demo

    run_demo(options_from(DemoOptions, args))
    return 0


# --------------------------------------------------------------------------- pipeline


def _add_pipeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="features -> train -> evaluate -> export, skipping what is up to date",
        description="Idempotent: schedule it (cron) to retrain when the data grows.",
    )
    p.add_argument("--config", type=Path, required=True, help="pipeline.yaml")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override options")
    p.add_argument("--push-to-hub", metavar="REPO", help="publish best/ + card (online only)")
    p.add_argument(
        "--force",
        action="store_true",
        help="export and publish even a run whose best/ did not keep its real-speech guards",
    )
    p.set_defaults(func=_cmd_pipeline)


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from whisper_sv.core.config import load_options, parse_overrides
    from whisper_sv.workflows.pipeline import PipelineConfig, run_pipeline

    overrides = parse_overrides(args.set)
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


def _add_average(sub: argparse._SubParsersAction) -> None:
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
        help="evaluate the average on STORE's validation split (the run's evaluation settings)",
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
