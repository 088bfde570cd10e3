"""Subtitles that fit the speech: segment times cut to speech, cues of readable size.

Whisper's segment times run from the end of one segment to the start of the next, pauses
included, so a segment's cue stays on screen through the silence after it. Two steps fix that:

1. ``fit_to_speech`` moves each segment's start and end onto the speech inside it: its word
   times when it has them, else the speech spans silero VAD finds (``speech_spans``);
2. ``cues`` makes cues of each segment's words, following Swedish broadcast practice: at
   most ``max_cue_s`` (7 s) and ``max_lines`` lines of ``max_line_chars`` characters (two
   of 42), at least ``min_cue_s`` (0.8 s) on screen and no faster than ``max_chars_per_s``
   (17) where the pause after a cue allows. A cue never holds words of two segments: a
   segment that fits one cue is one cue, and a longer one is split at its sentence ends,
   pauses and clause ends rather than between any two words, by the layout of least cost
   over its break positions (``_groups``), each part timed by its own words. Moving a word
   into the next cue showed it seconds after it was said (a sentence's last word at the
   start of the next sentence's cue); cues follow each other without overlap.

``rule_breaks`` counts the cues breaking each rule (bench/bench_subtitles.py). Works the same
for Swedish and English (translated) segments.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from whisper_sv.infer.types import Segment

__all__ = [
    "RULES",
    "Cue",
    "SubtitleOptions",
    "cues",
    "fit_to_speech",
    "fits_one_cue",
    "highlighted",
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
    # Shortest cue (Swedish broadcast practice: about 0.8 s): a shorter one is lengthened into
    # the pause after it, else the next cue waits.
    min_cue_s: float = 0.8
    # Reading speed (Swedish broadcast practice: at most about 17): a faster cue stays longer
    # where the pause after it allows.
    max_chars_per_s: float = 17.0
    max_pause_s: float = 1.0  # a pause this long ends a cue (unless that strands a word)
    # Each cue shown once per word with that word underlined (<u>word</u>) while it is said,
    # as whisper's --highlight_words; best with word timestamps (transcribe turns them on)
    highlight_words: bool = False

    def __post_init__(self) -> None:
        if not self.max_cue_s > 0:
            raise ValueError(f"max_cue_s must be > 0 seconds, not {self.max_cue_s!r}")
        if self.max_line_chars < 10:
            raise ValueError(f"max_line_chars must be at least 10, not {self.max_line_chars!r}")
        if self.max_lines < 1:
            raise ValueError(f"max_lines must be at least 1, not {self.max_lines!r}")
        if not self.max_chars_per_s > 0:
            raise ValueError(f"max_chars_per_s must be > 0, not {self.max_chars_per_s!r}")
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
    # (start, end) seconds of each word of the lines, in order (what highlighted() shows)
    words: tuple[tuple[float, float], ...] = ()


def speech_spans(samples: np.ndarray) -> list[Span]:
    """(start, end) seconds of the speech silero VAD finds, padded by 0.2 s, pauses >= 0.3 s."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    from whisper_sv.core.audio import SAMPLE_RATE

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


def _wrap(words: Sequence[str], width: int) -> list[str]:
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


@dataclass(frozen=True)
class _Timed:
    """One word of the text and its time on the audio."""

    text: str
    start: float
    end: float


def _timed_words(s: Segment, spans: Sequence[Span]) -> list[_Timed]:
    """The words of one segment with their times: its word times when it has them, else
    each word's share of the segment's speech by its characters."""
    words = s.text.split()
    if not words:
        return []
    if len(s.words) == len(words):
        # Kept inside the segment: the alignment gives a pause before a segment to its
        # first word, or after it to its last, which showed them seconds early or late.
        timed = []
        for w, t in zip(words, s.words, strict=True):
            start = min(max(t.start, s.start), s.end)
            timed.append(_Timed(w, start, min(max(t.end, start), s.end)))
        return timed
    n_chars = sum(len(w) + 1 for w in words)
    # Nobody speaks slower than 2 characters a second: a segment that lasts longer (Whisper's
    # times run over pauses and silence) is cut to that when no speech spans say otherwise.
    end = min(s.end, s.start + max(1.0, n_chars / SLOWEST_CHARS_PER_S)) if not spans else s.end
    timeline = _Timeline(s.start, end, spans)
    # Word i spans [edges[i], edges[i + 1]] of the text (as a fraction of its characters).
    edges = [0.0]
    for w in words:
        edges.append(edges[-1] + (len(w) + 1) / n_chars)
    return [_Timed(w, *timeline.word(edges[i], edges[i + 1])) for i, w in enumerate(words)]


