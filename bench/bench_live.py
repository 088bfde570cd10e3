"""Live captions: how long after a word is said it is confirmed, and what streaming costs.

A real long file is joined from held-out lexin phrases (``longform.join_clips``; the demo
run's held-out themes ``/work/exp/final/real/lexin-phrases-test.tsv`` when present, else the
whole set) and streamed through ``StreamingTranscriber`` at ``--speed`` (1: real time). For
every reference word the latency is the stream time at its confirmation minus the end of the
word in the audio; word ends come from the offline transcript of the same file (``Transcriber``
with word timestamps), both transcripts aligned to the reference word by word. Reported per
model: p50/p95 latency, WER of the live and the offline transcript against the reference,
CPU use (process CPU seconds per audio second), the backlog (audio not yet decoded) when the
stream ended, and a PNG of latency over the file. Silence and white noise streamed for
``--quiet-seconds`` must give zero words.

Full run (3 minutes at real time, a quiet machine)::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/bench_live.py \\
        --model bundled:base --model /work/exp/final/run --seconds 180 --out out/bench-live

Short check: ``--seconds 45``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from whisper_sv.core.audio import SAMPLE_RATE, load_audio
from whisper_sv.core.text import normalize, wer
from whisper_sv.data.longform import LongFile, join_clips
from whisper_sv.infer.live_sources import paced
from whisper_sv.infer.streaming import StreamingOptions, StreamingTranscriber
from whisper_sv.infer.transcriber import Transcriber

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HELD_OUT = Path("/work/exp/final/real/lexin-phrases-test.tsv")


@dataclass(frozen=True)
class LiveResult:
    """One model's figures on the joined file."""

    model: str  # the model reference streamed
    audio_s: float  # seconds of audio streamed
    speed: float  # times real time (0: as fast as decoding goes)
    words_timed: int  # reference words with both an offline time and a live confirmation
    reference_words: int  # words in the reference
    p50_latency_s: float  # median confirmation delay after the word's end
    p95_latency_s: float  # 95th percentile of the same
    live_wer: float  # % WER of the confirmed live transcript vs the reference
    offline_wer: float  # % WER of the offline transcript vs the reference
    cpu_per_audio_s: float  # process CPU seconds per second of audio while streaming
    wall_per_audio_s: float  # wall seconds per second of audio (< 1 at speed 0: faster)
    backlog_s: float  # audio received but not yet decoded when the stream ended
    quiet_words: int  # words confirmed on the silence and the noise (target 0)


