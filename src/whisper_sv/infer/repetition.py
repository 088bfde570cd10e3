"""The loop guard's text rules: pure functions over decoded text, for any decoder.

OpenAI's compression-ratio rule (``compression_ratio``, ``is_looping``), the output bound of a
window (``max_new_tokens_for``) and the cut of a repeated tail (``trim_repetition``).
``whisper_sv.infer.transcriber`` applies them while decoding; a validation loop can apply them too.
"""

from __future__ import annotations

import math

from whisper_sv.core.text import COMPRESSION_RATIO_THRESHOLD, compression_ratio

__all__ = [
    "COMPRESSION_RATIO_THRESHOLD",
    "compression_ratio",
    "is_looping",
    "max_new_tokens_for",
    "trim_repetition",
]

# Output bound of a window: fast Swedish speech is about 4 words (7 tokens) a second; twice
# that plus room for timestamps and a short clip's single word.
MAX_TOKENS_PER_SECOND = 12
MIN_NEW_TOKENS = 24
# Characters a second no speech reaches (fast speech: about 15), for is_looping.
MAX_CHARS_PER_SECOND = 30
MIN_CHARS = 40
# Whisper's decoder holds 448 positions; the prompt (<|startoftranscript|><|sv|><|transcribe|>)
# takes 3 of them.
MAX_NEW_TOKENS = 445


def max_new_tokens_for(duration_s: float) -> int:
    """The most tokens worth generating for ``duration_s`` seconds of audio (one window)."""
    bound = MIN_NEW_TOKENS + math.ceil(MAX_TOKENS_PER_SECOND * max(duration_s, 0.0))
    return min(bound, MAX_NEW_TOKENS)


def is_looping(text: str, duration_s: float) -> bool:
    """Whether ``text`` decoded from ``duration_s`` seconds of audio is a decoding loop.

    True when it compresses like a loop (ratio > 2.4, OpenAI's rule) or is longer than any
    speech of that length (30 characters a second, 40 at least). A pure function for any
    decoder's output, e.g. a validation loop's greedy decoding.
    """
    limit = max(MIN_CHARS, MAX_CHARS_PER_SECOND * duration_s)
    return compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD or len(text) > limit


def trim_repetition(text: str, min_repeats: int = 3) -> str:
    """``text`` with a tail of one phrase repeated ``min_repeats`` times or more cut to one.

    ``"det var det var det var det var"`` -> ``"det var"``. A single word must repeat one time
    more than ``min_repeats`` (``"ja ja ja"`` is speech).
    """
    words = text.split()
    n = len(words)
    for size in range(1, n // min_repeats + 1):
        phrase = words[n - size :]
        repeats = 1
        while (
            repeats * size + size <= n
            and words[n - (repeats + 1) * size : n - repeats * size] == phrase
        ):
            repeats += 1
        if repeats >= min_repeats + (size == 1):
            return " ".join(words[: n - (repeats - 1) * size])
    return text
