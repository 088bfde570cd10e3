"""Inference speed: faster-whisper int8 against transformers fp32, same model, same audio.

Baseline: transformers float32 decoding one file at a time (what the Hugging Face blog's
evaluation does). Measured through ``whisper_sv.infer.transcriber.Transcriber``, so the figures are those
of the project's own code paths:

1. one ~10 s clip (sv-words recordings joined with pauses), greedy and beam 5, median of
   ``--repeats`` runs: seconds, real-time factor, ratio;
2. ``--clips`` short clips: faster-whisper batched (``transcribe_many`` with batching on)
   against transformers one by one and faster-whisper one by one, with WER/CER of each
   engine; ``--rounds`` interleaved rounds, fastest of each kept.

Run: ``.venv/bin/python bench/bench_infer.py`` (about 4 minutes on 2 idle CPU cores).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from whisper_sv.core.audio import SAMPLE_RATE, load_audio
from whisper_sv.core.text import error_rates
from whisper_sv.infer.transcriber import TranscribeOptions, Transcriber, Transcript

# The engines alone: no loop guard re-decoding, no VAD pass for segment times (those are
# measured in bench_decoding.py).
ENGINE_ONLY = {"loop_guard": False, "fit_to_speech": False}

SV_WORDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sv-words"


def load_clips(folder: Path, n: int) -> tuple[list[np.ndarray], list[str]]:
    with open(folder / "manifest.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))[:n]
    return [load_audio(folder / r["path"]) for r in rows], [r["sentence"] for r in rows]


def long_clip(clips: list[np.ndarray], seconds: float = 10.0) -> tuple[np.ndarray, int]:
    """(recordings joined with 0.3 s pauses up to ``seconds`` of audio, how many joined)."""
    pause = np.zeros(int(0.3 * SAMPLE_RATE), np.float32)
    parts: list[np.ndarray] = []
    total = 0
    for clip in clips:
        if total + len(clip) > seconds * SAMPLE_RATE:
            break
        parts += [clip, pause]
        total += len(clip) + len(pause)
    return np.concatenate(parts), len(parts) // 2


def timed(fn, repeats: int) -> tuple[float, object]:
    """(median seconds, last result) of ``repeats`` calls."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled:base")
    parser.add_argument("--clips", type=int, default=32, help="short clips for the batch test")
    parser.add_argument("--repeats", type=int, default=3, help="runs per single-clip timing")
    parser.add_argument("--batch-size", type=int, default=16, help="batched runs' batch size")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the many-clip runs")
    parser.add_argument("--data", type=Path, default=SV_WORDS, help="the sv-words folder")
    args = parser.parse_args(argv)
    if not (args.data / "manifest.tsv").is_file():
        print(f"sv-words not found at {args.data}; pass --data", file=sys.stderr)
        return 2

    import torch

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(threads or 1)
    clips, refs = load_clips(args.data, args.clips)
    clip10, n_joined = long_clip(clips)
    seconds10 = len(clip10) / SAMPLE_RATE
    audio_total = sum(len(c) for c in clips) / SAMPLE_RATE
    print(f"{threads} CPU threads; {args.model}; {len(clips)} clips ({audio_total:.1f} s);")
    print(f"one {seconds10:.1f} s clip of {n_joined} words joined with pauses\n")

    engines = {
        "faster-whisper int8": Transcriber(args.model, backend="ct2", device="cpu"),
        "transformers fp32": Transcriber(args.model, backend="transformers", device="cpu"),
    }
    for t in engines.values():  # warm-up: first calls allocate and load kernels
        t.transcribe(clips[0], **ENGINE_ONLY)

    # 1. one ~10 s clip
    single: dict[tuple[str, int], float] = {}
    print("| engine | beam | seconds | RTF | vs transformers |")
    print("|---|---|---|---|---|")
    for beam in (1, 5):
        for name, t in engines.items():
            single[name, beam], _ = timed(
                lambda t=t, b=beam: t.transcribe(clip10, beam_size=b, **ENGINE_ONLY), args.repeats
            )
        base = single["transformers fp32", beam]
        for name in engines:
            s = single[name, beam]
            print(f"| {name} | {beam} | {s:.2f} | {s / seconds10:.3f} | {base / s:.2f}x |")

    # 2. many short clips
    ct2, hf = engines["faster-whisper int8"], engines["transformers fp32"]
    opts = TranscribeOptions(batch_size=args.batch_size, **ENGINE_ONLY)
    batched = f"batched ({args.batch_size})"

    def many(t: Transcriber) -> list:
        # Batched whatever the device (the default batches on CUDA only).
        t.batched = True
        try:
            return t.transcribe_many(clips, opts)
        finally:
            t.batched = t.device == "cuda"

    runs = {
        "transformers fp32, one by one": lambda: [hf.transcribe(c, **ENGINE_ONLY) for c in clips],
        "faster-whisper int8, one by one": lambda: [
            ct2.transcribe(c, **ENGINE_ONLY) for c in clips
        ],
        f"faster-whisper int8, {batched}": lambda: many(ct2),
        f"transformers fp32, {batched}": lambda: many(hf),
    }
    # Rounds interleave the runs and keep each run's fastest: on a shared machine the load
    # drifts between runs, and the order alone moved ratios by 30 % here.
    results: dict[str, tuple[float, list[Transcript]]] = {}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            seconds, transcripts = timed(fn, 1)
            if name not in results or seconds < results[name][0]:
                results[name] = (seconds, transcripts)  # type: ignore[assignment]
    base = results["transformers fp32, one by one"][0]
    fw_one = results["faster-whisper int8, one by one"][0]
    print(f"\n{len(clips)} clips, greedy, fastest of {args.rounds} rounds:\n")
    print("| run | seconds | RTF | vs transformers 1-by-1 | vs faster-whisper 1-by-1 | WER | CER |")
    print("|---|---|---|---|---|---|---|")
    for name, (seconds, transcripts) in results.items():
        rates = error_rates(refs, [r.text for r in transcripts])
        print(
            f"| {name} | {seconds:.1f} | {seconds / audio_total:.3f} | {base / seconds:.2f}x "
            f"| {fw_one / seconds:.2f}x | {rates.wer:.1f} | {rates.cer:.1f} |"
        )
    same = sum(
        a.text == b.text
        for a, b in zip(
            results["faster-whisper int8, one by one"][1],
            results[f"faster-whisper int8, {batched}"][1],
            strict=True,
        )
    )
    print(f"\nbatched = one by one (faster-whisper): {same}/{len(clips)} identical transcripts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