def aligned(reference: list[str], hypothesis: list[str]) -> dict[int, int]:
    """Reference word index -> hypothesis word index, for words matched or substituted 1:1."""
    out: dict[int, int] = {}
    matcher = difflib.SequenceMatcher(a=reference, b=hypothesis, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal" or (op == "replace" and a1 - a0 == b1 - b0):
            out.update({a0 + k: b0 + k for k in range(a1 - a0)})
    return out


def words_of(words) -> list[str]:
    """Normalised single words, one per Word (a Word that normalises to two keeps the first)."""
    return [(normalize(w.text).split() or [""])[0] for w in words]


def stream(live: StreamingTranscriber, audio: np.ndarray, speed: float):
    """(confirmed words, stream time of each confirmation, CPU s, backlog s, wall s)."""
    live.reset()
    confirmed, at = [], []
    cpu, wall = time.process_time(), time.monotonic()
    decoded = 0.0
    for chunk in paced(audio, speed):
        update = live.feed(chunk)
        decoded = update.decoded_s
        # At real time the clock is the wall; as fast as possible, the audio received.
        now = (time.monotonic() - wall) * speed if speed else update.received_s
        confirmed += update.confirmed
        at += [now] * len(update.confirmed)
    backlog = live.received_s - decoded
    last = live.finish()
    now = (time.monotonic() - wall) * speed if speed else last.received_s
    confirmed += last.confirmed
    at += [now] * len(last.confirmed)
    return confirmed, at, time.process_time() - cpu, backlog, time.monotonic() - wall


def quiet_words(live: StreamingTranscriber, seconds: float) -> int:
    """Words confirmed on ``seconds`` of digital silence and of white noise (as fast as it goes)."""
    n = int(seconds * SAMPLE_RATE)
    noise = (0.03 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    total = 0
    for audio in (np.zeros(n, dtype=np.float32), noise):
        total += len(stream(live, audio, 0)[0])
    return total


def measure(model: str, joined: LongFile, args) -> tuple[LiveResult, list[tuple[float, float]]]:
    """The figures of one model and its (word end, latency) points."""
    audio = load_audio(joined.path)
    offline = Transcriber(model, device="cpu").transcribe(audio, word_timestamps=True)
    offline_words = [w for s in offline.segments for w in s.words]
    options = StreamingOptions(
        model=model, device="cpu", chunk_s=args.chunk_s, cpu_threads=args.threads
    )
    live = StreamingTranscriber(options)
    confirmed, at, cpu_s, backlog, wall_s = stream(live, audio, args.speed)
    reference = normalize(joined.reference).split()
    timed = aligned(reference, words_of(offline_words))
    seen = aligned(reference, words_of(confirmed))
    points = [
        (offline_words[timed[i]].end, at[seen[i]] - offline_words[timed[i]].end)
        for i in range(len(reference))
        if i in timed and i in seen
    ]
    latencies = np.array([p[1] for p in points]) if points else np.array([np.nan])
    live_text = " ".join(w.text.strip() for w in confirmed)
    result = LiveResult(
        model=model,
        audio_s=round(len(audio) / SAMPLE_RATE, 1),
        speed=args.speed,
        words_timed=len(points),
        reference_words=len(reference),
        p50_latency_s=round(float(np.percentile(latencies, 50)), 2),
        p95_latency_s=round(float(np.percentile(latencies, 95)), 2),
        live_wer=round(wer([joined.reference], [live_text]), 1),
        offline_wer=round(wer([joined.reference], [offline.text]), 1),
        cpu_per_audio_s=round(cpu_s / (len(audio) / SAMPLE_RATE), 2),
        wall_per_audio_s=round(wall_s / (len(audio) / SAMPLE_RATE), 2),
        backlog_s=round(backlog, 2),
        quiet_words=quiet_words(live, args.quiet_seconds),
    )
    return result, points


def write(out: Path, results: list[LiveResult], points: dict[str, list], command: str) -> None:
    """results.md (table and command), results.json and latency.png in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    heads = [f for f in LiveResult.__dataclass_fields__]
    lines = [f"`{command}`", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(str(v) for v in asdict(r).values()) + " |" for r in results]
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    payload = {"command": command, "results": [asdict(r) for r in results], "points": points}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    fig, ax = plt.subplots(figsize=(9, 4))
    for model, pts in points.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ".-", label=model, alpha=0.8)
    ax.axhline(2.0, color="grey", ls="--", lw=0.8, label="p50 target 2 s")
    ax.axhline(4.0, color="grey", ls=":", lw=0.8, label="p95 target 4 s")
    ax.set_xlabel("word end in the audio (s)")
    ax.set_ylabel("confirmed after (s)")
    ax.set_title("Live captions: latency of each reference word")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="model reference (repeatable)")
    parser.add_argument("--manifest", type=Path, help="clips to join (default: held-out lexin)")
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the joined file")
    parser.add_argument("--speed", type=float, default=1.0, help="times real time (0: max)")
    parser.add_argument("--chunk-s", type=float, default=StreamingOptions.chunk_s)
    parser.add_argument(
        "--threads", type=int, default=StreamingOptions.cpu_threads, help="CTranslate2 threads"
    )
    parser.add_argument("--quiet-seconds", type=float, default=60.0, help="silence/noise length")
    parser.add_argument("--out", type=Path, default=Path("out/bench-live"), help="results folder")
    args = parser.parse_args(argv)
    manifest = args.manifest or (
        HELD_OUT if HELD_OUT.is_file() else DATA / "lexin-phrases" / "manifest.tsv"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    joined = join_clips(manifest, args.out / "joined.wav", seconds=args.seconds, seed=0)
    results, points = [], {}
    for model in args.model or ["bundled:base"]:
        result, pts = measure(model, joined, args)
        print(json.dumps(asdict(result)), flush=True)
        results.append(result)
        points[model] = pts
    command = "bench/bench_live.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write(args.out, results, points, command)
    print((args.out / "results.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
