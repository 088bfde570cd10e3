"""The speech guard: text the audio does not support is dropped, and said to be dropped.

Whisper writes text for audio that holds none: "Thanks for watching!" for fan noise, "Don't
forget to like and subscribe!" as the English of a two-word Swedish phrase (subtitle endings
from its training data). Each rule here judges one decoded segment and names why it goes;
``whisper_sv.infer.transcriber`` applies the rules its ``TranscribeOptions`` turn on and keeps what they
drop in ``Transcript.dropped``:

- ``no_speech_detected``: silero VAD found no speech in the segment's time (``speech_gate``);
- ``silence``: OpenAI's rule, the window's <|nospeech|> probability above
  ``no_speech_threshold`` while its tokens average below ``log_prob_threshold``;
- ``known_hallucination``: the text holds a phrase of ``hallucinations.txt``
  (``drop_known_hallucinations``);
- ``unconfirmed_translation`` / ``translation_too_long``: English with no kept transcript
  under it, or much longer than that transcript (``check_translation``).

The rules are pure functions of the segments, their scores and the speech spans, so a
benchmark can decode once and judge every combination (bench/bench_hallucination.py).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import resources

from whisper_sv.infer.types import Dropped, Segment, TranscribeOptions

__all__ = [
    "REASONS",
    "judge",
    "judge_translation",
    "known_hallucination",
    "normalise",
]

REASONS = (
    "no_speech_detected",
    "silence",
    "known_hallucination",
    "unconfirmed_translation",
    "translation_too_long",
)
# English and Swedish segments of one audio end at different places: a transcript segment
# counts under an English one when their times overlap, give or take this much.
ALIGN_SLACK_S = 1.0

Span = tuple[float, float]


def normalise(text: str) -> str:
    """Lower case, letters and digits only, single spaces: "Don't forget!" -> "dont forget"."""
    text = unicodedata.normalize("NFKC", text).lower().replace("'", "").replace("’", "")
    return " ".join("".join(c if c.isalnum() else " " for c in text).split())


@functools.cache
def _patterns() -> tuple[tuple[str, re.Pattern[str]], ...]:
    """(entry as written, compiled matcher) of every entry of hallucinations.txt."""
    lines = resources.files("whisper_sv.infer").joinpath("hallucinations.txt").read_text("utf-8")
    out = []
    for line in lines.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry.startswith("re:"):
            out.append((entry, re.compile(entry[3:].strip())))
            continue
        anchored = entry.startswith("^")
        words = normalise(entry.lstrip("^"))
        out.append((entry, re.compile(("^" if anchored else r"\b") + re.escape(words) + r"\b")))
    return tuple(out)


def known_hallucination(text: str) -> str | None:
    """The entry of hallucinations.txt that ``text`` holds (None: none).

    Phrases are matched on ``normalise(text)``; ``re:`` entries on the text lower-cased.
    """
    words, raw = normalise(text), text.lower()
    for entry, pattern in _patterns():
        if pattern.search(raw if entry.startswith("re:") else words):
            return entry
    return None


def _has_speech(segment: Segment, speech: Sequence[Span]) -> bool:
    return any(a < segment.end and b > segment.start for a, b in speech) or any(
        segment.start <= a <= segment.end for a, _ in speech
    )


def _is_silence(segment: Segment, opts: TranscribeOptions) -> bool:
    """OpenAI's rule on the window that wrote ``segment`` (unknown scores: kept)."""
    if segment.no_speech_prob is None or segment.avg_logprob is None:
        return False
    return (
        segment.no_speech_prob > opts.no_speech_threshold
        and segment.avg_logprob < opts.log_prob_threshold
    )


def verdict(
    segment: Segment, opts: TranscribeOptions, speech: Sequence[Span] | None
) -> Dropped | None:
    """Why ``segment`` goes (the first rule that drops it), or None when it stays.

    ``speech``: silero VAD's speech spans of the audio, seconds (None: VAD not run).
    """
    if opts.speech_gate and speech is not None and not _has_speech(segment, speech):
        return Dropped(segment, "no_speech_detected", "silero VAD found no speech here")
    if _is_silence(segment, opts):
        return Dropped(
            segment,
            "silence",
            f"no-speech probability {segment.no_speech_prob:.2f}, "
            f"average log-probability {segment.avg_logprob:.2f}",
        )
    if opts.drop_known_hallucinations:
        entry = known_hallucination(segment.text)
        if entry:
            return Dropped(segment, "known_hallucination", f"matches {entry!r}")
    return None


def judge(
    segments: Iterable[Segment],
    opts: TranscribeOptions,
    speech: Sequence[Span] | None,
    dropped: list[Dropped],
) -> Iterator[Segment]:
    """The segments that stay; each dropped one is appended to ``dropped`` with its reason."""
    return _kept(segments, lambda s: verdict(s, opts, speech), dropped)


def _kept(
    segments: Iterable[Segment],
    why: Callable[[Segment], Dropped | None],
    dropped: list[Dropped],
) -> Iterator[Segment]:
    for segment in segments:
        out = why(segment)
        if out is None:
            yield segment
        else:
            dropped.append(out)


def translation_verdict(
    english: Segment, source: Sequence[Segment], opts: TranscribeOptions
) -> Dropped | None:
    """Why an English segment goes, judged against the kept transcript ``source``.

    No transcript segment within ALIGN_SLACK_S of its time: the audio held no speech the
    transcript kept. Longer than ``max_translation_ratio`` times the transcript under it plus
    ``translation_slack_chars``: the English says more than was said.
    """
    under = [
        s
        for s in source
        if s.start < english.end + ALIGN_SLACK_S and s.end > english.start - ALIGN_SLACK_S
    ]
    said = sum(len(s.text.strip()) for s in under)
    if not said:
        return Dropped(english, "unconfirmed_translation", "no transcript under this English")
    limit = opts.max_translation_ratio * said + opts.translation_slack_chars
    if len(english.text.strip()) > limit:
        return Dropped(
            english,
            "translation_too_long",
            f"{len(english.text.strip())} characters of English for {said} of transcript",
        )
    return None


def judge_translation(
    english: Iterable[Segment],
    source: Sequence[Segment],
    opts: TranscribeOptions,
    dropped: list[Dropped],
) -> Iterator[Segment]:
    """The English segments that the transcript ``source`` supports (see translation_verdict)."""
    return _kept(english, lambda s: translation_verdict(s, source, opts), dropped)
