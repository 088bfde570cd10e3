"""A model's scores on a test set, and the on-disk caches that keep the demo from paying twice.

Scoring the pretrained model on the test sets costs minutes on a CPU (every short clip is a
full 30 s encoder pass) and gives the same numbers every time: the same weights, the same
audio, the same decoding. So scores are kept under ``cache_dir()/scores``, keyed by a digest
of the model's weights, of the set's feature files (or audio), of the decoding options and
of :data:`SCORER_VERSION`; the encoder outputs of the test sets under
``cache_dir()/encoder`` (the fine-tune keeps the encoder frozen, so the run's scores decode the
very outputs the start model's did). A second demo on the same machine reads both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_sv.core.fsutil import atomic_write_text, cache_dir, file_digest, temp_name

log = logging.getLogger(__name__)

__all__ = [
    "SCORER_VERSION",
    "SetScore",
    "load_encoded",
    "load_score",
    "save_encoded",
    "save_score",
    "split_digest",
    "weights_digest",
]

# Bump when scoring changes in a way that changes numbers (normalisation, decoding rules).
SCORER_VERSION = 1


@dataclass(frozen=True)
class SetScore:
    """One model on one test set."""

    wer: float  # percent, normalised text
    cer: float
    n: int  # clips (1 for a long-form file)
    translations: tuple[str, ...] = ()  # English of each clip (translate sets)
    chrf: float | None = None  # that English against the pretrained model's (100: the same)
    english: float | None = None  # percent of that English detected as English (guards.py)
    segments: int = 0  # long-form: segments (subtitle cues) transcribed
    references: tuple[str, ...] = ()  # per clip, for the paired interval of a change
    hypotheses: tuple[str, ...] = ()


def weights_digest(module: Any) -> str:
    """sha1 of a torch module's parameters and buffers (names, values)."""
    h = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def split_digest(store: Any, split: str) -> str:
    """Identity of one split's content: its feature config and the bytes of its shards (shard
    names are positional, so two recipes' test splits may share them)."""
    return file_digest(*store.shards(split)) + "-" + store.config.hash()


def _key(parts: dict[str, Any]) -> str:
    text = json.dumps({**parts, "scorer": SCORER_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def load_score(parts: dict[str, Any]) -> SetScore | None:
    """The cached score of ``parts`` (model, set, options), or None."""
    path = cache_dir() / "scores" / f"{_key(parts)}.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    tuples = {f.name for f in dataclasses.fields(SetScore) if f.type.startswith("tuple")}
    return SetScore(**{k: tuple(v) if k in tuples else v for k, v in data.items()})


def save_score(parts: dict[str, Any], score: SetScore) -> None:
    path = cache_dir() / "scores" / f"{_key(parts)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(dataclasses.asdict(score), ensure_ascii=False))


def _encoded_path(parts: dict[str, Any]) -> Path:
    return cache_dir() / "encoder" / f"test-{_key(parts)}.npy"


def load_encoded(parts: dict[str, Any]) -> Any | None:
    """Cached encoder outputs (N, frames, d_model) float16, memory-mapped, or None."""
    import numpy as np

    path = _encoded_path(parts)
    return np.load(path, mmap_mode="r") if path.is_file() else None


def save_encoded(parts: dict[str, Any], hidden: Any) -> None:
    """Keep ``hidden`` (a float16 numpy array) for :func:`load_encoded`; written to a
    temporary name first so a killed run never leaves half a file under the real one."""
    import os

    import numpy as np

    path = _encoded_path(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as fh:
            np.save(fh, hidden)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("kept encoder outputs of %d clips in %s", len(hidden), path)
