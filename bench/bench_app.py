"""App latency: time to first text and total time, against transformers' ASR pipeline.

Ours: ``ChatApp.run`` (the code behind the chat and the ``transcribe`` endpoint) on a wav file:
decode, VAD for long audio, faster-whisper int8 greedy, segments streamed as decoded. Time to
first text is when the first Swedish segment reaches the reply. Timed without translation
(what the baseline does) and, as an extra row, with the default Whisper translation.

Baseline: ``pipeline("automatic-speech-recognition", model=transformers_dir(MODEL),
chunk_length_s=30)`` with ``language="sv"``, greedy, on the same audio as an array (it cannot
read files without a system ffmpeg). It returns nothing before the end, so its time to first
text is its total time.

Clips: Swedish sentences of the synthetic source (the espeak-ng voice sv+m3) joined with 0.4 s
pauses up to each length, then silence to the exact length; WER against those sentences is
printed so that speed is not bought with errors. Both engines are loaded and warmed up before timing; the process is pinned to ``--cores``.

    .venv/bin/python bench/bench_app.py                      # 10 s and 5 min, 2 cores
    .venv/bin/python bench/bench_app.py --lengths 10 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _pin(cores: int) -> None:
    """Run on ``cores`` CPUs; thread pools sized before torch/ctranslate2 are imported."""
    available = sorted(os.sched_getaffinity(0))
    if cores > len(available):
        sys.exit(f"--cores {cores}: only {len(available)} CPUs available")
    os.sched_setaffinity(0, set(available[:cores]))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(cores)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def make_clip(seconds: float, folder: Path, seed: int = 1) -> tuple[Path, str]:
    """A wav of synthetic Swedish speech about ``seconds`` long, and its transcript."""
    import numpy as np
    import soundfile as sf

    from whisper_sv.core.audio import SAMPLE_RATE
    from whisper_sv.data.sources.synthetic import SyntheticOptions, SyntheticSource

    n = max(4, int(seconds / 2.5))  # sentences average ~4 s; draw more than needed
    # One voice Whisper base reads fairly well (sv+m3), so WER says something about accuracy.
    options = SyntheticOptions(
        seed=seed, train=0, validation=0, test=n, voices_train=("m1",), voices_test=("m3",)
    )
    source = SyntheticSource(options)
    pause = np.zeros(int(0.4 * SAMPLE_RATE), dtype=np.float32)
    parts, words, total = [], [], 0.0
    for item in source.items("test"):
        audio = source.load(item)
        if parts and total + len(audio) / SAMPLE_RATE > seconds:
            break
        parts += [audio, pause]
        words.append(item.sentence)
        total += (len(audio) + len(pause)) / SAMPLE_RATE
    # Silence up to the exact length: no sentence is cut, so the reference stays right.
    audio = np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]
    audio = np.pad(audio, (0, int(seconds * SAMPLE_RATE) - len(audio)))
    path = folder / f"clip-{int(seconds)}s.wav"
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
    return path, " ".join(words)


def time_app(chat, path: Path, translator: str) -> tuple[float, float, str]:
    """(seconds to first Swedish text, seconds in all, transcript)."""
    start = time.perf_counter()
    first = None
    last = None
    for state in chat.run(str(path), None, None, translator):
        if first is None and state.swedish:
            first = time.perf_counter() - start
        last = state
    total = time.perf_counter() - start
    if last is None or last.error:
        sys.exit(f"app failed on {path}: {last and last.error}")
    return (first if first is not None else total), total, last.text


def time_pipeline(pipe, path: Path) -> tuple[float, float, str]:
    from whisper_sv.core.audio import load_audio

    start = time.perf_counter()
    audio = load_audio(path)  # the same decode the app does, timed likewise
    out = pipe(
        {"raw": audio, "sampling_rate": 16_000},
        generate_kwargs={"language": "sv", "task": "transcribe", "num_beams": 1},
    )
    total = time.perf_counter() - start
    return total, total, out["text"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", type=int, default=2, help="CPUs to pin the process to")
    parser.add_argument(
        "--lengths", type=float, nargs="+", default=[10, 300], help="clip lengths, seconds"
    )
    parser.add_argument("--model", default="bundled:base", help="model reference")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per case (median)")
    # Seed 0's 10 s clip is dropped whole by Whisper's no-speech rule (no_speech_prob 0.62,
    # avg log-prob -1.15): no text at all, so no time to first text to measure.
    parser.add_argument("--seed", type=int, default=1, help="picks the synthetic sentences")
    parser.add_argument("--skip-baseline", action="store_true", help="time the app only")
    args = parser.parse_args(argv)
    _pin(args.cores)

    import torch

    torch.set_num_threads(args.cores)
    from whisper_sv.app.chat import AppOptions, ChatApp
    from whisper_sv.core import text
    from whisper_sv.models.references import transformers_dir

    folder = Path(tempfile.mkdtemp(prefix="bench-app-"))
    clips = [make_clip(s, folder, args.seed) for s in args.lengths]
    warm, _ = make_clip(3, folder, args.seed + 1)

    chat = ChatApp(AppOptions(model=args.model, runs_dir=None))
    time_app(chat, warm, "none")  # loads the model
    pipe = None
    if not args.skip_baseline:
        from transformers import pipeline

        pipe = pipeline(
            "automatic-speech-recognition",
            model=str(transformers_dir(args.model)),
            chunk_length_s=30,
            device="cpu",
        )
        time_pipeline(pipe, warm)

    def median(fn, *a) -> tuple[float, float, str]:
        runs = [fn(*a) for _ in range(args.repeat)]
        return (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
            runs[-1][2],
        )

    rows = []
    for path, reference in clips:
        import soundfile as sf

        seconds = sf.info(path).duration
        cases = [("whisper-sv app", median(time_app, chat, path, "none"))]
        cases.append(("whisper-sv app + translation", median(time_app, chat, path, "whisper")))
        if pipe is not None:
            cases.append(("transformers pipeline (baseline)", median(time_pipeline, pipe, path)))
        for name, (first, total, hyp) in cases:
            if not hyp.strip():
                print(
                    f"warning: {name} wrote nothing for the {seconds:.0f} s clip", file=sys.stderr
                )
            rows.append((seconds, name, first, total, text.wer([reference], [hyp])))

    print(f"\n{args.model}, {args.cores} cores, median of {args.repeat}, {torch.__version__=}")
    print("| audio | engine | time to first text | total | RTF | WER % |")
    print("|---|---|---|---|---|---|")
    for seconds, name, first, total, wer in rows:
        print(
            f"| {seconds:.0f} s | {name} | {first:.2f} s | {total:.2f} s | "
            f"{total / seconds:.3f} | {wer:.1f} |"
        )
    if pipe is not None:
        print()
        for seconds in sorted({r[0] for r in rows}):
            ours = next(r for r in rows if r[0] == seconds and r[1] == "whisper-sv app")
            base = next(r for r in rows if r[0] == seconds and "baseline" in r[1])
            print(
                f"{seconds:.0f} s: time to first text {base[2] / ours[2]:.1f}x faster, "
                f"total {base[3] / ours[3]:.1f}x faster than the baseline"
            )
    chat.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
