"""Live captions: LocalAgreement on hand-made hypotheses, the streaming transcriber on real
joined Swedish speech (slow: the bundled model) and on silence and noise (no text)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from whisper_sv.core.audio import SAMPLE_RATE, load_audio
from whisper_sv.infer.live_agreement import LocalAgreement
from whisper_sv.infer.streaming import (
    StreamingOptions,
    StreamingTranscriber,
    line_segments,
)
from whisper_sv.infer.types import Word

LEXIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "lexin-phrases"


def words(spec: str, start: float = 0.0) -> list[Word]:
    """ "hej då" -> Words 0.5 s long, back to back from ``start``."""
    return [
        Word(start=start + 0.5 * i, end=start + 0.5 * (i + 1), text=" " + t, probability=0.9)
        for i, t in enumerate(spec.split())
    ]


def feed(live: StreamingTranscriber, audio: np.ndarray, chunk_s: float = 0.5):
    """Every update of ``audio`` fed in chunks (as fast as possible), then finish's."""
    step = int(chunk_s * SAMPLE_RATE)
    updates = [live.feed(audio[i : i + step]) for i in range(0, len(audio), step)]
    return updates + [live.finish()]


# ------------------------------------------------------------------ LocalAgreement


def test_a_word_is_confirmed_when_two_decodings_agree():
    agree = LocalAgreement(2)
    assert agree.insert(words("jag köper")) == []
    assert [w.text for w in agree.tentative] == [" jag", " köper"]
    # The second decoding agrees on "jag köper" and hears more: the agreed prefix is final.
    second = words("jag köper ett kort")
    assert [w.text for w in agree.insert(second)] == [" jag", " köper"]
    assert [w.text for w in agree.tentative] == [" ett", " kort"]
    # The third decoding repeats the confirmed words (still in the buffer) and changes one.
    third = words("jag köper ett kontantkort")
    assert [w.text for w in agree.insert(third)] == [" ett"]
    assert [w.text for w in agree.confirmed] == [" jag", " köper", " ett"]
    assert [w.text for w in agree.flush()] == [" kontantkort"]
    assert agree.tentative == ()


def test_a_full_buffer_confirms_the_words_before_its_cut_as_they_stand():
    agree = LocalAgreement(2)
    agree.insert(words("ett två"))
    agree.insert(words("ett tre fyra fem"))  # "ett" agreed; the rest still moving
    assert [w.text for w in agree.confirm_until(1.0)] == [" tre"]  # ends at 1.0 s
    assert [w.text for w in agree.confirmed] == [" ett", " tre"]
    assert [w.text for w in agree.tentative] == [" fyra", " fem"]
    assert agree.confirm_until(0.9) == []
    # The next hypothesis agrees with what is left, not with the words taken.
    assert [w.text for w in agree.insert(words("ett tre fyra fem sex"))] == [" fyra", " fem"]


def test_punctuation_does_not_hold_a_word_back():
    agree = LocalAgreement(2)
    agree.insert(words("hej"))
    assert [w.text for w in agree.insert(words("Hej, hur"))] == [" Hej,"]


def test_three_way_agreement_waits_for_a_third_decoding():
    agree = LocalAgreement(3)
    assert agree.insert(words("tvättar håret")) == []
    assert agree.insert(words("tvättar håret")) == []
    assert [w.text for w in agree.insert(words("tvättar håret nu"))] == [" tvättar", " håret"]
    with pytest.raises(ValueError, match="n >= 2"):
        LocalAgreement(1)


def test_words_after_a_buffer_cut_are_not_taken_for_confirmed_ones():
    agree = LocalAgreement(2)
    agree.insert(words("tar bussen"))
    agree.insert(words("tar bussen"))
    # After a cut the buffer starts at 1.0 s: the same word later is a new word.
    later = words("tar tåget", start=1.0)
    agree.insert(later)
    assert [w.text for w in agree.insert(later)] == [" tar", " tåget"]


def test_options_name_the_fix():
    with pytest.raises(ValueError, match="trim_s < max_buffer_s"):
        StreamingOptions(trim_s=25, max_buffer_s=20)
    with pytest.raises(ValueError, match="language named"):
        StreamingOptions(language="auto")
    with pytest.raises(ValueError, match="unknown language"):
        StreamingOptions(language="xx")
    with pytest.raises(ValueError, match="chunk_s"):
        StreamingOptions(chunk_s=0)
    with pytest.raises(ValueError, match="agreement"):
        StreamingOptions(agreement=1)
    with pytest.raises(ValueError, match="backlog_step_s"):
        StreamingOptions(backlog_step_s=9.0)  # over trim_s
    with pytest.raises(ValueError, match="one Whisper window"):
        StreamingOptions(max_buffer_s=28.0, backlog_step_s=4.0)


