"""Training and evaluation speed vs the Hugging Face blog recipe, on the same store and batch.

Baseline (the blog "Fine-Tune Whisper For Multilingual ASR with Transformers"):
``Seq2SeqTrainer`` with its ``Seq2SeqTrainingArguments`` (gradient checkpointing on, fp16 on
CUDA, ``predict_with_generate`` with ``generation_max_length=225``, eval batch 8) and its
``DataCollatorSpeechSeq2SeqWithPadding``, reading the same feature store's torch dataset.

Ours: :func:`whisper_sv.train.run.train` on the same store, batch and learning rate:
- full fine-tuning (the blog's setting);
- frozen encoder with cached encoder outputs (decoder-only training; the one-time encoder pass
  is reported separately, it is paid once per clip, not per epoch);
- the same with clips packed into 30 s windows (``pack_clips``; samples/s counts clips);
- optional extras (``--extras``): frozen encoder run live, and frozen token embeddings.

Each path runs ``--steps`` optimizer steps; the first is a warm-up and left out; the figure is
the median step (data loading included). Both sides use lr 1e-5 with a linear decay and no
warm-up, so the loss after equal samples can be put side by side (the data order differs).

Evaluation: the blog's ``trainer.evaluate()`` (generate, up to 225 new tokens, loss + WER)
against ``whisper_sv.train.run.evaluate_dataset`` (one encoder pass per batch for loss and batched
greedy decoding bounded by the longest reference + margin) on the same validation clips of the
pretrained model; both WERs use ``whisper_sv.core.text.wer`` (normalised).

Without ``--features`` a store of synthetic Swedish speech (the synthetic source, espeak-ng) is
built once and cached. Runs unchanged on a GPU (precision auto: bf16, blog fp16).

    .venv/bin/python bench/bench_train.py                          # 4 steps, 32 eval clips
    .venv/bin/python bench/bench_train.py --steps 3 --eval-clips 8 --train-clips 16
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass
class PathResult:
    name: str
    step_s: float  # median step after warm-up
    samples_per_s: float
    losses: list[float]
    note: str = ""


def build_store(train_clips: int, eval_clips: int, model: str) -> Path:
    """A cached store of synthetic Swedish speech (train + validation)."""
    from whisper_sv.core.fsutil import cache_dir
    from whisper_sv.data.features import BuildOptions, build_store
    from whisper_sv.data.sources import open_source

    out = cache_dir() / f"bench-train-store-{train_clips}-{eval_clips}"
    if (out / "manifest.json").is_file():
        return out
    source = open_source("synthetic", train=train_clips, validation=eval_clips, test=0)
    options = BuildOptions(model=model, splits=("train", "validation"), progress=True)
    print(f"building a synthetic store in {out} ...", file=sys.stderr)
    build_store(source, out, options)
    return out


# --------------------------------------------------------------------------- blog recipe


def _blog_collator(processor: Any, decoder_start_token_id: int):
    """The blog's ``DataCollatorSpeechSeq2SeqWithPadding``, verbatim in behaviour."""

    def collate(features: list[dict]) -> dict:
        input_features = [{"input_features": f["input_features"].numpy()} for f in features]
        batch = processor.feature_extractor.pad(input_features, return_tensors="pt")
        label_features = [{"input_ids": f["labels"].tolist()} for f in features]
        labels_batch = processor.tokenizer.pad(label_features, return_tensors="pt")
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        if (labels[:, 0] == decoder_start_token_id).all().cpu().item():
            labels = labels[:, 1:]
        batch["labels"] = labels
        return batch

    return collate


