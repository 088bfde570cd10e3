"""infer.encoder_reuse: a clip's transcript and its English share one encoder pass.

The real bundled Whisper base decodes real recordings; the encoder calls are counted by
wrapping the CTranslate2 model's own ``encode``, so a call that bypassed the cache counts too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from whisper_sv.core.audio import SAMPLE_RATE, load_audio
from whisper_sv.infer.ct2_backend import Ct2Backend
from whisper_sv.infer.encoder_reuse import EncoderCache, window_key
from whisper_sv.infer.transcriber import Transcriber

LEXIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "lexin-phrases"


class CountingEncoder:
    """The CTranslate2 model's encoder as the backend calls it, its calls and windows
    counted (``EncoderCache.encode_batch`` is the real ``Whisper.encode``)."""

    def __init__(self, encode) -> None:
        self.encode = encode
        self.calls = 0
        self.windows = 0

    def __call__(self, features):
        self.calls += 1
        self.windows += features.shape[0]
        return self.encode(features)


def count_encoder(backend: Ct2Backend) -> CountingEncoder:
    counter = CountingEncoder(backend.encoder.encode_batch)
    backend.encoder.encode_batch = counter
    return counter


def counted(windows: int) -> tuple[Transcriber, CountingEncoder]:
    """Whisper base on the CPU keeping ``windows`` encoder outputs, its encoder counted."""
    transcriber = Transcriber("bundled:base", device="cpu")
    backend = transcriber._impl  # the Ct2Backend: the cache is a property of the backend
    backend.encoder.windows = windows
    return transcriber, count_encoder(backend)


def texts(result) -> list[tuple[float, float, str]]:
    return [(s.start, s.end, s.text) for s in result.segments]


def test_translate_encodes_a_short_clip_once(cv_sentence):
    clip = load_audio(cv_sentence)
    transcriber, count = counted(windows=8)
    english = transcriber.transcribe(clip, task="translate")  # Swedish first, then English
    assert count.calls == 1, "the transcript and its English must share the window's encoding"
    swedish = transcriber.transcribe(clip)
    assert count.calls == 1  # the transcript alone again: still the same window
    assert transcriber._impl.encoder.stats.reused == 2

    transcriber._impl.encoder.windows = 0  # the same model, every pass encoding again
    transcriber._impl.encoder.clear()
    assert transcriber.transcribe(clip, task="translate").segments == english.segments
    assert count.calls == 3  # one pass for each language
    assert transcriber.transcribe(clip).segments == swedish.segments
    assert english.text and swedish.text and english.text != swedish.text


@pytest.mark.slow  # two transcribe+translate runs of 33 s of audio: ~8 s
def test_long_audio_reuses_the_windows_both_passes_share():
    if not LEXIN.is_dir():
        pytest.skip(f"{LEXIN} not found (shared data absent)")
    # Real Lexin phrases with half a second between them, joined past 30 s: faster-whisper's
    # own loop, one window after the other. Greedy only (no loop guard): its sampling
    # fallback may give other text on each run, with or without the cache.
    pause = np.zeros(SAMPLE_RATE // 2, np.float32)
    parts: list[np.ndarray] = []
    for path in sorted(LEXIN.glob("*.mp3")):
        parts += [load_audio(path), pause]
        if sum(map(len, parts)) > 32 * SAMPLE_RATE:
            break
    audio = np.concatenate(parts)
    results, calls = [], []
    for windows in (0, 8):
        transcriber, count = counted(windows)
        results.append(transcriber.transcribe(audio, task="translate", loop_guard=False))
        calls.append(count.calls)
    off, on = results
    assert texts(on) == texts(off) and on.text
    # Each pass seeks on from its own timestamps, so the English pass meets the Swedish
    # pass's windows only where both start at the same frame: at least the first one.
    saved = calls[0] - calls[1]
    print(f"encoder calls: cache off {calls[0]}, on {calls[1]} ({saved} saved)")
    assert saved >= 1 and calls[1] >= 2


def test_lru_keeps_its_bound_and_stitches_hits_and_misses(tiny_ct2_dir, cv_sentence):
    backend = Ct2Backend(str(tiny_ct2_dir), "cpu", "float32", 1, encoder_cache=2)
    counter = count_encoder(backend)
    clip = load_audio(cv_sentence)
    # Three different real windows: the clip, its first and its second half.
    features = np.stack(
        [backend.log_mel(w) for w in (clip, clip[: len(clip) // 2], clip[len(clip) // 2 :])]
    ).astype(np.float32)
    cache = backend.encoder
    alone = [np.asarray(cache(features[i : i + 1]))[0].copy() for i in range(3)]
    assert counter.calls == 3 and len(cache) == 2  # the first window fell out
    keys = [window_key(f) for f in features]
    assert keys[0] != keys[1] and window_key(features[0].copy()) == keys[0]

    # Window 2 kept, window 0 gone: one call, for window 0 alone, and the rows in order.
    batch = np.asarray(cache(features[[2, 0, 2]]))
    assert counter.calls == 4 and counter.windows == 4
    assert all(np.array_equal(batch[j], alone[i]) for j, i in enumerate([2, 0, 2]))
    assert len(cache) == 2 and cache.stats.reused == 2  # window 2, twice

    off = EncoderCache(cache.encode_batch, windows=0)  # keeping nothing: every call encodes
    off(features[:1])
    off(features[:1])
    assert len(off) == 0 and off.stats.calls == 2 and counter.calls == 6
    with pytest.raises(ValueError, match="windows must be an integer >= 0"):
        EncoderCache(cache.encode_batch, windows=-1)


def test_a_backend_is_freed_without_waiting_for_the_garbage_collector(tiny_ct2_dir):
    """The cache and the long-form hook hold the CTranslate2 model, not the backend: no
    reference cycle keeps a dropped model (and its threads) alive until a collection."""
    import gc
    import weakref

    gc.collect()
    gc.disable()
    try:
        backend = Ct2Backend(str(tiny_ct2_dir), "cpu", "float32", 1)
        assert backend.encoder.windows > 0
        alive = weakref.ref(backend), weakref.ref(backend.model)
        del backend
        assert [r() for r in alive] == [None, None]
    finally:
        gc.enable()
