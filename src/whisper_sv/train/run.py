"""The training pipeline: a feature store in, a run folder out.

:func:`train` reads only the feature store (log-mel + labels, made by ``whisper-sv features``),
fine-tunes a Whisper model with a plain PyTorch loop driven by Accelerate (one process, or
data-parallel under ``torchrun``/``accelerate launch`` with no code change), and writes the run
folder described in :mod:`whisper_sv.core.run_folder`: checkpoints, metrics, curves, ``best/``, the
model card and the CTranslate2 export.

Where the time goes, and what is done about it (2 CPU cores, whisper-base, batch 4; docs/facts.md):

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

The parts live in their own modules: options (:mod:`~whisper_sv.train.config`), the loop
(:mod:`~whisper_sv.train.trainer`), the model's scores (:mod:`~whisper_sv.train.model_scores`,
on :mod:`~whisper_sv.train.scoring`), the choice of best/ (:mod:`~whisper_sv.train.selection`),
the model's files (:mod:`~whisper_sv.train.saving`), the encoder cache, checkpoints, data order
and model setup; this module joins them into one run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_sv.core import run_folder as registry
from whisper_sv.core.run_folder import RunFolder
from whisper_sv.core.runtime import forget_other_precision, resolve_precision, seed_everything
from whisper_sv.data.store import open_store, store_id
from whisper_sv.train.config import RESUMABLE_KEYS, TrainConfig, TrainResult, planned_steps
from whisper_sv.train.data_plan import anchor_windows, train_windows, with_translation_windows
from whisper_sv.train.export import export_run
from whisper_sv.train.scoring import EvalResult, evaluate_dataset, greedy_decode
from whisper_sv.train.setup import adamw, load_model, lr_lambda, trainable_params
from whisper_sv.train.trainer import Trainer

if TYPE_CHECKING:
    import torch

    from whisper_sv.data.store import FeatureStore

log = logging.getLogger(__name__)

__all__ = [
    "RESUMABLE_KEYS",
    "EvalResult",
    "TrainConfig",
    "TrainResult",
    "evaluate_dataset",
    "export_run",
    "greedy_decode",
    "open_store",
    "store_id",
    "train",
]


def _run_info(
    model_ref: str, model_dir: Path, store: FeatureStore, cfg: TrainConfig, max_steps: int
) -> dict[str, Any]:
    from whisper_sv import __version__
    from whisper_sv.core.config import to_dict

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
    from whisper_sv.core.config import to_dict

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
    from whisper_sv.models.references import DEFAULT_MODEL

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
    from whisper_sv.models import load_processor, model_origin, resolve, transformers_dir

    cfg = config or TrainConfig()
    run = RunFolder(out)
    old_info, model_ref = _prepare_run_folder(run, model, resume)
    store = open_store(features)
    mref = resolve(model_ref)
    model_dir = transformers_dir(mref)
    processor = load_processor(model_dir)
    model_cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    store.check_processor(processor, n_mels=int(model_cfg.get("num_mel_bins", 80)))
    has_val = cfg.validate and "validation" in store.splits() and store.num_rows("validation") > 0

    accelerator, precision = _accelerator(cfg)
    main = accelerator.is_main_process
    if not main:  # one process reports; the others only warn
        log.setLevel(logging.WARNING)
    windows, translate_windows = with_translation_windows(train_windows(store, cfg), store, cfg)
    n_train = len(windows) if windows is not None else store.num_rows("train")
    max_steps = planned_steps(cfg, n_train, accelerator.num_processes)
    if cfg.warmup_steps >= max_steps and cfg.lr_schedule != "constant":
        raise ValueError(
            f"warmup_steps ({cfg.warmup_steps}) must be below the number of training steps "
            f"({max_steps}): lower warmup_steps or raise max_steps"
        )
    # A local model is recorded by absolute path: the run folder must work from any cwd.
    recorded = str(mref.path) if mref.path is not None else mref.ref
    info = _run_info(recorded, model_dir, store, cfg, max_steps)
    # What the card names: a hub model's id, revision and the commit it stood for today.
    info["model_origin"] = asdict(model_origin(mref))
    info["precision"] = precision
    info["world_size"] = accelerator.num_processes
    if old_info is not None:
        _check_same_run(old_info, info, run.path)
        info["model"] = old_info.get("model", info["model"])
        info["model_origin"] = old_info.get("model_origin", info["model_origin"])
    if main:
        run.recover()
        run.write_config(info)
    accelerator.wait_for_everyone()

    net, optimizer, scheduler = _model_and_optimizer(model_dir, cfg, accelerator, max_steps)
    log.info("precision %s, %d process(es), %d steps", precision, info["world_size"], max_steps)
    trainer = Trainer(
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
        translate_windows=translate_windows,
        anchors=anchor_windows(store, cfg, windows, translate_windows),
    )
    return trainer.fit(_resume(trainer, run, resume))


def _accelerator(cfg: TrainConfig) -> tuple[Any, str]:
    """(the Accelerator for ``cfg.device`` / ``cfg.precision``, the precision used)."""
    import torch
    from accelerate import Accelerator

    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda but no CUDA device is visible; use device: auto")
    precision = resolve_precision(cfg.precision, cuda)
    mixed = {"fp32": "no"}.get(precision, precision)
    forget_other_precision(mixed)
    return Accelerator(cpu=not cuda, mixed_precision=mixed), precision


def _model_and_optimizer(
    model_dir: Path, cfg: TrainConfig, accelerator: Any, max_steps: int
) -> tuple[Any, Any, Any]:
    """(model, optimizer, LR scheduler), the first two prepared by Accelerate."""
    import torch

    seed_everything(cfg.seed)  # same LoRA init in every process
    net = load_model(model_dir, cfg)
    seed_everything(cfg.seed + accelerator.process_index)  # own dropout/SpecAugment masks
    trainable = trainable_params(net)
    if not trainable:
        raise ValueError("nothing to train: every parameter is frozen")
    log.info(
        "training %.1f M of %.1f M parameters",
        sum(p.numel() for p in trainable.values()) / 1e6,
        sum(p.numel() for p in net.parameters()) / 1e6,
    )
    decay = [p for n, p in trainable.items() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in trainable.items() if not (p.ndim >= 2 and "norm" not in n)]
    optimizer = adamw(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.lr_schedule, cfg.warmup_steps, max_steps)
    )
    net, optimizer = accelerator.prepare(net, optimizer)
    return net, optimizer, scheduler


def _resume(trainer: Trainer, run: RunFolder, resume: bool) -> int:
    """Load the run's last complete checkpoint into ``trainer``; the step it continues from."""
    ckpt = run.latest_checkpoint()
    if ckpt is None:
        if resume:
            log.info("%s has no complete checkpoint yet: starting from step 0", run.path)
        if trainer.acc.is_main_process:
            run.reports.write_metrics([])  # a fresh run: no stale table from an earlier attempt
        return 0
    trainer.load_checkpoint(ckpt.path)
    log.info("resuming %s from step %d", run.path, ckpt.step)
    return ckpt.step
