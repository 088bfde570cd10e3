"""Subtitles that fit the speech: segment times cut to speech, cues of readable size.

Whisper's segment times run from the end of one segment to the start of the next, pauses
included, so a segment's cue stays on screen through the silence after it. Two steps fix that:

1. ``fit_to_speech`` moves each segment's start and end onto the speech inside it: its word
   times when it has them, else the speech spans silero VAD finds (``speech_spans``);
2. ``cues`` cuts segments into cues of at most ``max_cue_s`` seconds and ``max_lines`` lines of
   ``max_line_chars`` characters (the usual subtitle conventions: 7 s, two lines of 42),
   timing each cue by its share of the segment's speech, starting a new cue after a pause,
   and makes cues follow each other without overlap and without zero length.

Works the same for Swedish and English (translated) segments.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from whisper_sv.infer_types import Segment

__all__ = [
    "RULES",
    "Cue",
    "SubtitleOptions",
    "cues",
    "fit_to_speech",
    "render",
    "rule_breaks",
    "speech_spans",
]

log = logging.getLogger(__name__)

Span = tuple[float, float]

SLOWEST_CHARS_PER_S = 2.0


@dataclass(frozen=True)
class SubtitleOptions:
    """Cue size limits."""

    max_cue_s: float = 7.0  # longest time one cue stays on screen
    max_line_chars: int = 42  # characters a line (a longer single word gets its own line)
    max_lines: int = 2  # lines a cue
    min_cue_s: float = 0.3  # shortest cue; a shorter one is lengthened into the gap after it
    max_pause_s: float = 1.0  # a pause this long inside a segment starts a new cue

    def __post_init__(self) -> None:
        if not self.max_cue_s > 0:
            raise ValueError(f"max_cue_s must be > 0 seconds, not {self.max_cue_s!r}")
        if self.max_line_chars < 10:
            raise ValueError(f"max_line_chars must be at least 10, not {self.max_line_chars!r}")
        if self.max_lines < 1:
            raise ValueError(f"max_lines must be at least 1, not {self.max_lines!r}")
        if not 0 < self.min_cue_s <= self.max_cue_s:
            raise ValueError(
                f"min_cue_s must be > 0 and <= max_cue_s ({self.max_cue_s}), not {self.min_cue_s!r}"
            )


@dataclass(frozen=True)
class Cue:
    """One subtitle on screen."""

    start: float  # seconds
    end: float  # seconds, > start
    lines: tuple[str, ...]  # the text, one entry a line


def speech_spans(samples: np.ndarray) -> list[Span]:
    """(start, end) seconds of the speech silero VAD finds, padded by 0.2 s, pauses >= 0.3 s."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    from whisper_sv.audio import SAMPLE_RATE

    vad = VadOptions(min_silence_duration_ms=300, speech_pad_ms=200)
    return [
        (c["start"] / SAMPLE_RATE, c["end"] / SAMPLE_RATE)
        for c in get_speech_timestamps(samples, vad)
    ]


def _inside(start: float, end: float, spans: Sequence[Span]) -> list[Span]:
    """The parts of ``spans`` within [start, end]."""
    return [(max(a, start), min(b, end)) for a, b in spans if b > start and a < end]


def fit_to_speech(segments: Iterable[Segment], spans: Sequence[Span]) -> Iterator[Segment]:
    """Segments whose start and end sit on their first and last word or speech span.

    A segment with word times takes them; one with no detected speech inside keeps its
    times (VAD misses some quiet speech, and its text is still worth showing).
    """
    last = 0.0  # start times stay non-decreasing, as Transcript promises
    for s in segments:
        if s.words:
            start, end = max(s.start, s.words[0].start), min(s.end, s.words[-1].end)
        else:
            inside = _inside(s.start, s.end, spans)
            start, end = (inside[0][0], inside[-1][1]) if inside else (s.start, s.end)
        if end <= start:
            start, end = s.start, s.end
        start = round(max(start, last), 3)
        end = round(max(end, start), 3)
        if (start, end) != (s.start, s.end):
            s = dataclasses.replace(s, start=start, end=end)
        last = start
        yield s


class _Timeline:
    """Maps a fraction of a segment's text onto the speech time inside the segment."""

    def __init__(self, start: float, end: float, spans: Sequence[Span]) -> None:
        self.parts = _inside(start, end, spans) or [(start, end)]
        self.total = sum(b - a for a, b in self.parts)

    def word(self, begin: float, end: float) -> Span:
        """The time of the text between fractions ``begin`` and ``end``, kept inside the
        speech span that holds its middle (a word is not spoken across a pause)."""
        middle = self.at((begin + end) / 2, opening=True)
        a, b = next(((a, b) for a, b in self.parts if a <= middle <= b), self.parts[-1])
        start = min(max(self.at(begin, opening=True), a), b)
        return start, max(min(self.at(end, opening=False), b), start)

    def at(self, fraction: float, *, opening: bool) -> float:
        """The time ``fraction`` of the way through the speech (opening: skip a pause)."""
        left = fraction * self.total
        for a, b in self.parts:
            if left < b - a or (not opening and left <= b - a):
                return a + left
            left -= b - a
        return self.parts[-1][1]


