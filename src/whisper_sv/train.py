"""The training pipeline: a feature store in, a run folder out.

:func:`train` reads only the feature store (log-mel + labels, made by ``whisper-sv features``),
fine-tunes a Whisper model with a plain PyTorch loop driven by Accelerate (one process, or
data-parallel under ``torchrun``/``accelerate launch`` with no code change), and writes the run
folder described in :mod:`whisper_sv.registry`: checkpoints, metrics, curves, ``best/``, the
model card and the CTranslate2 export.

Where the time goes, and what is done about it (2 CPU cores, whisper-base, batch 4, facts.md):

- a full training step costs 9.5 s; with the encoder frozen 4.0 s; with the encoder frozen
  *and* its outputs computed once per clip and reused (``cache_encoder``) 1.65 s, because the
  encoder forward (2.4 s per batch of 4) is then paid once per clip instead of once per epoch
  and evaluation;
- the Hugging Face blog's evaluation (``predict_with_generate``, up to 225 new tokens) took
  66 s per 32 clips. Evaluation here runs the encoder once per batch for both the validation
  loss and a batched greedy decode with a KV cache, bounded by the longest reference + a
  margin, with no temperature fallback, and stops when every clip has ended.

Resume is exact: a checkpoint holds the trainable weights, optimizer, scheduler, grad scaler,
every process's RNG state, the data position and the metrics so far, and the data order is a
pure function of (seed, epoch), so training N steps straight or N/2 + resume gives the same
weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from whisper_sv import registry
from whisper_sv.guards import GuardSpec
from whisper_sv.registry import MetricsRow, RunFolder

if TYPE_CHECKING:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from whisper_sv.store import FeatureStore

log = logging.getLogger(__name__)

__all__ = [
    "EvalResult",
    "TrainConfig",
    "TrainResult",
    "evaluate_dataset",
    "export_run",
    "greedy_decode",
    "train",
]

LABEL_MARGIN_TOKENS = 10  # greedy decoding may run this many tokens past the longest reference
MAX_DECODER_POSITIONS = 448  # Whisper's decoder context (prompt + text + <|endoftext|>)

# Options a re-run may change and still continue the same run (how long, how often, where to).
RESUMABLE_KEYS = frozenset(
    {
        "max_steps",
        "epochs",
        "patience",
        "eval_steps",
        "save_steps",
        "eval_limit",
        "eval_batch_size",
        "eval_max_new_tokens",
        "keep_checkpoints",
        "export_ct2",
        "ct2_quantization",
        "num_workers",
        "cache_dir",
    }
)


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class TrainConfig:
    """Training options (``whisper-sv train --config train.yaml --set key=value``).

    Defaults follow the Hugging Face blog recipe for fine-tuning Whisper (lr 1e-5, 500
    warm-up steps, batch 16, 4000 steps, evaluation every 500) where it has one.
    """

    # optimisation
    lr: float = 1e-5  # peak learning rate (AdamW)
    warmup_steps: int = 500  # linear warm-up from 0 to lr over this many optimizer steps
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"  # decay after warm-up
    batch_size: int = 16  # clips per process per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 4000  # optimizer steps to train; 0: use ``epochs``
    epochs: float = 0.0  # passes over the train split (used when max_steps is 0)
    weight_decay: float = 0.0  # AdamW weight decay (not applied to biases and norms)
    max_grad_norm: float = 1.0  # gradient clipping; 0 turns it off
    seed: int = 42  # data order, dropout, LoRA init
    # evaluation and checkpoints
    eval_steps: int = 500  # evaluate on the validation split every this many steps
    save_steps: int = 500  # write a checkpoint every this many steps
    validate: bool = True  # evaluate on the validation split; false: best/ is the last step
    eval_at_start: bool = False  # evaluate the starting model too (a step-0 baseline row)
    eval_limit: int = 0  # validation clips used (the first N); 0: all
    eval_batch_size: int = 16  # clips per batch in evaluation
    eval_beam_size: int = 1  # beams in evaluation decoding; 1 is greedy (fast, what is used)
    eval_max_new_tokens: int = 225  # hard cap on decoded tokens (the blog's generation length)
    patience: int = 0  # stop after this many evaluations without a better WER; 0: never
    keep_checkpoints: int = 2  # newest checkpoints kept on disk; 0 keeps all
    # what is trained
    freeze_encoder: bool = False  # train the decoder only (4.0 s vs 9.5 s a step on CPU)
    cache_encoder: bool = True  # with freeze_encoder: encode each clip once, reuse (1.65 s/step)
    train_embeddings: bool = True  # train the tied 51865 x d token embeddings / output layer
    # Join up to N training clips into one 30 s window (1: off). Short clips leave most of
    # Whisper's fixed 30 s window as padding, yet the encoder and the cross-attention pay for
    # all of it: packed, N clips cost about one (packing.py). batch_size then counts windows.
    pack_clips: int = 1
    lora_rank: int = 0  # LoRA adapters of this rank instead of full fine-tuning; 0: off
    lora_alpha: float = 32.0  # LoRA scaling numerator (scale = alpha / rank)
    lora_dropout: float = 0.05  # dropout on the LoRA input
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  # module names that get adapters
    # regularisation
    dropout: float = 0.0  # Whisper's dropout (residual and attention), as in its config
    spec_augment: bool = False  # SpecAugment masking of the log-mel in training
    mask_time_prob: float = 0.05  # SpecAugment: share of frames masked
    mask_time_length: int = 10  # SpecAugment: frames per time mask
    mask_feature_prob: float = 0.0  # SpecAugment: share of mel bins masked
    mask_feature_length: int = 10  # SpecAugment: bins per feature mask
    # machine
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, slower
    # auto: bf16 (else fp16) on CUDA; on CPU bf16 where the CPU has bf16 instructions
    # (AVX512-BF16, AMX), else fp32. Weights and optimizer state stay fp32 (autocast).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present
    num_workers: int = -1  # DataLoader processes reading the store; -1: 0 on CPU, 4 on CUDA
    cache_dir: str = ""  # where cached encoder outputs go; "": RUN/cache (removed at the end)
    # Real-speech guards (guards.py): real sets scored at every evaluation; best/ is the best
    # validation model among those whose guards stay within the tolerances of step 0.
    guards: tuple[GuardSpec, ...] = ()  # NAME=PATH[,translate][,split=S][,limit=N] or mappings
    guard_tolerance: float = 0.5  # WER points a guard may lose against step 0 (see guards.py)
    guard_chrf_tolerance: float = 10.0  # translate chrF points a guard may lose against step 0
    guard_patience: int = 0  # stop after N evaluations in a row with a regressed guard; 0: never
    # Weight-space interpolation with the start model (WiSE-FT, Wortsman et al. 2022): after
    # training, w = a * fine-tuned + (1 - a) * start for each a here, scored on validation and
    # guards; the best one within the guards' tolerances becomes best/ if it beats the rest.
    interpolate: tuple[float, ...] = ()  # e.g. [0.25, 0.5, 0.75]; () turns it off
    # Anti-forgetting in the labels (packing.py): this share of training windows is labelled
    # with Whisper's timestamps (keeps segment timestamps and long-form decoding) ...
    timestamp_share: float = 0.0
    # ... and this share with the start model's own English translation under the translate
    # task (keeps translation); needs the cached-encoder path (freeze_encoder + cache_encoder).
    translate_share: float = 0.0
    # outputs
    export_ct2: bool = True  # write RUN/ct2 (CTranslate2 export of best/) at the end
    ct2_quantization: str = "float16"  # export type; quantise at load time (facts.md)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def uses_encoder_cache(self) -> bool:
        """Whether training reads cached encoder outputs instead of running the encoder."""
        return self.freeze_encoder and self.cache_encoder


def _validate(c: TrainConfig) -> None:
    """Every check on TrainConfig, each error naming the fix."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(msg)

    need(c.lr > 0 and math.isfinite(c.lr), f"lr must be a positive number (got {c.lr}), e.g. 1e-5")
    need(c.warmup_steps >= 0, f"warmup_steps must be >= 0 (got {c.warmup_steps})")
    need(c.batch_size >= 1, f"batch_size must be >= 1 (got {c.batch_size})")
    need(c.grad_accum >= 1, f"grad_accum must be >= 1 (got {c.grad_accum})")
    need(c.max_steps >= 0, f"max_steps must be >= 0 (got {c.max_steps}); 0 uses epochs")
    need(c.epochs >= 0, f"epochs must be >= 0 (got {c.epochs})")
    need(
        c.max_steps > 0 or c.epochs > 0,
        "set max_steps (optimizer steps) or epochs (passes over the data): both are 0",
    )
    need(c.weight_decay >= 0, f"weight_decay must be >= 0 (got {c.weight_decay})")
    need(c.max_grad_norm >= 0, f"max_grad_norm must be >= 0 (got {c.max_grad_norm}); 0 is off")
    need(c.eval_steps >= 1, f"eval_steps must be >= 1 (got {c.eval_steps}), e.g. 500")
    need(c.save_steps >= 1, f"save_steps must be >= 1 (got {c.save_steps}), e.g. 500")
    need(c.eval_limit >= 0, f"eval_limit must be >= 0 (got {c.eval_limit}); 0 uses all clips")
    need(c.eval_batch_size >= 1, f"eval_batch_size must be >= 1 (got {c.eval_batch_size})")
    need(c.eval_beam_size >= 1, f"eval_beam_size must be >= 1 (got {c.eval_beam_size})")
    need(
        1 <= c.eval_max_new_tokens <= MAX_DECODER_POSITIONS - 4,
        f"eval_max_new_tokens must be 1..{MAX_DECODER_POSITIONS - 4} (got {c.eval_max_new_tokens})",
    )
    need(c.patience >= 0, f"patience must be >= 0 (got {c.patience}); 0 turns it off")
    need(c.keep_checkpoints >= 0, f"keep_checkpoints must be >= 0 (got {c.keep_checkpoints})")
    need(c.pack_clips >= 1, f"pack_clips must be >= 1 (got {c.pack_clips}); 1 is off")
    need(c.lora_rank >= 0, f"lora_rank must be >= 0 (got {c.lora_rank}); 0 is off")
    need(c.lora_alpha > 0, f"lora_alpha must be > 0 (got {c.lora_alpha})")
    need(0 <= c.lora_dropout < 1, f"lora_dropout must be in [0, 1) (got {c.lora_dropout})")
    need(
        c.lora_rank == 0 or len(c.lora_targets) > 0,
        "lora_targets is empty: name the modules to adapt, e.g. [q_proj, v_proj]",
    )
    need(0 <= c.dropout < 1, f"dropout must be in [0, 1) (got {c.dropout})")
    for name in ("mask_time_prob", "mask_feature_prob"):
        v = getattr(c, name)
        need(0 <= v <= 1, f"{name} must be in [0, 1] (got {v})")
    for name in ("mask_time_length", "mask_feature_length"):
        need(getattr(c, name) >= 1, f"{name} must be >= 1 (got {getattr(c, name)})")
    need(
        not (c.spec_augment and c.uses_encoder_cache),
        "spec_augment masks the log-mel before the encoder, so it cannot use cached encoder "
        "outputs: set cache_encoder: false (or spec_augment: false)",
    )
    need(c.num_workers >= -1, f"num_workers must be >= -1 (got {c.num_workers}); -1 is auto")
    names = [g.name for g in c.guards]
    twice = sorted({n for n in names if names.count(n) > 1})
    need(not twice, f"two guards named {', '.join(map(repr, twice))}: give each guard its own name")
    need(
        c.guard_tolerance >= 0, f"guard_tolerance must be >= 0 WER points (got {c.guard_tolerance})"
    )
    need(
        c.guard_chrf_tolerance >= 0,
        f"guard_chrf_tolerance must be >= 0 chrF points (got {c.guard_chrf_tolerance})",
    )
    need(c.guard_patience >= 0, f"guard_patience must be >= 0 (got {c.guard_patience}); 0 is off")
    need(
        all(0 < a < 1 for a in c.interpolate),
        f"interpolate weights must be between 0 and 1 (got {list(c.interpolate)}), e.g. [0.25, 0.5]",
    )
    for name in ("timestamp_share", "translate_share"):
        need(0 <= getattr(c, name) <= 1, f"{name} must be in [0, 1] (got {getattr(c, name)})")
    need(
        c.translate_share == 0 or c.uses_encoder_cache,
        "translate_share labels windows from cached encoder outputs: set freeze_encoder: true "
        "and cache_encoder: true (or translate_share: 0)",
    )
    allowed = ("float16", "float32", "bfloat16", "int8_float16", "int8", "int8_float32")
    need(
        c.ct2_quantization in allowed,
        f"ct2_quantization {c.ct2_quantization!r}; use one of {', '.join(allowed)}",
    )


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class EvalResult:
    """One evaluation pass over validation clips."""

    val_loss: float  # mean token cross-entropy (teacher forced)
    wer: float  # percent, normalised text
    cer: float  # percent, normalised text
    n: int  # clips evaluated
    seconds: float  # wall time of the pass
    references: tuple[str, ...] = field(repr=False, default=())
    hypotheses: tuple[str, ...] = field(repr=False, default=())


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did."""

    run: Path  # the run folder
    step: int  # optimizer steps done in total
    max_steps: int  # the planned number of steps
    resumed_from: int  # step of the checkpoint it continued from (0: fresh start)
    stopped_early: bool  # early stopping (patience) ended the run
    best_step: int | None  # step of best/ (None: no validation)
    best_wer: float | None  # validation WER of best/
    rows: tuple[MetricsRow, ...]  # the metrics table
    world_size: int  # data-parallel processes
    train_seconds: float  # wall time of the steps run in this call (evaluations included)
    samples: int  # clips trained on in this call (all processes)
    config: TrainConfig  # options used
    encode_seconds: float = 0.0  # one-time encoder pass over the clips (cache_encoder)
    step_seconds: tuple[float, ...] = ()  # each optimizer step of this call (data + fwd/bwd/update)
    losses: tuple[float, ...] = ()  # each step's training loss in this call

    @property
    def step_samples_per_s(self) -> float:
        """Clips per second of the steps alone (median step, the first one left out as warm-up
        when there are more), without evaluation, checkpoints and encoder caching."""
        times = sorted(self.step_seconds[1:] or self.step_seconds)
        if not times:
            return 0.0
        per_step = self.config.batch_size * self.config.grad_accum * self.world_size
        return per_step / times[len(times) // 2]

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.train_seconds if self.train_seconds > 0 else 0.0


# --------------------------------------------------------------------------- store


def open_store(path: str | os.PathLike) -> FeatureStore:
    """The feature store at ``path``, checked for a non-empty train split."""
    from whisper_sv.store import FeatureStore, StoreError, read_shard_info

    p = Path(path)
    if not p.exists():
        raise StoreError(
            f"feature store {p} does not exist; make one with `whisper-sv features --out {p}`"
        )
    try:
        store = FeatureStore(p)
    except (KeyError, TypeError) as e:
        raise StoreError(f"{p}: damaged manifest.json ({e}); rebuild the store") from e
    if "train" not in store.splits() or store.num_rows("train") == 0:
        raise StoreError(f"{p} has no train clips (splits: {store.splits()}); nothing to train on")
    for split in ("train", "validation"):
        if split not in store.splits():
            continue
        for shard in store.shards(split):  # footers only: cheap, and finds a damaged file now
            if not shard.is_file():
                raise StoreError(f"{shard} is missing; re-run `whisper-sv features` on {p}")
            read_shard_info(shard)
    return store


def store_id(store: FeatureStore) -> str:
    """Identity of a store's content: feature config hash + every shard and its row count."""
    m = store.manifest
    data = {
        "config": store.config.hash(),
        "splits": {s: m["splits"][s].get("shards", []) for s in store.splits()},
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _check_store_fits(store: FeatureStore, processor: WhisperProcessor, n_mels: int) -> None:
    """Refuse a store made for another model (mel bins or tokenizer)."""
    from whisper_sv.store import StoreError

    if store.config.n_mels != n_mels:
        raise StoreError(
            f"{store.path} holds {store.config.n_mels}-bin log-mel, the model takes {n_mels}; "
            f"rebuild the store for this model with `whisper-sv features --model ...`"
        )
    try:
        from whisper_sv.features import FeatureConfig
    except ImportError:  # pragma: no cover
        return
    if not store.config.tokenizer:
        return
    want = FeatureConfig.from_processor(processor).tokenizer
    if want and want != store.config.tokenizer:
        raise StoreError(
            f"{store.path} was tokenized with another tokenizer ({store.config.tokenizer[:12]}) "
            f"than the model's ({want[:12]}); rebuild the store with this model's tokenizer"
        )


# --------------------------------------------------------------------------- data order


class _Order:
    """The training data stream: epoch after epoch of a shard-aware shuffle.

    Position ``p`` of the stream is clip ``perm(p // n)[p % n]``, where ``perm(e)`` is a pure
    function of (seed, e): shards in random order, rows shuffled within each shard (each shard
    is read once per epoch). A resume needs only the position.
    """

    def __init__(self, offsets: np.ndarray, seed: int) -> None:
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.n = int(self.offsets[-1])
        self.seed = seed
        self._epoch = -1
        self._perm = np.arange(self.n)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            shards = np.arange(len(self.offsets) - 1)
            rng.shuffle(shards)
            parts = []
            for k in shards:
                rows = np.arange(self.offsets[k], self.offsets[k + 1])
                rng.shuffle(rows)
                parts.append(rows)
            self._perm = np.concatenate(parts) if parts else np.arange(0)
            self._epoch = epoch
        return self._perm

    def take(self, start: int, count: int) -> list[int]:
        """Clip indices at stream positions ``start .. start + count - 1``."""
        out = []
        for p in range(start, start + count):
            epoch, off = divmod(p, self.n)
            out.append(int(self._permutation(epoch)[off]))
        return out


class _RankBatches:
    """Batch sampler for one process: micro-batch ``k`` from stream position ``cursor``.

    Each micro-batch of the whole job is ``batch_size * world`` consecutive positions; process
    ``rank`` takes its slice. Infinite: the training loop decides when to stop.
    """

    def __init__(self, order: _Order, cursor: int, batch_size: int, world: int, rank: int):
        self.order, self.cursor = order, cursor
        self.batch_size, self.world, self.rank = batch_size, world, rank

    def __iter__(self) -> Iterator[list[int]]:
        cursor = self.cursor
        while True:
            yield self.order.take(cursor + self.rank * self.batch_size, self.batch_size)
            cursor += self.batch_size * self.world


# --------------------------------------------------------------------------- encoder cache


@dataclass
class _Encoded:
    """Encoder outputs of some clips, (N, frames, d_model) float16 on disk, and their labels."""

    hidden: np.ndarray  # memory-mapped (N, 1500, d_model) float16
    labels: list[list[int]]  # label ids per clip (with <|startoftranscript|>)


def _model_fingerprint(folder: Path) -> list[Any]:
    files = [folder / n for n in ("config.json", "model.safetensors") if (folder / n).is_file()]
    return [str(folder.resolve())] + [
        [f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files
    ]


def _encode_clips(
    model: WhisperForConditionalGeneration,
    dataset: Any,
    indices: Sequence[int],
    folder: Path,
    key: dict[str, Any],
    *,
    batch_size: int,
    accelerator: Any,
    progress: bool,
    desc: str,
) -> _Encoded:
    """Encoder outputs of ``dataset[indices]``, computed once (all processes share the work).

    Cached under ``folder/encoder-<hash of key>/``: a later run (a resume, another trial of a
    search) with the same model, store and clips reads them back instead of encoding again.
    """
    import torch
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from whisper_sv.store import collate

    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    cache = folder / f"encoder-{digest[:16]}"
    done = cache / "done.json"
    base = _base(model)
    frames = base.config.max_source_positions
    d = base.config.d_model
    shape = (len(indices), frames, d)
    if done.is_file():
        log.info("using cached encoder outputs in %s", cache)
        labels = json.loads((cache / "labels.json").read_text(encoding="utf-8"))
        hidden = np.load(cache / "hidden.npy", mmap_mode="r")
        if hidden.shape == shape and len(labels) == len(indices):
            return _Encoded(hidden=hidden, labels=labels)
        log.warning("cached encoder outputs in %s do not match; encoding again", cache)
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        if cache.exists():
            shutil.rmtree(cache)
        cache.mkdir(parents=True)
        np.lib.format.open_memmap(cache / "hidden.npy", mode="w+", dtype=np.float16, shape=shape)
    accelerator.wait_for_everyone()
    hidden = np.load(cache / "hidden.npy", mmap_mode="r+")
    mine = list(range(rank, len(indices), world))  # positions in ``indices`` this process does
    loader = DataLoader(
        Subset(dataset, [indices[i] for i in mine]),
        batch_size=batch_size,
        collate_fn=collate,
    )
    encoder = base.get_encoder()
    labels: dict[int, list[int]] = {}
    pos = 0
    t0 = time.perf_counter()
    with torch.no_grad(), accelerator.autocast():
        for batch in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
            feats = batch["input_features"].to(accelerator.device)
            out = encoder(feats).last_hidden_state
            rows = mine[pos : pos + len(feats)]
            hidden[rows[0] : rows[-1] + 1 : world] = out.float().cpu().numpy().astype(np.float16)
            for r, lab in zip(rows, batch["labels"], strict=True):
                labels[r] = [int(t) for t in lab if t >= 0]
            pos += len(feats)
    hidden.flush()
    log.info("encoded %d clips in %.1f s", len(mine), time.perf_counter() - t0)
    all_labels = _gather_objects(accelerator, labels)
    merged: dict[int, list[int]] = {}
    for part in all_labels:
        merged.update(part)
    if accelerator.is_main_process:
        ordered = [merged[i] for i in range(len(indices))]
        registry.write_text_atomic(cache / "labels.json", json.dumps(ordered))
        registry.write_text_atomic(done, json.dumps({"key": key, "clips": len(indices)}))
    accelerator.wait_for_everyone()
    return _Encoded(
        hidden=np.load(cache / "hidden.npy", mmap_mode="r"),
        labels=[merged[i] for i in range(len(indices))],
    )


def _gather_objects(accelerator: Any, obj: Any) -> list[Any]:
    """``obj`` of every process, in rank order (just ``[obj]`` in a single process)."""
    if accelerator.num_processes == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * accelerator.num_processes
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------- labels


def _pad_labels(labels: Sequence[Sequence[int]]) -> torch.Tensor:
    import torch

    width = max(len(x) for x in labels)
    out = torch.full((len(labels), width), -100, dtype=torch.long)
    for i, x in enumerate(labels):
        out[i, : len(x)] = torch.as_tensor(list(x), dtype=torch.long)
    return out


def _strip_sot(labels: torch.Tensor, sot: int) -> torch.Tensor:
    """Drop a leading ``<|startoftranscript|>``: the model prepends it when it shifts labels.

    (What the Hugging Face blog's collator does; without it the model learns to predict SOT.)
    """
    if labels.shape[1] > 0 and bool((labels[:, 0] == sot).all()):
        return labels[:, 1:]
    return labels


# --------------------------------------------------------------------------- decoding


def _prompt_ids(processor: WhisperProcessor, language: str, task: str) -> list[int]:
    tok = processor.tokenizer
    names = ["<|startoftranscript|>", f"<|{language}|>", f"<|{task}|>", "<|notimestamps|>"]
    ids = tok.convert_tokens_to_ids(names)
    unknown = [n for n, i in zip(names, ids, strict=True) if i is None or i == tok.unk_token_id]
    if unknown:
        raise ValueError(f"the tokenizer has no {unknown}; check the store's language/task")
    return [int(i) for i in ids]


def _suppress_lists(model: Any, eot: int, vocab: int) -> tuple[list[int], list[int]]:
    """Tokens never emitted (the model's suppress list + every special/timestamp token but
    <|endoftext|>) and tokens not emitted first (space, <|endoftext|>), as in Whisper."""
    gc = getattr(model, "generation_config", None)
    suppress = {int(t) for t in (getattr(gc, "suppress_tokens", None) or []) if 0 <= t < vocab}
    suppress.update(range(eot + 1, vocab))
    begin = [int(t) for t in (getattr(gc, "begin_suppress_tokens", None) or [220, eot])]
    return sorted(suppress), begin


def greedy_decode(
    model: WhisperForConditionalGeneration,
    encoder_hidden: torch.Tensor,
    prompt: Sequence[int],
    *,
    max_new_tokens: int,
    eot_id: int,
    suppress_ids: Sequence[int] = (),
    begin_suppress_ids: Sequence[int] = (),
) -> list[list[int]]:
    """Batched greedy decoding from encoder outputs (B, frames, d) with a KV cache.

    Returns the text tokens of each clip (no prompt, no ``<|endoftext|>``). Stops when every
    clip has produced ``<|endoftext|>`` or after ``max_new_tokens``; no temperature fallback.
    """
    import torch

    b = encoder_hidden.shape[0]
    device = encoder_hidden.device
    inp = torch.tensor([list(prompt)] * b, dtype=torch.long, device=device)
    vocab = model.config.vocab_size
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    if suppress_ids:
        mask[torch.as_tensor(list(suppress_ids), device=device)] = True
    begin_mask = mask.clone()
    if begin_suppress_ids:
        begin_mask[torch.as_tensor(list(begin_suppress_ids), device=device)] = True
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    cache = None
    with torch.no_grad():
        for i in range(max_new_tokens):
            out = model(
                encoder_outputs=(encoder_hidden,),
                decoder_input_ids=inp,
                cache=cache,
                use_cache=True,
            )
            cache = out.cache
            logits = out.logits[:, -1].float()
            logits.masked_fill_(begin_mask if i == 0 else mask, float("-inf"))
            nxt = logits.argmax(-1)
            nxt = torch.where(finished, torch.full_like(nxt, eot_id), nxt)
            steps.append(nxt)
            finished |= nxt == eot_id
            if bool(finished.all()):
                break
            inp = nxt[:, None]
    if not steps:
        return [[] for _ in range(b)]
    tokens = torch.stack(steps, 1).tolist()
    result = []
    for row in tokens:
        cut = row.index(eot_id) if eot_id in row else len(row)
        result.append(row[:cut])
    return result


class _Evaluator:
    """Validation loss + WER/CER; the encoder runs once per batch (or not at all when cached)."""

    def __init__(
        self,
        processor: WhisperProcessor,
        model: Any,
        *,
        language: str,
        task: str,
        max_new_tokens: int,
        beam_size: int = 1,
    ) -> None:
        tok = processor.tokenizer
        self.tokenizer = tok
        self.sot = int(tok.convert_tokens_to_ids("<|startoftranscript|>"))
        self.eot = int(tok.convert_tokens_to_ids("<|endoftext|>"))
        self.prompt = _prompt_ids(processor, language, task)
        self.language, self.task = language, task
        self.max_new_tokens = max_new_tokens
        self.beam_size = beam_size
        self.suppress, self.begin = _suppress_lists(model, self.eot, model.config.vocab_size)

    def batch(
        self, model: Any, hidden: torch.Tensor, labels: torch.Tensor
    ) -> tuple[float, int, list[str], list[str]]:
        """(loss sum, label tokens, references, hypotheses) of one batch."""
        import torch

        labels = _strip_sot(labels.to(hidden.device), self.sot)
        with torch.no_grad():
            out = model(encoder_outputs=(hidden,), labels=labels, use_cache=False)
        n_tok = int((labels != -100).sum())
        loss_sum = float(out.loss) * n_tok
        longest = int((labels != -100).sum(1).max())
        # Labels hold the prompt tail (<|sv|><|transcribe|><|notimestamps|>), text and
        # <|endoftext|>; the text is at most `longest` tokens.
        budget = min(
            self.max_new_tokens,
            longest + max(LABEL_MARGIN_TOKENS, longest // 4),
            MAX_DECODER_POSITIONS - len(self.prompt),
        )
        if self.beam_size == 1:
            hyp_ids = greedy_decode(
                model,
                hidden,
                self.prompt,
                max_new_tokens=budget,
                eot_id=self.eot,
                suppress_ids=self.suppress,
                begin_suppress_ids=self.begin,
            )
        else:
            hyp_ids = self._beam(model, hidden, budget)
        refs = [
            self.tokenizer.decode([int(t) for t in row if t >= 0], skip_special_tokens=True)
            for row in labels.tolist()
        ]
        hyps = self.tokenizer.batch_decode(hyp_ids, skip_special_tokens=True)
        return loss_sum, n_tok, [r.strip() for r in refs], [h.strip() for h in hyps]

    def _beam(self, model: Any, hidden: torch.Tensor, budget: int) -> list[list[int]]:
        from transformers.modeling_outputs import BaseModelOutput

        out = model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            language=self.language,
            task=self.task,
            num_beams=self.beam_size,
            do_sample=False,
            max_new_tokens=budget,
            return_timestamps=False,
        )
        seqs = out.sequences if hasattr(out, "sequences") else out
        return [[int(t) for t in row if int(t) < self.eot] for row in seqs.tolist()]


def _finish_eval(
    parts: Sequence[tuple[float, int, list[str], list[str]]], seconds: float
) -> EvalResult:
    from whisper_sv.text import error_rates

    loss_sum = sum(p[0] for p in parts)
    n_tok = sum(p[1] for p in parts)
    refs = [r for p in parts for r in p[2]]
    hyps = [h for p in parts for h in p[3]]
    rates = error_rates(refs, hyps)
    return EvalResult(
        val_loss=loss_sum / max(n_tok, 1),
        wer=rates.wer,
        cer=rates.cer,
        n=len(refs),
        seconds=seconds,
        references=tuple(refs),
        hypotheses=tuple(hyps),
    )


def evaluate_dataset(
    model: WhisperForConditionalGeneration,
    processor: WhisperProcessor,
    dataset: Any,
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 225,
    language: str = "sv",
    task: str = "transcribe",
    beam_size: int = 1,
) -> EvalResult:
    """Validation loss and WER/CER of ``model`` on ``dataset`` items (log-mel + labels).

    The fast path :func:`train` uses: one encoder pass per batch serves the teacher-forced
    loss and the batched greedy decode.
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    from whisper_sv.store import collate

    device = next(model.parameters()).device
    ev = _Evaluator(
        processor,
        model,
        language=language,
        task=task,
        max_new_tokens=max_new_tokens,
        beam_size=beam_size,
    )
    subset = Subset(dataset, list(indices)) if indices is not None else dataset
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    parts = []
    try:
        with torch.no_grad():
            for batch in DataLoader(subset, batch_size=batch_size, collate_fn=collate):
                feats = batch["input_features"].to(device, dtype=next(model.parameters()).dtype)
                hidden = model.get_encoder()(feats).last_hidden_state
                parts.append(ev.batch(model, hidden, batch["labels"]))
    finally:
        model.train(was_training)
    return _finish_eval(parts, time.perf_counter() - t0)


# --------------------------------------------------------------------------- schedule


def _lr_lambda(schedule: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            # (step + 1): the first update already moves (the blog's schedule starts at lr 0).
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return f


# --------------------------------------------------------------------------- model setup


def _forget_other_precision(mixed: str) -> None:
    """Let this call use its own precision when an earlier one in the process used another.

    Accelerate keeps one process-wide state and refuses a second Accelerator with another
    mixed precision (a study whose trials differ in precision, a benchmark that runs the
    Trainer first). Only the precision part is dropped; the process group stays.
    """
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed:
        AcceleratorState._reset_state(reset_partial_state=False)


def _cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), Linux only.

    There, bf16 autocast ran a full fine-tuning step of Whisper base in 5.2 s against 8.9 s
    in fp32 (2 cores, AVX512-BF16), with the same losses to 2 decimals; without those
    instructions bf16 is emulated and slower than fp32.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def _resolve_precision(precision: str, cuda: bool) -> str:
    import torch

    if precision == "auto":
        if not cuda:
            return "bf16" if _cpu_has_native_bf16() else "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not cuda:
        raise ValueError("precision fp16 needs a CUDA device; on CPU use precision: bf16 or fp32")
    return precision


def _load_model(folder: Path, cfg: TrainConfig) -> WhisperForConditionalGeneration:
    """The model with the run's dropout / SpecAugment settings, trainable parts chosen."""
    from transformers import WhisperForConditionalGeneration

    overrides: dict[str, Any] = {
        "dropout": cfg.dropout,
        "attention_dropout": cfg.dropout,
        "apply_spec_augment": cfg.spec_augment,
        "mask_time_prob": cfg.mask_time_prob if cfg.spec_augment else 0.0,
        "mask_time_length": cfg.mask_time_length,
        "mask_feature_prob": cfg.mask_feature_prob if cfg.spec_augment else 0.0,
        "mask_feature_length": cfg.mask_feature_length,
    }
    model = WhisperForConditionalGeneration.from_pretrained(
        str(folder), local_files_only=True, dtype="float32", **overrides
    )
    if cfg.lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        targets: str | list[str] = list(cfg.lora_targets)
        if cfg.freeze_encoder:  # adapters in the decoder only: the encoder stays as it was
            targets = r".*decoder.*\.(" + "|".join(cfg.lora_targets) + r")$"
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
            bias="none",
        )
        model = get_peft_model(model, lora)
    else:
        if cfg.freeze_encoder:
            model.get_encoder().requires_grad_(False)
        if not cfg.train_embeddings:
            # Tied with proj_out: 26.6 M of base's 72.6 M parameters, a large share of the
            # AdamW update and of the output layer's weight gradient.
            model.get_decoder().embed_tokens.requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _base(model: Any) -> WhisperForConditionalGeneration:
    """The WhisperForConditionalGeneration under DDP and PEFT wrappers."""
    m = model.module if hasattr(model, "module") else model
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return m


def _set_train_mode(model: Any, cfg: TrainConfig) -> None:
    model.train()
    if cfg.freeze_encoder:
        # A frozen encoder runs as at inference (no dropout), so cached outputs equal live ones.
        _base(model).get_encoder().eval()


def _trainable(model: Any) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- the run


@dataclass
class _State:
    """What a checkpoint needs besides tensors (JSON)."""

    step: int = 0
    cursor: int = 0  # stream position of the next micro-batch (see _Order)
    loss_sum: float = 0.0  # training loss summed since the last metrics row
    loss_count: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_wer: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the best one (early stopping)
    stopped_early: bool = False
    world_size: int = 1


def _run_info(
    model_ref: str, model_dir: Path, store: FeatureStore, cfg: TrainConfig, max_steps: int
) -> dict[str, Any]:
    from whisper_sv import __version__
    from whisper_sv.config import to_dict

    return {
        "whisper_sv": __version__,
        "model": model_ref,
        "model_path": str(model_dir),
        "features": str(Path(store.path).resolve()),
        "store_config_hash": store.config.hash(),
        "store_id": store_id(store),
        "store_clips": {s: store.num_rows(s) for s in store.splits()},
        "language": store.config.language,
        "task": store.config.task,
        "planned_steps": max_steps,
        "train": to_dict(cfg),
    }


def _check_same_run(old: dict[str, Any], new: dict[str, Any], run: Path) -> None:
    """A re-run must continue the same training: same model, same store, same recipe."""
    if old.get("model") != new["model"] and old.get("model_path") != new["model_path"]:
        raise ValueError(
            f"{run} was trained from model {old.get('model')!r}, not {new['model']!r}; "
            f"use another --out for a new run (or omit --model to continue this one)"
        )
    if old.get("store_id") != new["store_id"]:
        raise ValueError(
            f"{run} was trained on the store {old.get('features')} (id {old.get('store_id')}), "
            f"not {new['features']} (id {new['store_id']}); use another --out for a new run"
        )
    from whisper_sv.config import to_dict

    # Options added since the run was made count as their defaults; removed ones are ignored.
    b = new["train"]
    a = {**to_dict(TrainConfig()), **{k: v for k, v in old.get("train", {}).items() if k in b}}
    changed = sorted(k for k in b if a.get(k) != b.get(k) and k not in RESUMABLE_KEYS)
    if changed:
        diffs = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed)
        raise ValueError(
            f"{run} was trained with other settings ({diffs}); continue it with the same "
            f"settings (only {', '.join(sorted(RESUMABLE_KEYS))} may change) or use another --out"
        )


