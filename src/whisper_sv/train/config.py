"""Training options (:class:`TrainConfig`, validated in one place) and :class:`TrainResult`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from whisper_sv.core.config import need
from whisper_sv.core.run_metrics import MetricsRow
from whisper_sv.data.feature_config import MAX_DECODER_POSITIONS
from whisper_sv.train.guards import GuardSpec

__all__ = ["RESUMABLE_KEYS", "TrainConfig", "TrainResult", "planned_steps"]

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
    # With freeze_encoder: the top N encoder layers (and its final layer norm) train after all,
    # the layers below stay frozen. The acoustics of new speakers and microphones live in the
    # encoder; with cache_encoder the frozen layers' output is what is cached, and a step runs
    # only the top N layers (LoRA adapters there when lora_rank > 0). 0: the encoder is frozen.
    encoder_top_layers: int = 0
    # Keep the decoder as it was (its Swedish: vocabulary, spelling, when a sentence ends) and
    # adapt only the encoder's top layers (encoder_top_layers).
    freeze_decoder: bool = False
    train_embeddings: bool = True  # train the tied 51865 x d token embeddings / output layer
    # Join up to N training clips into one 30 s window (1: off). Short clips leave most of
    # Whisper's fixed 30 s window as padding, yet the encoder and the cross-attention pay for
    # all of it: packed, N clips cost about one (packing.py). batch_size then counts windows.
    pack_clips: int = 1
    lora_rank: int = 0  # LoRA adapters of this rank instead of full fine-tuning; 0: off
    lora_alpha: float = 32.0  # LoRA scaling numerator (scale = alpha / rank)
    lora_dropout: float = 0.05  # dropout on the LoRA input
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  # module names that get adapters
    # Train only the top N decoder layers and the decoder's layer norms (embeddings, lower
    # layers and encoder frozen); 0: the whole decoder (and encoder unless frozen).
    decoder_top_layers: int = 0
    # Train only the parameters whose names match one of these regular expressions (searched
    # in names such as model.decoder.layers.3.encoder_attn.k_proj.weight), on top of the
    # choices above; e.g. [encoder_attn] trains the decoder's cross-attention, the part that
    # reads the encoder's acoustics, and leaves the decoder's language model as it was.
    # (): no further restriction.
    train_only: tuple[str, ...] = ()
    # regularisation
    dropout: float = 0.0  # Whisper's dropout (residual and attention), as in its config
    # L2-SP (Li et al. 2018, "Explicit inductive bias for transfer learning"): a penalty
    # l2sp / 2 * ||w - w_start||^2 on the trainable weights, pulling toward the start model
    # instead of toward zero as weight decay does. 0: off.
    l2sp: float = 0.0
    # Learning without forgetting (Li & Hoiem 2016) as distillation: this share of the loss is
    # the KL divergence from the start model's next-token distribution on the same windows
    # (soft targets at distill_temperature), the rest the labels' cross-entropy. 0: off.
    distill: float = 0.0
    distill_temperature: float = 1.0  # softens both distributions; the KL is scaled by T^2
    # Windows whose clips all come from these sources (the store's source column, e.g.
    # synthetic) are trained on the start model's next-token distribution alone (the KL of
    # distill, no label loss): an anchor that holds what the model does on voices and speech
    # unlike the labelled ones, instead of teaching their labels. Needs distill > 0 and the
    # cached-encoder path (freeze_encoder + cache_encoder).
    anchor_sources: tuple[str, ...] = ()
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
    # NAME=PATH[,translate][,split=S][,limit=N][,long_form=S] texts or mappings (guards.py)
    guards: tuple[GuardSpec, ...] = ()
    guard_tolerance: float = 0.5  # WER points a guard may lose against step 0 (see guards.py)
    # Translate guards: points of English share (translations detected as English) a guard
    # may lose against step 0, and chrF points of agreement with the start model's English
    # (100: reported, not judged; see guards.py for why).
    guard_english_tolerance: float = 10.0
    guard_chrf_tolerance: float = 100.0
    guard_patience: int = 0  # stop after N evaluations in a row with a regressed guard; 0: never
    # Stop scoring a model's guards at the first one that regressed (out-of-domain guards are
    # scored first): such a model can no longer become best/, so the rest of its row is left
    # empty instead of paid for (select "validation+guards" counts them at the start values).
    guard_early_reject: bool = False
    # What best/ minimises among the models within the guards' tolerances: "validation" (the
    # validation WER), "validation+guards" (the mean of the validation WER and every guard's
    # WER: a proxy validation set no longer outvotes the real speech) or "guards" (the guards'
    # WERs alone: for a run whose validation split is not what it learns, e.g. synthetic
    # speech kept only as a distillation anchor).
    select: Literal["validation", "validation+guards", "guards"] = "validation"
    # Weight-space interpolation with the start model (WiSE-FT, Wortsman et al. 2022): after
    # training, w = a * fine-tuned + (1 - a) * start for each a here, scored on validation and
    # guards; the best one within the guards' tolerances becomes best/ if it beats the rest.
    interpolate: tuple[float, ...] = ()  # e.g. [0.25, 0.5, 0.75]; () turns it off
    # Anti-forgetting in the labels (packing.py): this share of training windows is labelled
    # with Whisper's timestamps (keeps segment timestamps and long-form decoding) ...
    timestamp_share: float = 0.0
    # ... and this share of the training clips also gets a window of its own, labelled with the
    # start model's English under the translate task (keeps translation); needs the
    # cached-encoder path (freeze_encoder + cache_encoder).
    translate_share: float = 0.0
    # ... and this share of windows is trained after the previous window's text as a prompt
    # (<|startofprev|> text, no loss on it), as Whisper was trained: what long-form decoding
    # with ``condition_on_previous_text`` feeds the decoder, which a run trained without it
    # never sees.
    prompt_share: float = 0.0
    # Only clips from these sources (the store's ``source`` column: manifest, common_voice,
    # ...) get translation windows; (): any. The start model translates real speech far more
    # reliably than synthetic (docs/experiments.md, section 8).
    translate_sources: tuple[str, ...] = ()
    # outputs
    export_ct2: bool = True  # write RUN/ct2 (CTranslate2 export of best/) at the end
    ct2_quantization: str = "float16"  # export type; quantise at load time (docs/facts.md)

    def __post_init__(self) -> None:
        # Guards may come as mappings or NAME=PATH texts (YAML, --set, Python callers).
        object.__setattr__(self, "guards", tuple(GuardSpec.coerce(g) for g in self.guards))
        object.__setattr__(self, "interpolate", tuple(float(a) for a in self.interpolate))
        object.__setattr__(self, "translate_sources", tuple(self.translate_sources))
        object.__setattr__(self, "train_only", tuple(self.train_only))
        object.__setattr__(self, "anchor_sources", tuple(self.anchor_sources))
        _validate(self)

    @property
    def uses_encoder_cache(self) -> bool:
        """Whether training reads cached encoder outputs instead of running the encoder."""
        return self.freeze_encoder and self.cache_encoder


def _validate(c: TrainConfig) -> None:
    """Every check on TrainConfig, each error naming the fix."""

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
    need(
        c.decoder_top_layers >= 0,
        f"decoder_top_layers must be >= 0 (got {c.decoder_top_layers}); 0 trains every layer",
    )
    need(
        not (c.decoder_top_layers and c.lora_rank),
        "decoder_top_layers and lora_rank both choose what is trained: set one of them to 0",
    )
    need(
        c.encoder_top_layers >= 0,
        f"encoder_top_layers must be >= 0 (got {c.encoder_top_layers}); 0 keeps the encoder frozen",
    )
    need(
        not c.encoder_top_layers or c.freeze_encoder,
        "encoder_top_layers trains the top of an otherwise frozen encoder: set freeze_encoder: "
        "true (freeze_encoder: false trains the whole encoder)",
    )
    need(
        not c.freeze_decoder or c.encoder_top_layers,
        "freeze_decoder leaves nothing to train: set encoder_top_layers (e.g. 2) as well",
    )
    need(
        not (c.encoder_top_layers and c.decoder_top_layers),
        "encoder_top_layers and decoder_top_layers both choose what is trained: use one of them",
    )
    need(
        not (c.train_only and c.lora_rank),
        "train_only and lora_rank both choose what is trained: use lora_targets with LoRA",
    )
    for pattern in c.train_only:
        try:
            re.compile(pattern)
        except re.error as err:
            need(False, f"train_only pattern {pattern!r} is not a regular expression: {err}")
    need(c.l2sp >= 0, f"l2sp must be >= 0 (got {c.l2sp}); 0 turns it off, e.g. 0.01")
    need(0 <= c.distill < 1, f"distill must be in [0, 1) (got {c.distill}); 0 is off, e.g. 0.5")
    need(
        c.distill_temperature > 0,
        f"distill_temperature must be > 0 (got {c.distill_temperature}), e.g. 1 or 2",
    )
    need(
        not c.anchor_sources or (c.distill > 0 and c.uses_encoder_cache),
        "anchor_sources train on the start model's distribution (distill) from cached encoder "
        "outputs: set distill > 0, freeze_encoder: true and cache_encoder: true",
    )
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
        c.guard_english_tolerance >= 0,
        f"guard_english_tolerance must be >= 0 points (got {c.guard_english_tolerance})",
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
    for name in ("timestamp_share", "translate_share", "prompt_share"):
        need(0 <= getattr(c, name) <= 1, f"{name} must be in [0, 1] (got {getattr(c, name)})")
    need(
        c.translate_share == 0 or c.uses_encoder_cache,
        "translate_share labels clips from cached encoder outputs: set freeze_encoder: true "
        "and cache_encoder: true (or translate_share: 0)",
    )
    allowed = ("float16", "float32", "bfloat16", "int8_float16", "int8", "int8_float32")
    need(
        c.ct2_quantization in allowed,
        f"ct2_quantization {c.ct2_quantization!r}; use one of {', '.join(allowed)}",
    )


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


def planned_steps(cfg: TrainConfig, n_units: int, processes: int = 1) -> int:
    """Optimizer steps a run of ``cfg`` plans over ``n_units`` training items: clips, or
    packed windows when ``pack_clips > 1`` (see :func:`whisper_sv.train.data_plan.train_units`)."""
    if cfg.max_steps:
        return cfg.max_steps
    global_batch = cfg.batch_size * cfg.grad_accum * processes
    return max(1, math.ceil(cfg.epochs * n_units / global_batch))