# Costs of the cue layout (``_groups``), in units of one extra cue. A cue that ends mid-
# sentence costs most where no clause ends; carrying the first word of the next sentence
# into a cue, or leaving one word of a sentence alone on screen, costs more than any break.
BREAK_COST = {"sentence": 0.0, "pause": 0.0, "clause": 1.0, "conjunction": 2.0, "word": 4.0}
LONE_COST = 8.0
PAUSE_INSIDE_COST = 5.0  # a cue held over a pause of max_pause_s or more
SHORT_COST = 3.0  # a cue that cannot stay min_cue_s (the next one starts too soon)
FAST_COST = 4.0  # per reading speed over the limit, as a share of the limit
MAX_CUE_WORDS = 40  # longer cues are never tried (84 characters hold fewer)
# Words that open a clause: a break before them reads better than between other words.
CONJUNCTIONS = frozenset(
    [
        "och",
        "men",
        "eller",
        "utan",
        "att",
        "som",
        "när",
        "så",
        "för",
        "eftersom",
        "om",
        "medan",
        "fast",
        "innan",
        "sedan",
        "tills",
        "då",
        "and",
        "but",
        "or",
        "that",
        "which",
        "who",
        "when",
        "so",
        "because",
        "if",
        "while",
        "though",
        "before",
        "after",
        "until",
    ]
)


def _layout(texts: Sequence[str], opts: SubtitleOptions) -> list[str] | None:
    """The lines of a cue holding ``texts``, balanced and broken after punctuation where
    possible; None when they do not fit ``max_lines`` lines of ``max_line_chars``."""
    width = opts.max_line_chars
    joined = " ".join(texts)
    if len(joined) <= width or len(texts) == 1:
        return [joined]
    best: tuple[float, list[str]] | None = None
    if opts.max_lines >= 2:
        for k in range(1, len(texts)):
            top, bottom = " ".join(texts[:k]), " ".join(texts[k:])
            if max(len(top), len(bottom)) > width:
                continue
            at_mark = _ends(texts[k - 1], SENTENCE_END + CLAUSE_END)
            score = abs(len(top) - len(bottom)) + (0 if at_mark else 10)
            if best is None or score < best[0]:
                best = (score, [top, bottom])
    if best:
        return best[1]
    lines = _wrap(texts, width)
    return lines if len(lines) <= opts.max_lines else None


def fits_one_cue(segment: Segment, options: SubtitleOptions | None = None) -> bool:
    """Whether ``segment``'s text fits one cue's lines and its speech one cue's time."""
    opts = options or SubtitleOptions()
    words = segment.text.split()
    if not words or _layout(words, opts) is None:
        return False
    start, end = segment.start, segment.end
    if segment.words:
        start, end = segment.words[0].start, segment.words[-1].end
    return end - start <= opts.max_cue_s


def _break_cost(words: Sequence[_Timed], j: int, opts: SubtitleOptions) -> float:
    """The cost of a cue ending after ``words[j - 1]``."""
    if j == len(words):
        return 0.0
    before, after = words[j - 1].text, words[j].text
    if words[j].start - words[j - 1].end >= opts.max_pause_s:
        kind = "pause"
    elif _ends(before, SENTENCE_END):
        kind = "sentence"
    elif _ends(before, CLAUSE_END):
        kind = "clause"
    elif after.lower().strip(",.!?") in CONJUNCTIONS:
        kind = "conjunction"
    else:
        kind = "word"
    carried = j >= 2 and _ends(words[j - 2].text, SENTENCE_END) and not _ends(before, SENTENCE_END)
    return BREAK_COST[kind] + (LONE_COST if carried else 0.0)


def _shown(words: Sequence[_Timed], i: int, j: int, opts: SubtitleOptions) -> float:
    """How long the cue of ``words[i:j]`` stays on screen: its speech, lengthened into the
    pause after it up to min_cue_s and the reading speed, at most max_cue_s."""
    chars = len(" ".join(w.text for w in words[i:j]))
    start, end = words[i].start, words[j - 1].end
    room = words[j].start - start if j < len(words) else float("inf")
    wanted = max(opts.min_cue_s, chars / opts.max_chars_per_s)
    return min(max(end - start, min(wanted, room)), opts.max_cue_s)


def _cue_cost(words: Sequence[_Timed], i: int, j: int, opts: SubtitleOptions) -> float:
    cost = 1.0
    pauses = sum(words[k + 1].start - words[k].end >= opts.max_pause_s for k in range(i, j - 1))
    cost += PAUSE_INSIDE_COST * pauses
    shown = _shown(words, i, j, opts)
    if shown < opts.min_cue_s - 1e-6:
        cost += SHORT_COST
    speed = len(" ".join(w.text for w in words[i:j])) / max(shown, 1e-3)
    if speed > opts.max_chars_per_s:
        cost += FAST_COST * (speed / opts.max_chars_per_s - 1)
    alone = j - i == 1 and j < len(words) and not _ends(words[i].text, SENTENCE_END)
    if alone and words[j].start - words[i].end < opts.max_pause_s:
        cost += LONE_COST
    return cost


