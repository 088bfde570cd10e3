"""Encoder outputs computed once per clip and reused (``cache_encoder`` with a frozen encoder).

With the encoder frozen its outputs do not change, so each clip is encoded once and the
outputs are kept on disk (float16, memory-mapped); a step then costs the decoder alone
(see docs/facts.md). When the top layers of the encoder train (``encoder_top_layers``), what
is cached is the output of the frozen layers below them (``upto``: the input of the first
trained layer), and :func:`finish_encoder` runs the rest at each step and evaluation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from whisper_sv.core.fsutil import atomic_write_text
from whisper_sv.core.runtime import gather_objects, unwrap_base

if TYPE_CHECKING:
    from transformers import WhisperForConditionalGeneration

log = logging.getLogger(__name__)

__all__ = [
    "Encoded",
    "encode_clips",
    "finish_encoder",
    "first_trained_layer",
    "model_fingerprint",
    "start_encoder",
]


@dataclass
class Encoded:
    """Encoder outputs of some clips, (N, frames, d_model) float16 on disk, and their labels."""

    hidden: np.ndarray  # memory-mapped (N, 1500, d_model) float16
    labels: list[list[int]]  # label ids per clip (with <|startoftranscript|>)


def model_fingerprint(folder: Path) -> list[Any]:
    files = [folder / n for n in ("config.json", "model.safetensors") if (folder / n).is_file()]
    return [str(folder.resolve())] + [
        [f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files
    ]


def first_trained_layer(encoder: Any, top_layers: int) -> int | None:
    """The encoder layer cached hidden states enter when its top ``top_layers`` train
    (``TrainConfig.encoder_top_layers``); None when the whole encoder is frozen."""
    return len(encoder.layers) - top_layers if top_layers else None


def start_encoder(encoder: Any, features: Any, upto: int | None = None) -> Any:
    """The encoder's hidden states entering layer ``upto`` (None: its output, as
    ``encoder(features).last_hidden_state``). features: (batch, n_mels, 3000)."""
    if upto is None:
        return encoder(features).last_hidden_state
    import torch.nn.functional as F

    x = F.gelu(encoder.conv1(features))
    x = F.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    for layer in encoder.layers[:upto]:
        x = _layer(layer, x)
    return x


def finish_encoder(encoder: Any, hidden: Any, start: int) -> Any:
    """The encoder's output from the hidden states entering layer ``start``
    (:func:`start_encoder` with ``upto=start``): layers ``start..`` and the final layer norm.
    hidden: (batch, frames, d_model)."""
    for layer in encoder.layers[start:]:
        hidden = _layer(layer, hidden)
    return encoder.layer_norm(hidden)


def _layer(layer: Any, hidden: Any) -> Any:
    out = layer(hidden, None)
    return out[0] if isinstance(out, tuple) else out  # older transformers return a tuple


def encode_clips(
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
    upto: int | None = None,
) -> Encoded:
    """Encoder outputs of ``dataset[indices]``, computed once (all processes share the work);
    with ``upto``, the hidden states entering encoder layer ``upto`` (:func:`start_encoder`).

    Cached under ``folder/encoder-<hash of key>/``: a later run (a resume, another trial of a
    search) with the same model, store and clips reads them back instead of encoding again.
    """
    if upto is not None:
        key = {**key, "upto": upto}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    cache = folder / f"encoder-{digest[:16]}"
    done = cache / "done.json"
    base = unwrap_base(model)
    shape = (len(indices), base.config.max_source_positions, base.config.d_model)
    cached = _read_cache(cache, shape) if done.is_file() else None
    if cached is not None:
        return cached
    if accelerator.is_main_process:
        if cache.exists():
            shutil.rmtree(cache)
        cache.mkdir(parents=True)
        np.lib.format.open_memmap(cache / "hidden.npy", mode="w+", dtype=np.float16, shape=shape)
    accelerator.wait_for_everyone()
    labels = _encode_share(
        base, dataset, indices, cache / "hidden.npy", batch_size, accelerator, progress, desc, upto
    )
    merged: dict[int, list[int]] = {}
    for part in gather_objects(accelerator, labels):
        merged.update(part)
    ordered = [merged[i] for i in range(len(indices))]
    if accelerator.is_main_process:
        atomic_write_text(cache / "labels.json", json.dumps(ordered))
        atomic_write_text(done, json.dumps({"key": key, "clips": len(indices)}))
    accelerator.wait_for_everyone()
    return Encoded(hidden=np.load(cache / "hidden.npy", mmap_mode="r"), labels=ordered)


def _read_cache(cache: Path, shape: tuple[int, int, int]) -> Encoded | None:
    """The finished cache in ``cache``, or None when it does not match ``shape``."""
    log.info("using cached encoder outputs in %s", cache)
    labels = json.loads((cache / "labels.json").read_text(encoding="utf-8"))
    hidden = np.load(cache / "hidden.npy", mmap_mode="r")
    if hidden.shape == shape and len(labels) == shape[0]:
        return Encoded(hidden=hidden, labels=labels)
    log.warning("cached encoder outputs in %s do not match; encoding again", cache)
    return None


def _encode_share(
    base: Any,
    dataset: Any,
    indices: Sequence[int],
    path: Path,
    batch_size: int,
    accelerator: Any,
    progress: bool,
    desc: str,
    upto: int | None = None,
) -> dict[int, list[int]]:
    """Encode this process's share of ``indices`` (every ``world``-th) into the memory-mapped
    ``path``; return the label ids of the clips it did, by position in ``indices``."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from whisper_sv.data.store import collate

    rank, world = accelerator.process_index, accelerator.num_processes
    hidden = np.load(path, mmap_mode="r+")
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
            out = start_encoder(encoder, feats, upto)
            rows = mine[pos : pos + len(feats)]
            hidden[rows[0] : rows[-1] + 1 : world] = out.float().cpu().numpy().astype(np.float16)
            for r, lab in zip(rows, batch["labels"], strict=True):
                labels[r] = [int(t) for t in lab if t >= 0]
            pos += len(feats)
    hidden.flush()
    log.info("encoded %d clips in %.1f s", len(mine), time.perf_counter() - t0)
    return labels
