"""One encoder pass shared by a clip's transcript and its English (issue 23, item 2).

Baseline "cache off": the CTranslate2 backend with ``encoder.windows = 0``, every pass
encoding its windows again (the code before the cache). Measured through ``Transcriber``
with task "translate" and ``check_translation`` (the default): the Swedish transcript is
decoded first, then the English, as ``whisper-sv transcribe --task translate`` does.

1. ``--clips`` short real clips (lexin-phrases), default options, one after the other;
2. one ~``--long-s`` s file joined from lexin-phrases (faster-whisper's long-form loop),
   greedy without the loop guard: its sampling fallback may decode other text on each run,
   which would time two different decodings.

Off and on alternate within each of ``--rounds`` rounds (which goes first alternates too);
the median of each is kept, and the ratio is on / off. Encoder calls are counted by the
cache (with ``windows = 0`` it counts every call it passes on). Also printed: what a hit
costs (digest + stitching into a ``StorageView``) against what encoding one window costs.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/bench_shared_encoder.py``
(about 3 minutes on 2 CPU cores with ``--threads 1``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from whisper_sv.core.audio import SAMPLE_RATE, load_audio
from whisper_sv.infer.encoder_reuse import ENCODER_CACHE_WINDOWS
from whisper_sv.infer.transcriber import Transcriber

LEXIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "lexin-phrases"


def cpu_header(threads: int) -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    bf16 = "avx512_bf16" if "avx512_bf16" in flags else "no avx512_bf16"
    return (
        f"CPU: {os.cpu_count()} cores, {bf16}; ct2 threads {threads}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )


def joined(clips: list[np.ndarray], seconds: float) -> np.ndarray:
    """Clips with 0.5 s pauses, as many as reach ``seconds`` of audio."""
    pause = np.zeros(SAMPLE_RATE // 2, np.float32)
    parts: list[np.ndarray] = []
    for clip in clips:
        parts += [clip, pause]
        if sum(map(len, parts)) >= seconds * SAMPLE_RATE:
            break
    return np.concatenate(parts)


def run(transcriber: Transcriber, audios: list[np.ndarray], windows: int, **options):
    """(seconds, encoder calls, texts) of translating every input with ``windows`` kept."""
    cache = transcriber._impl.encoder  # the Ct2Backend's EncoderCache
    cache.windows = windows
    cache.clear()
    start = time.perf_counter()
    texts = [transcriber.transcribe(a, task="translate", **options).text for a in audios]
    return time.perf_counter() - start, cache.stats.calls, texts


def compare(transcriber: Transcriber, name: str, audios: list[np.ndarray], rounds: int, **opts):
    times: dict[str, list[float]] = {"off": [], "on": []}
    calls: dict[str, int] = {}
    texts: dict[str, list[str]] = {}
    for r in range(rounds):
        order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
        for mode in order:
            windows = ENCODER_CACHE_WINDOWS if mode == "on" else 0
            seconds, calls[mode], out = run(transcriber, audios, windows, **opts)
            times[mode].append(seconds)
            if texts.setdefault(mode, out) != out:
                print(f"  note: {name} {mode} gave other text in round {r + 1}")
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    same = "identical" if texts["off"] == texts["on"] else "DIFFERENT"
    print(
        f"{name:<28} cache off {off:6.2f} s ({calls['off']:3d} encoder calls)  "
        f"on {on:6.2f} s ({calls['on']:3d} calls)  ratio on/off {on / off:.2f}  text {same}"
    )


def hit_cost(transcriber: Transcriber, clip: np.ndarray, repeats: int = 20) -> None:
    backend = transcriber._impl
    cache = backend.encoder
    cache.windows = ENCODER_CACHE_WINDOWS
    cache.clear()
    features = backend.log_mel(clip)[None].astype(np.float32)
    start = time.perf_counter()
    cache(features)
    miss = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        cache(np.concatenate([features, features]))  # two rows: digest twice, then stitched
    hit = (time.perf_counter() - start) / repeats / 2
    print(f"one window: encoder {miss * 1000:.0f} ms; a hit (digest + stitch) {hit * 1000:.2f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=8, help="short lexin clips")
    p.add_argument("--long-s", type=float, default=60.0, help="seconds of the long file")
    p.add_argument("--rounds", type=int, default=3, help="alternating off/on rounds")
    p.add_argument("--threads", type=int, default=1, help="CTranslate2 CPU threads")
    args = p.parse_args()
    if not LEXIN.is_dir():
        raise SystemExit(f"{LEXIN} not found: the benchmark needs ../shared/data/lexin-phrases")
    print(cpu_header(args.threads))
    transcriber = Transcriber("bundled:base", device="cpu", cpu_threads=args.threads)
    paths = sorted(LEXIN.glob("*.mp3"))
    clips = [load_audio(path) for path in paths[: args.clips]]
    long = joined([load_audio(path) for path in paths], args.long_s)
    print(f"bundled:base int8; {len(clips)} short clips; long file {len(long) / SAMPLE_RATE:.1f} s")
    hit_cost(transcriber, clips[0])
    compare(transcriber, f"{len(clips)} short clips", clips, args.rounds)
    compare(
        transcriber,
        f"long {len(long) / SAMPLE_RATE:.0f} s (no loop guard)",
        [long],
        args.rounds,
        loop_guard=False,
    )


if __name__ == "__main__":
    main()
