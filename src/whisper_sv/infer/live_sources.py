"""Where live audio comes from: a decoded file played at a pace, or raw PCM from a pipe.

Both yield 16 kHz mono float32 chunks as they "arrive", for ``StreamingTranscriber.feed``.
"""

from __future__ import annotations

import io
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np

from whisper_sv.core.audio import SAMPLE_RATE

__all__ = ["container_of", "paced", "pcm_chunks"]

# Audio read from a pipe at a time: 0.1 s of 16-bit samples.
PCM_BLOCK_BYTES = 3_200
# How often a paced file releases audio (seconds of wall time).
PACE_S = 0.05


def paced(audio: np.ndarray, speed: float, piece_s: float = 4.0) -> Iterator[np.ndarray]:
    """``audio`` as it would arrive playing at ``speed`` (0: all of it at once, handed over
    in pieces of ``piece_s``; pieces of StreamingOptions.backlog_step_s cost two decodings
    each, where 0.5 s pieces cost one decoding of the whole buffer per 0.5 s of audio)."""
    if speed == 0:
        step = max(1, int(piece_s * SAMPLE_RATE))
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


# The first bytes of audio files that are not raw PCM (name, offset, magic).
CONTAINERS = (
    ("an MP3 file (ID3 tag)", 0, b"ID3"),
    ("a WAV file", 0, b"RIFF"),
    ("a FLAC file", 0, b"fLaC"),
    ("an Ogg file", 0, b"OggS"),
    ("a WebM or Matroska file", 0, b"\x1aE\xdf\xa3"),
    ("an MP4 or M4A file", 4, b"ftyp"),
)


def container_of(head: bytes) -> str | None:
    """The kind of audio file ``head`` (a stream's first bytes) starts, None for none known."""
    return next((name for name, at, magic in CONTAINERS if head[at:].startswith(magic)), None)


def pcm_chunks(stream: BinaryIO) -> Iterator[np.ndarray]:
    """Raw 16 kHz mono s16le PCM from ``stream`` (standard input), as float32 chunks: each
    one everything that arrived since the last.

    A thread drains the pipe while the model decodes, so a live producer (arecord) never
    blocks on a full pipe and loses audio. A stream that starts like an audio file
    (``container_of``) is refused with a ValueError that says how to convert it: read as
    PCM, its header and compressed frames are noise, and no word would come out of it.
    """
    arrived: queue.Queue[bytes | None] = queue.Queue()
    read_block = _unlocked_reader(stream)

    def read() -> None:
        while block := read_block(PCM_BLOCK_BYTES):
            arrived.put(block)
        arrived.put(None)

    threading.Thread(target=read, name="live-pcm", daemon=True).start()
    pending, done, checked = b"", False, False
    while not done:
        blocks = [arrived.get()]
        while not arrived.empty():
            blocks.append(arrived.get_nowait())
        done = blocks[-1] is None
        pending += b"".join(b for b in blocks if b)
        if not checked and (len(pending) >= 12 or done):
            checked = True
            kind = container_of(pending)
            if kind:
                raise ValueError(
                    f"standard input is {kind}, not raw PCM: give its path instead of -, or "
                    "convert it: ffmpeg -i FILE -f s16le -ac 1 -ar 16000 - | whisper-sv live -"
                )
        usable = len(pending) - len(pending) % 2
        if usable:
            pcm = np.frombuffer(pending[:usable], dtype="<i2").astype(np.float32) / 32768.0
            pending = pending[usable:]
            yield pcm


def _unlocked_reader(stream: BinaryIO) -> Callable[[int], bytes]:
    """``stream``'s read, straight from its file descriptor where it has one.

    The reading thread is still blocked in a read when a session ends by Ctrl+C or SIGTERM
    with the pipe open; a buffered reader's lock held there aborts the interpreter at exit
    ("could not acquire lock ... at interpreter shutdown"), os.read holds none.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return stream.read
    return lambda n: os.read(fd, n)
