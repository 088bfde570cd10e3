"""The GPU check (``bench/gpu_check.sh``): the CUDA figures in one run, written to the GPU
section of docs/benchmarks.md.

1. training throughput: the blog recipe's fp16 ``Seq2SeqTrainer`` (gradient checkpointing)
   against ``whisper_sv.train.run`` in bf16, full fine-tuning and with the frozen encoder (cached
   outputs), same store, batch and steps (``bench_train.py``'s paths);
2. inference: faster-whisper batched over ``--clips`` clips against the same model one clip at
   a time (``whisper_sv.infer.transcriber.Transcriber``);
3. a short real fine-tune: validation WER of the model before, and the best after
   ``--finetune-steps`` steps.

``--dry-run`` runs the same code on the CPU at a tiny size (a random Whisper with the real
tokenizer, a few clips, two steps) in seconds, so the script cannot rot where no GPU is.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

START, END = "<!-- gpu-check:start -->", "<!-- gpu-check:end -->"


def tiny_model(folder: Path) -> str:
    """A random tiny Whisper with the real tokenizer (the tests' model), saved in ``folder``."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_model

    from whisper_sv.models.bundled import bundled_tokenizer_json
    from whisper_sv.models.processor import build_processor

    processor = build_processor(bundled_tokenizer_json(), n_mels=80)
    build_tiny_model(processor).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def training(store: Path, model: str, args: argparse.Namespace) -> list[tuple[str, str, str]]:
    from bench_train import run_blog_training, run_ours

    from whisper_sv.data.store import FeatureStore

    ns = argparse.Namespace(batch=args.batch, steps=args.steps, lr=1e-5, precision=args.precision)
    blog = run_blog_training(model, FeatureStore(store).torch_dataset("train"), ns)
    full = run_ours("full fine-tuning", store, model, ns)
    frozen = run_ours("frozen encoder, cached outputs", store, model, ns, freeze_encoder=True)
    rows = [(f"blog recipe: Seq2SeqTrainer {args.blog_precision}", _rate(blog), "1.00x")]
    for r in (full, frozen):
        rows.append(
            (f"whisper-sv {r.name}", _rate(r), f"{r.samples_per_s / blog.samples_per_s:.2f}x")
        )
    return rows


def _rate(r) -> str:
    return f"{r.samples_per_s:.1f} clips/s ({r.step_s * 1000:.0f} ms/step)"


def inference(model: str, audio: list, device: str) -> list[tuple[str, str, str]]:
    from whisper_sv.infer.transcriber import TranscribeOptions, Transcriber

    t = Transcriber(model, backend="ct2", device=device)
    t.transcribe(audio[0])  # warm-up: kernels, allocations

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    one = min(timed(lambda: [t.transcribe(a) for a in audio]) for _ in range(2))
    t.batched = True
    opts = TranscribeOptions(batch_size=min(16, len(audio)))
    many = min(timed(lambda: t.transcribe_many(audio, opts)) for _ in range(2))
    n = len(audio)
    return [
        (f"faster-whisper {t.compute_type}, {n} clips one by one", f"{one:.2f} s", "1.00x"),
        (
            f"faster-whisper {t.compute_type}, {n} clips batched",
            f"{many:.2f} s",
            f"{one / many:.2f}x",
        ),
    ]


def finetune(store: Path, model: str, args: argparse.Namespace) -> list[tuple[str, str, str]]:
    from bench_train import run_ours_eval

    from whisper_sv.data.store import FeatureStore
    from whisper_sv.train.run import TrainConfig, train

    val = FeatureStore(store).torch_dataset("validation")
    _, before = run_ours_eval(model, val, len(val), args.precision)
    steps = args.finetune_steps
    cfg = TrainConfig(lr=1e-5, warmup_steps=min(10, steps // 4), batch_size=args.batch,
                      max_steps=steps, eval_steps=steps, save_steps=steps, export_ct2=False,
                      precision=args.precision)  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = train(store, Path(out) / "run", model=model, config=cfg, progress=False)
        seconds = time.perf_counter() - start
    after = result.best_wer if result.best_wer is not None else float("nan")
    what = f"fine-tune {steps} steps, batch {args.batch} ({seconds:.0f} s), {len(val)} validation clips"
    return [(what, f"WER {before:.1f} -> {after:.1f}", f"{before - after:+.1f} points")]


def write_section(doc: Path, table: str) -> None:
    """Put ``table`` between the GPU section's markers (adding the section when absent)."""
    text = doc.read_text(encoding="utf-8") if doc.is_file() else "# Benchmarks\n"
    block = f"{START}\n{table}{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## GPU\n\n{block}\n"
    doc.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model and sizes (seconds)")
    ap.add_argument("--model", default="bundled:base")
    ap.add_argument("--write", type=Path, default=REPO / "docs" / "benchmarks.md",
                    help="markdown file whose GPU section gets the table")  # fmt: skip
    args = ap.parse_args(argv)

    import torch
    from bench_train import build_store

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print(
            "no CUDA device here: run with --dry-run to check the script on the CPU",
            file=sys.stderr,
        )
        return 2
    device = "cuda" if cuda and not args.dry_run else "cpu"
    tiny = args.dry_run
    args.batch, args.steps = (2, 2) if tiny else (16, 8)
    args.finetune_steps = 2 if tiny else 150
    args.precision = "bf16" if device == "cuda" else "fp32"
    args.blog_precision = "fp16" if device == "cuda" else "fp32"
    n_train, n_val, n_clips = (4, 2, 4) if tiny else (512, 64, 32)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp) / "tiny") if tiny else args.model
        store = build_store(n_train, n_val, model)
        # Inference audio: the validation clips (decoded again from the synthetic source).
        from whisper_sv.data.sources import open_source
        from whisper_sv.data.store import FeatureStore

        source = open_source("synthetic", train=0, validation=max(n_clips, n_val), test=0)
        audio = [source.load(i) for i in list(source.items("validation"))[:n_clips]]
        rows = training(store, model, args)
        rows += inference(model, audio, device)
        rows += finetune(store, model, args)
        assert FeatureStore(store).num_rows("train") > 0
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (dry run, tiny model)"
    table = (
        f"`bench/gpu_check.sh{' --dry-run' if tiny else ''}` on {name}, "
        f"{dt.date.today().isoformat()}, {time.perf_counter() - started:.0f} s in all; model "
        f"{'tiny random' if tiny else args.model}, synthetic store {n_train} train / {n_val} "
        f"validation clips, {args.steps} timed steps per path (median after the first)\n\n"
        "| check | figure | vs baseline |\n|---|---|---|\n"
        + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)
    )
    print(table)
    write_section(args.write, table)
    print(f"written to {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
