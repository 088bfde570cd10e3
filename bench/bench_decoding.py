"""Decoding quality and time: the previous default, the loop-guarded default, faster-whisper's.

Three decoders of the same model (``bundled:base``, ct2 int8, CPU) on the same clips:

- ``previous``: what ``Transcriber.transcribe`` did before the loop guard: faster-whisper's
  ``WhisperModel.transcribe`` greedy at temperature 0, no fallback, log-mel zero padding;
- ``default``: ``Transcriber.transcribe`` with today's defaults (greedy first, bad windows
  re-decoded, output bounded, audio padded before the log-mel);
- ``faster-whisper``: ``WhisperModel.transcribe(audio, language="sv")`` with all of
  faster-whisper's defaults (beam 5, best of 5, temperature fallback, previous-text prompt).

Clip sets: sv-words and lexin-phrases (real speech, every k-th row) and the synthetic test
split (espeak-ng voices, rendered here). Reported per set and decoder: WER under the
``kblab_swedish`` normaliser and the project's own, seconds, and the longest hypothesis
against its reference (characters; also how many hypotheses are over 3x their reference).
The target: ``default`` within 1 WER point of ``faster-whisper`` at <= 0.6x its time.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_decoding.py`` (about 6 minutes on 2
idle CPU cores with the default 40 clips a set). ``--padding --sets sv-words`` measures the
ct2/transformers gap instead: log-mel zero padding against audio padding, with and without
timestamp tokens (the time column is then against the first of them). ``--beams --sets
cv-dev,lexin-phrases,sv-words,long:cv-dev,long:lexin-phrases --clips 60`` measures the file
default: today's decoding at beam 1 against beam 5, on short clips and on 3-minute files.
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from whisper_sv.core.audio import load_audio
from whisper_sv.core.text import scores, wer
from whisper_sv.infer.transcriber import LOG_PROB_THRESHOLD, NO_SPEECH_THRESHOLD, Transcriber

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def real_set(name: str, n: int) -> tuple[list[np.ndarray], list[str]]:
    """Every k-th row of a shared manifest, ``n`` clips in all."""
    folder = DATA / name
    with open(folder / "manifest.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    rows = rows[:: max(1, len(rows) // n)][:n]
    return [load_audio(folder / r["path"]) for r in rows], [r["sentence"] for r in rows]


def synthetic_set(n: int) -> tuple[list[np.ndarray], list[str]]:
    """The synthetic source's test split (held-out voices and sentences), rendered."""
    from whisper_sv.data.sources.synthetic import SyntheticOptions, SyntheticSource

    source = SyntheticSource(SyntheticOptions(train=0, validation=0, test=n))
    items = list(source.items("test"))
    return [source.load(i) for i in items], [i.sentence for i in items]


def decoders(transcriber: Transcriber) -> dict[str, Callable[[np.ndarray], str]]:
    model = transcriber._impl.model  # the faster-whisper WhisperModel under the ct2 backend

    def fw(audio: np.ndarray, **kwargs) -> str:
        pieces, _ = model.transcribe(audio, language="sv", **kwargs)
        return " ".join(p.text.strip() for p in pieces)

    def previous(audio: np.ndarray) -> str:
        return fw(
            audio,
            beam_size=1,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=False,
            no_speech_threshold=NO_SPEECH_THRESHOLD,
            log_prob_threshold=LOG_PROB_THRESHOLD,
        )

    return {
        "previous": previous,
        "default": lambda audio: transcriber.transcribe(audio).text,
        "faster-whisper": fw,
    }


def beam_variants(transcriber: Transcriber) -> dict[str, Callable[[np.ndarray], str]]:
    """Today's defaults at beam 1 (greedy, bad windows re-decoded with beam 5) and beam 5."""
    return {
        f"beam {b}": (lambda audio, b=b: transcriber.transcribe(audio, beam_size=b).text)
        for b in (1, 5)
    }


def long_set(name: str, seconds: float) -> tuple[list[np.ndarray], list[str]]:
    """One file of ``seconds`` joined from a shared set's clips (longform.join_clips)."""
    import tempfile

    from whisper_sv.data.longform import join_clips

    pause = (0.3, 1.0) if name == "cv-dev" else (0.6, 1.5)
    with tempfile.TemporaryDirectory() as tmp:
        joined = join_clips(
            DATA / name / "manifest.tsv", Path(tmp) / "long.wav", seconds=seconds, pause=pause
        )
        return [load_audio(joined.path)], [joined.reference]