def _blog_trainer(model_ref: str, train_ds: Any, args: argparse.Namespace, out: str):
    import torch
    from transformers import (
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        TrainerCallback,
        WhisperForConditionalGeneration,
    )

    from whisper_sv.core.text import wer
    from whisper_sv.models.references import load_processor, transformers_dir

    folder = transformers_dir(model_ref)
    processor = load_processor(model_ref)
    if processor.tokenizer.pad_token is None:
        # The hub's Whisper tokenizers (what the blog loads) pad with <|endoftext|>.
        processor.tokenizer.pad_token = "<|endoftext|>"
    model = WhisperForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32)
    model.generation_config.language = "sv"
    model.generation_config.task = "transcribe"
    model.generation_config.forced_decoder_ids = None
    cuda = torch.cuda.is_available()
    training_args = Seq2SeqTrainingArguments(
        output_dir=out,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        warmup_steps=0,
        max_steps=args.steps,
        gradient_checkpointing=True,
        fp16=cuda,
        eval_strategy="no",
        per_device_eval_batch_size=8,
        predict_with_generate=True,
        generation_max_length=225,
        save_strategy="no",
        logging_steps=1,
        report_to=[],
        dataloader_num_workers=0,
        seed=0,
    )

    def compute_metrics(pred: Any) -> dict:
        pred_ids = pred.predictions
        label_ids = pred.label_ids
        label_ids[label_ids == -100] = processor.tokenizer.pad_token_id
        pred_str = processor.tokenizer.batch_decode(pred_ids, skip_special_tokens=True)
        label_str = processor.tokenizer.batch_decode(label_ids, skip_special_tokens=True)
        return {"wer": wer(label_str, pred_str)}

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = [time.perf_counter()]

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.ends = [time.perf_counter()]

        def on_step_end(self, *a: Any, **k: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    timer = StepTimes()
    trainer = Seq2SeqTrainer(
        args=training_args,
        model=model,
        train_dataset=train_ds,
        data_collator=_blog_collator(processor, model.config.decoder_start_token_id),
        compute_metrics=compute_metrics,
        processing_class=processor,
        callbacks=[timer],
    )
    return trainer, timer


def run_blog_training(model_ref: str, train_ds: Any, args: argparse.Namespace) -> PathResult:
    with tempfile.TemporaryDirectory() as out:
        trainer, timer = _blog_trainer(model_ref, train_ds, args, out)
        trainer.train()
        steps = [b - a for a, b in zip(timer.ends, timer.ends[1:], strict=False)]
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        del trainer
    gc.collect()
    step = statistics.median(steps[1:] or steps)
    return PathResult(
        "blog recipe (Seq2SeqTrainer, gradient checkpointing)", step, args.batch / step, losses
    )


def run_blog_eval(model_ref: str, val_ds: Any, args: argparse.Namespace) -> tuple[float, float]:
    """(seconds, WER) of the blog's generate-based evaluation."""
    with tempfile.TemporaryDirectory() as out:
        trainer, _ = _blog_trainer(model_ref, val_ds, args, out)
        t0 = time.perf_counter()
        metrics = trainer.evaluate(eval_dataset=val_ds)
        seconds = time.perf_counter() - t0
        del trainer
    gc.collect()
    return seconds, float(metrics["eval_wer"])


# --------------------------------------------------------------------------- ours


def run_ours(
    name: str, store: Path, model_ref: str, args: argparse.Namespace, **options: Any
) -> PathResult:
    from whisper_sv.train.run import TrainConfig, train

    cfg = TrainConfig(
        lr=args.lr,
        warmup_steps=0,
        batch_size=args.batch,
        max_steps=args.steps,
        eval_steps=10**6,
        save_steps=10**6,
        validate=False,
        export_ct2=False,
        keep_checkpoints=1,
        precision=args.precision,
        **options,
    )
    with tempfile.TemporaryDirectory() as out:
        result = train(store, Path(out) / "run", model=model_ref, config=cfg, progress=False)
        info = yaml.safe_load((result.run / "config.yaml").read_text(encoding="utf-8"))
    gc.collect()
    name = f"{name} [{info.get('precision', '?')}]"  # what precision auto chose here
    times = result.step_seconds[1:] or result.step_seconds
    step = statistics.median(times)
    note = ""
    if result.encode_seconds > 0.05:  # the cache covers the whole train split, once
        note = f"one-time encoder pass: {result.encode_seconds:.1f} s for the train split"
    clips_per_item = 1.0
    if cfg.pack_clips > 1:  # a batch item is a window of several clips: count clips
        from whisper_sv.data.store import FeatureStore
        from whisper_sv.train.data_plan import train_windows

        windows = train_windows(FeatureStore(store), cfg) or []
        clips_per_item = sum(len(w) for w in windows) / max(1, len(windows))
        note += f"; {clips_per_item:.1f} clips per window (loss is per window, not comparable)"
    return PathResult(name, step, args.batch * clips_per_item / step, list(result.losses), note)


def run_ours_eval(model_ref: str, val_ds: Any, n: int, precision: str) -> tuple[float, float]:
    import contextlib

    import torch

    from whisper_sv.core.runtime import resolve_precision
    from whisper_sv.models.references import load_model
    from whisper_sv.train.run import evaluate_dataset

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = load_model(model_ref, device=device)
    # The precision train() evaluates in (its evaluations run under the same autocast).
    chosen = resolve_precision(precision, device == "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(chosen)
    ctx = torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext()
    print(f"# our evaluation runs in {chosen}")
    with ctx:
        res = evaluate_dataset(model, processor, val_ds, indices=range(n), batch_size=16)
    del model
    gc.collect()
    return res.seconds, res.wer


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", type=Path, help="feature store (default: a synthetic one)")
    ap.add_argument("--model", default="bundled:base")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="steps per path, the first a warm-up")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--train-clips", type=int, default=32, help="size of the synthetic store")
    ap.add_argument("--eval-clips", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--skip", default="", help="comma list of: blog,full,cached,packed,eval")
    ap.add_argument("--pack", type=int, default=8, help="pack_clips of the packed path")
    ap.add_argument(
        "--precision", default="auto", help="our paths' precision (auto, fp32, bf16, fp16)"
    )
    ap.add_argument("--extras", action="store_true", help="also frozen-live, frozen embeddings")
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from whisper_sv.data.store import FeatureStore

    store = args.features or build_store(args.train_clips, args.eval_clips, args.model)
    fs = FeatureStore(store)
    train_ds = fs.torch_dataset("train")
    val_ds = fs.torch_dataset("validation")
    n_eval = min(args.eval_clips, len(val_ds))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(
        f"# store {store}: {len(train_ds)} train / {len(val_ds)} validation clips; model "
        f"{args.model}; batch {args.batch}; {args.steps} steps per path (first = warm-up); "
        f"{device}, {torch.get_num_threads()} torch threads, load average "
        f"{os.getloadavg()[0]:.1f}"
    )

    results: list[PathResult] = []
    if "blog" not in skip:
        results.append(run_blog_training(args.model, train_ds, args))
    if "full" not in skip:
        results.append(run_ours("whisper-sv, full fine-tuning", store, args.model, args))
    if "cached" not in skip:
        results.append(
            run_ours(
                "whisper-sv, frozen encoder, cached outputs",
                store,
                args.model,
                args,
                freeze_encoder=True,
            )
        )
    if "packed" not in skip:
        results.append(
            run_ours(
                f"whisper-sv, frozen encoder, cached, packed (up to {args.pack} clips a window)",
                store,
                args.model,
                args,
                freeze_encoder=True,
                pack_clips=args.pack,
            )
        )
    if args.extras:
        results.append(
            run_ours(
                "whisper-sv, frozen encoder, run live",
                store,
                args.model,
                args,
                freeze_encoder=True,
                cache_encoder=False,
            )
        )
        results.append(
            run_ours(
                "whisper-sv, full, token embeddings frozen",
                store,
                args.model,
                args,
                train_embeddings=False,
            )
        )
    base = results[0].samples_per_s if results and "blog" not in skip else None
    samples = args.batch * args.steps
    print()
    print(f"| path | s/step | clips/s | vs blog | loss at step {args.steps} ({samples} items) |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        ratio = f"{r.samples_per_s / base:.2f}x" if base else "-"
        loss = f"{r.losses[-1]:.4f}" if r.losses else "-"
        print(f"| {r.name} | {r.step_s:.2f} | {r.samples_per_s:.2f} | {ratio} | {loss} |")
    for r in results:
        if r.note:
            print(f"- {r.name}: {r.note}")

    if "eval" not in skip:
        print()
        ours_s, ours_wer = run_ours_eval(args.model, val_ds, n_eval, args.precision)
        blog_s, blog_wer = run_blog_eval(args.model, _Subset(val_ds, n_eval), args)
        print(f"| evaluation of {n_eval} clips | seconds | s per 32 clips | vs blog | WER |")
        print("|---|---:|---:|---:|---:|")
        print(
            f"| blog: trainer.evaluate (generate, max 225) | {blog_s:.1f} | "
            f"{blog_s * 32 / n_eval:.1f} | 1.00x | {blog_wer:.2f} |"
        )
        print(
            f"| whisper-sv: batched greedy, bounded | {ours_s:.1f} | {ours_s * 32 / n_eval:.1f} | "
            f"{blog_s / ours_s:.2f}x | {ours_wer:.2f} |"
        )


class _Subset:
    """The first ``n`` items of a dataset (what Trainer.evaluate and our evaluation both read)."""

    def __init__(self, ds: Any, n: int) -> None:
        self.ds, self.n = ds, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if i >= self.n:
            raise IndexError(i)
        return self.ds[i]


if __name__ == "__main__":
    main()
