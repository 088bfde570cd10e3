"""Long-form test audio made from short real clips, with its reference and speech spans.

Whisper reads 30 s windows; a long file is transcribed window by window, each one placed by
the last timestamp the decoder wrote. A fine-tune that forgot timestamps or drifts on long
context shows it only on long audio, which no real set here has. :func:`join_clips` builds
such a file from a manifest of short clips: the clips in a seeded order with pauses between
them (and optional silence at the end), the joined reference text, and where each clip's
speech is, for scoring transcripts and checking subtitle cues against the speech.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisper_sv.core.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

__all__ = ["LongFile", "join_clips"]


@dataclass(frozen=True)
class LongFile:
    """A joined long recording."""

    path: Path  # 16 kHz mono 16-bit WAV
    reference: str  # the clips' sentences, in order, joined by spaces
    spans: tuple[tuple[float, float], ...]  # (start, end) seconds of each clip in the file
    duration: float  # seconds, trailing silence included
    sentences: tuple[str, ...] = ()  # each clip's text, in the order of ``spans``

    @property
    def speech_seconds(self) -> float:
        return sum(end - start for start, end in self.spans)


def join_clips(
    manifest: Path,
    out: Path,
    *,
    seconds: float = 120.0,
    pause: tuple[float, float] = (0.6, 1.5),
    trailing_silence: float = 0.0,
    seed: int = 0,
) -> LongFile:
    """Join clips of ``manifest`` (``path``, ``sentence``) into about ``seconds`` of audio.

    Clips that cannot be decoded are skipped with a warning. Pauses are drawn uniformly from
    ``pause`` (seconds), silence is digital zero (as a muted microphone gives).
    """
    from whisper_sv.core.audio import AudioError, load_audio

    if seconds <= 0 or pause[0] < 0 or pause[1] < pause[0] or trailing_silence < 0:
        raise ValueError("seconds must be > 0, pause a (low, high) range >= 0, silence >= 0")
    with open(manifest, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise ValueError(f"{manifest} lists no clips")
    rng = np.random.default_rng([seed, 5])
    pieces: list[np.ndarray] = []
    texts: list[str] = []
    spans: list[tuple[float, float]] = []
    at = 0
    for k in rng.permutation(len(rows)):
        if at >= seconds * SAMPLE_RATE:
            break
        row = rows[int(k)]
        audio_path = Path(row["path"])
        if not audio_path.is_absolute():
            audio_path = manifest.parent / audio_path
        try:
            clip = load_audio(audio_path)
        except AudioError as e:
            log.warning("skipping %s: %s", audio_path, e)
            continue
        gap = np.zeros(int(rng.uniform(*pause) * SAMPLE_RATE), dtype=np.float32)
        if pieces:
            pieces.append(gap)
            at += len(gap)
        pieces.append(clip)
        spans.append((at / SAMPLE_RATE, (at + len(clip)) / SAMPLE_RATE))
        texts.append(row["sentence"].strip())
        at += len(clip)
    if not pieces:
        raise ValueError(f"no clip of {manifest} could be decoded")
    pieces.append(np.zeros(int(trailing_silence * SAMPLE_RATE), dtype=np.float32))
    audio = np.concatenate(pieces)
    import soundfile as sf

    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, audio, SAMPLE_RATE, subtype="PCM_16")
    return LongFile(out, " ".join(texts), tuple(spans), len(audio) / SAMPLE_RATE, tuple(texts))
