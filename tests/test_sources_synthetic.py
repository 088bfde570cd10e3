"""The synthetic source: journal-digital sentences spoken by espeak-ng, and open_source."""

from __future__ import annotations

import multiprocessing
import pickle
import time

import numpy as np
import pytest

from whisper_sv.core.audio import SAMPLE_RATE
from whisper_sv.data.sources import SPECS, Item, Source, espeak, open_source
from whisper_sv.data.sources.sentences import clean_sentence, parse_srt, split_sentences
from whisper_sv.data.sources.synthetic import Speaker, SyntheticOptions, SyntheticSource, render

SMALL = {"train": 40, "validation": 10, "test": 10}


@pytest.fixture(scope="module")
def source() -> SyntheticSource:
    return open_source("synthetic", **SMALL)


@pytest.fixture(scope="module")
def items(source) -> dict[str, list[Item]]:
    return {split: list(source.items(split)) for split in source.splits()}


# ----------------------------------------------------------------------------- espeak


def test_espeak_speaks_swedish_at_22050_hz():
    pcm, rate = espeak.synthesize("Det här är en mening på svenska.", voice="sv+f3")
    assert rate == 22_050
    assert pcm.dtype == np.int16
    assert 1.0 < len(pcm) / rate < 5.0
    assert np.abs(pcm).max() > 3000  # speech, not silence


def test_espeak_rate_and_pitch_change_the_speech():
    text = "Flygplan startar från närbelägna flygfält."
    slow, rate = espeak.synthesize(text, voice="sv+m3", rate=120)
    fast, _ = espeak.synthesize(text, voice="sv+m3", rate=240)
    assert len(slow) > 1.6 * len(fast)
    low, _ = espeak.synthesize(text, voice="sv+m3", pitch=10)
    high, _ = espeak.synthesize(text, voice="sv+m3", pitch=90)
    assert _f0(high, rate) > 1.2 * _f0(low, rate)


def test_breathy_voice_is_the_same_at_any_time():
    # espeak seeds its noise generator with the clock (whole seconds); f5 mixes breath noise
    # into the voice, so two renders a second apart differed until the seed was fixed.
    text = "Fartens tjusning är vår likör."
    first, _ = espeak.synthesize(text, voice="sv+f5", rate=154, pitch=45)
    time.sleep(1.1)
    again, _ = espeak.synthesize(text, voice="sv+f5", rate=154, pitch=45)
    assert np.array_equal(first, again)
    other, _ = espeak.synthesize(text + " Ja.", voice="sv+f5", rate=154, pitch=45)
    assert not np.array_equal(first, other[: len(first)])


def _f0(pcm: np.ndarray, rate: int) -> float:
    """Median pitch (Hz) of the voiced 40 ms frames, by autocorrelation."""
    x = pcm.astype(np.float64)
    n = int(0.04 * rate)
    found = []
    for start in range(0, len(x) - n, n):
        frame = x[start : start + n] - x[start : start + n].mean()
        if frame.std() < 1000:
            continue
        ac = np.correlate(frame, frame, "full")[n - 1 :]
        lo, hi = rate // 400, rate // 60  # 60-400 Hz
        found.append(rate / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(found))


def test_espeak_rejects_an_unknown_language_and_bad_parameters():
    with pytest.raises(espeak.EspeakError, match="no voice"):
        espeak.synthesize("hej", voice="xx-nonexistent")
    with pytest.raises(ValueError, match="rate"):
        espeak.synthesize("hej", rate=10)


def test_variants_and_gender_come_from_the_voice_files():
    names = espeak.variants()
    assert {"m1", "f1", "klatt"} <= set(names)
    assert espeak.variant_gender("f3") == "female"
    assert espeak.variant_gender("m7") == "male"
    assert espeak.variant_gender("klatt") == "unknown"


# ----------------------------------------------------------------------------- corpus text

SRT = """1
00:00:01,000 --> 00:00:02,500
<i>Vinga fyr försvinner</i> akter

2
00:00:02,600 --> 00:00:04,000
över oss i dag.

3
00:00:04,100 --> 00:00:06,000
- Vi stävar nu "mot Afrika." Där väntar solen på oss!

4
00:00:20,000 --> 00:00:21,000
Och sedan

5
00:00:40,000 --> 00:00:41,000
MUSIK MUSIK MUSIK
"""


