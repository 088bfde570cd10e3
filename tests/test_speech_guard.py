"""The speech guard: known-hallucination matching, the drop rules, the translation check,
the generated non-speech audio, and the guard inside ``Transcriber`` (tiny model; the real
model in the slow tests)."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from whisper_sv.core.audio import SAMPLE_RATE
from whisper_sv.data import nonspeech
from whisper_sv.infer.hallucination import (
    REASONS,
    judge,
    judge_translation,
    known_hallucination,
    normalise,
    verdict,
)
from whisper_sv.infer.transcriber import Segment, TranscribeOptions, Transcriber

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LEXIN = DATA / "lexin-phrases"


# ------------------------------------------------------------------ the phrase list


@pytest.mark.parametrize(
    "text",
    [
        "Thanks for watching!",
        "THANKS FOR WATCHING, see you in the next video!",
        "Don't forget to like, share and subscribe!",
        "Please subscribe to the channel and hit the bell icon.",
        "I'll see you next time.",
        "Undertexter från Amara.org-gemenskapen",
        "Textning: Stina Hedin",
        "Tack för att ni tittade!",
        "Besök www.example.se för mer",
        "https://youtube.com/watch",
    ],
)
def test_known_hallucinations_match(text):
    assert known_hallucination(text) is not None


@pytest.mark.parametrize(
    "text",
    [
        "Tack så mycket!",
        "Thank you.",
        "Vi ses i morgon.",
        "Han tvättar sig.",
        "Om textning av filmer",  # "^textning" only at the start of a segment
        "She watches the channel.",
        "Subscribers",  # word boundaries: not "subscribe"
        "",
    ],
)
def test_ordinary_speech_does_not_match(text):
    assert known_hallucination(text) is None


def test_every_entry_of_the_list_matches_its_own_text():
    lines = resources.files("whisper_sv.infer").joinpath("hallucinations.txt").read_text("utf-8")
    entries = [e.strip() for e in lines.splitlines() if e.strip() and not e.startswith("#")]
    phrases = [e.lstrip("^") for e in entries if not e.startswith("re:")]
    assert len(phrases) > 30
    for phrase in phrases:
        assert known_hallucination(phrase.capitalize() + ".") is not None, phrase


@pytest.mark.skipif(not LEXIN.is_dir(), reason="../shared/data/lexin-phrases not here")
def test_no_real_phrase_is_on_the_list():
    with open(LEXIN / "manifest.tsv", encoding="utf-8") as fh:
        sentences = [r["sentence"] for r in csv.DictReader(fh, delimiter="\t")]
    assert len(sentences) == 368
    assert [s for s in sentences if known_hallucination(s)] == []


def test_normalise():
    assert normalise("  Don’t  FORGET,to-like! ") == "dont forget to like"
    assert normalise("Tvättar sig.") == "tvättar sig"


# ------------------------------------------------------------------ the rules


def seg(text="hej", start=0.0, end=1.0, logprob=-0.3, no_speech=0.1) -> Segment:
    return Segment(start, end, text, avg_logprob=logprob, no_speech_prob=no_speech)


def test_silence_rule_uses_both_scores_and_the_options():
    quiet = seg(logprob=-1.5, no_speech=0.7)
    opts = TranscribeOptions()
    assert verdict(quiet, opts, None).reason == "silence"
    assert verdict(seg(logprob=-0.5, no_speech=0.7), opts, None) is None  # confident text
    assert verdict(seg(logprob=-1.5, no_speech=0.3), opts, None) is None  # unsure speech
    assert verdict(quiet, TranscribeOptions(no_speech_threshold=1.0), None) is None
    assert verdict(Segment(0.0, 1.0, "hej"), opts, None) is None  # scores unknown: kept


def test_speech_gate_drops_text_outside_speech():
    opts = TranscribeOptions(speech_gate=True)
    spans = [(2.0, 3.0)]
    assert verdict(seg(start=0.0, end=1.5), opts, spans).reason == "no_speech_detected"
    assert verdict(seg(start=1.0, end=2.5), opts, spans) is None
    assert verdict(seg(start=2.2, end=2.2), opts, spans) is None  # zero length inside
    assert verdict(seg(), opts, []).reason == "no_speech_detected"
    assert verdict(seg(), opts, None) is None  # VAD not run: nothing to judge by
    assert verdict(seg(), TranscribeOptions(speech_gate=False), []) is None


def test_judge_keeps_order_and_reports_every_drop():
    opts = TranscribeOptions(drop_known_hallucinations=True)
    segments = [seg("Hej."), seg("Thanks for watching!", 1.0, 2.0), seg("Då.", 2.0, 3.0)]
    dropped: list = []
    kept = list(judge(segments, opts, None, dropped))
    assert [s.text for s in kept] == ["Hej.", "Då."]
    assert [(d.segment.text, d.reason) for d in dropped] == [
        ("Thanks for watching!", "known_hallucination")
    ]
    assert "thanks for watching" in dropped[0].detail
    assert {d.reason for d in dropped} <= set(REASONS)
    off: list = []
    plain = TranscribeOptions(drop_known_hallucinations=False)
    assert list(judge(segments, plain, None, off)) == segments and off == []


def test_translation_is_checked_against_the_transcript():
    opts = TranscribeOptions(max_translation_ratio=2.0, translation_slack_chars=10)
    said = [Segment(0.0, 1.2, "Tveta sig!")]
    outro = Segment(0.0, 1.2, "Don't forget to like, share and subscribe!")
    fine = Segment(0.0, 1.2, "Washes himself.")
    assert verdict_reason(outro, said, opts) == "translation_too_long"
    assert verdict_reason(fine, said, opts) is None
    assert verdict_reason(fine, [], opts) == "unconfirmed_translation"
    far = [Segment(10.0, 11.0, "Tveta sig!")]  # no transcript near this English
    assert verdict_reason(fine, far, opts) == "unconfirmed_translation"


def verdict_reason(english, source, opts):
    dropped: list = []
    kept = list(judge_translation([english], source, opts, dropped))
    assert len(kept) + len(dropped) == 1
    return dropped[0].reason if dropped else None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"no_speech_threshold": 1.5}, "between 0 and 1"),
        ({"log_prob_threshold": 0.5}, "<= 0"),
        ({"max_translation_ratio": 0}, "max_translation_ratio"),
        ({"translation_slack_chars": -1}, "translation_slack_chars"),
    ],
)
def test_guard_options_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TranscribeOptions(**kwargs)


# ------------------------------------------------------------------ generated non-speech


def test_nonspeech_clips_are_seeded_and_bounded():
    clips = nonspeech.nonspeech_set()
    assert len({c.name for c in clips}) == len(clips) == len(nonspeech.STANDARD)
    again = nonspeech.nonspeech_set()
    for a, b in zip(clips, again, strict=True):
        assert a.samples.dtype == np.float32 and np.array_equal(a.samples, b.samples)
        assert np.abs(a.samples).max() <= 1.0
    other = nonspeech.make("pink", 1.0, seed=1)
    assert not np.array_equal(other, nonspeech.make("pink", 1.0, seed=0))
    assert len(nonspeech.make("hum", 2.5)) == 2.5 * SAMPLE_RATE
    rms = float(np.sqrt(np.mean(nonspeech.make("white", 2.0) ** 2)))
    assert rms == pytest.approx(nonspeech.LEVEL_RMS, rel=0.05)
    with pytest.raises(ValueError, match="use one of"):
        nonspeech.make("rain", 1.0)


def test_silero_finds_no_speech_in_the_noises():
    from whisper_sv.infer.subtitles import speech_spans

    for kind in ("white", "pink", "brown", "fan", "hum", "tone", "quiet"):
        assert speech_spans(nonspeech.make(kind, 5.0)) == [], kind


# ------------------------------------------------------------------ inside the Transcriber

# The random model writes text for any audio: what the guard does with it is what is tested.
FAST = {"max_new_tokens": 8, "loop_guard": False, "speech_gate": False}


@pytest.fixture(scope="module")
def tiny(tiny_ct2_dir):
    return Transcriber(str(tiny_ct2_dir), device="cpu")


def test_speech_gate_gives_no_text_for_noise(tiny):
    noise = nonspeech.make("white", 3.0)
    assert tiny.transcribe(noise, **FAST).text, "the random model writes text for noise"
    gated = tiny.transcribe(noise, **{**FAST, "speech_gate": True})
    assert gated.segments == () and gated.text == ""


def test_no_english_without_a_kept_transcript(tiny):
    noise = nonspeech.make("pink", 2.0)
    english = tiny.transcribe(noise, task="translate", check_translation=False, **FAST)
    assert english.text, "the random model translates noise"
    checked = tiny.transcribe(noise, task="translate", **{**FAST, "speech_gate": True})
    assert checked.text == ""
    given = tiny.transcribe(noise, task="translate", check_translation=True, transcript=[], **FAST)
    assert given.text == ""


def test_dropped_segments_are_reported_in_time_order(tiny):
    noise = nonspeech.make("white", 3.0)
    plain = tiny.transcribe(noise, **FAST)
    # A threshold of 0 log-probability marks every window unsure, 0 no-speech probability
    # every window silent: the silence rule then drops all of it, and says so.
    dropped = tiny.transcribe(noise, no_speech_threshold=0.0, log_prob_threshold=0.0, **FAST)
    assert dropped.segments == ()
    assert [d.segment.text for d in dropped.dropped] == [s.text for s in plain.segments]
    assert {d.reason for d in dropped.dropped} == {"silence"}
    starts = [d.segment.start for d in dropped.dropped]
    assert starts == sorted(starts)


def test_batched_and_one_by_one_guard_alike(tiny_ct2_dir):
    batched = Transcriber(str(tiny_ct2_dir), device="cpu", batched=True)
    alone = Transcriber(str(tiny_ct2_dir), device="cpu")
    clips = [nonspeech.make("white", 2.0), nonspeech.make("music", 3.0)]
    opts = TranscribeOptions(task="translate", check_translation=True, **FAST)
    together, one_by_one = batched.transcribe_many(clips, opts), alone.transcribe_many(clips, opts)
    for a, b in zip(together, one_by_one, strict=True):
        assert (a.text, a.dropped) == (b.text, b.dropped)
    assert any(r.text or r.dropped for r in together), "the check had English to judge"


# ------------------------------------------------------------------ real model (slow)


@pytest.mark.slow
def test_real_model_invents_nothing_for_non_speech():
    t = Transcriber("bundled:base", device="cpu")
    for clip in nonspeech.nonspeech_set()[:13]:  # every kind once, 5 s each
        for task in ("transcribe", "translate"):
            result = t.transcribe(clip.samples, task=task)
            assert result.text == "", (clip.name, task, result.text)


@pytest.mark.slow
@pytest.mark.skipif(not LEXIN.is_dir(), reason="../shared/data/lexin-phrases not here")
def test_real_model_no_outro_for_a_swedish_phrase():
    t = Transcriber("bundled:base", device="cpu")
    clip = LEXIN / "tvattar_sig.mp3"
    assert t.transcribe(clip).text  # the Swedish is kept
    english = t.transcribe(clip, task="translate")
    assert known_hallucination(english.text) is None
    unguarded = t.transcribe(
        clip, task="translate", drop_known_hallucinations=False, check_translation=False
    )
    if known_hallucination(unguarded.text):  # what the guard is for: it said why it dropped
        assert english.dropped