def _wrap(words: Sequence[str], width: int) -> list[str]:
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _segment_cues(s: Segment, spans: Sequence[Span], opts: SubtitleOptions) -> list[Cue]:
    """One segment cut into cues that respect the size limits."""
    words = s.text.split()
    if not words:
        return []
    n_chars = sum(len(w) + 1 for w in words)
    # Nobody speaks slower than 2 characters a second: a segment that lasts longer (Whisper's
    # times run over pauses and silence) is cut to that when no speech spans say otherwise.
    end = min(s.end, s.start + max(1.0, n_chars / SLOWEST_CHARS_PER_S)) if not spans else s.end
    timeline = _Timeline(s.start, end, spans)
    # Word i spans [edges[i], edges[i + 1]] of the text (as a fraction of its characters).
    edges = [0.0]
    for w in words:
        edges.append(edges[-1] + (len(w) + 1) / n_chars)
    if len(s.words) == len(words):
        word_times = [(w.start, w.end) for w in s.words]
    else:
        word_times = [timeline.word(edges[i], edges[i + 1]) for i in range(len(words))]

    def span_of(first: int, last: int) -> Span:
        return word_times[first][0], word_times[last][1]

    out: list[Cue] = []
    first = 0
    for i in range(1, len(words) + 1):
        if i < len(words):
            lines = _wrap(words[first : i + 1], opts.max_line_chars)
            start, end = span_of(first, i)
            pause = span_of(i, i)[0] - span_of(i - 1, i - 1)[1]
            fits = len(lines) <= opts.max_lines and end - start <= opts.max_cue_s
            if fits and pause < opts.max_pause_s:
                continue
        start, end = span_of(first, i - 1)
        lines = _wrap(words[first:i], opts.max_line_chars)
        out.append(Cue(start, min(end, start + opts.max_cue_s), tuple(lines)))
        first = i
    return out


def cues(
    segments: Iterable[Segment],
    options: SubtitleOptions | None = None,
    spans: Sequence[Span] = (),
) -> list[Cue]:
    """Cues of ``segments`` (``spans``: speech spans, seconds, to time cues inside a segment).

    Cues are in time order, never overlap, last at least ``min_cue_s`` (taken from the
    pause after them, or pushing the next cue on) and at most ``max_cue_s``.
    """
    opts = options or SubtitleOptions()
    raw = [c for s in segments for c in _segment_cues(s, spans, opts)]
    raw.sort(key=lambda c: c.start)
    out: list[Cue] = []
    for i, c in enumerate(raw):
        start = max(c.start, out[-1].end if out else 0.0)
        end = min(c.end, start + opts.max_cue_s)
        if i + 1 < len(raw):
            end = min(end, raw[i + 1].start)
        end = max(end, start + opts.min_cue_s)
        out.append(Cue(round(start, 3), round(end, 3), c.lines))
    return out


# Readable subtitles (Swedish broadcast practice): what ``rule_breaks`` counts.
RULES = {
    "short": "on screen under 0.8 s",
    "long": "on screen over 7 s",
    "wide": "a line over 42 characters",
    "tall": "over 2 lines",
    "fast": "over 17 characters a second",
    "lone": "ends with the first word of the next sentence, or is one word of a sentence "
    "that goes on in the next cue",
    "mid": "ends inside a clause (no punctuation at its end)",
}
SENTENCE_END = ".!?…"
CLAUSE_END = ",;:–"


def _ends(word: str, marks: str) -> bool:
    return word.rstrip("\"')»”").endswith(tuple(marks))


def rule_breaks(cue_list: Sequence[Cue]) -> dict[str, int]:
    """How many cues break each rule of RULES (the limits are the rules', not options)."""
    out = dict.fromkeys(RULES, 0)
    for i, c in enumerate(cue_list):
        words = " ".join(c.lines).split()
        seconds = c.end - c.start
        out["short"] += seconds < 0.8 - 1e-6
        out["long"] += seconds > 7.0 + 1e-6
        out["wide"] += any(len(line) > 42 for line in c.lines)
        out["tall"] += len(c.lines) > 2
        out["fast"] += len(" ".join(words)) / max(seconds, 1e-3) > 17.0
        last = words[-1] if words else ""
        goes_on = i + 1 < len(cue_list) and not _ends(last, SENTENCE_END)
        carried = len(words) >= 2 and _ends(words[-2], SENTENCE_END) and goes_on
        out["lone"] += carried or (len(words) == 1 and goes_on)
        out["mid"] += bool(words) and not _ends(last, SENTENCE_END + CLAUSE_END)
    return out


def render(cue_list: Sequence[Cue], fmt: str) -> str:
    """Cues as SubRip (``srt``) or WebVTT (``vtt``)."""
    if fmt == "srt":
        return "\n".join(
            f"{i}\n{_stamp(c.start, ',')} --> {_stamp(c.end, ',')}\n" + "\n".join(c.lines) + "\n"
            for i, c in enumerate(cue_list, start=1)
        )
    if fmt == "vtt":
        body = [
            f"{_stamp(c.start, '.')} --> {_stamp(c.end, '.')}\n" + "\n".join(c.lines) + "\n"
            for c in cue_list
        ]
        return "WEBVTT\n\n" + "\n".join(body)
    raise ValueError(f"unknown subtitle format {fmt!r}; use srt or vtt")


def _stamp(seconds: float, sep: str) -> str:
    """HH:MM:SS,mmm (SubRip, sep ",") or HH:MM:SS.mmm (WebVTT, sep ".")."""
    ms = round(seconds * 1000)
    return (
        f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"
    )