def test_srt_cues_are_joined_into_sentences():
    cues = parse_srt(SRT)
    assert cues[0] == (1.0, 2.5, "Vinga fyr försvinner akter")  # markup gone
    assert cues[2][2].startswith("Vi stävar")  # dialogue dash gone
    assert split_sentences(cues) == [
        "Vinga fyr försvinner akter över oss i dag.",  # two cues, one sentence
        'Vi stävar nu "mot Afrika."',  # the closing quote stays with its sentence
        "Där väntar solen på oss!",
        "Och sedan",  # a 19 s pause ends the fragment: not glued to the next cue
        "MUSIK MUSIK MUSIK",
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Vi lossar trävaror i hamnen.", ""),
        ("Mannen på bryggan hälsar.", ""),  # å/ä count as Swedish evidence
        ('Han sa "ja, det gör vi."', ""),  # a closing quote after the full stop
        ("Och sedan", "not a whole sentence"),
        ("och sedan gick vi hem.", "not a whole sentence"),
        ("Freetown har 86 000 invånare.", "contains digits"),
        ("Musik av Johan von Feilitzen.", "recogniser noise or credits"),
        ("Photography is forbidden in this area.", "not Swedish"),
        ("Le croiseur Foch va prendre la mer.", "not Swedish"),
        ("Det är silvermedaljören Côté som åkt i mål.", "characters outside Swedish text"),
        ("HAPPY LANDING I STOCKHOLM NU.", "all-caps title"),
        ("Ja ja ja ja ja.", "repeated words"),
        ("Tack så.", "too short"),
        ("Men sen så var det ju " + "en lång rad med ord " * 5 + "här.", "too long"),
        ("Och så vidare...", "unfinished (ellipsis)"),
    ],
)
def test_sentence_cleaning(text, reason):
    sentence, why = clean_sentence(text)
    assert why == reason
    assert (sentence is None) == bool(reason)


# ----------------------------------------------------------------------------- the source


def test_source_protocol_and_sizes(source, items):
    assert isinstance(source, Source)
    assert source.splits() == ["train", "validation", "test"]
    assert {s: len(v) for s, v in items.items()} == SMALL
    ids = [i.id for v in items.values() for i in v]
    assert len(set(ids)) == len(ids)
    first = items["train"][0]
    assert first.audio is None and first.split == "train"
    assert (
        first.speaker == f"sv+{first.meta['variant']}@r{first.meta['rate']}p{first.meta['pitch']}"
    )
    assert first.meta["source"] == "synthetic"
    assert first.meta["gender"] in ("male", "female", "unknown")
    assert first.meta["origin"].startswith("journal-digital:")


def test_same_seed_same_items_and_audio(items):
    again = open_source("synthetic", **SMALL)
    assert [i for s in again.splits() for i in again.items(s)] == [
        i for v in items.values() for i in v
    ]
    item = items["test"][3]
    assert np.array_equal(again.load(item), open_source("synthetic", **SMALL).load(item))
    other = open_source("synthetic", seed=1, **SMALL)
    assert [i.sentence for i in other.items("test")] != [i.sentence for i in items["test"]]


