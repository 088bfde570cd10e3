"""Command line: argument parsing only; every command calls a stage function.

Each command has an ``_add_<name>`` (its parser) and a ``_cmd_<name>`` (its action). User
errors (bad input, bad options) are printed as one line and exit with status 2; no traceback.
Every ``--help`` shows the defaults and the exit codes (:data:`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from whisper_sv.feature_work import BuildOptions
    from whisper_sv.tune import TuneOptions

log = logging.getLogger("whisper_sv")


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


EXIT_CODES = """exit status:
  0    done
  1    some inputs failed (each reported on stderr; the others were done)
  2    bad usage: an unknown option, a bad value, a model or file that is not there
  130  interrupted (Ctrl+C)
  143  terminated (SIGTERM); temporary files are removed as on a normal exit"""


class _HelpFormatter(argparse.HelpFormatter):
    """Wrapped help lines with the default appended to every option that has one; texts
    with line breaks of their own (the exit codes) are kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or not action.option_strings
            or default in (None, False, "", [], argparse.SUPPRESS)
        ):
            return text
        shown = default if not isinstance(default, (list, tuple)) else ", ".join(map(str, default))
        return f"{text} (default: {str(shown).replace('%', '%%')})"


# --------------------------------------------------------------------------- option flags


def field_comments(cls: type) -> dict[str, str]:
    """The comment of each field of dataclass ``cls``: on its line, else the lines above."""
    import dataclasses
    import inspect
    import io
    import re
    import tokenize

    source = inspect.getsource(cls)
    by_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out = {}
    for field in dataclasses.fields(cls):
        row = next(i + 1 for i, line in enumerate(lines) if re.match(rf"\s+{field.name}\s*:", line))
        above = []
        while (
            row - 1 - len(above) in by_line
            and not lines[row - 2 - len(above)].split("#")[0].strip()
        ):
            above.insert(0, by_line[row - 1 - len(above)])
        out[field.name] = by_line.get(row) or " ".join(above)
    return out


class _AddTo(argparse.Action):
    """A repeatable flag whose values are added to the default tuple."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, (*getattr(namespace, self.dest), values))


class _Replace(argparse.Action):
    """A repeatable flag whose first use replaces the default tuple."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        current = getattr(namespace, self.dest)
        kept = () if current is self.default else tuple(current)
        setattr(namespace, self.dest, (*kept, values))


def option_flag(p: argparse.ArgumentParser, cls: type, name: str, *flags: str, **kw) -> None:
    """Add the flag of dataclass field ``cls.name``: default, help (the field's comment),
    choices (a Literal type) and type come from the field; ``kw`` overrides any of them."""
    import dataclasses
    import types
    import typing

    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    args = {"dest": name, "default": field.default, "help": field_comments(cls)[name]}
    if typing.get_origin(hint) is typing.Literal:
        args["choices"] = typing.get_args(hint)
    if hint is bool:
        args["action"] = "store_false" if field.default else "store_true"
    elif hint in (int, float, str, Path):
        args["type"] = hint
    args.update(kw)
    p.add_argument(*(flags or ("--" + name.replace("_", "-"),)), **args)


def options_from(cls: type, args: argparse.Namespace, **given):
    """An instance of dataclass ``cls`` from the parsed flags of its fields."""
    import dataclasses

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in given}
    return cls(**values, **given)


def _check_device(device: str, backend: str = "ct2") -> None:
    """--device cuda on a machine without CUDA: one line instead of a library traceback."""
    if device != "cuda":
        return
    if backend == "ct2":
        import ctranslate2

        found = ctranslate2.get_cuda_device_count() > 0
    else:
        import torch

        found = torch.cuda.is_available()
    if not found:
        raise UserError("--device cuda: no CUDA device found here; use --device cpu (or auto)")


def _file_size(text: str) -> str:
    """argparse type of --max-file-size: a number with b, kb, mb or gb."""
    from whisper_sv.app import _SIZE_RE

    if not _SIZE_RE.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; give a number with b, kb, mb or gb, e.g. 200mb"
        )
    return text.strip()