def _prepare_run_folder(
    run: RunFolder, model: str | None, resume: bool
) -> tuple[dict[str, Any] | None, str]:
    """(previous config or None, model reference to use); errors for unusable folders."""
    from whisper_sv.models import DEFAULT_MODEL

    if run.path.exists() and not run.path.is_dir():
        raise ValueError(f"--out {run.path} is a file; give a folder for the run")
    if run.is_run():
        old = run.read_config()
        return old, model or old.get("model") or DEFAULT_MODEL
    if resume:
        raise ValueError(f"--resume: {run.path} holds no run (no {registry.CONFIG_FILE}) to resume")
    if run.path.is_dir() and any(run.path.iterdir()):
        raise ValueError(
            f"--out {run.path} exists and is not a run folder; choose a new or empty folder"
        )
    return None, model or DEFAULT_MODEL


def train(
    features: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str | None = None,
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune ``model`` on the feature store ``features``; write the run folder ``out``.

    An existing run at ``out`` is continued from its last complete checkpoint (``resume``
    only makes its absence an error); it must use the same model, store and settings
    (:data:`RESUMABLE_KEYS` may change). Every check happens before the model loads.
    Under ``torchrun --nproc_per_node N`` each process runs this same call (data-parallel).
    """
    import torch
    from accelerate import Accelerator

    from whisper_sv import models

    cfg = config or TrainConfig()
    run = RunFolder(out)
    old_info, model_ref = _prepare_run_folder(run, model, resume)
    store = open_store(features)
    mref = models.resolve(model_ref)
    model_dir = models.transformers_dir(mref)
    processor = models.load_processor(model_dir)
    model_cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    _check_store_fits(store, processor, int(model_cfg.get("num_mel_bins", 80)))
    has_val = cfg.validate and "validation" in store.splits() and store.num_rows("validation") > 0

    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda but no CUDA device is visible; use device: auto")
    precision = _resolve_precision(cfg.precision, cuda)
    mixed = {"fp32": "no"}.get(precision, precision)
    _forget_other_precision(mixed)
    accelerator = Accelerator(cpu=not cuda, mixed_precision=mixed)
    world = accelerator.num_processes
    main = accelerator.is_main_process
    if not main:  # one process reports; the others only warn
        log.setLevel(logging.WARNING)
    windows = _train_windows(store, cfg)
    n_train = len(windows) if windows is not None else store.num_rows("train")
    global_batch = cfg.batch_size * cfg.grad_accum * world
    max_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * n_train / global_batch))
    if cfg.warmup_steps >= max_steps and cfg.lr_schedule != "constant":
        raise ValueError(
            f"warmup_steps ({cfg.warmup_steps}) must be below the number of training steps "
            f"({max_steps}): lower warmup_steps or raise max_steps"
        )
    # A local model is recorded by absolute path: the run folder must work from any cwd.
    recorded = str(mref.path) if mref.path is not None else mref.ref
    info = _run_info(recorded, model_dir, store, cfg, max_steps)
    info["precision"] = precision
    info["world_size"] = world
    if old_info is not None:
        _check_same_run(old_info, info, run.path)
        info["model"] = old_info.get("model", info["model"])
    if main:
        run.recover()
        run.write_config(info)
    accelerator.wait_for_everyone()

    ckpt = run.latest_checkpoint()
    if resume and ckpt is None:
        log.info("%s has no complete checkpoint yet: starting from step 0", run.path)

    _seed_everything(cfg.seed)  # same LoRA init in every process
    net = _load_model(model_dir, cfg)
    _seed_everything(cfg.seed + accelerator.process_index)  # own dropout/SpecAugment masks
    trainable = _trainable(net)
    if not trainable:
        raise ValueError("nothing to train: every parameter is frozen")
    n_params = sum(p.numel() for p in trainable.values())
    log.info(
        "training %.1f M of %.1f M parameters, precision %s, %d process(es), %d steps",
        n_params / 1e6,
        sum(p.numel() for p in net.parameters()) / 1e6,
        precision,
        world,
        max_steps,
    )
    decay = [p for n, p in trainable.items() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in trainable.items() if not (p.ndim >= 2 and "norm" not in n)]
    optimizer = _adamw(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(cfg.lr_schedule, cfg.warmup_steps, max_steps)
    )
    net, optimizer = accelerator.prepare(net, optimizer)

    trainer = _Trainer(
        cfg=cfg,
        run=run,
        store=store,
        processor=processor,
        model=net,
        optimizer=optimizer,
        scheduler=scheduler,
        accelerator=accelerator,
        max_steps=max_steps,
        has_val=has_val,
        model_dir=model_dir,
        info=info,
        progress=progress and main,
        windows=windows,
    )
    resumed_from = 0
    if ckpt is not None:
        trainer.load_checkpoint(ckpt.path)
        resumed_from = ckpt.step
        log.info("resuming %s from step %d", run.path, ckpt.step)
    elif main:
        run.write_metrics([])  # a fresh run: no stale table from an earlier attempt
    return trainer.fit(resumed_from)


def _adamw(groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where torch has one for these parameters.

    Measured on whisper-base (72.6 M parameters, 2 busy CPU cores): one step took 0.4-1.0 s
    fused against 13-20 s per-tensor or foreach, the larger part of a decoder-only step.
    (transformers' Trainer also defaults to the fused kernel on torch >= 2.8.)
    """
    import torch

    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError) as e:  # a device or dtype without the fused kernel
        log.debug("fused AdamW unavailable (%s); using the foreach kernel", e)
        return torch.optim.AdamW(groups, lr=lr)


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _train_windows(store: FeatureStore, cfg: TrainConfig) -> list[list[int]] | None:
    """The packing plan of the train split (clip indices per window), or None unpacked."""
    if cfg.pack_clips <= 1:
        return None
    from whisper_sv.audio import HOP_LENGTH, SAMPLE_RATE
    from whisper_sv.packing import plan_windows

    meta = store.metadata("train", columns=("duration", "n_labels"))
    windows = plan_windows(
        [max(1, round(m["duration"] * SAMPLE_RATE / HOP_LENGTH)) for m in meta],
        [m["n_labels"] for m in meta],
        max_clips=cfg.pack_clips,
        seed=cfg.seed,
        shard_offsets=store.torch_dataset("train").offsets,
    )
    log.info(
        "packed %d train clips into %d windows (up to %d each)",
        len(meta),
        len(windows),
        cfg.pack_clips,
    )
    return windows


