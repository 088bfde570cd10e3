"""What a run trains and how: the model with its trainable parts, optimizer, LR schedule."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_sv.core.runtime import unwrap_base
from whisper_sv.train.config import TrainConfig

if TYPE_CHECKING:
    import torch
    from transformers import WhisperForConditionalGeneration

log = logging.getLogger(__name__)

__all__ = ["adamw", "load_model", "lr_lambda", "set_train_mode", "trainable_params"]


def lr_lambda(schedule: str, warmup: int, total: int):
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


def load_model(folder: Path, cfg: TrainConfig) -> WhisperForConditionalGeneration:
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
        if cfg.freeze_encoder:  # adapters where training happens: decoder, encoder top layers
            targets = _lora_pattern(cfg, len(model.get_encoder().layers))
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
            if cfg.encoder_top_layers:
                _train_encoder_top(model, cfg.encoder_top_layers)
        if cfg.freeze_decoder:
            model.get_decoder().requires_grad_(False)
            model.proj_out.requires_grad_(False)
        if not cfg.train_embeddings:
            # Tied with proj_out: 26.6 M of base's 72.6 M parameters, a large share of the
            # AdamW update and of the output layer's weight gradient.
            model.get_decoder().embed_tokens.requires_grad_(False)
        if cfg.decoder_top_layers:
            _train_top_layers(model, cfg.decoder_top_layers)
        if cfg.train_only:
            _train_only(model, cfg.train_only)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _lora_pattern(cfg: TrainConfig, encoder_layers: int) -> str:
    """The LoRA target modules of a run with a frozen encoder: ``lora_targets`` in the decoder
    (unless freeze_decoder) and in the top ``encoder_top_layers`` encoder layers."""
    names = "(" + "|".join(cfg.lora_targets) + ")"
    where = [] if cfg.freeze_decoder else [r".*decoder\..*"]
    if cfg.encoder_top_layers:
        top = range(_encoder_cut(cfg.encoder_top_layers, encoder_layers), encoder_layers)
        where.append(r".*encoder\.layers\.(" + "|".join(map(str, top)) + r")(\..*)?")
    return "(" + "|".join(where) + r")\." + names + "$"


def _encoder_cut(top: int, layers: int) -> int:
    """The first trained encoder layer when the top ``top`` of ``layers`` train."""
    if top > layers:
        raise ValueError(f"encoder_top_layers {top}: the model's encoder has only {layers} layers")
    return layers - top


def _train_encoder_top(model: Any, n: int) -> None:
    """The top ``n`` encoder layers and the encoder's final layer norm train again."""
    encoder = model.get_encoder()
    for layer in encoder.layers[_encoder_cut(n, len(encoder.layers)) :]:
        layer.requires_grad_(True)
    encoder.layer_norm.requires_grad_(True)


def _train_top_layers(model: Any, n: int) -> None:
    """Only the top ``n`` decoder layers and every decoder layer norm stay trainable: the
    fewer weights move, the less of what the start model knows can be lost."""
    decoder = model.get_decoder()
    layers = decoder.layers
    if n > len(layers):
        raise ValueError(
            f"decoder_top_layers {n}: the model's decoder has only {len(layers)} layers"
        )
    model.requires_grad_(False)
    for layer in layers[len(layers) - n :]:
        layer.requires_grad_(True)
    for name, module in decoder.named_modules():
        if name.endswith("layer_norm"):
            module.requires_grad_(True)


def _train_only(model: Any, patterns: tuple[str, ...]) -> None:
    """Freeze every parameter whose name matches none of ``patterns``."""
    import re

    kept = 0
    for name, p in model.named_parameters():
        if not any(re.search(pat, name) for pat in patterns):
            p.requires_grad_(False)
        kept += int(p.requires_grad)
    if not kept:
        raise ValueError(
            f"train_only {list(patterns)} matches no trainable parameter; names look like "
            "model.decoder.layers.0.encoder_attn.k_proj.weight"
        )


def set_train_mode(model: Any, cfg: TrainConfig) -> None:
    model.train()
    if cfg.freeze_encoder:
        # A frozen encoder runs as at inference (no dropout), so cached outputs equal live ones.
        unwrap_base(model).get_encoder().eval()


def trainable_params(model: Any) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def adamw(groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
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