def padding_variants(transcriber: Transcriber) -> dict[str, Callable[[np.ndarray], str]]:
    """The backend gap: log-mel zero padding (faster-whisper) against audio padding, with and
    without timestamp tokens, against the transformers backend; all greedy, no fallback."""
    from whisper_sv.core.audio import N_SAMPLES

    model = transcriber._impl.model
    hf = Transcriber("bundled:base", backend="transformers", device="cpu")

    def fw(audio: np.ndarray, pad: bool, timestamps: bool) -> str:
        if pad:  # silence to 30 s before the log-mel, as OpenAI's Whisper does
            audio = np.pad(audio, (0, max(0, N_SAMPLES - len(audio))))
        pieces, _ = model.transcribe(
            audio,
            language="sv",
            beam_size=1,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=not timestamps,
        )
        return " ".join(p.text.strip() for p in pieces)

    return {
        "ct2 log-mel padded": lambda a: fw(a, False, True),
        "ct2 audio padded": lambda a: fw(a, True, True),
        "ct2 log-mel padded, no timestamps": lambda a: fw(a, False, False),
        "ct2 audio padded, no timestamps": lambda a: fw(a, True, False),
        "transformers": lambda a: hf.transcribe(a, loop_guard=False, fit_to_speech=False).text,
    }


def run_set(name, clips, refs, decode: dict[str, Callable]) -> list[dict]:
    rows = []
    for label, fn in decode.items():
        start = time.perf_counter()
        hyps = [fn(clip) for clip in clips]
        seconds = time.perf_counter() - start
        ratios = [len(h) / max(len(r), 1) for h, r in zip(hyps, refs, strict=True)]
        worst = int(np.argmax(ratios))
        rows.append(
            {
                "set": name,
                "decoder": label,
                "wer_kblab": scores(refs, hyps)["kblab_swedish"].wer,
                "wer": wer(refs, hyps),
                "seconds": seconds,
                "longest": f"{len(hyps[worst])} vs {len(refs[worst])} chars",
                "max_ratio": ratios[worst],
                "over_3x": sum(r > 3 for r in ratios),
            }
        )
        print(
            f"{name:14s} {label:15s} WER {rows[-1]['wer_kblab']:6.1f}  {seconds:7.1f} s  "
            f"longest {rows[-1]['longest']} ({ratios[worst]:.1f}x)",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=40, help="clips per set")
    parser.add_argument("--sets", default="synthetic,sv-words,lexin-phrases")
    parser.add_argument(
        "--padding",
        action="store_true",
        help="measure the backend gap instead (slow: transformers)",
    )
    parser.add_argument(
        "--beams",
        action="store_true",
        help="beam 1 against beam 5 with today's defaults instead (sets may be long:NAME, "
        "one 3-minute file joined from NAME's clips)",
    )
    args = parser.parse_args()
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)

    transcriber = Transcriber("bundled:base", backend="ct2", device="cpu")
    if args.padding:
        decode = padding_variants(transcriber)
    elif args.beams:
        decode = beam_variants(transcriber)
    else:
        decode = decoders(transcriber)
    results = []
    for name in args.sets.split(","):
        if name.startswith("long:"):
            clips, refs = long_set(name.removeprefix("long:"), 180.0)
        elif name == "synthetic":
            clips, refs = synthetic_set(args.clips)
        else:
            clips, refs = real_set(name, args.clips)
        results += run_set(name, clips, refs, decode)

    base = "ct2 log-mel padded" if args.padding else "beam 1" if args.beams else "faster-whisper"
    print(
        "\n| set | decoder | WER (kblab_swedish) | WER (normalised) | seconds "
        f"| x {base}'s time | longest hypothesis | over 3x |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        fw = next(x for x in results if x["set"] == r["set"] and x["decoder"] == base)
        print(
            f"| {r['set']} | {r['decoder']} | {r['wer_kblab']:.1f} | {r['wer']:.1f} | "
            f"{r['seconds']:.1f} | {r['seconds'] / fw['seconds']:.2f} | {r['longest']} "
            f"({r['max_ratio']:.1f}x) | {r['over_3x']} |"
        )


if __name__ == "__main__":
    main()
