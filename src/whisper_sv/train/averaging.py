"""Checkpoint averaging: the mean of a run's best checkpoints as a new model folder.

Averaging the weights of the last few good checkpoints of one run (same start, same data, a
few hundred steps apart) often gives a model at least as good as the best single one, because
the checkpoints sit around the same minimum and the mean lands nearer its centre.

A checkpoint of :func:`whisper_sv.train.run.train` (``RUN/checkpoints/step-N/``) holds only the
trained parameters (``trainable.safetensors``); the frozen ones (a frozen encoder) are those of
``RUN/best/``, which is the skeleton of the result. LoRA checkpoints hold the adapter matrices:
each checkpoint's update ``scale * B @ A`` is merged into the starting model's weight and the
merged weights are averaged (averaging A and B separately would not average the updates).

Which checkpoints exist depends on the run's settings: ``save_steps`` (a checkpoint only where
it coincides with an evaluation has a WER) and ``keep_checkpoints`` (the newest N are kept; 0
keeps all). Train with ``keep_checkpoints: 0`` and ``save_steps`` equal to ``eval_steps`` to
average the top-k of the whole run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_sv.core.fsutil import temp_name
from whisper_sv.core.run_folder import Checkpoint, RunFolder
from whisper_sv.core.run_metrics import MetricsRow

if TYPE_CHECKING:
    import torch

    from whisper_sv.train.scoring import EvalResult

log = logging.getLogger(__name__)

__all__ = ["AverageResult", "average_checkpoints", "evaluate_model", "select_checkpoints"]

TRAINABLE = "trainable.safetensors"
_LORA_A = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_A(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class AverageResult:
    """What :func:`average_checkpoints` wrote."""

    out: Path  # the new transformers model folder (a valid --model)
    run: Path  # the run whose checkpoints were averaged
    steps: tuple[int, ...]  # the averaged checkpoints, best first
    wers: tuple[float, ...]  # their validation WER, percent
    best_step: int | None  # the run's best single checkpoint
    best_wer: float | None  # its validation WER
    lora: bool  # whether the run trained LoRA adapters (merged before averaging)
    evaluation: EvalResult | None = None  # the averaged model on the validation clips


def select_checkpoints(run: str | os.PathLike, top_k: int) -> list[tuple[Checkpoint, MetricsRow]]:
    """The ``top_k`` checkpoints of ``run`` with the lowest validation WER, best first."""
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1 (got {top_k})")
    folder = RunFolder(run)
    if not folder.is_run():
        raise ValueError(f"{folder.path} is not a run folder (no config.yaml)")
    rows = {r.step: r for r in folder.reports.read_metrics() if r.wer is not None}
    ckpts = folder.checkpoints()
    usable = [(c, rows[c.step]) for c in ckpts if c.step in rows]
    if len(usable) < top_k:
        cfg = folder.read_config().get("train", {})
        raise ValueError(
            f"{folder.path} has {len(usable)} checkpoint(s) with a validation WER "
            f"(checkpoints at steps {[c.step for c in ckpts]}, evaluations at steps "
            f"{sorted(rows)}), fewer than --top-k {top_k}. The run kept "
            f"keep_checkpoints={cfg.get('keep_checkpoints')} with save_steps="
            f"{cfg.get('save_steps')}, eval_steps={cfg.get('eval_steps')}: train with "
            f"`--set keep_checkpoints=0` and save_steps equal to eval_steps, or lower --top-k"
        )
    usable.sort(key=lambda cr: (cr[1].wer, -cr[0].step))
    return usable[:top_k]


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / TRAINABLE))


def _lora_deltas(tensors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """``{module weight name: scale * B @ A}`` for every adapted module of a LoRA checkpoint."""
    out = {}
    for name, a in tensors.items():
        m = _LORA_A.match(name)
        if not m:
            continue
        b = tensors[name.replace("lora_A", "lora_B")]
        out[f"{m.group(1)}.weight"] = scale * (b.double() @ a.double())
    return out


def average_checkpoints(
    run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    top_k: int = 3,
    features: str | os.PathLike | None = None,
) -> AverageResult:
    """Average the ``top_k`` best checkpoints of ``run`` into the model folder ``out``.

    With ``features``, the result is evaluated on that store's validation split with the
    run's evaluation settings (the same clips its metrics.csv scored).
    """
    from transformers import WhisperForConditionalGeneration

    from whisper_sv.models.references import load_processor

    folder = RunFolder(run)
    chosen = select_checkpoints(run, top_k)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not empty; choose a new folder")
    if not folder.best_dir.is_dir():
        raise ValueError(f"{folder.path} has no best/ model to build the average on")
    info = folder.read_config()
    train_cfg = info.get("train", {})
    lora = int(train_cfg.get("lora_rank", 0)) > 0
    log.info(
        "averaging steps %s of %s (WER %s)",
        [c.step for c, _ in chosen],
        folder.path,
        ", ".join(f"{r.wer:.2f}" for _, r in chosen),
    )

    model = WhisperForConditionalGeneration.from_pretrained(
        str(folder.best_dir), local_files_only=True, dtype="float32"
    )
    scale = float(train_cfg.get("lora_alpha", 32.0)) / max(1, int(train_cfg.get("lora_rank", 1)))
    total = _summed(chosen, dict(model.named_parameters()), folder.best_dir, lora, scale)
    _set_mean(model, total, len(chosen), info if lora else None)
    processor = load_processor(str(folder.best_dir))
    best_row = min(
        (r for r in folder.reports.read_metrics() if r.wer is not None),
        key=lambda r: (r.wer, r.step),
        default=None,
    )
    _save(out, model, processor, folder, chosen, lora)
    evaluation = None
    if features is not None:
        evaluation = evaluate_model(
            out,
            features,
            limit=int(train_cfg.get("eval_limit", 0)),
            batch_size=int(train_cfg.get("eval_batch_size", 16)),
            model=model,
            processor=processor,
        )
    return AverageResult(
        out=out,
        run=folder.path,
        steps=tuple(c.step for c, _ in chosen),
        wers=tuple(float(r.wer) for _, r in chosen),
        best_step=best_row.step if best_row else None,
        best_wer=best_row.wer if best_row else None,
        lora=lora,
        evaluation=evaluation,
    )


def _summed(
    chosen: list[tuple[Checkpoint, MetricsRow]],
    params: dict[str, torch.Tensor],
    best_dir: Path,
    lora: bool,
    scale: float,
) -> dict[str, torch.Tensor]:
    """The sum (float64) of each trained tensor over the chosen checkpoints (LoRA: of the
    weight updates B @ A * scale)."""
    total: dict[str, torch.Tensor] = {}
    names: set[str] | None = None
    for ckpt, _ in chosen:
        tensors = _load(ckpt.path)
        if lora:
            tensors = _lora_deltas(tensors, scale)
        if names is None:
            names = set(tensors)
        elif set(tensors) != names:
            raise ValueError(f"{ckpt.path} holds other parameters than the first checkpoint")
        for name, t in tensors.items():
            if name not in params:
                raise ValueError(f"{ckpt.path}: {name} is not a parameter of {best_dir}")
            acc = total.get(name)
            total[name] = t.double() if acc is None else acc + t.double()
    return total


def _set_mean(
    model: Any, total: dict[str, torch.Tensor], k: int, lora_info: dict[str, Any] | None
) -> None:
    """Put the mean of ``k`` summed tensors into ``model`` (LoRA: start weights + mean update)."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        if lora_info is not None:
            # best/ holds W0 + delta(best); the adapted weights become W0 + mean(delta).
            start = _start_weights(lora_info, list(total))
            for name, delta in total.items():
                params[name].copy_((start[name].double() + delta / k).to(params[name].dtype))
        else:
            for name, summed in total.items():
                params[name].copy_((summed / k).to(params[name].dtype))


