"""Command line: argument parsing only; every command calls a stage function.

Each command has an ``_add_<name>`` (its parser) and a ``_cmd_<name>`` (its action). User
errors (bad input, bad options) are printed as one line and exit with status 2; no traceback.
Every ``--help`` shows the defaults and the exit codes (:data:`EXIT_CODES`). The commands
that build and train models are in ``cli_train``, the search and experiments in ``cli_tune``,
the shared flag helpers in ``cli_options`` (re-exported here).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from whisper_sv.cli.options import (
    EXIT_CODES,
    UserError,
    _AddTo,
    _check_device,
    _check_port,
    _file_size,
    _HelpFormatter,
    _Replace,
    field_comments,
    option_flag,
    options_from,
)
from whisper_sv.cli.train import (
    _add_average,
    _add_demo,
    _add_export,
    _add_features,
    _add_pipeline,
    _add_train,
)
from whisper_sv.cli.train import _build_options as _build_options  # re-exported
from whisper_sv.cli.tune import _add_experiment, _add_tune
from whisper_sv.cli.tune import _tune_options as _tune_options  # re-exported

__all__ = [
    "EXIT_CODES",
    "UserError",
    "build_parser",
    "field_comments",
    "main",
    "option_flag",
    "options_from",
]

log = logging.getLogger("whisper_sv")


# --------------------------------------------------------------------------- transcribe


def _add_transcribe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transcribe",
        help="transcribe (or translate) audio files or links",
        description="Transcribe audio or video files (any format) or YouTube links to Swedish "
        "text, or translate them to English with --task translate. Short files are decoded "
        "in batches; a file that cannot be read is reported and the rest go on.",
    )
    from whisper_sv.infer.transcriber import TranscribeOptions as T

    p.add_argument("inputs", nargs="+", metavar="FILE_OR_URL", help="audio/video files or links")
    p.add_argument("--model", default="bundled:base", help="model reference")
    p.add_argument("--backend", choices=("ct2", "transformers"), default="ct2", help="engine")
    option_flag(p, T, "task", help="transcribe, or translate to English text")
    option_flag(p, T, "language", help="spoken language code, or auto to detect it")
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
    # The speech guard: what it drops is listed under "dropped" in --format json.
    on_off = {"action": argparse.BooleanOptionalAction}
    option_flag(p, T, "speech_gate", **on_off, help="no text where silero VAD hears no speech")
    option_flag(
        p, T, "no_speech_threshold", metavar="P", help="drop a window above this P(no speech)..."
    )
    option_flag(p, T, "log_prob_threshold", metavar="L", help="...whose tokens average below L")
    option_flag(p, T, "drop_known_hallucinations", **on_off, help="drop outros, credits, URLs")
    option_flag(p, T, "check_translation", **on_off, help="English only over a kept transcript")
    option_flag(
        p, T, "max_translation_ratio", metavar="R", help="English at most R x the transcript..."
    )
    option_flag(p, T, "translation_slack_chars", metavar="N", help="...plus N characters")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")
    p.set_defaults(func=_cmd_transcribe)


def _quiet_decoders(args: argparse.Namespace) -> None:
    """faster-whisper logs every file at INFO ("Processing audio with duration ..."), which
    breaks up the progress bar; keep it for --verbose."""
    if not getattr(args, "verbose", False):
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)


def _cmd_transcribe(args: argparse.Namespace) -> int:
    from whisper_sv.infer import links
    from whisper_sv.infer.transcriber import (
        TranscribeOptions,
        Transcriber,
        Transcript,
        format_transcript,
    )

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
        from whisper_sv.infer.translation_model import translation_model

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
        _notes(name, result)
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


def _notes(name: str, result) -> None:
    """What the text output does not show, on standard error: the language detected, and
    how much the speech guard left out (the text itself only in --format json)."""
    if result.language_probability is not None:
        print(
            f"{name}: language {result.language} (probability {result.language_probability:.2f})",
            file=sys.stderr,
        )
    if result.dropped:
        reasons = sorted({d.reason for d in result.dropped})
        print(
            f"{name}: {len(result.dropped)} segment(s) left out as probably not said "
            f"({', '.join(reasons)}; --format json lists them)",
            file=sys.stderr,
        )


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
    from whisper_sv.infer.evaluate import evaluate, read_manifest, write_report
    from whisper_sv.infer.transcriber import TranscribeOptions, Transcriber

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


# --------------------------------------------------------------------------- app


def _add_app(sub: argparse._SubParsersAction) -> None:
    from whisper_sv.app.chat import LANGUAGE_NAMES
    from whisper_sv.app.chat import AppOptions as A

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
    option_flag(p, A, "uploads_per_hour", metavar="N")
    option_flag(p, A, "upload_mb_per_hour", metavar="MB")
    option_flag(p, A, "budget_on_loopback")
    p.add_argument(
        "--export-space",
        metavar="DIR",
        help="write a Hugging Face Space folder (app.py, requirements.txt, README.md, model/) and exit",
    )
    p.set_defaults(func=_cmd_app)


def _cmd_app(args: argparse.Namespace) -> int:
    from whisper_sv.app import chat as app
    from whisper_sv.models import loading as models

    models.resolve(args.model)  # a bad reference fails here, before anything starts
    options = options_from(app.AppOptions, args)
    if options.runs_dir != app.AppOptions().runs_dir:  # given with --runs: each must be there
        missing = [d for d in options.run_folders() if not Path(d).is_dir()]
        if missing:
            raise UserError(f"--runs {missing[0]}: no such folder; give a folder of runs or a run")
    if args.export_space:
        out = app.export_space(args.export_space, options, progress=print)
        print(f"Space written to {out}")
        return 0
    _check_port(args.host, args.port)
    print(f"whisper-sv app on http://{args.host}:{args.port} (Ctrl+C stops it)")
    app.serve(options)
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