# ------------------------------------------------------------------ silence and noise


@pytest.fixture(scope="module")
def tiny_live(tiny_ct2_dir):
    # The tiny random model writes text for anything it decodes: no text means not decoded.
    return StreamingTranscriber(StreamingOptions(model=str(tiny_ct2_dir), device="cpu"))


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_silence_and_noise_give_no_words(tiny_live, kind):
    rng = np.random.default_rng(3)
    seconds = 45
    if kind == "silence":
        audio = np.zeros(seconds * SAMPLE_RATE, dtype=np.float32)
    else:  # white noise at about -30 dBFS, a fan or a hiss
        audio = (0.03 * rng.standard_normal(seconds * SAMPLE_RATE)).astype(np.float32)
    tiny_live.reset()
    updates = feed(tiny_live, audio, chunk_s=1.0)
    assert not any(u.confirmed or u.tentative or u.lines for u in updates)
    assert tiny_live.lines == [] and tiny_live.confirmed == ()
    # The buffer does not grow over silence: what is kept is its last second and a chunk.
    assert tiny_live.received_s == pytest.approx(seconds)
    assert tiny_live.buffer_s <= 2.0 + 1e-6


def test_a_backlog_is_decoded_in_pairs_of_steps_not_once_a_chunk(tiny_ct2_dir, tmp_path):
    """Audio that waits (a file at --speed 0, a fast pipe) costs two decodings per
    backlog_step_s, each pair chunk_s apart so that they can agree, and nothing is lost."""
    speech = load_audio(joined_lexin(tmp_path, seconds=16, seed=4).path)
    counts = {}
    for label, pieces in [("at once", [speech]), ("0.5 s pieces", None)]:
        live = StreamingTranscriber(StreamingOptions(model=str(tiny_ct2_dir), device="cpu"))
        decode, calls = live.backend.decode_windows, []

        def counted(windows, opts, decode=decode, calls=calls):
            calls.append(len(windows[0]) / SAMPLE_RATE)
            return decode(windows, opts)

        live.backend.decode_windows = counted  # the real decoder, counted
        if pieces is None:
            feed(live, speech, chunk_s=0.5)
        else:
            live.feed(speech)
            live.finish()
        counts[label] = len(calls)
        assert live.received_s == pytest.approx(len(speech) / SAMPLE_RATE)
        assert all(seconds <= live.options.max_buffer_s + live.options.step_s for seconds in calls)
    steps = len(speech) / SAMPLE_RATE / StreamingOptions().step_s
    assert counts["at once"] <= 2 * int(np.ceil(steps)) + 1, counts
    assert counts["0.5 s pieces"] > 2 * counts["at once"], counts


# ------------------------------------------------------------------ real speech (slow)


def joined_lexin(folder: Path, seconds: float, seed: int):
    """A real long file joined from lexin-phrases clips (skips without the shared data)."""
    if not LEXIN.is_dir():
        pytest.skip(f"{LEXIN} not found (shared data absent)")
    from whisper_sv.data.longform import join_clips

    return join_clips(LEXIN / "manifest.tsv", folder / "joined.wav", seconds=seconds, seed=seed)


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    return joined_lexin(tmp_path_factory.mktemp("live"), seconds=25, seed=3)


@pytest.mark.slow
def test_real_speech_is_confirmed_in_order(joined):
    from whisper_sv.core.text import wer
    from whisper_sv.infer.transcriber import subtitles

    live = StreamingTranscriber(StreamingOptions(model="bundled:base", device="cpu"))
    updates = feed(live, load_audio(joined.path))
    confirmed = [w for u in updates for w in u.confirmed]
    assert confirmed == list(live.confirmed)
    starts = [w.start for w in confirmed]
    assert starts == sorted(starts) and confirmed[-1].end <= joined.duration + 0.01
    # Words are confirmed from what was heard: none before its audio arrived.
    for u in updates:
        assert all(w.end <= u.received_s + 0.01 for w in u.confirmed)
    # Every confirmed word is in exactly one line, in order.
    assert [w for line in live.lines for w in line.segment.words] == confirmed
    text = " ".join(line.segment.text for line in live.lines)
    # Whisper base on these joined phrases: about 35 % WER offline; a streaming decoder that
    # lost or doubled words would be far above 60.
    assert wer([joined.reference], [text]) < 60.0, text
    srt = subtitles(line_segments(live.lines), "srt")
    assert srt.startswith("1\n00:00:") and "-->" in srt