def _groups(words: Sequence[_Timed], opts: SubtitleOptions) -> list[tuple[int, int]]:
    """(first, end) word indices of each cue: the layout of least total cost (dynamic
    programming over the break positions; a cue must fit the line, line and time limits,
    a single word always may)."""
    n = len(words)
    best = [0.0] + [float("inf")] * n
    back = [0] * (n + 1)
    for j in range(1, n + 1):
        brk = _break_cost(words, j, opts)
        for i in range(j - 1, max(-1, j - 1 - MAX_CUE_WORDS), -1):
            fits = _layout([w.text for w in words[i:j]], opts) is not None
            if j - i > 1 and (not fits or words[j - 1].end - words[i].start > opts.max_cue_s):
                break  # starting earlier only makes the cue longer
            cost = best[i] + _cue_cost(words, i, j, opts) + brk
            if cost < best[j]:
                best[j], back[j] = cost, i
    out = []
    j = n
    while j > 0:
        out.append((back[j], j))
        j = back[j]
    return out[::-1]


def cues(
    segments: Iterable[Segment],
    options: SubtitleOptions | None = None,
    spans: Sequence[Span] = (),
) -> list[Cue]:
    """Cues of ``segments`` (``spans``: speech spans, seconds, to time words inside a segment).

    Each cue holds words of one segment only, so a sentence is never split by the layout: a
    segment that fits one cue (``fits_one_cue``) is one cue; a longer one is laid out into
    cues (``_groups``) with breaks at its sentence ends, pauses and clause ends, each cue
    timed by its own words. Cues are in time order, never overlap, last at least
    ``min_cue_s`` and as long as reading ``max_chars_per_s`` needs where the pause after them
    allows (taken from that pause, or pushing the next cue on for min_cue_s), and at most
    ``max_cue_s``.
    """
    opts = options or SubtitleOptions()
    words: list[_Timed] = []
    groups: list[tuple[int, int]] = []
    for s in segments:
        timed = _timed_words(s, spans)
        if not timed:
            continue
        first = len(words)
        for w in timed:
            start = max(w.start, words[-1].start if words else 0.0)
            words.append(_Timed(w.text, start, max(w.end, start)))
        if fits_one_cue(s, opts):
            groups.append((first, len(words)))
        else:
            groups += [(first + i, first + j) for i, j in _groups(words[first:], opts)]
    out: list[Cue] = []
    for i, j in groups:
        lines = _layout([w.text for w in words[i:j]], opts) or _wrap(
            [w.text for w in words[i:j]], opts.max_line_chars
        )
        start = max(words[i].start, out[-1].end if out else 0.0)
        # The end follows the words, not the start: a cue the one before pushed on ends
        # when its own words allow, so one long cue does not push every later one.
        end = max(words[i].start + _shown(words, i, j, opts), start + opts.min_cue_s)
        end = round(min(end, start + opts.max_cue_s), 3)
        times = tuple((w.start, w.end) for w in words[i:j])
        out.append(Cue(round(start, 3), end, tuple(lines), times))
    return out


# Shortest time a highlighted word is shown (10 ms: a cue of 0 ms after rounding is never seen).
MIN_WORD_S = 0.01


def highlighted(cue_list: Sequence[Cue]) -> list[Cue]:
    """The cues as whisper's ``--highlight_words`` writes them: for each word, a cue from its
    start to its end with that word underlined (``<u>word</u>``), and the plain text in the
    gaps between words and after the last one (a cue without word times stays as it is).

    Word times are kept inside their cue, in order, each at least ``MIN_WORD_S`` long, so
    every word is underlined once and the cues never overlap.
    """
    out: list[Cue] = []
    for c in cue_list:
        if not c.words:
            out.append(c)
            continue
        last = c.start
        for k, (start, end) in enumerate(_word_spans(c)):
            if start > last:
                out.append(Cue(last, start, c.lines))
            out.append(Cue(start, end, _underlined(c.lines, k)))
            last = end
        if c.end > last:
            out.append(Cue(last, c.end, c.lines))
    return out


def _word_spans(c: Cue) -> list[Span]:
    """The words' (start, end) inside ``c``: non-overlapping, in order, none too short."""
    n = len(c.words)
    least = min(MIN_WORD_S, (c.end - c.start) / n)
    starts: list[float] = []
    for k, (a, _) in enumerate(c.words):
        earliest = max(a, c.start, starts[-1] + least if starts else c.start)
        starts.append(min(earliest, c.end - (n - k) * least))
    spans = []
    for k, (_, b) in enumerate(c.words):
        limit = starts[k + 1] if k + 1 < n else c.end
        spans.append((round(starts[k], 3), round(min(max(b, starts[k] + least), limit), 3)))
    return spans


def _underlined(lines: tuple[str, ...], k: int) -> tuple[str, ...]:
    """``lines`` with their ``k``-th word (counted over all lines) as ``<u>word</u>``."""
    out = []
    for line in lines:
        words = line.split(" ")
        if 0 <= k < len(words):
            words[k] = f"<u>{words[k]}</u>"
        k -= len(words)
        out.append(" ".join(words))
    return tuple(out)


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
        out["fast"] += len(" ".join(words)) / max(seconds, 1e-3) > 17.0 + 0.01  # ms rounding
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
