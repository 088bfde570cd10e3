"""``whisper-sv live``: captions of a file or of standard input while it plays.

Standard input is raw 16 kHz mono signed 16-bit little-endian PCM, as a microphone or a
stream gives it::

    arecord -f S16_LE -r 16000 -c 1 -t raw | whisper-sv live -
    ffmpeg -re -i talk.mp3 -f s16le -ac 1 -ar 16000 - | whisper-sv live -

A file (any format) is played at ``--speed`` times real time (0: as fast as decoding goes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from whisper_sv.cli.options import UserError, check_device, option_flag

__all__ = ["READY", "add_live_command"]

# Printed on standard error once the model is loaded and the audio is read.
READY = "captioning"


def add_live_command(sub: argparse._SubParsersAction) -> None:
    from whisper_sv.infer.streaming import StreamingOptions as S
    from whisper_sv.infer.transcriber import DEVICES

    p = sub.add_parser(
        "live",
        help="live captions of a file or standard input, printed as words are confirmed",
        description="Caption speech while it plays: confirmed lines are printed with their "
        "times as they come (LocalAgreement-2 over a re-decoded buffer). FILE_OR_- is an audio "
        "file (played at --speed) or - for standard input: raw 16 kHz mono s16le PCM, e.g. "
        "'arecord -f S16_LE -r 16000 -c 1 -t raw | whisper-sv live -' or "
        "'ffmpeg -re -i talk.mp3 -f s16le -ac 1 -ar 16000 - | whisper-sv live -'.",
    )
    p.add_argument("input", metavar="FILE_OR_-", help="audio file, or - for raw PCM on stdin")
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="a file plays at this many times real time (0: as fast as decoding goes)",
    )
    p.add_argument(
        "--srt",
        type=Path,
        metavar="PATH",
        help="write the lines as SubRip at the end (not given: none written)",
    )
    for name in ("model", "language", "translate", "chunk_s", "backlog_step_s", "agreement"):
        option_flag(p, S, name)
    for name in ("trim_s", "max_buffer_s", "prompt_chars", "line_pause_s", "max_line_chars"):
        option_flag(p, S, name)
    option_flag(p, S, "beam_size")
    option_flag(p, S, "compute_type")
    option_flag(p, S, "cpu_threads", "--threads", metavar="N")
    option_flag(p, S, "device", choices=DEVICES)
    p.set_defaults(func=run_live)


def run_live(args: argparse.Namespace) -> int:
    """Print confirmed lines as they come; 0, or 1 when no speech was confirmed.

    However the session ends (the stream's end, Ctrl+C, SIGTERM) the rest of the audio is
    decoded once, the tentative words are flushed as a final line and ``--srt`` is written
    (with ``--translate`` also its English beside it, ``NAME.en.srt``); the exit status then
    says how it ended (130 Ctrl+C, 143 SIGTERM).
    """
    from whisper_sv.cli.options import options_from
    from whisper_sv.infer.live_sources import paced, pcm_chunks
    from whisper_sv.infer.streaming import StreamingOptions, StreamingTranscriber

    if args.speed < 0:
        raise UserError(
            f"--speed must be >= 0 (1: real time, 0: as fast as possible), not {args.speed}"
        )
    check_device(args.device)
    options = options_from(StreamingOptions, args)
    # A file is read before the model loads, so a bad one is reported at once.
    source = (
        pcm_chunks(sys.stdin.buffer)
        if args.input == "-"
        else paced(_file_audio(args.input), args.speed, piece_s=options.step_s)
    )
    live = StreamingTranscriber(options)
    name = "standard input" if args.input == "-" else args.input
    print(f"{READY} {name} (Ctrl+C ends it and keeps what was heard)", file=sys.stderr, flush=True)
    decoded_s, stopped = 0.0, 0
    try:
        for samples in source:
            update = live.feed(samples)
            decoded_s = update.decoded_s
            _show(update)
    except KeyboardInterrupt:
        stopped = 130
    except SystemExit as stop:  # SIGTERM (cli.main turns it into SystemExit(143))
        if stop.code != 143:
            raise
        stopped = 143
    backlog = live.received_s - decoded_s  # audio not yet decoded when the stream ended
    _show(live.finish())
    how = {130: " (stopped by Ctrl+C)", 143: " (stopped by SIGTERM)"}.get(stopped, "")
    print(
        f"{live.received_s:.1f} s heard, {len(live.confirmed)} words confirmed, "
        f"{len(live.lines)} lines, backlog {backlog:.1f} s{how}",
        file=sys.stderr,
    )
    if args.srt:
        _write_srt(args.srt, live.lines, english=options.translate)
    if not live.lines and not stopped:
        print(_why_no_words(args.input, live.received_s), file=sys.stderr)
    return stopped or (0 if live.lines else 1)


def _write_srt(path: Path, lines, *, english: bool) -> None:
    """The lines as SubRip at ``path``; their English at ``NAME.en.srt`` with ``english``."""
    from whisper_sv.infer.streaming import line_segments
    from whisper_sv.infer.transcriber import subtitles

    path.write_text(subtitles(line_segments(lines), "srt"), encoding="utf-8")
    written = [path]
    if english:
        en = path.with_name(f"{path.stem}.en{path.suffix or '.srt'}")
        en.write_text(subtitles(line_segments(lines, english=True), "srt"), encoding="utf-8")
        written.append(en)
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)


def _why_no_words(source: str, received_s: float) -> str:
    """The likely reason a session confirmed no word, and what to do."""
    if received_s == 0 and source == "-":
        return (
            "no audio arrived on standard input: pipe raw 16 kHz mono s16le PCM into it, e.g. "
            "ffmpeg -i FILE -f s16le -ac 1 -ar 16000 - | whisper-sv live -"
        )
    if source == "-":
        return (
            "no speech was found: standard input must be raw 16 kHz mono s16le PCM (other "
            "rates, stereo or float samples read as noise)"
        )
    return "no speech was found in the file"


def _show(update) -> None:
    for line in update.lines:
        s = line.segment
        print(f"[{_clock(s.start)} -> {_clock(s.end)}] {s.text}", flush=True)
        if line.english:
            print(f"    {line.english}", flush=True)


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes):02d}:{rest:04.1f}"


def _file_audio(path: str) -> np.ndarray:
    from whisper_sv.core.audio import AudioError, load_audio

    if not Path(path).exists():
        raise UserError(f"no such file: {path}; give an audio file, or - for standard input")
    try:
        return load_audio(path)
    except AudioError as err:
        raise UserError(f"cannot read {path} as audio: {err}") from err
