"""The demo's units of work and a transcription on this CPU class, in every precision it offers.

Run once per class and compare the columns (docs/benchmarks.md):

    .venv/bin/python bench/bench_cpu_class.py                         # this CPU as it is
    bench/cpu-class.sh avx2 .venv/bin/python bench/bench_cpu_class.py  # held to AVX2, no bf16

Rows, each the least of ``--repeats`` runs after a warm-up:
1. torch (training and evaluation): the demo's calibration rates (budget.calibrate) in fp32
   and, where the CPU has native bf16, in bf16; the ratio is against fp32 (the baseline);
2. CTranslate2 (inference): a ~10 s clip of real speech (sv-words recordings joined with
   pauses) transcribed greedily by ``Transcriber`` in each compute type; the ratio is
   against float32 (the baseline), with the transcript's WER against the references.

The automatic choices are printed too: training precision ``auto`` and the transcriber's
default compute type, so the table says whether they pick the fastest.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_infer import SV_WORDS, load_clips, long_clip  # noqa: E402

from whisper_sv.core.runtime import cpu_has_native_bf16, resolve_precision  # noqa: E402
from whisper_sv.core.text import error_rates  # noqa: E402


def torch_rows(model_ref: str, repeats: int) -> list[str]:
    from whisper_sv.models.references import load_model
    from whisper_sv.workflows.budget import calibrate

    model, _ = load_model(model_ref)
    precisions = ["fp32"] + (["bf16"] if cpu_has_native_bf16() else [])
    rows, base = [], None
    for p in precisions:
        r = calibrate(model, precision=p, batch_size=4, distill=True, repeats=repeats)
        base = base or r
        rows.append(
            f"| torch {p} | {r.encode_s:.2f} ({base.encode_s / r.encode_s:.2f}x) | "
            f"{r.step_s:.2f} ({base.step_s / r.step_s:.2f}x) | "
            f"{r.clip_s:.3f} ({base.clip_s / r.clip_s:.2f}x) |"
        )
    return rows


def ct2_rows(model_ref: str, repeats: int) -> list[str]:
    import ctranslate2

    from whisper_sv.infer.transcriber import TranscribeOptions, Transcriber

    clips, refs = load_clips(SV_WORDS, 40)
    audio, n = long_clip(clips)
    reference = " ".join(refs[:n])
    seconds = len(audio) / 16000
    supported = ctranslate2.get_supported_compute_types("cpu")
    types = [t for t in ("float32", "int8", "int8_float32", "int16", "bfloat16") if t in supported]
    options = TranscribeOptions(language="sv", beam_size=1, loop_guard=False, fit_to_speech=False)
    rows, base = [], None
    for ct in types:
        tr = Transcriber(model_ref, compute_type=ct)
        tr.transcribe(audio, options)  # warm-up
        best, text = float("inf"), ""
        for _ in range(repeats):
            t0 = time.perf_counter()
            text = tr.transcribe(audio, options).text
            best = min(best, time.perf_counter() - t0)
        base = base or best
        wer = error_rates([reference], [text]).wer
        rows.append(
            f"| {ct} | {best:.2f} | {seconds / best:.1f}x | {base / best:.2f}x | {wer:.1f} |"
        )
    default = Transcriber(model_ref).compute_type
    rows.append(f"\ntranscriber default compute type here: {default}")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bundled:base")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    print(
        f"CPU class: {isa}; native bf16: {cpu_has_native_bf16()}; "
        f"training precision auto -> {resolve_precision('auto', cuda=False)}\n"
    )
    print("| torch | encoder s/window | training s/step | scoring s/clip |")
    print("|---|---:|---:|---:|")
    print("\n".join(torch_rows(args.model, args.repeats)), flush=True)
    print("\n| CTranslate2 compute type | s for the clip | real-time | vs float32 | WER % |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(ct2_rows(args.model, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
