"""Where live audio comes from: a decoded file played at a pace, or raw PCM from a pipe.

Both yield 16 kHz mono float32 chunks as they "arrive", for ``StreamingTranscriber.feed``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from whisper_sv.core.audio import SAMPLE_RATE

__all__ = ["paced", "pcm_chunks"]

# Audio read from a pipe at a time: 0.1 s of 16-bit samples.
PCM_BLOCK_BYTES = 3_200
# How often a paced file releases audio (seconds of wall time).
PACE_S = 0.05


def paced(audio: np.ndarray, speed: float) -> Iterator[np.ndarray]:
    """``audio`` as it would arrive playing at ``speed`` (0: all at once, in 0.5 s pieces)."""
    if speed == 0:
        step = SAMPLE_RATE // 2
        yield from (audio[i : i + step] for i in range(0, len(audio), step))
        return
    start, sent = time.monotonic(), 0
    while sent < len(audio):
        due = min(len(audio), int((time.monotonic() - start) * speed * SAMPLE_RATE))
        if due > sent:
            yield audio[sent:due]
            sent = due
        else:
            time.sleep(PACE_S)


def pcm_chunks(stream: BinaryIO) -> Iterator[np.ndarray]:
    """Raw 16 kHz mono s16le PCM from ``stream`` (standard input), as float32 chunks: each
    one everything that arrived since the last.

    A thread drains the pipe while the model decodes, so a live producer (arecord) never
    blocks on a full pipe and loses audio.
    """
    arrived: queue.Queue[bytes | None] = queue.Queue()

    def read() -> None:
        while block := stream.read(PCM_BLOCK_BYTES):
            arrived.put(block)
        arrived.put(None)

    threading.Thread(target=read, name="live-pcm", daemon=True).start()
    pending, done = b"", False
    while not done:
        blocks = [arrived.get()]
        while not arrived.empty():
            blocks.append(arrived.get_nowait())
        done = blocks[-1] is None
        pending += b"".join(b for b in blocks if b)
        usable = len(pending) - len(pending) % 2
        if usable:
            pcm = np.frombuffer(pending[:usable], dtype="<i2").astype(np.float32) / 32768.0
            pending = pending[usable:]
            yield pcm
