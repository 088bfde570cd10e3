"""Checkpoint I/O: the trainable weights, optimizer, scheduler, grad scaler, every process's
RNG state and the loop state, written and read back so that a resume is exact."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from whisper_sv.core import run_folder as registry
from whisper_sv.core.run_metrics import MetricsRow
from whisper_sv.core.runtime import gather_objects, seed_everything
from whisper_sv.train.setup import trainable_params

log = logging.getLogger(__name__)

__all__ = ["TrainState", "read_checkpoint", "rng_state", "set_rng_state", "write_checkpoint"]


@dataclass
class TrainState:
    """What a checkpoint needs besides tensors (JSON)."""

    step: int = 0
    cursor: int = 0  # stream position of the next micro-batch (see StreamOrder)
    loss_sum: float = 0.0  # training loss summed since the last metrics row
    loss_count: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_wer: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the best one (early stopping)
    stopped_early: bool = False
    world_size: int = 1
    # Real-speech guards (selection.py): the start model's values and translations, the
    # evaluations in a row with a regressed guard, and the best validation WER whatever the
    # guards said (the model WiSE-FT interpolation starts from).
    guard_start: dict[str, Any] = field(default_factory=dict)
    guard_bad_evals: int = 0
    raw_best_wer: float | None = None
    raw_best_step: int | None = None
    best_note: str = ""  # how best/ was chosen, when it is not simply the best checkpoint
    best_guards: dict[str, float] = field(default_factory=dict)  # guard values of best/
    # TrainConfig.select's score of best/ and of the raw best (None: as the WER, older runs).
    best_score: float | None = None
    raw_best_score: float | None = None


def rng_state() -> dict[str, Any]:
    import torch

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(
    run: registry.RunFolder,
    state: TrainState,
    *,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    accelerator: Any,
    max_steps: int,
    keep: int,
) -> None:
    """``RUN/checkpoints/step-N/`` of the run at ``state.step`` (all processes call it; the
    main process writes, with every process's RNG state)."""
    import torch
    from safetensors.torch import save_file

    acc = accelerator
    rng = gather_objects(acc, rng_state())
    if acc.is_main_process:
        base = acc.unwrap_model(model)

        def write(tmp: Path) -> None:
            tensors = {
                n: p.detach().to("cpu", copy=True).contiguous()
                for n, p in trainable_params(base).items()
            }
            save_file(tensors, str(tmp / "trainable.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if acc.scaler is not None:
                torch.save(acc.scaler.state_dict(), tmp / "scaler.pt")
            torch.save(rng, tmp / "rng.pt")
            data = {**state.__dict__, "max_steps": max_steps}
            (tmp / registry.STATE_FILE).write_text(json.dumps(data, indent=1))

        run.write_checkpoint(state.step, write, keep=keep)
        # The plot costs ~0.5 s (matplotlib): drawn with each checkpoint, not each row.
        run.reports.write_curves([MetricsRow.from_dict(r) for r in state.rows], title=run.path.name)
        log.debug("checkpoint at step %d", state.step)
    acc.wait_for_everyone()


def read_checkpoint(
    folder: Path, *, model: Any, optimizer: Any, scheduler: Any, accelerator: Any, seed: int
) -> TrainState:
    """Load the checkpoint ``folder`` into the model, optimizer, scheduler, scaler and RNGs;
    return its loop state."""
    import torch
    from safetensors.torch import load_file

    acc = accelerator
    data = json.loads((folder / registry.STATE_FILE).read_text(encoding="utf-8"))
    known = {f.name for f in fields(TrainState)}
    state = TrainState(**{k: v for k, v in data.items() if k in known})
    saved = load_file(str(folder / "trainable.safetensors"))
    params = trainable_params(acc.unwrap_model(model))
    if set(saved) != set(params):
        raise ValueError(
            f"checkpoint {folder} holds other parameters than this model trains "
            f"({len(saved)} vs {len(params)}); was the run made with other settings?"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name].to(p.device))
    optimizer.load_state_dict(
        torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False)
    )
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    if acc.scaler is not None and (folder / "scaler.pt").is_file():
        acc.scaler.load_state_dict(torch.load(folder / "scaler.pt", weights_only=False))
    rng = torch.load(folder / "rng.pt", weights_only=False)
    if len(rng) == acc.num_processes:
        set_rng_state(rng[acc.process_index])
    else:
        log.warning(
            "checkpoint made with %d processes, now %d: RNG streams restart from the seed",
            len(rng),
            acc.num_processes,
        )
        seed_everything(seed + state.step)
    state.world_size = acc.num_processes
    return state
