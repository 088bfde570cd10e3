"""Subtitles: cues fitted to real speech (silero VAD on sv-words recordings), size limits."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from whisper_sv.core.audio import SAMPLE_RATE, load_audio
from whisper_sv.infer.subtitles import (
    Cue,
    SubtitleOptions,
    cues,
    fit_to_speech,
    highlighted,
    rule_breaks,
    speech_spans,
)
from whisper_sv.infer.transcriber import Segment, Word, subtitles

OPTS = SubtitleOptions()


def long_file(folder, n_words: int = 24, trailing_s: float = 30.0):
    """sv-words recordings joined with 1-4 s pauses and ``trailing_s`` of silence at the end.

    Returns (audio, [(start, end) s of each recording], [its sentence]).
    """
    with open(folder / "manifest.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))[:n_words]
    parts, spans, texts = [], [], []
    at = 0.0
    for i, row in enumerate(rows):
        clip = load_audio(folder / row["path"])
        pause = np.zeros(int((1 + i % 4) * SAMPLE_RATE), np.float32)
        spans.append((at, at + len(clip) / SAMPLE_RATE))
        texts.append(row["sentence"])
        parts += [clip, pause]
        at += (len(clip) + len(pause)) / SAMPLE_RATE
    parts.append(np.zeros(int(trailing_s * SAMPLE_RATE), np.float32))
    return np.concatenate(parts), spans, texts


def whisper_like(spans, texts, per_segment: int = 3) -> list[Segment]:
    """Segments as Whisper times them: each runs until the next one starts (pauses included)."""
    out = []
    for first in range(0, len(spans), per_segment):
        start = spans[first][0]
        nxt = first + per_segment
        end = spans[nxt][0] if nxt < len(spans) else spans[-1][1] + 30.0  # into the silence
        out.append(Segment(start, end, " ".join(texts[first:nxt]) + "."))
    return out


def check(cue_list: list[Cue], opts: SubtitleOptions = OPTS) -> None:
    assert cue_list
    for c in cue_list:
        assert opts.min_cue_s <= round(c.end - c.start, 3) <= opts.max_cue_s, c
        assert 1 <= len(c.lines) <= opts.max_lines
        assert all(len(line) <= opts.max_line_chars for line in c.lines)
    for a, b in zip(cue_list, cue_list[1:], strict=False):
        assert a.end <= b.start, (a, b)


def test_cues_fit_real_speech_with_pauses_and_trailing_silence(sv_words_dir):
    audio, spans, texts = long_file(sv_words_dir)
    speech = sum(b - a for a, b in spans)
    segments = whisper_like(spans, texts)
    raw = cues(segments)  # Whisper's times: cues run through the pauses and the silence
    assert sum(c.end - c.start for c in raw) > 1.5 * speech

    vad = speech_spans(audio)
    fitted = cues(list(fit_to_speech(segments, vad)), spans=vad)
    check(fitted)
    assert sum(c.end - c.start for c in fitted) <= 1.3 * speech
    assert fitted[-1].end <= spans[-1][1] + 0.5  # nothing on screen during the silence
    words = " ".join(" ".join(c.lines) for c in fitted).split()
    assert words == " ".join(s.text for s in segments).split()  # no text lost


def test_long_segment_split_into_readable_cues():
    text = " ".join(f"ord{i:02d}" for i in range(40))  # 239 characters, 20 s
    cue_list = cues([Segment(10.0, 30.0, text)])
    check(cue_list)
    assert len(cue_list) >= 3
    assert " ".join(" ".join(c.lines) for c in cue_list) == text


def test_options_are_configurable_and_validated():
    text = "ett två tre fyra fem sex sju åtta nio tio elva tolv"
    opts = SubtitleOptions(max_cue_s=2.0, max_line_chars=12, max_lines=1)
    check(cues([Segment(0.0, 10.0, text)], opts), opts)
    with pytest.raises(ValueError, match="max_line_chars must be at least 10"):
        SubtitleOptions(max_line_chars=3)


def test_word_times_give_the_cue_ends():
    words = (Word(1.0, 1.4, " hej", 0.9), Word(1.5, 2.0, " där", 0.9))
    fitted = list(fit_to_speech([Segment(0.0, 9.0, "hej där", words)], []))
    assert (fitted[0].start, fitted[0].end) == (1.0, 2.0)


def test_no_zero_length_or_overlapping_cues():
    segments = [Segment(1.0, 1.0, "a"), Segment(1.0, 1.0, "b"), Segment(0.5, 3.0, "c d")]
    check(cues(segments))


def test_srt_and_vtt():
    segments = [Segment(0.0, 12.0, " ".join(["Hello there, this is an English line."] * 3))]
    srt = subtitles(segments, "srt")
    vtt = subtitles(segments, "vtt")
    stamps = re.findall(r"(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})", srt)
    assert len(stamps) >= 2 and srt.startswith("1\n00:00:00,000 --> ")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")
    assert subtitles(segments, "txt") == segments[0].text + "\n"


# ------------------------------------------------------------------ real model (slow)


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    def sec(stamp: str) -> float:
        h, m, rest = stamp.split(":")
        s, ms = rest.split(",")
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    out = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        a, b = lines[1].split(" --> ")
        out.append((sec(a), sec(b), " ".join(lines[2:])))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("vad", [True, False])
def test_real_model_subtitles_fit_speech(sv_words_dir, vad):
    from whisper_sv.infer.transcriber import Transcriber, format_transcript

    audio, spans, _ = long_file(sv_words_dir, n_words=16)
    speech = sum(b - a for a, b in spans)
    result = Transcriber("bundled:base").transcribe(audio, vad=vad)
    cue_list = parse_srt(format_transcript(result, "srt"))
    assert cue_list
    assert all(0 < b - a <= OPTS.max_cue_s for a, b, _ in cue_list)
    assert all(b1 <= a2 for (_, b1, _), (a2, _, _) in zip(cue_list, cue_list[1:], strict=False))
    assert sum(b - a for a, b, _ in cue_list) <= 1.3 * speech
    texts = [t.strip(" .,!?").lower() for s in result.segments for t in [s.text]]
    assert all(a != b for a, b in zip(texts, texts[1:], strict=False))  # no repeated lines


def test_fitted_starts_never_go_back():
    # Whisper's segments may overlap; moving a start onto speech must not pass the next one.
    segments = [Segment(22.0, 23.5, "blus"), Segment(23.016, 23.016, "kalsonger")]
    fitted = list(fit_to_speech(segments, [(23.064, 24.0)]))
    assert [s.start for s in fitted] == sorted(s.start for s in fitted)
    assert all(s.start <= s.end for s in fitted)


# ------------------------------------------------------------------ readable cues


def cue_text(cue_list: list[Cue]) -> list[str]:
    return [" ".join(c.lines) for c in cue_list]


def segments_of_cues(cue_list: list[Cue], segments: list[Segment]) -> list[set[int]]:
    """For each cue, the indices of the segments its words come from."""
    owner = [k for k, s in enumerate(segments) for _ in s.text.split()]
    shown = [k for k, c in enumerate(cue_list) for _ in " ".join(c.lines).split()]
    assert len(owner) == len(shown), "every word of the segments is shown once"
    out: list[set[int]] = [set() for _ in cue_list]
    for seg, cue in zip(owner, shown, strict=True):
        out[cue].add(seg)
    return out


def test_a_segment_that_fits_one_cue_is_one_cue_and_keeps_its_words():
    # Fitted to speech, a sentence's last word was moved into the next sentence's cue and
    # shown 2-3.5 s after it was said ("... än att" / "få. Jag gäller ...").
    segments = [
        Segment(26.9, 31.0, "Det är lättare att förlora än att få."),
        Segment(33.2, 35.9, "Jag gäller fall i min familj."),
        Segment(36.5, 39.0, "Vi var ute hela dagen. Ingen"),  # ends with the next's word
        Segment(39.4, 42.0, "visste vad som hade hänt."),
    ]
    cue_list = cues(segments)
    check(cue_list)
    assert cue_text(cue_list) == [s.text for s in segments]
    assert [c.start for c in cue_list] == [s.start for s in segments]
    assert all(len(k) == 1 for k in segments_of_cues(cue_list, segments))


def test_a_segment_too_long_for_one_cue_is_split_at_its_words_own_times():
    text = (
        "Det regnade hela förmiddagen i Stockholm och vinden var kall, "
        "men på eftermiddagen kom solen fram och många gick ut i parkerna."
    )
    n = len(text.split())
    # Word times from the alignment: 0.5 s a word, a 2 s pause after "kall,".
    words, at = [], 0.0
    for w in text.split():
        words.append(Word(at, at + 0.4, " " + w, 0.9))
        at += 2.4 if w == "kall," else 0.5
    segments = [Segment(0.0, words[-1].end, text, words=tuple(words)), Segment(20, 22, "Slut.")]
    cue_list = cues(segments)
    check(cue_list)
    assert len(cue_list) == 3 and cue_text(cue_list)[0].endswith("kall,")
    assert cue_list[1].start == words[10].start  # its first word's own time
    assert [len(k) for k in segments_of_cues(cue_list, segments)] == [1, 1, 1]
    assert sum(len(" ".join(c.lines).split()) for c in cue_list[:2]) == n


def test_word_times_stay_in_their_segment_and_a_pushed_cue_does_not_push_the_next():
    # The alignment gives the pause before a segment to its first word ("Vi" 79.42-80.46,
    # said at 81.7) and the pause after one to its last ("numret," until 109.7).
    def seg(start, end, *words):
        ws = tuple(Word(a, b, " " + t, 0.9) for t, a, b in words)
        return Segment(start, end, " ".join(t for t, _, _ in words), words=ws)

    segments = [
        seg(102.7, 105.9, ("diskar,", 102.7, 104.9), ("numret,", 104.9, 109.7)),
        seg(107.6, 110.3, ("Spara", 107.6, 108.5), ("en", 108.5, 108.8), ("fil.", 108.8, 110.3)),
        seg(110.8, 113.1, ("Sätter", 110.8, 111.0), ("potatis.", 111.0, 113.1)),
        seg(113.6, 115.5, ("Väntar.", 113.6, 115.5)),
        seg(116.6, 117.9, ("Vi", 115.5, 116.5), ("är", 116.9, 117.1), ("här.", 117.1, 117.9)),
    ]
    cue_list = cues(segments)
    check(cue_list)
    assert cue_list[0].end <= 107.6  # the segment's end, not its last word's stretched one
    for c, s in zip(cue_list, segments, strict=True):
        assert c.start <= s.start + 0.3 and c.end >= s.end - 0.3, (c, s)
    lit = [c for c in highlighted(cue_list) if "<u>Vi</u>" in " ".join(c.lines)]
    assert lit and lit[0].start >= 116.6  # underlined when said, not in the pause before


def test_long_text_breaks_at_sentence_and_clause_ends():
    text = (
        "Det regnade hela förmiddagen i Stockholm och vinden var kall. "
        "På eftermiddagen kom solen fram, och många gick ut i parkerna för att njuta."
    )
    cue_list = cues([Segment(0.0, 10.0, text)])
    check(cue_list)
    assert cue_text(cue_list)[0].endswith("kall.")
    assert all(t[-1] in ".,!?" for t in cue_text(cue_list))
    for c in cue_list:  # two balanced lines where one would be too long
        assert len(c.lines) == 1 or abs(len(c.lines[0]) - len(c.lines[1])) < 20


def test_short_and_fast_cues_take_the_pause_after_them():
    segments = [
        Segment(0.0, 0.3, "Ja."),  # one short word: 0.8 s on screen, from the pause after it
        Segment(3.0, 4.0, "Det här är en ganska lång mening."),  # 33 chars in 1 s
        Segment(9.0, 10.0, "Slut."),
    ]
    cue_list = cues(segments)
    check(cue_list)
    assert cue_list[0].end - cue_list[0].start == pytest.approx(0.8)
    speeds = [len(t) / (c.end - c.start) for t, c in zip(cue_text(cue_list), cue_list, strict=True)]
    assert max(speeds) <= OPTS.max_chars_per_s + 0.01  # times are rounded to ms
    assert rule_breaks(cue_list) == dict.fromkeys(rule_breaks(cue_list), 0)


def test_rule_breaks_counts_each_rule():
    bad = [
        Cue(0.0, 0.5, ("Hej.",)),  # short
        Cue(1.0, 9.0, ("a" * 20 + " " + "b" * 22,)),  # long, wide, ends mid-clause
        Cue(9.0, 10.0, ("Ett två tre fyra fem sex sju åtta nio tio elva tolv.",)),  # fast, wide
        Cue(10.0, 12.0, ("Nu.", "Två.", "Tre. Och")),  # tall, carries "Och" of the next
        Cue(12.0, 14.0, ("sen.",)),
    ]
    assert rule_breaks(bad) == {
        "short": 1,
        "long": 1,
        "wide": 2,
        "tall": 1,
        "fast": 1,
        "lone": 1,
        "mid": 2,
    }


UNDERLINED = re.compile(r"<u>(.*?)</u>")


def check_highlighted(plain: list[Cue], shown: list[Cue]) -> None:
    """Every word of ``plain`` underlined once, in order, inside its cue; no overlaps."""
    words = [w for c in plain for w in " ".join(c.lines).split()]
    assert [m for c in shown for m in UNDERLINED.findall(" ".join(c.lines))] == words
    assert all(len(UNDERLINED.findall(" ".join(c.lines))) <= 1 for c in shown)
    for a, b in zip(shown, shown[1:], strict=False):
        assert a.start < a.end <= b.start < b.end
    for c in shown:  # inside the cue it comes from, whose text it shows
        (home,) = [p for p in plain if p.start <= c.start and c.end <= p.end]
        assert UNDERLINED.sub(r"\1", " ".join(c.lines)) == " ".join(home.lines)


def worded(start: float, end: float, *words: tuple[float, float, str]) -> Segment:
    """A segment of ``words`` (start, end, text) with their times."""
    text = " ".join(w for _, _, w in words)
    return Segment(start, end, text, words=tuple(Word(a, b, " " + w, 0.9) for a, b, w in words))


def test_highlighted_words_are_whispers_highlight_words():
    segments = [
        worded(0.0, 2.0, (0.1, 0.4, "Hej"), (0.4, 0.6, "på"), (1.2, 1.9, "dig.")),
        # Word times squashed together (the alignment gives some words no time at all).
        worded(5.0, 6.0, (5.0, 5.0, "Ett"), (5.0, 5.0, "två"), (5.0, 5.0, "tre")),
    ]
    plain = cues(segments)
    shown = highlighted(plain)
    check_highlighted(plain, shown)
    # Whisper's layout: each word underlined from its start to its end, the plain text in
    # the gaps between words and after the last; squashed words get 10 ms each.
    assert shown[:4] == [
        Cue(0.1, 0.4, ("<u>Hej</u> på dig.",)),
        Cue(0.4, 0.6, ("Hej <u>på</u> dig.",)),
        Cue(0.6, 1.2, ("Hej på dig.",)),
        Cue(1.2, 1.9, ("Hej på <u>dig.</u>",)),
    ]
    assert [(c.start, c.end) for c in shown[4:]] == [
        (5.0, 5.01),
        (5.01, 5.02),
        (5.02, 5.03),
        (5.03, 5.8),
    ]
    assert highlighted([Cue(0.0, 1.0, ("utan tider",))]) == [Cue(0.0, 1.0, ("utan tider",))]
    as_srt = subtitles(segments, "srt", SubtitleOptions(highlight_words=True))
    assert "<u>Hej</u> på dig." in as_srt and "<u>" not in subtitles(segments, "srt")