def _save(
    out: Path,
    model: Any,
    processor: Any,
    folder: RunFolder,
    chosen: list[tuple[Checkpoint, MetricsRow]],
    lora: bool,
) -> None:
    """The averaged model folder ``out`` (with ``averaging.json``), written whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(out)
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "averaging.json").write_text(
            json.dumps(
                {
                    "run": str(folder.path.resolve()),
                    "steps": [c.step for c, _ in chosen],
                    "wers": [r.wer for _, r in chosen],
                    "lora": lora,
                },
                indent=1,
            ),
            encoding="utf-8",
        )
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _start_weights(info: dict[str, Any], names: list[str]) -> dict[str, torch.Tensor]:
    """The starting model's weights ``names`` (the run's ``model_path``, as config.yaml says)."""
    from safetensors import safe_open

    path = Path(str(info.get("model_path", ""))) / "model.safetensors"
    if not path.is_file():
        raise ValueError(
            f"the run's starting model {path.parent} is gone: averaging LoRA checkpoints needs "
            f"its weights (the adapters are updates to them)"
        )
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        out = {}
        for name in names:
            key = name if name in keys else name.removeprefix("model.")
            if key not in keys:
                raise ValueError(f"{path} has no weight {name}")
            out[name] = f.get_tensor(key)
    return out


def evaluate_model(
    model_ref: str | os.PathLike,
    features: str | os.PathLike,
    *,
    split: str = "validation",
    limit: int = 0,
    batch_size: int = 16,
    max_new_tokens: int = 225,
    model: Any = None,
    processor: Any = None,
) -> EvalResult:
    """WER/CER (and loss) of a model on a store split, as training evaluates (greedy)."""
    import torch

    from whisper_sv.train.scoring import evaluate_split

    with torch.no_grad():
        return evaluate_split(
            model if model is not None and processor is not None else model_ref,
            features,
            split,
            processor=processor,
            limit=limit,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
        )