class _Trainer:
    """The loop, its state, evaluation and checkpoints of one run."""

    def __init__(
        self,
        *,
        cfg: TrainConfig,
        run: RunFolder,
        store: FeatureStore,
        processor: WhisperProcessor,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        accelerator: Any,
        max_steps: int,
        has_val: bool,
        model_dir: Path,
        info: dict[str, Any],
        progress: bool,
        windows: list[list[int]] | None = None,
    ) -> None:
        self.cfg, self.run, self.store = cfg, run, store
        self.processor, self.model = processor, model
        self.optimizer, self.scheduler, self.acc = optimizer, scheduler, accelerator
        self.max_steps, self.has_val = max_steps, has_val
        self.model_dir, self.info, self.progress = model_dir, info, progress
        self.state = _State(world_size=accelerator.num_processes)
        tok = processor.tokenizer
        self.sot = int(tok.convert_tokens_to_ids("<|startoftranscript|>"))
        base = _base(model)
        self.evaluator = _Evaluator(
            processor,
            base,
            language=store.config.language,
            task=store.config.task,
            max_new_tokens=cfg.eval_max_new_tokens,
            beam_size=cfg.eval_beam_size,
        )
        self.train_set = store.torch_dataset("train")
        self.windows = windows
        if windows is not None:
            from whisper_sv.packing import PackedRows

            texts = [m["text"] for m in store.metadata("train", columns=("text",))]
            self.train_set = PackedRows(self.train_set, windows, texts, processor.tokenizer)
        self.order = _Order(self.train_set.offsets, cfg.seed)
        self.val_set = store.torch_dataset("validation") if has_val else None
        n_val = len(self.val_set) if self.val_set is not None else 0
        self.val_indices = list(range(min(n_val, cfg.eval_limit) if cfg.eval_limit else n_val))
        self.cache_root = Path(cfg.cache_dir) if cfg.cache_dir else run.path / "cache"
        self.train_enc: _Encoded | None = None
        self.val_enc: _Encoded | None = None

    # ------------------------------------------------------------ data

    def _encoder_caches(self) -> None:
        if not self.cfg.uses_encoder_cache:
            return
        key = {
            "model": _model_fingerprint(self.model_dir),
            "store": self.info["store_id"],
            "format": 1,
        }
        bs = self.cfg.eval_batch_size
        self.train_enc = _encode_clips(
            self.model,
            self.train_set,
            list(range(len(self.train_set))),
            self.cache_root,
            {**key, "split": "train", **({"windows": self.windows} if self.windows else {})},
            batch_size=bs,
            accelerator=self.acc,
            progress=self.progress,
            desc="encoding train windows" if self.windows else "encoding train clips",
        )
        if self.val_set is not None and self.val_indices:
            self.val_enc = _encode_clips(
                self.model,
                self.val_set,
                self.val_indices,
                self.cache_root,
                {**key, "split": "validation", "n": len(self.val_indices)},
                batch_size=bs,
                accelerator=self.acc,
                progress=self.progress,
                desc="encoding validation clips",
            )

    def _micro_batches(self, cursor: int) -> Iterator[dict[str, torch.Tensor]]:
        """Training micro-batches for this process from stream position ``cursor``."""
        import torch
        from torch.utils.data import DataLoader

        from whisper_sv.store import collate

        sampler = _RankBatches(
            self.order, cursor, self.cfg.batch_size, self.acc.num_processes, self.acc.process_index
        )
        device = self.acc.device
        if self.train_enc is not None:
            enc = self.train_enc
            for idx in sampler:
                hidden = torch.from_numpy(np.stack([enc.hidden[i] for i in idx]))
                labels = _pad_labels([enc.labels[i] for i in idx])
                yield {
                    "hidden": hidden.to(device, dtype=torch.float32, non_blocking=True),
                    "labels": _strip_sot(labels, self.sot).to(device),
                }
            return
        workers = self.cfg.num_workers
        if workers < 0:
            workers = 4 if device.type == "cuda" else 0
        loader = DataLoader(
            self.train_set,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            # Its own generator: a DataLoader draws worker seeds from the global RNG when it
            # starts iterating, which would shift the dropout stream of a resumed run.
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )
        for batch in loader:
            yield {
                "input_features": batch["input_features"].to(device, non_blocking=True),
                "labels": _strip_sot(batch["labels"], self.sot).to(device),
            }

    # ------------------------------------------------------------ loop

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "hidden" in batch:
            out = self.model(
                encoder_outputs=(batch["hidden"],), labels=batch["labels"], use_cache=False
            )
        else:
            out = self.model(
                input_features=batch["input_features"], labels=batch["labels"], use_cache=False
            )
        return out.loss

    def fit(self, resumed_from: int) -> TrainResult:
        import torch
        from tqdm.auto import tqdm

        cfg, st, acc = self.cfg, self.state, self.acc
        done = st.step >= self.max_steps or st.stopped_early
        t_enc = time.perf_counter()
        if not done:
            self._encoder_caches()
        encode_seconds = time.perf_counter() - t_enc
        if st.step == 0 and cfg.eval_at_start and not st.rows:
            self._evaluate_and_record()
        start_step = st.step
        t0 = time.perf_counter()
        batches = None if done else self._micro_batches(st.cursor)
        bar = tqdm(
            total=self.max_steps,
            initial=st.step,
            desc="training",
            unit="step",
            disable=not self.progress or done,
        )
        _set_train_mode(self.model, cfg)
        per_step = cfg.batch_size * acc.num_processes
        step_times: list[float] = []
        losses: list[float] = []
        while not done:
            t_step = time.perf_counter()
            step_loss = torch.zeros((), device=acc.device)
            for k in range(cfg.grad_accum):
                batch = next(batches)
                last = k == cfg.grad_accum - 1
                # No gradient all-reduce until the last micro-batch of the step.
                ctx = acc.no_sync(self.model) if not last else contextlib.nullcontext()
                with ctx:
                    loss = self._forward(batch)
                    acc.backward(loss / cfg.grad_accum)
                step_loss += loss.detach() / cfg.grad_accum
                st.cursor += per_step
            if cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            st.step += 1
            mean_loss = float(acc.reduce(step_loss, reduction="mean"))  # waits for the step
            step_times.append(time.perf_counter() - t_step)
            losses.append(mean_loss)
            st.loss_sum += mean_loss
            st.loss_count += 1
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            final = st.step >= self.max_steps
            if st.step % cfg.eval_steps == 0 or final:
                self._evaluate_and_record()
                _set_train_mode(self.model, cfg)
                final = final or st.stopped_early
            if st.step % cfg.save_steps == 0 or final:
                self.save_checkpoint()
            done = final
        bar.close()
        seconds = time.perf_counter() - t0
        samples = (st.step - start_step) * cfg.batch_size * cfg.grad_accum * acc.num_processes
        self._finish()
        return TrainResult(
            run=self.run.path,
            step=st.step,
            max_steps=self.max_steps,
            resumed_from=resumed_from,
            stopped_early=st.stopped_early,
            best_step=st.best_step,
            best_wer=st.best_wer,
            rows=tuple(MetricsRow.from_dict(r) for r in st.rows),
            train_seconds=seconds,
            samples=samples,
            config=cfg,
            world_size=acc.num_processes,
            encode_seconds=encode_seconds,
            step_seconds=tuple(step_times),
            losses=tuple(losses),
        )

    # ------------------------------------------------------------ evaluation

    def evaluate(self) -> EvalResult | None:
        """Validation loss and WER/CER over this run's validation clips (all processes)."""
        import torch
        from torch.utils.data import DataLoader, Subset

        from whisper_sv.store import collate

        if not self.val_indices:
            return None
        acc, cfg = self.acc, self.cfg
        base = acc.unwrap_model(self.model)
        base.eval()
        rank, world = acc.process_index, acc.num_processes
        t0 = time.perf_counter()
        parts = []
        with torch.no_grad(), acc.autocast():
            if self.val_enc is not None:
                enc = self.val_enc
                # Similar lengths together: a batch decodes until its longest clip ends.
                order = sorted(range(len(enc.labels)), key=lambda i: len(enc.labels[i]))
                mine = order[rank::world]
                for s in range(0, len(mine), cfg.eval_batch_size):
                    idx = mine[s : s + cfg.eval_batch_size]
                    hidden = torch.from_numpy(np.stack([enc.hidden[i] for i in idx]))
                    hidden = hidden.to(acc.device, dtype=torch.float32)
                    labels = _pad_labels([enc.labels[i] for i in idx])
                    parts.append(self.evaluator.batch(base, hidden, labels))
            else:
                mine = self.val_indices[rank::world]
                loader = DataLoader(
                    Subset(self.val_set, mine), batch_size=cfg.eval_batch_size, collate_fn=collate
                )
                encoder = _base(base).get_encoder()
                for batch in loader:
                    hidden = encoder(batch["input_features"].to(acc.device)).last_hidden_state
                    parts.append(self.evaluator.batch(base, hidden, batch["labels"]))
        everything = [p for ps in _gather_objects(acc, parts) for p in ps]
        return _finish_eval(everything, time.perf_counter() - t0)

    def _evaluate_and_record(self) -> None:
        st, cfg = self.state, self.cfg
        result = self.evaluate() if self.has_val else None
        train_loss = st.loss_sum / st.loss_count if st.loss_count else None
        row = MetricsRow(
            step=st.step,
            train_loss=train_loss,
            val_loss=result.val_loss if result else None,
            wer=result.wer if result else None,
            cer=result.cer if result else None,
        )
        st.rows = [r for r in st.rows if r["step"] != st.step] + [row.as_dict()]
        st.loss_sum, st.loss_count = 0.0, 0
        if result is not None:
            log.info(
                "step %d: train loss %s, val loss %.4f, WER %.2f, CER %.2f (%d clips, %.1f s)",
                st.step,
                f"{train_loss:.4f}" if train_loss is not None else "-",
                result.val_loss,
                result.wer,
                result.cer,
                result.n,
                result.seconds,
            )
            if st.best_wer is None or result.wer < st.best_wer:
                st.best_wer, st.best_step, st.bad_evals = result.wer, st.step, 0
                self.save_best()
            elif st.step > 0:
                st.bad_evals += 1
                if cfg.patience and st.bad_evals >= cfg.patience:
                    log.info(
                        "early stopping at step %d: no better WER in %d evaluations (best %.2f "
                        "at step %d)",
                        st.step,
                        st.bad_evals,
                        st.best_wer,
                        st.best_step,
                    )
                    st.stopped_early = True
        if self.acc.is_main_process:
            rows = [MetricsRow.from_dict(r) for r in st.rows]
            self.run.write_metrics(rows)

    # ------------------------------------------------------------ saving

    def _save_model_dir(self, out: Path) -> None:
        import copy

        model = self.acc.unwrap_model(self.model)
        if hasattr(model, "merge_and_unload"):  # LoRA: best/ is a plain model
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(out)
        self.processor.save_pretrained(out)

    def save_best(self) -> None:
        st = self.state
        if self.acc.is_main_process:

            def write(tmp: Path) -> None:
                self._save_model_dir(tmp)
                (tmp / "training_state.json").write_text(
                    json.dumps(
                        {"step": st.best_step, "wer": st.best_wer, "run": str(self.run.path)}
                    )
                )

            self.run.write_best(write)
        self.acc.wait_for_everyone()

    def save_checkpoint(self) -> None:
        import torch
        from safetensors.torch import save_file

        acc, st = self.acc, self.state
        rng = _gather_objects(acc, _rng_state())
        if acc.is_main_process:
            base = acc.unwrap_model(self.model)

            def write(tmp: Path) -> None:
                tensors = {
                    n: p.detach().to("cpu", copy=True).contiguous()
                    for n, p in _trainable(base).items()
                }
                save_file(tensors, str(tmp / "trainable.safetensors"))
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                if acc.scaler is not None:
                    torch.save(acc.scaler.state_dict(), tmp / "scaler.pt")
                torch.save(rng, tmp / "rng.pt")
                data = {**st.__dict__, "max_steps": self.max_steps}
                (tmp / registry.STATE_FILE).write_text(json.dumps(data, indent=1))

            self.run.write_checkpoint(st.step, write, keep=self.cfg.keep_checkpoints)
            # The plot costs ~0.5 s (matplotlib): drawn with each checkpoint, not each row.
            self.run.write_curves(
                [MetricsRow.from_dict(r) for r in st.rows], title=self.run.path.name
            )
            log.debug("checkpoint at step %d", st.step)
        acc.wait_for_everyone()

    def load_checkpoint(self, folder: Path) -> None:
        import torch
        from safetensors.torch import load_file

        acc = self.acc
        data = json.loads((folder / registry.STATE_FILE).read_text(encoding="utf-8"))
        known = {f.name for f in fields(_State)}
        self.state = _State(**{k: v for k, v in data.items() if k in known})
        saved = load_file(str(folder / "trainable.safetensors"))
        params = _trainable(acc.unwrap_model(self.model))
        if set(saved) != set(params):
            raise ValueError(
                f"checkpoint {folder} holds other parameters than this model trains "
                f"({len(saved)} vs {len(params)}); was the run made with other settings?"
            )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name].to(p.device))
        self.optimizer.load_state_dict(
            torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False)
        )
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
        if acc.scaler is not None and (folder / "scaler.pt").is_file():
            acc.scaler.load_state_dict(torch.load(folder / "scaler.pt", weights_only=False))
        rng = torch.load(folder / "rng.pt", weights_only=False)
        if len(rng) == acc.num_processes:
            _set_rng_state(rng[acc.process_index])
        else:
            log.warning(
                "checkpoint made with %d processes, now %d: RNG streams restart from the seed",
                len(rng),
                acc.num_processes,
            )
            _seed_everything(self.cfg.seed + self.state.step)
        self.state.world_size = acc.num_processes
        if acc.is_main_process:
            # Rows after the checkpoint belong to the lost part of the run: they are redone.
            self.run.write_metrics([MetricsRow.from_dict(r) for r in self.state.rows])

    # ------------------------------------------------------------ the end

    def _finish(self) -> None:
        """best/ (the last model when there was no validation), curves, card, ct2 export."""
        acc, st, run = self.acc, self.state, self.run
        if not self.val_indices:  # no validation: the last model is the one to use
            st.best_step = st.step
            self.save_best()
        elif not run.best_dir.is_dir():
            self.save_best()
        if acc.is_main_process:
            rows = [MetricsRow.from_dict(r) for r in st.rows]
            run.write_metrics(rows)
            run.write_curves(rows, title=run.path.name)
            run.write_model_card(self._card(rows))
            if self.cfg.export_ct2 and not _newer(run.ct2_dir, run.best_dir):
                from whisper_sv import models

                log.info("exporting best/ to CTranslate2 in %s", run.ct2_dir)
                models.export_ct2(run.best_dir, run.ct2_dir, quantization=self.cfg.ct2_quantization)
            if not self.cfg.cache_dir:
                shutil.rmtree(self.cache_root, ignore_errors=True)
        acc.wait_for_everyone()

    def _card(self, rows: Sequence[MetricsRow]) -> str:
        from whisper_sv.config import to_dict

        splits = self.store.manifest.get("splits", {})
        data = {
            s: {"clips": self.store.num_rows(s), "hours": splits.get(s, {}).get("hours")}
            for s in self.store.splits()
        }
        settings = {k: v for k, v in to_dict(self.cfg).items()}
        settings["steps done"] = self.state.step
        settings["processes"] = self.acc.num_processes
        settings["precision"] = self.info.get("precision")
        return registry.model_card(
            model=str(self.info["model"]),
            store=str(self.info["features"]),
            data=data,
            settings=settings,
            rows=rows,
            best_step=self.state.best_step,
            best_wer=self.state.best_wer,
            language=self.store.config.language,
        )


def _rng_state() -> dict[str, Any]:
    import torch

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- export


def export_run(
    run: str | os.PathLike, out: str | os.PathLike | None = None, *, quantization: str = "float16"
) -> Path:
    """CTranslate2 export of a run's ``best/`` (or of any model reference) to ``out``.

    ``out`` defaults to ``RUN/ct2`` for a run folder. faster-whisper loads the result offline.
    """
    from whisper_sv import models

    mref = models.resolve(str(run))
    if out is None:
        if mref.kind != "run":
            raise ValueError(f"{run} is not a run folder: give --out for the export")
        out = mref.path / registry.CT2
    return models.export_ct2(models.transformers_dir(mref), Path(out), quantization=quantization)


def _newer(a: Path, b: Path) -> bool:
    """Whether folder ``a`` exists and was written after folder ``b`` (an up-to-date export)."""
    return a.is_dir() and b.is_dir() and a.stat().st_mtime_ns > b.stat().st_mtime_ns