def test_splits_share_no_sentence_and_no_newsreel(items):
    sentences = {s: {i.sentence.lower() for i in v} for s, v in items.items()}
    origins = {s: {i.meta["origin"] for i in v} for s, v in items.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not sentences[a] & sentences[b]
        assert not origins[a] & origins[b]


def test_test_voices_are_never_heard_in_training(items):
    voices = {s: {i.meta["variant"] for i in v} for s, v in items.items()}
    assert not voices["test"] & voices["train"]
    assert not voices["test"] & voices["validation"]
    assert len(set().union(*voices.values())) >= 8
    assert len({i.speaker for i in items["train"]}) == 20  # 10 variants x 2 personas


def test_test_set_does_not_move_when_train_grows(items):
    bigger = open_source("synthetic", **{**SMALL, "train": 60})
    assert list(bigger.items("test")) == items["test"]


def test_audio_is_plausible_speech(source, items):
    for item in items["train"][:6] + items["test"][:4]:
        audio = source.load(item)
        assert audio.dtype == np.float32 and audio.ndim == 1
        seconds = len(audio) / SAMPLE_RATE
        words = len(item.sentence.split())
        assert 0.15 < seconds / words < 1.0, (item.sentence, seconds)
        assert np.sqrt(np.mean(audio**2)) > 0.01  # not silent
        assert np.abs(audio).max() <= 0.99  # in range, with headroom
        assert np.mean(np.abs(audio) > 0.98) < 1e-4  # not clipped


def test_render_resamples_to_16k_without_changing_duration():
    speaker = Speaker("f2", 170, 50)
    pcm, rate = espeak.synthesize("Det är skönt att vara till sjöss igen.", voice="sv+f2", rate=170)
    audio = render("Det är skönt att vara till sjöss igen.", speaker)
    assert abs(len(audio) / SAMPLE_RATE - len(pcm) / rate) < 0.001


def _load_all(args):
    src, items = args
    return [src.load(i) for i in items]


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_load_works_in_worker_processes(source, items, method):
    some = items["validation"][:2]
    expected = [source.load(i) for i in some]  # the parent's engine is running before the fork
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(1) as pool:
        got = pool.map(_load_all, [(pickle.loads(pickle.dumps(source)), some)])[0]
    for a, b in zip(expected, got, strict=True):
        assert np.array_equal(a, b)


def test_describe_names_options_and_licence(source):
    d = source.describe()
    assert d["source"] == "synthetic"
    assert d["options"]["train"] == 40
    assert "CC-BY-NC-4.0" in d["text"]


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"voices_test": ("m1",)}, "unseen in training"),
        ({"voices_validation": ("m7",)}, "must not use test voices"),
        ({"voices_train": ("m1", "nobody")}, "unknown espeak-ng variant"),
        ({"rate": (60, 200)}, "rate must be"),
        ({"pitch": (70, 30)}, "pitch must be"),
        ({"train": 0, "validation": 0, "test": 0}, "all splits are empty"),
        ({"min_words": 5, "max_words": 4}, "min_words"),
    ],
)
def test_bad_options_name_the_fix(options, message):
    with pytest.raises(ValueError, match=message):
        SyntheticOptions(**options)


def _write_corpus(folder, n_files: int, per_file: int) -> None:
    for f in range(n_files):
        cues = "\n".join(
            f"{i + 1}\n00:00:{i:02d},000 --> 00:00:{i:02d},900\n"
            f"Vi åker till ort nummer {'abcdefghij'[f]} och {'klmnopqrst'[i]} i dag.\n"
            for i in range(per_file)
        )
        (folder / f"reel{f}.srt").write_text(cues, encoding="utf-8")


def test_own_corpus_and_running_out_of_sentences(tmp_path):
    _write_corpus(tmp_path, n_files=6, per_file=3)
    small = {"train": 4, "validation": 2, "test": 2, "sentences_per_file": 2}
    src = open_source("synthetic", corpus=str(tmp_path), **small)
    items = {s: list(src.items(s)) for s in src.splits()}
    assert [len(items[s]) for s in ("train", "validation", "test")] == [4, 2, 2]
    assert items["test"][0].meta["origin"].startswith("srt:reel")
    assert "SRT files under" in src.describe()["text"]
    # 6 files x 2 sentences = 12 at most, but each file feeds one split: 4+2+2 fits, 9+2+2 not
    src = open_source("synthetic", corpus=str(tmp_path), **{**small, "train": 9})
    with pytest.raises(ValueError, match="raise sentences_per_file"):
        list(src.items("train"))


def test_open_source_rejects_unknown_specs_and_options():
    with pytest.raises(ValueError, match="valid sources: " + ", ".join(SPECS).replace("[", r"\[")):
        open_source("youtube:abc")
    with pytest.raises(ValueError, match="valid options"):
        open_source("synthetic", speed=3)
    with pytest.raises(ValueError, match="unknown source"):
        open_source("manifest:")  # a scheme that needs an argument
