"""One encoder pass per 30 s window: a small LRU of CTranslate2 encoder outputs.

Translating a clip with ``check_translation`` decodes its Swedish transcript first and its
English after, and ``language="auto"`` detects the language on the same window before
either: each of these ran Whisper's encoder again on identical log-mel input, and on a 2-core
CPU the encoder is most of the cost of a short clip. The encoder is deterministic, so an
output is looked up by a digest of the exact float32 log-mel bytes of its window and reused.

A batch of windows is looked up row by row; only the misses are encoded, as one batch, and
the rows are stitched back in order. Rows are kept as numpy arrays on the CPU: stacking and
wrapping three whisper-base rows in a ``StorageView`` took 0.4 ms, next to 730 ms for
encoding one window (docs/benchmarks.md). A row encoded in a batch is bit-identical to the
same row encoded alone on the CPU (checked on whisper-base int8), so reuse never changes text.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Windows kept. A short clip needs 1 (its transcript and its English encode the same window
# back to back); a long file's second pass can only reuse the windows of its first pass that
# are still here, and a 60 s file has 2-3 windows a pass. 8 rows of whisper-base are 25 MB
# (1500 x 512 float32 each), of large-v3 61 MB: small next to the model itself.
ENCODER_CACHE_WINDOWS = 8


@dataclass
class EncoderStats:
    """What the cache has done since it was made (or last cleared)."""

    calls: int = 0  # calls of the model's encoder (each on a batch of windows)
    encoded: int = 0  # windows the encoder ran on
    reused: int = 0  # windows served from the cache instead of encoded again


def window_key(window: np.ndarray) -> bytes:
    """A digest of one window's log-mel: its dtype, shape and exact bytes."""
    row = np.ascontiguousarray(window)
    digest = hashlib.blake2b(f"{row.dtype.str}{row.shape}".encode(), digest_size=16)
    digest.update(memoryview(row).cast("B"))  # the buffer as is: no 1 MB copy per window
    return digest.digest()


class EncoderCache:
    """Encoder outputs of the last ``windows`` windows, looked up by their log-mel.

    ``encode`` runs the model's encoder on a contiguous (batch, mels, frames) array and
    returns a CPU ``ctranslate2.StorageView``; ``windows``: how many outputs are kept (0:
    none, every call goes to the encoder as before).
    """

    def __init__(self, encode: Callable, windows: int = ENCODER_CACHE_WINDOWS) -> None:
        if not isinstance(windows, int) or windows < 0:
            raise ValueError(
                f"windows must be an integer >= 0 (0 turns reuse off), not {windows!r}"
            )
        self.encode_batch = encode  # the model's encoder itself
        self.windows = windows
        self.stats = EncoderStats()
        self._rows: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        """Forget every kept output and reset the counts."""
        with self._lock:
            self._rows.clear()
            self.stats = EncoderStats()

    def __call__(self, features: np.ndarray):
        """The encoder output (a ``StorageView``) of a (batch, mels, frames) log-mel array."""
        features = np.ascontiguousarray(features)
        if self.windows == 0:
            return self._run(features)
        keys = [window_key(row) for row in features]
        with self._lock:  # the app may decode from several threads with one model
            found = {k: self._rows[k] for k in keys if k in self._rows}
            for k in found:
                self._rows.move_to_end(k)
            missing = list(dict.fromkeys(k for k in keys if k not in found))  # in order, once
            self.stats.reused += len(keys) - len(missing)  # kept, or twice in this batch
        encoded = None
        if missing:
            encoded = self._run(features[[keys.index(k) for k in missing]])
            rows = np.asarray(encoded)  # a view of the CPU output
            with self._lock:
                for j, k in enumerate(missing):
                    # A row of a batch is copied: a kept row must not hold the whole batch.
                    found[k] = rows[j].copy() if len(missing) > 1 else rows[j]
                    self._keep(k, found[k])
        if encoded is not None and missing == keys:
            return encoded  # all encoded now, in order: the encoder's own output
        import ctranslate2

        return ctranslate2.StorageView.from_array(np.stack([found[k] for k in keys]))

    def _run(self, features: np.ndarray):
        with self._lock:
            self.stats.calls += 1
            self.stats.encoded += len(features)
        return self.encode_batch(features)

    def _keep(self, key: bytes, row: np.ndarray) -> None:
        self._rows[key] = row
        while len(self._rows) > self.windows:
            self._rows.popitem(last=False)  # the least recently used
