"""The command line: the parser of every command and ``main``.

Each command has an ``add_<name>_command`` (its parser) and a ``_cmd_<name>`` (its action,
which calls a stage function and prints its result). Option flags are made from the fields
of the stage's option dataclass (:func:`option_flag`: help = the field's comment). User
errors (bad input, bad options) are printed as one line and exit with status 2; no
traceback. Every ``--help`` shows the defaults and the exit codes (:data:`EXIT_CODES`). The
commands that build and train models are in ``cli/train.py``, the search and experiments in
``cli/tune.py``, the shared flag helpers in ``cli/options.py`` (re-exported here).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from whisper_sv.cli.live import add_live_command
from whisper_sv.cli.options import (
    EXIT_CODES,
    AddTo,
    HelpFormatter,
    Replace,
    UserError,
    add_model_flag,
    check_device,
    check_port,
    default_words,
    field_comments,
    file_size,
    option_flag,
    options_from,
)
from whisper_sv.cli.train import (
    add_average_command,
    add_demo_command,
    add_export_command,
    add_features_command,
    add_pipeline_command,
    add_train_command,
)
from whisper_sv.cli.tune import add_experiment_command, add_tune_command

__all__ = [
    "EXIT_CODES",
    "UserError",
    "build_parser",
    "default_words",
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
    from whisper_sv.infer.subtitles import SubtitleOptions
    from whisper_sv.infer.transcriber import DECODER_BACKENDS, DEVICES
    from whisper_sv.infer.transcriber import TranscribeOptions as T
    from whisper_sv.infer.types import FILE_BEAM_SIZE, LoadOptions
    from whisper_sv.models.references import DEFAULT_MODEL

    p.add_argument(
        "inputs", nargs="+", metavar="FILE_OR_URL", help="audio/video files or links; - reads stdin"
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="model reference")
    p.add_argument("--backend", choices=DECODER_BACKENDS, default="ct2", help="engine")
    option_flag(p, T, "task")
    option_flag(p, T, "language")
    from whisper_sv.infer.transcriber import FORMATS

    p.add_argument(
        "--format",
        choices=(*FORMATS, "all"),
        default="txt",
        help="output format; all: every format (needs --out); json with several inputs on "
        "standard output: one JSON array",
    )
    p.add_argument(
        "--out",
        "--output-dir",
        dest="out",
        type=Path,
        metavar="DIR",
        help="write NAME.FORMAT files into DIR (not given: print to standard output)",
    )
    option_flag(p, T, "beam_size", default=FILE_BEAM_SIZE)  # files: long-form gains most
    option_flag(p, T, "temperature")
    option_flag(p, T, "temperature_fallback")
    option_flag(p, T, "batch_size")
    option_flag(p, T, "vad", "--no-vad")
    option_flag(p, T, "loop_guard", "--no-loop-guard")
    option_flag(p, T, "fit_to_speech", "--no-fit-to-speech")
    option_flag(p, T, "word_timestamps")
    option_flag(p, T, "condition_on_previous_text")
    option_flag(p, T, "initial_prompt", metavar="TEXT")
    option_flag(p, T, "max_new_tokens", metavar="N")
    # The speech guard: what it drops is listed under "dropped" in --format json.
    on_off = {"action": argparse.BooleanOptionalAction}
    option_flag(p, T, "speech_gate", **on_off)
    option_flag(p, T, "no_speech_threshold", metavar="P")
    option_flag(p, T, "log_prob_threshold", metavar="L")
    option_flag(p, T, "drop_known_hallucinations", **on_off)
    option_flag(p, T, "check_translation", **on_off)
    option_flag(p, T, "max_translation_ratio", metavar="R")
    option_flag(p, T, "translation_slack_chars", metavar="N")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to run")
    option_flag(p, LoadOptions, "compute_type")
    option_flag(p, LoadOptions, "cpu_threads", "--threads", metavar="N")
    option_flag(p, SubtitleOptions, "max_line_chars", "--max-line-width", metavar="N")
    option_flag(p, SubtitleOptions, "max_lines", "--max-line-count", metavar="N")
    option_flag(p, SubtitleOptions, "highlight_words")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on standard error: audio seconds decoded of one file, or files "
        "done of several (not given: shown when standard error is a terminal)",
    )
    p.set_defaults(func=_cmd_transcribe)


def _quiet_decoders(args: argparse.Namespace) -> None:
    """faster-whisper logs every file at INFO ("Processing audio with duration ..."), which
    breaks up the progress bar; keep it for --verbose."""
    if not getattr(args, "verbose", False):
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)


def _cmd_transcribe(args: argparse.Namespace) -> int:
    from whisper_sv.infer import links
    from whisper_sv.infer.subtitles import SubtitleOptions
    from whisper_sv.infer.transcriber import (
        FORMATS,
        TranscribeOptions,
        Transcriber,
        Transcript,
        format_transcript,
    )
    from whisper_sv.infer.types import LoadOptions

    _quiet_decoders(args)

    options = options_from(TranscribeOptions, args)
    load = options_from(LoadOptions, args)
    layout = SubtitleOptions(
        max_line_chars=args.max_line_chars,
        max_lines=args.max_lines,
        highlight_words=args.highlight_words,
    )
    formats = FORMATS if args.format == "all" else (args.format,)
    cued = bool({"srt", "vtt"} & set(formats))
    # Subtitle cues are timed by the words' own times (a segment too long for one cue is
    # split where its words were said; highlighted words are underlined as said). The
    # words are aligned after decoding: the text is the same either way.
    if layout.highlight_words or (cued and args.backend == "ct2"):
        options = dataclasses.replace(options, word_timestamps=True)
    if layout.highlight_words and not cued:
        raise UserError(
            f"--highlight-words underlines words in subtitle cues; --format {args.format} "
            "has none: use --format srt or vtt"
        )
    if args.format == "all" and not args.out:
        raise UserError("--format all writes one file per format; give --out DIR")
    # Everything the user can get wrong is checked before the model loads (seconds to minutes).
    missing = [i for i in args.inputs if not _is_readable_input(i, links)]
    if missing:
        raise UserError(f"no such file: {', '.join(missing)}; check the path(s)")
    if args.out:
        _make_out_dir(args.out)
    # Links are downloaded first (into a temporary folder, deleted after decoding).
    audios: list = []
    names: list[str] = []
    failed: list[str] = []
    for item in args.inputs:
        if item == STDIN:
            audios.append(_read_stdin())
            names.append("stdin")
        elif links.looks_like_link(item) and not Path(item).exists():
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
    check_device(args.device, args.backend)
    model = args.model
    if options.task == "translate":
        from whisper_sv.infer.translation_model import translation_model

        # A run never checked on translation answers in Swedish: its start model translates.
        choice = translation_model(model)
        if choice.note:
            print(f"note: {choice.note}", file=sys.stderr)
        model = choice.model
    transcriber = Transcriber(
        model,
        backend=args.backend,
        device=args.device,
        compute_type=load.compute_type,
        cpu_threads=load.cpu_threads,
    )
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    results = transcriber.transcribe_many(audios, options, progress=progress)
    used: set[str] = set()
    documents: list = []  # --format json on standard output: one array at the end
    for name, result in zip(names, results, strict=True):
        if not isinstance(result, Transcript):
            print(f"error: {result}", file=sys.stderr)
            failed.append(name)
            continue
        _notes(name, result)
        text = format_transcript(result, formats[0], layout)
        if args.out:
            stem = _unique_stem(name, used)
            for fmt in formats:
                out = args.out / f"{stem}.{fmt}"
                out.write_text(format_transcript(result, fmt, layout), encoding="utf-8")
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


STDIN = "-"  # the input name that reads the audio from standard input


def _is_readable_input(item: str, links) -> bool:
    """Whether ``item`` is stdin, a link (fetched later) or an existing file."""
    if item == STDIN or Path(item).exists():
        return True
    return links.looks_like_link(item)


def _read_stdin() -> bytes:
    data = sys.stdin.buffer.read()
    if not data:
        raise UserError("standard input is empty; pipe audio into it, e.g. < clip.wav")
    return data


def _make_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the output folder {out} ({err.strerror}); choose a writable --out"
        ) from None


def _notes(name: str, result) -> None:
    """What the text output does not show, on standard error: the language detected, and
    how much the speech guard left out (the text itself only in --format json)."""
    if result.language_probability is not None:
        print(
            f"{name}: language {result.language} (probability {result.language_probability:.2f})",
            file=sys.stderr,
        )
    if not result.text.strip():
        print(f"no speech found in {name}", file=sys.stderr)
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


def add_evaluate_command(sub: argparse._SubParsersAction) -> None:
    """The ``evaluate`` command: the decoding flags are TranscribeOptions fields."""
    from whisper_sv.infer.transcriber import DECODER_BACKENDS, DEVICES
    from whisper_sv.infer.transcriber import TranscribeOptions as T
    from whisper_sv.models.references import DEFAULT_MODEL

    p = sub.add_parser(
        "evaluate",
        help="WER/CER report of a model on a manifest",
        description="Transcribe every file of a manifest (TSV with 'path' and 'sentence' "
        "columns, paths relative to it) and write OUT/report.json and OUT/report.md: WER and "
        "CER (normalised and orthographic), speed, and a per-utterance table. Files that "
        "cannot be read are reported and skipped; the exit status is 1 if any failed.",
    )
    add_model_flag(p, DEFAULT_MODEL)
    p.add_argument("--manifest", required=True, type=Path, help="TSV with path and sentence")
    p.add_argument("--backend", choices=DECODER_BACKENDS, default="ct2", help="engine")
    p.add_argument("--out", type=Path, default=Path("evaluation"), help="report folder")
    p.add_argument("--limit", type=int, metavar="N", help="first N rows only (not given: all)")
    for name in ("language", "beam_size", "batch_size"):
        option_flag(p, T, name)
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to run")
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
    check_device(args.device, args.backend)
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
        action=Replace,
        metavar="DIR",
    )
    option_flag(p, A, "hub_models")
    option_flag(p, A, "host")
    option_flag(p, A, "port")
    option_flag(p, A, "translator", choices=("whisper", "google", "none"))
    option_flag(p, A, "language", choices=tuple(LANGUAGE_NAMES))
    option_flag(p, A, "beam_size", choices=(1, 5))
    option_flag(p, A, "max_file_size", type=file_size)
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
        action=AddTo,
        metavar="HOST",
    )
    option_flag(p, A, "link_timeout_s", "--link-timeout", metavar="S")
    option_flag(p, A, "link_deadline_s", "--link-deadline", metavar="S")
    option_flag(
        p,
        A,
        "allow_private_links",
    )
    option_flag(p, A, "uploads_per_hour", metavar="N")
    option_flag(p, A, "upload_mb_per_hour", metavar="MB")
    option_flag(p, A, "budget_on_loopback")
    p.add_argument(
        "--export-space",
        metavar="DIR",
        help="write a Hugging Face Space folder (app.py, requirements.txt, README.md, model/) and "
        "exit (not given: serve the app)",
    )
    p.set_defaults(func=_cmd_app)


def _cmd_app(args: argparse.Namespace) -> int:
    from whisper_sv.app import chat as app
    from whisper_sv.models import ct2_dir, resolve

    if resolve(args.model).kind == "hub":  # a bad reference fails here, before anything starts
        # A hub model not cached offline fails now, in one line, rather than in the page; a
        # transformers-only revision is converted for faster-whisper before the page opens.
        ct2_dir(args.model)
    options = options_from(app.AppOptions, args)
    if options.runs_dir != app.AppOptions().runs_dir:  # given with --runs: each must be there
        missing = [d for d in options.run_folders() if not Path(d).is_dir()]
        if missing:
            raise UserError(f"--runs {missing[0]}: no such folder; give a folder of runs or a run")
    # Resolved now, so the picker does not depend on where the server's threads look later,
    # and said when it will offer nothing but the bundled model.
    folders = tuple(str(Path(d).resolve()) for d in options.run_folders())
    options = dataclasses.replace(options, runs_dir=folders or None)
    if folders and not any(app.find_runs(d) for d in folders):
        print(
            f"whisper-sv app: no run found in {', '.join(folders)} (a run is a folder with "
            "config.yaml and best/): the model picker lists the bundled and hub models only; "
            "give --runs DIR to list yours",
            file=sys.stderr,
        )
    if args.export_space:
        out = app.export_space(args.export_space, options, progress=print)
        print(f"Space written to {out}")
        return 0
    check_port(args.host, args.port)
    print(f"whisper-sv app on http://{args.host}:{args.port} (Ctrl+C stops it)")
    app.serve(options)
    return 0


# --------------------------------------------------------------------------- main

_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_transcribe,
    add_evaluate_command,
    add_features_command,
    add_train_command,
    add_export_command,
    add_demo_command,
    add_pipeline_command,
    _add_app,
    add_live_command,
    add_tune_command,
    add_average_command,
    add_experiment_command,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-sv",
        description="Fine-tune and serve Whisper for Swedish.",
        epilog=EXIT_CODES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    for command in sub.choices.values():  # every --help shows defaults and exit codes
        command.formatter_class = HelpFormatter
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