def _check_port(host: str, port: int) -> None:
    """A taken port, said before Gradio starts (it would end in a traceback)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserError(
                f"cannot serve on {host}:{port} ({err.strerror}); the port is taken or the "
                "address is not this machine's: choose another with --port N or --host"
            ) from err


# --------------------------------------------------------------------------- transcribe


def _add_transcribe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transcribe",
        help="transcribe (or translate) audio files or links",
        description="Transcribe audio or video files (any format) or YouTube links to Swedish "
        "text, or translate them to English with --task translate. Short files are decoded "
        "in batches; a file that cannot be read is reported and the rest go on.",
    )
    from whisper_sv.infer import TranscribeOptions as T

    p.add_argument("inputs", nargs="+", metavar="FILE_OR_URL", help="audio/video files or links")
    p.add_argument("--model", default="bundled:base", help="model reference")
    p.add_argument("--backend", choices=("ct2", "transformers"), default="ct2", help="engine")
    option_flag(p, T, "task", help="transcribe, or translate to English text")
    option_flag(p, T, "language", help="spoken language code")
    p.add_argument(
        "--format",
        choices=("txt", "srt", "vtt", "json"),
        default="txt",
        help="output format; json with several inputs on standard output: one JSON array",
    )
    p.add_argument(
        "--out",
        "--output-dir",
        dest="out",
        type=Path,
        metavar="DIR",
        help="write NAME.FORMAT files into DIR (not given: print to standard output)",
    )
    option_flag(p, T, "beam_size", help="1 = greedy, 5 = OpenAI's")
    option_flag(p, T, "temperature", help="0 = deterministic; > 0 samples")
    option_flag(p, T, "temperature_fallback", help="re-decode bad windows hotter (slower)")
    option_flag(p, T, "batch_size", help="short files decoded together")
    option_flag(p, T, "vad", "--no-vad", help="decode silences of long audio too")
    option_flag(p, T, "loop_guard", "--no-loop-guard", help="plain greedy: no re-decoding")
    option_flag(p, T, "fit_to_speech", "--no-fit-to-speech", help="keep the decoder's times")
    option_flag(p, T, "word_timestamps", help="per-word times (json, ct2)")
    option_flag(
        p, T, "condition_on_previous_text", help="prompt each 30 s window with the text before"
    )
    option_flag(p, T, "max_new_tokens", metavar="N", help="tokens per 30 s window (not given: 448)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")
    p.set_defaults(func=_cmd_transcribe)


def _quiet_decoders(args: argparse.Namespace) -> None:
    """faster-whisper logs every file at INFO ("Processing audio with duration ..."), which
    breaks up the progress bar; keep it for --verbose."""
    if not getattr(args, "verbose", False):
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)


def _cmd_transcribe(args: argparse.Namespace) -> int:
    from whisper_sv import links
    from whisper_sv.infer import TranscribeOptions, Transcriber, Transcript, format_transcript

    _quiet_decoders(args)

    options = options_from(TranscribeOptions, args)
    # Links are downloaded first (into a temporary folder, deleted after decoding).
    audios: list = []
    names: list[str] = []
    failed: list[str] = []
    for item in args.inputs:
        if links.looks_like_link(item) and not Path(item).exists():
            try:
                fetched = links.fetch_audio(item)
            except ValueError as err:
                print(f"error: {item}: {err}", file=sys.stderr)
                failed.append(item)
                continue
            audios.append(fetched.audio)
            names.append(fetched.title or item)
        else:
            audios.append(Path(item))
            names.append(item)
    if not audios:
        return 1
    _check_device(args.device, args.backend)
    model = args.model
    if options.task == "translate":
        from whisper_sv.tasks import translation_model

        # A run never checked on translation answers in Swedish: its start model translates.
        choice = translation_model(model)
        if choice.note:
            print(f"note: {choice.note}", file=sys.stderr)
        model = choice.model
    transcriber = Transcriber(model, backend=args.backend, device=args.device)
    results = transcriber.transcribe_many(audios, options, progress=len(audios) > 1)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    documents: list = []  # --format json on standard output: one array at the end
    for name, result in zip(names, results, strict=True):
        if not isinstance(result, Transcript):
            print(f"error: {result}", file=sys.stderr)
            failed.append(name)
            continue
        text = format_transcript(result, args.format)
        if args.out:
            out = args.out / f"{_unique_stem(name, used)}.{args.format}"
            out.write_text(text, encoding="utf-8")
            print(f"{name} -> {out}", file=sys.stderr)
        elif args.format == "json" and len(args.inputs) > 1:
            documents.append(json.loads(text))
        elif len(audios) > 1:
            print(f"==> {name} <==\n{text}")
        else:
            print(text, end="" if text.endswith("\n") else "\n")
    if args.format == "json" and len(args.inputs) > 1 and not args.out:
        print(json.dumps(documents, ensure_ascii=False, indent=2))
    if failed:
        print(f"{len(failed)} of {len(args.inputs)} input(s) failed", file=sys.stderr)
        return 1
    return 0


def _unique_stem(name: str, used: set[str]) -> str:
    """A file name stem from an input name, unique among ``used``."""
    stem = Path(name.rstrip("/")).stem or "transcript"
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:100] or "transcript"
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


# --------------------------------------------------------------------------- evaluate


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="WER/CER report of a model on a manifest",
        description="Transcribe every file of a manifest (TSV with 'path' and 'sentence' "
        "columns, paths relative to it) and write OUT/report.json and OUT/report.md: WER and "
        "CER (normalised and orthographic), speed, and a per-utterance table. Files that "
        "cannot be read are reported and skipped; the exit status is 1 if any failed.",
    )
    p.add_argument("--model", default="bundled:base", help="model reference")
    p.add_argument("--manifest", required=True, type=Path, help="TSV with path and sentence")
    p.add_argument("--backend", choices=("ct2", "transformers"), default="ct2", help="engine")
    p.add_argument("--out", type=Path, default=Path("evaluation"), help="report folder")
    p.add_argument("--limit", type=int, help="first N rows only (not given: all)")
    p.add_argument("--language", default="sv", help="spoken language code")
    p.add_argument("--beam-size", type=int, default=1, help="1 = greedy, 5 = OpenAI's")
    p.add_argument("--batch-size", type=int, default=16, help="files decoded together")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from whisper_sv.evaluate import evaluate, read_manifest, write_report
    from whisper_sv.infer import TranscribeOptions, Transcriber

    _quiet_decoders(args)

    # Long files are decoded one 30 s window after another and scored whole (vad off), the
    # way published long-form WERs are measured.
    options = TranscribeOptions(
        language=args.language, beam_size=args.beam_size, batch_size=args.batch_size, vad=False
    )
    read_manifest(args.manifest, limit=args.limit)  # bad manifests fail before model loading
    _check_device(args.device, args.backend)
    transcriber = Transcriber(args.model, backend=args.backend, device=args.device)
    report = evaluate(
        args.manifest, options=options, limit=args.limit, transcriber=transcriber, progress=True
    )
    json_path, md_path = write_report(report, args.out)
    for u in report.utterances:
        if u.error:
            print(f"failed: {u.name}: {u.error}", file=sys.stderr)
    print(report.summary())
    print(f"wrote {json_path} and {md_path}")
    return 1 if report.n_failed else 0


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
    from whisper_sv.feature_work import BuildOptions as B

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


def _comma_list(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def _cmd_features(args: argparse.Namespace) -> int:
    from whisper_sv import features

    if args.report:
        table, png = features.report(args.report)
        print(table)
        print(f"plots: {png}")
        return 0
    if not args.out:
        raise UserError("give --out STORE (or --report STORE)")
    from whisper_sv.config import parse_overrides
    from whisper_sv.sources import open_source

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
    from whisper_sv.feature_work import BuildOptions

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

    from whisper_sv.config import load_options, parse_overrides
    from whisper_sv.registry import metrics_markdown
    from whisper_sv.train import TrainConfig, train

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
    from whisper_sv.train import export_run

    out = export_run(args.run, args.out, quantization=args.quantization)
    print(out)
    return 0


# --------------------------------------------------------------------------- demo


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from whisper_sv.demo import DemoOptions

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
    for name in ("real_data", "guard_clips", "long_form_s", "timestamp_share", "translate_share"):
        option_flag(p, DemoOptions, name)
    option_flag(p, DemoOptions, "wise_ft", "--no-wise-ft")
    option_flag(p, DemoOptions, "train_set", "--set", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from whisper_sv.demo import DemoOptions, run_demo

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
    from whisper_sv.config import load_options, parse_overrides
    from whisper_sv.pipeline import PipelineConfig, run_pipeline

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


# --------------------------------------------------------------------------- app


def _add_app(sub: argparse._SubParsersAction) -> None:
    from whisper_sv.app import LANGUAGE_NAMES
    from whisper_sv.app import AppOptions as A

    p = sub.add_parser(
        "app",
        help="Gradio chat app: recording, file or YouTube link -> Swedish text + English",
        description="Serve the Gradio app (on 127.0.0.1 unless --host says otherwise), or "
        "write a Hugging Face Space folder with --export-space. The README's Security section "
        "says what the app exposes.",
    )
    option_flag(p, A, "model")
    option_flag(
        p,
        A,
        "runs_dir",
        "--runs",
        action=_Replace,
        metavar="DIR",
        help="folder of runs (or one run folder) listed in the model picker; repeatable",
    )
    option_flag(p, A, "host", help="interface to bind (0.0.0.0: reachable from the network)")
    option_flag(p, A, "port")
    option_flag(p, A, "translator", choices=("whisper", "google", "none"))
    option_flag(p, A, "language", choices=tuple(LANGUAGE_NAMES), help="spoken language")
    option_flag(p, A, "beam_size", choices=(1, 5), help="quality: 1 = fast (greedy), 5 = accurate")
    option_flag(p, A, "max_file_size", type=_file_size, help="largest upload (b, kb, mb, gb)")
    option_flag(p, A, "max_duration_s", "--max-duration", metavar="S")
    option_flag(p, A, "concurrency_limit", "--concurrency", metavar="N")
    option_flag(p, A, "max_queue", metavar="N")
    option_flag(p, A, "translate_timeout_s", "--translate-timeout", metavar="S")
    option_flag(p, A, "timestamps_after_s", "--timestamps-after", metavar="S")
    option_flag(
        p,
        A,
        "link_hosts",
        "--allow-host",
        action=_AddTo,
        metavar="HOST",
        help="also accept links to HOST (or HOST:PORT); repeatable",
    )
    option_flag(p, A, "link_timeout_s", "--link-timeout", metavar="S")
    option_flag(
        p,
        A,
        "allow_private_links",
        help="links may reach private, loopback and link-local addresses (a LAN media server)",
    )
    p.add_argument(
        "--export-space",
        metavar="DIR",
        help="write a Hugging Face Space folder (app.py, requirements.txt, README.md, model/) and exit",
    )
    p.set_defaults(func=_cmd_app)


def _cmd_app(args: argparse.Namespace) -> int:
    from whisper_sv import app, models

    models.resolve(args.model)  # a bad reference fails here, before anything starts
    options = options_from(app.AppOptions, args)
    if args.export_space:
        out = app.export_space(args.export_space, options, progress=print)
        print(f"Space written to {out}")
        return 0
    _check_port(args.host, args.port)
    print(f"whisper-sv app on http://{args.host}:{args.port} (Ctrl+C stops it)")
    app.serve(options)
    return 0


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
    from whisper_sv.tune import TuneOptions as T

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
    p.set_defaults(func=_cmd_tune)


def _cmd_tune(args: argparse.Namespace) -> int:
    from whisper_sv.config import load_options, parse_overrides
    from whisper_sv.train import TrainConfig
    from whisper_sv.tune import seeds_markdown, trials_markdown, tune

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
    from whisper_sv.tune import TuneOptions

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
    from whisper_sv.averaging import average_checkpoints

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


# --------------------------------------------------------------------------- experiment


def _add_experiment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="experiments: voices | noise | speaker | forgetting",
        description="voices: 1 vs 8 synthetic voices at equal data, tested on unseen voices. "
        "noise: noise augmentation at several SNRs, tested clean and noisy. speaker: "
        "fine-tune on some of one real speaker's words (../shared/data/sv-words), test on the "
        "held-out words. forgetting: anti-forgetting methods at equal compute, scored on real "
        "held-out speech, long-form and English (--budget takes demo options, e.g. "
        "max_steps=75, and methods=[plain,all]). Re-runs reuse finished stores and runs.",
    )
    p.add_argument(
        "name", choices=("voices", "noise", "speaker", "forgetting"), help="which experiment"
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
    from whisper_sv.config import from_mapping, parse_overrides
    from whisper_sv.experiments import ExperimentOptions, run_experiment

    budget = parse_overrides(args.budget)
    if args.model:
        budget["model"] = args.model
    if args.name == "forgetting":
        from whisper_sv.forgetting import run_study

        methods = budget.pop("methods", None)
        extra = tuple(args.overrides)
        out = Path(args.out or "experiments/forgetting")
        run_study(out, methods, **budget, **({"train_set": extra} if extra else {}))
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


# --------------------------------------------------------------------------- main

_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_transcribe,
    _add_evaluate,
    _add_features,
    _add_train,
    _add_export,
    _add_demo,
    _add_pipeline,
    _add_app,
    _add_tune,
    _add_average,
    _add_experiment,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-sv",
        description="Fine-tune and serve Whisper for Swedish.",
        epilog=EXIT_CODES,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    for command in sub.choices.values():  # every --help shows defaults and exit codes
        command.formatter_class = _HelpFormatter
        command.epilog = EXIT_CODES
    return parser


def _terminate(signum: int, frame) -> None:
    """SIGTERM as a normal exit, so temporary files are removed (atexit, finally blocks)."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as err:
        print(f"whisper-sv {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
