"""What the training loop reads: the packing plan, the data stream order, rank batches.

The stream order is a pure function of (seed, epoch), so a resume needs only a position.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from whisper_sv.data.store import shard_permutation
from whisper_sv.train.config import TrainConfig, planned_steps

if TYPE_CHECKING:
    from whisper_sv.data.store import FeatureStore

log = logging.getLogger(__name__)

__all__ = [
    "RankBatches",
    "StreamOrder",
    "anchor_windows",
    "train_steps",
    "train_units",
    "train_windows",
]


class StreamOrder:
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
            self._perm = shard_permutation(self.offsets, self.seed, epoch)
            self._epoch = epoch
        return self._perm

    def take(self, start: int, count: int) -> list[int]:
        """Clip indices at stream positions ``start .. start + count - 1``."""
        out = []
        for p in range(start, start + count):
            epoch, off = divmod(p, self.n)
            out.append(int(self._permutation(epoch)[off]))
        return out


class RankBatches:
    """Batch sampler for one process: micro-batch ``k`` from stream position ``cursor``.

    Each micro-batch of the whole job is ``batch_size * world`` consecutive positions; process
    ``rank`` takes its slice. Infinite: the training loop decides when to stop.
    """

    def __init__(self, order: StreamOrder, cursor: int, batch_size: int, world: int, rank: int):
        self.order, self.cursor = order, cursor
        self.batch_size, self.world, self.rank = batch_size, world, rank

    def __iter__(self) -> Iterator[list[int]]:
        cursor = self.cursor
        while True:
            yield self.order.take(cursor + self.rank * self.batch_size, self.batch_size)
            cursor += self.batch_size * self.world


def train_windows(store: FeatureStore, cfg: TrainConfig) -> list[list[int]] | None:
    """The packing plan of the train split (clip indices per window), or None unpacked.

    Timestamp labels (``timestamp_share``), previous-text prompts (``prompt_share``) and
    translation windows (``translate_share``) are made by the packed dataset, so they turn
    packing on with windows of one clip when ``pack_clips`` is 1.
    """
    if (
        cfg.pack_clips <= 1
        and cfg.timestamp_share == 0
        and cfg.translate_share == 0
        and cfg.prompt_share == 0
    ):
        return None
    from whisper_sv.core.audio import HOP_LENGTH, SAMPLE_RATE
    from whisper_sv.data.packing import MAX_WINDOW_LABELS, TIMESTAMP_TOKENS_PER_CLIP, plan_windows

    meta = store.metadata("train", columns=("duration", "n_labels"))
    # Timestamped windows spend two more label tokens per clip.
    spare = TIMESTAMP_TOKENS_PER_CLIP * cfg.pack_clips if cfg.timestamp_share else 0
    windows = plan_windows(
        [max(1, round(m["duration"] * SAMPLE_RATE / HOP_LENGTH)) for m in meta],
        [m["n_labels"] for m in meta],
        max_clips=cfg.pack_clips,
        seed=cfg.seed,
        shard_offsets=store.torch_dataset("train").offsets,
        max_labels=MAX_WINDOW_LABELS - spare,
    )
    log.info(
        "packed %d train clips into %d windows (up to %d each)",
        len(meta),
        len(windows),
        cfg.pack_clips,
    )
    return windows


def with_translation_windows(
    windows: list[list[int]] | None, store: FeatureStore, cfg: TrainConfig
) -> tuple[list[list[int]] | None, list[int]]:
    """``windows`` and, for a seeded ``translate_share`` of the train clips, a window of that
    one clip (each after its shard's windows); returns them and the added windows' indices,
    which the trainer labels with the start model's English
    (translation_labels.label_translation_windows).

    Single clips, not packed windows: the start model translates a short clip far more
    reliably than 30 s of several sentences (on packed synthetic windows most of its English
    was empty or a loop: docs/experiments.md, section 8), and users' clips are short.
    """
    if windows is None or not cfg.translate_share:
        return windows, []
    from whisper_sv.data.packing import add_single_windows

    offsets = store.torch_dataset("train").offsets
    draws = np.random.default_rng([cfg.seed, 13]).random(int(offsets[-1]))
    if cfg.translate_sources:
        sources = [m["source"] for m in store.metadata("train", columns=("source",))]
        draws[[s not in cfg.translate_sources for s in sources]] = 2.0  # never chosen
    chosen = [int(i) for i in np.flatnonzero(draws < cfg.translate_share)]
    windows, added = add_single_windows(windows, offsets, chosen)
    log.info("%d train clips also get a window of their own for translation", len(added))
    return windows, added


def anchor_windows(
    store: FeatureStore,
    cfg: TrainConfig,
    windows: list[list[int]] | None,
    translate_windows: list[int],
) -> np.ndarray:
    """Per training item (window, or clip when unpacked): whether it is an anchor, trained on
    the start model's distribution alone: every clip of it from ``cfg.anchor_sources``. A
    translation window never is (its label is the start model's English already)."""
    n = len(windows) if windows is not None else store.num_rows("train")
    if not cfg.anchor_sources:
        return np.zeros(n, dtype=bool)
    sources = [m["source"] for m in store.metadata("train", columns=("source",))]
    clip = np.array([s in cfg.anchor_sources for s in sources], dtype=bool)
    out = clip.copy() if windows is None else np.array([clip[w].all() for w in windows])
    out[list(translate_windows)] = False
    log.info(
        "%d of %d training windows are anchors (start model's distribution only)", out.sum(), n
    )
    return out


def train_units(store: FeatureStore, cfg: TrainConfig) -> int:
    """Items one epoch of training walks: train clips, or packed windows when
    ``pack_clips > 1`` (the count the step plan uses)."""
    windows, _ = with_translation_windows(train_windows(store, cfg), store, cfg)
    return len(windows) if windows is not None else store.num_rows("train")


def train_steps(store: FeatureStore, cfg: TrainConfig, processes: int = 1) -> int:
    """Optimizer steps a run of ``cfg`` on ``store`` plans with ``processes`` processes."""
    if cfg.max_steps:
        return cfg.max_steps
    return planned_steps(cfg, train_units(store, cfg), processes)
