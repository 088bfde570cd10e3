"""infer: the token -> segment rule, options, and both backends on the tiny random Whisper.

Fast tests check shapes and invariants on the tiny model (its text is noise); slow tests run
the real bundled model on the sv-words recordings.
"""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest

from whisper_sv.core.audio import SAMPLE_RATE, AudioError, load_audio
from whisper_sv.infer.backends import tokens_to_segments
from whisper_sv.infer.transcriber import (
    Segment,
    TranscribeOptions,
    Transcriber,
    Transcript,
    compression_ratio,
    is_looping,
    max_new_tokens_for,
    speech_windows,
    trim_repetition,
)

TS = 50_364  # <|0.00|>
EOT = 50_257


def ts(seconds: float) -> int:
    return TS + round(seconds / 0.02)


def decode(tokens: list[int]) -> str:
    return "".join(f" w{t}" for t in tokens)


def split(tokens, duration=30.0, **kw):
    return tokens_to_segments(
        tokens, timestamp_begin=TS, eot=EOT, decode=decode, duration=duration, **kw
    )


# ------------------------------------------------------------------ token -> segments rule


def test_pairs_of_timestamps_split_segments():
    tokens = [ts(0), 1, 2, ts(1.5), ts(1.5), 3, ts(2.4), EOT]
    segments, resume = split(tokens)
    assert segments == [
        Segment(0.0, 1.5, "w1 w2"),
        Segment(1.5, 2.4, "w3"),
    ]
    assert resume is None  # ended on a single timestamp: the window is done


def test_unfinished_last_segment_gives_resume_point():
    tokens = [ts(0), 1, ts(4.0), ts(4.0), 2, 3]  # cut off inside the second segment
    segments, resume = split(tokens, duration=10.0)
    assert resume == pytest.approx(4.0)
    assert segments == [Segment(0.0, 4.0, "w1"), Segment(4.0, 10.0, "w2 w3")]
    segments, _ = split(tokens, duration=10.0, keep_tail=False)
    assert segments == [Segment(0.0, 4.0, "w1")]


def test_no_pairs_one_segment_to_last_timestamp():
    segments, resume = split([ts(0), 1, 2, ts(2.0)], duration=5.0)
    assert segments == [Segment(0.0, 2.0, "w1 w2")]
    assert resume is None
    segments, _ = split([1, 2], duration=5.0)  # no timestamps at all: the whole clip
    assert segments == [Segment(0.0, 5.0, "w1 w2")]


def test_times_clamped_to_the_clip_and_offset_added():
    segments, _ = split([ts(0.5), 1, ts(9.0)], duration=3.0, offset=60.0)
    assert segments == [Segment(60.5, 63.0, "w1")]


def test_special_tokens_are_not_text():
    segments, _ = split([50_258, 50_300, ts(0), 1, 50_362, ts(1.0)], duration=2.0)
    assert segments == [Segment(0.0, 1.0, "w1")]
    # transformers pads rows with -100 and may return float ids
    segments, _ = split([float(ts(0)), 1.0, float(ts(1.0)), -100, -100], duration=2.0)
    assert segments == [Segment(0.0, 1.0, "w1")]


def test_empty_output_no_segments():
    assert split([EOT]) == ([], None)
    assert split([ts(0), ts(1.0)])[0] == []


# ------------------------------------------------------------------ options


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"language": "swedish"}, "unknown language 'swedish'.*'sv'"),
        ({"task": "summarise"}, "unknown task.*transcribe, translate"),
        ({"beam_size": 0}, "beam_size must be an integer >= 1"),
        ({"temperature": 1.5}, "temperature must be between 0 and 1"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"max_new_tokens": 1000}, "max_new_tokens must be between 1 and 445"),
        ({"initial_prompt": "  "}, "initial_prompt must be text.*leave it out"),
    ],
)
def test_bad_options_name_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TranscribeOptions(**kwargs)


def test_temperature_ladder():
    assert TranscribeOptions(loop_guard=False).temperatures() == (0.0,)
    assert TranscribeOptions().temperatures() == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert TranscribeOptions(loop_guard=False, temperature_fallback=True).temperatures() == (
        0.0,
        0.2,
        0.4,
        0.6,
        0.8,
        1.0,
    )
    assert TranscribeOptions(temperature=0.6, temperature_fallback=True).temperatures() == (
        0.6,
        0.8,
        1.0,
    )


# ------------------------------------------------------------------ tiny model, both backends

# The random model never stops on its own: cap its output. Its every window fails OpenAI's
# rules, so the loop guard would sample at every temperature: off here, tested on its own.
# The speech guard would drop all of it (noise holds no speech): off here, tested in
# test_speech_guard.py.
FAST = {"max_new_tokens": 8, "loop_guard": False, "speech_gate": False}


# batched=True: exercise the batched path (the CUDA default) on this CPU.
@pytest.fixture(scope="module")
def ct2(tiny_ct2_dir):
    return Transcriber(str(tiny_ct2_dir), backend="ct2", device="cpu", batched=True)


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return Transcriber(str(tiny_model_dir), backend="transformers", device="cpu", batched=True)


@pytest.fixture(params=["ct2", "transformers"])
def transcriber(request):
    return request.getfixturevalue("ct2" if request.param == "ct2" else "hf")


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(round(seconds * SAMPLE_RATE))).astype(np.float32)


def assert_well_formed(result: Transcript, duration: float) -> None:
    assert result.duration == pytest.approx(duration, abs=1e-3)
    last = 0.0
    for s in result.segments:
        assert 0.0 <= s.start <= s.end <= duration + 1e-6
        assert s.start >= last  # timestamps only move forward
        assert s.text and s.text == s.text.strip()
        last = s.start
    assert result.text == " ".join(s.text for s in result.segments)


def test_resolved_device_and_type(ct2, hf):
    assert (ct2.device, ct2.compute_type) == ("cpu", "int8")
    assert (hf.device, hf.compute_type) == ("cpu", "float32")


def test_cpu_default_is_one_by_one(tiny_ct2_dir):
    plain = Transcriber(str(tiny_ct2_dir), device="cpu")
    assert plain.batched is False
    clips = [noise(1.0, seed=30), noise(2.0, seed=31)]
    many = plain.transcribe_many(clips, **FAST)
    assert [r.segments for r in many] == [plain.transcribe(c, **FAST).segments for c in clips]


def test_short_clip(transcriber):
    result = transcriber.transcribe(noise(3.0), **FAST)
    assert isinstance(result, Transcript)
    assert result.source == "<array>"
    assert result.language == "sv" and result.task == "transcribe"
    assert result.options.max_new_tokens == FAST["max_new_tokens"]
    assert result.segments, "the random model writes something for noise"
    assert_well_formed(result, 3.0)


def test_translate_task_is_carried(ct2):
    result = ct2.transcribe(noise(2.0), task="translate", **FAST)
    assert result.task == "translate"
    assert result.options.task == "translate"


@pytest.mark.parametrize(
    "samples", [np.zeros(0), np.zeros(5 * SAMPLE_RATE)], ids=["empty", "silent"]
)
def test_empty_and_silent_audio_give_no_segments(transcriber, samples):
    result = transcriber.transcribe(samples.astype(np.float32), **FAST)
    assert result.segments == ()
    assert result.text == ""


def test_very_short_clip(ct2):
    result = ct2.transcribe(noise(0.01), **FAST)  # shorter than one STFT window
    assert_well_formed(result, 0.01)


def test_file_and_bytes_inputs(ct2, tmp_path):
    import soundfile as sf

    path = tmp_path / "clip.wav"
    sf.write(path, noise(2.0), SAMPLE_RATE, subtype="FLOAT")
    from_file = ct2.transcribe(path, **FAST)
    from_bytes = ct2.transcribe(path.read_bytes(), **FAST)
    assert from_file.source == str(path)
    assert from_bytes.source == "<bytes>"
    assert from_file.text == from_bytes.text


def test_bad_file_raises_audio_error(ct2, tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("not audio")
    with pytest.raises(AudioError, match="notes.wav"):
        ct2.transcribe(path)


def test_stream_yields_the_same_segments(transcriber):
    clip = noise(3.0, seed=3)
    assert tuple(transcriber.stream(clip, **FAST)) == transcriber.transcribe(clip, **FAST).segments


def test_transcribe_many_bad_file_comes_back_as_error(transcriber, tmp_path):
    import soundfile as sf

    good = tmp_path / "good.wav"
    sf.write(good, noise(2.0, seed=1), SAMPLE_RATE, subtype="FLOAT")
    empty = tmp_path / "empty.wav"
    empty.touch()
    results = transcriber.transcribe_many(
        [good, tmp_path / "missing.mp3", empty, noise(1.5, seed=2)], batch_size=2, **FAST
    )
    assert len(results) == 4
    assert isinstance(results[0], Transcript) and results[0].source == str(good)
    assert isinstance(results[1], AudioError) and "file not found" in str(results[1])
    assert isinstance(results[2], AudioError) and "0 bytes" in str(results[2])
    assert isinstance(results[3], Transcript)
    assert_well_formed(results[3], 1.5)


def test_batching_does_not_change_the_text(transcriber):
    # Each clip decodes alone in its 30 s window: the batch it shares makes no difference.
    clips = [noise(1.0 + i, seed=10 + i) for i in range(2)] + [np.zeros(SAMPLE_RATE, np.float32)]
    batched = transcriber.transcribe_many(clips, batch_size=3, **FAST)
    alone = transcriber.transcribe_many(clips, batch_size=1, **FAST)
    assert [r.text for r in batched] == [r.text for r in alone]
    assert batched[-1].segments == ()


def test_long_audio_windows_move_forward(hf):
    # Over 30 s without VAD: the sequential 30 s loop. Times only move forward and stay
    # inside the audio, and the second window is reached.
    # Two tokens per window (a timestamp and a word): no finished segment, so each window is
    # consumed whole and the loop makes three steps.
    result = hf.transcribe(noise(65.0), vad=False, max_new_tokens=2, speech_gate=False)
    assert_well_formed(result, 65.0)
    assert result.segments[-1].start > 30.0


def test_previous_text_prompts_fit_the_decoder(ct2, hf):
    """With condition_on_previous_text each window after the first is prompted with up to
    223 tokens of the text before; the tokens a window may add are cut so that prompt and
    answer fit the decoder's 448 positions (faster-whisper refuses a window otherwise)."""
    from whisper_sv.infer.backends import PROMPTED_MAX_NEW_TOKENS, new_token_limit
    from whisper_sv.infer.types import TranscribeOptions

    prompted = TranscribeOptions(condition_on_previous_text=True)
    assert new_token_limit(prompted, 30.0) == PROMPTED_MAX_NEW_TOKENS == 448 - 227
    assert new_token_limit(TranscribeOptions(), 30.0) > PROMPTED_MAX_NEW_TOKENS
    assert new_token_limit(dataclasses.replace(prompted, max_new_tokens=8), 30.0) == 8
    # A window allowed 440 tokens, after a prompt of the first window's text: cut to fit.
    long = {"max_new_tokens": 440, "loop_guard": False, "vad": False, "speech_gate": False}
    result = ct2.transcribe(noise(65.0), condition_on_previous_text=True, **long)
    assert_well_formed(result, 65.0)
    assert result.segments[-1].end > 30.0
    with pytest.raises(ValueError, match="condition_on_previous_text needs backend='ct2'"):
        hf.transcribe(noise(1.0), condition_on_previous_text=True)


def test_long_audio_vad_skips_noise(ct2, hf):
    # Silero VAD finds no speech in white noise and silence: nothing is decoded.
    clip = np.concatenate([noise(40.0), np.zeros(10 * SAMPLE_RATE, np.float32)])
    assert speech_windows(clip) == []
    assert hf.transcribe(clip, **FAST).segments == ()
    result = ct2.transcribe(clip, **FAST)
    assert_well_formed(result, 50.0)


def test_speech_windows_fit_30_s(sv_words_dir):
    # Real words with 1 s pauses, about 75 s: every word inside a window, windows <= 30 s.
    with open(sv_words_dir / "manifest.tsv", encoding="utf-8") as fh:
        names = [r["path"] for r in csv.DictReader(fh, delimiter="\t")]
    pause = np.zeros(SAMPLE_RATE, np.float32)
    parts, words = [], []
    at = 0
    for name in names:
        clip = load_audio(sv_words_dir / name)
        parts += [clip, pause]
        words.append(at + len(clip) // 2)  # a word's middle is speech
        at += len(clip) + len(pause)
        if at > 75 * SAMPLE_RATE:
            break
    audio = np.concatenate(parts)
    windows = speech_windows(audio)
    assert len(windows) >= 3  # 75 s cannot fit in fewer 30 s windows
    for start, end in windows:
        assert 0 <= start < end <= len(audio)
        assert end - start <= 30 * SAMPLE_RATE
    assert all(a <= b for (_, a), (b, _) in zip(windows, windows[1:], strict=False))
    covered = [any(a <= mid < b for a, b in windows) for mid in words]
    assert sum(covered) >= 0.9 * len(words), f"{covered.count(False)} words outside windows"


def test_option_errors(ct2, hf):
    with pytest.raises(ValueError, match="unknown option.*beams.*valid: batch_size"):
        ct2.transcribe(noise(1.0), beams=5)
    with pytest.raises(ValueError, match="word_timestamps needs backend='ct2'"):
        hf.transcribe(noise(1.0), word_timestamps=True)


def test_word_timestamps_ct2(ct2):
    for seconds in (3.0, 40.0):  # one silence-padded window; faster-whisper's loop
        result = ct2.transcribe(noise(seconds), word_timestamps=True, vad=False, **FAST)
        words = [w for s in result.segments for w in s.words]
        assert words
        assert all(0.0 <= w.start <= w.end <= seconds for w in words)
        assert all(0.0 <= w.probability <= 1.0 for w in words)
    for s in ct2.transcribe(noise(3.0), word_timestamps=True, **FAST).segments:
        # Each segment holds its own words: together they spell its text.
        assert "".join(w.text for w in s.words).replace(" ", "") == s.text.replace(" ", "")


def test_initial_prompt_length_is_checked_against_the_decoder(ct2, hf, processor):
    def n_tokens(text: str) -> int:  # as faster-whisper encodes a prompt
        return len(processor.tokenizer.encode(" " + text.strip(), add_special_tokens=False))

    longest = " ".join(["ord"] * 223)
    assert n_tokens(longest) == 223
    # The longest prompt still leaves room for the window's text: 40 s goes through
    # faster-whisper's own loop, which refuses a prompt and token budget that do not fit.
    for seconds in (3.0, 40.0):
        result = ct2.transcribe(noise(seconds), initial_prompt=longest, vad=False, **FAST)
        assert result.options.initial_prompt == longest
    with pytest.raises(ValueError, match="initial_prompt is 224 tokens; .* at most 223"):
        ct2.transcribe(noise(1.0), initial_prompt=longest + " ord", **FAST)
    with pytest.raises(ValueError, match="initial_prompt needs backend='ct2'"):
        hf.transcribe(noise(1.0), initial_prompt="Budapäst")


def test_language_auto(ct2, hf):
    result = ct2.transcribe(noise(2.0), language="auto", **FAST)
    assert result.language != "auto" and len(result.language) in (2, 3, 5)
    assert 0.0 < result.language_probability <= 1.0
    assert result.options.language == result.language  # the options used
    assert ct2.transcribe(noise(2.0), **FAST).language_probability is None
    assert ct2.detect_language(noise(2.0))[0] == result.language
    assert ct2.detect_language(np.zeros(SAMPLE_RATE, np.float32)) == ("sv", 0.0)
    with pytest.raises(ValueError, match="language='auto' needs backend='ct2'"):
        hf.transcribe(noise(1.0), language="auto")
    with pytest.raises(ValueError, match="or 'auto' to detect it"):
        TranscribeOptions(language="swedish")


def test_bad_backend_and_device(tiny_ct2_dir):
    with pytest.raises(ValueError, match="unknown backend 'onnx'; use one of: ct2, transformers"):
        Transcriber(str(tiny_ct2_dir), backend="onnx")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        Transcriber(str(tiny_ct2_dir), device="tpu")


def test_int8_not_for_transformers(tiny_model_dir):
    with pytest.raises(ValueError, match="int8 needs backend='ct2'"):
        Transcriber(str(tiny_model_dir), backend="transformers", compute_type="int8")


# ------------------------------------------------------------------ real model (slow)


def sv_words(folder, n):
    with open(folder / "manifest.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))[:n]
    return [folder / r["path"] for r in rows], [r["sentence"] for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ct2", "transformers"])
def test_real_model_reads_swedish_words(sv_words_dir, backend):
    from whisper_sv.core.text import cer

    paths, refs = sv_words(sv_words_dir, 8)
    transcriber = Transcriber("bundled:base", backend=backend, batched=True)
    many = transcriber.transcribe_many(paths, batch_size=8)
    assert all(isinstance(r, Transcript) for r in many)
    # Whisper base on isolated Swedish words: 38 % CER on all 164, 64 % on these first 8
    # (a model that hears nothing useful scores 100 % or more).
    assert cer(refs, [r.text for r in many]) < 80.0
    for r in many:
        assert_well_formed(r, r.duration)
    # Batched decoding gives what decoding each file alone gives (the same generate call with
    # a batch of one).
    assert [transcriber.transcribe(p).text for p in paths[:4]] == [r.text for r in many[:4]]


@pytest.mark.slow
def test_real_model_detects_english_speech():
    from scipy.signal import resample_poly

    from whisper_sv.data.sources.espeak import synthesize

    speech, rate = synthesize("The weather is nice today, so I am going for a walk.", voice="en")
    english = resample_poly(speech / 32768, SAMPLE_RATE, rate).astype(np.float32)
    t = Transcriber("bundled:base", device="cpu")
    result = t.transcribe(english, language="auto")
    assert result.language == "en" and result.language_probability > 0.5
    assert "walk" in result.text.lower()


@pytest.mark.slow
def test_real_model_long_audio_vad(sv_words_dir):
    # 12 words with 4 s pauses (~70 s): VAD windows, timestamps forward, words found in order.
    from whisper_sv.core.audio import load_audio

    paths, _ = sv_words(sv_words_dir, 12)
    pause = np.zeros(4 * SAMPLE_RATE, np.float32)
    clip = np.concatenate([x for p in paths for x in (load_audio(p), pause)])
    for backend in ("ct2", "transformers"):
        result = Transcriber("bundled:base", backend=backend).transcribe(clip)
        assert_well_formed(result, len(clip) / SAMPLE_RATE)
        assert result.segments[-1].end > 50.0


@pytest.mark.slow
def test_real_model_never_loops_on_synthetic_speech():
    # Greedy decoding without the guard loops on some clips of this split, and which ones
    # depends on the CPU's kernels: clip 8 ("Sosa, lu-lu-lu-lu...", 4.9x its reference) under
    # AVX512, clip 30 (12x) on an earlier machine, none past 3x under AVX2 on an AMD EPYC.
    # So the test finds them here: every clip is decoded unguarded, and each one past 1.8x
    # plus every fourth clip must stay within 3x its reference with the guard.
    from whisper_sv.data.sources.synthetic import SyntheticOptions, SyntheticSource

    source = SyntheticSource(SyntheticOptions(train=0, validation=0, test=40))
    items = list(source.items("test"))
    transcriber = Transcriber("bundled:base")
    ratios = {}
    for item in items:
        unguarded = transcriber.transcribe(source.load(item), TranscribeOptions(loop_guard=False))
        ratios[item.id] = len(unguarded.text) / len(item.sentence)
    checked = [it for it in items if ratios[it.id] > 1.8] + items[::4]
    for item in checked:
        text = transcriber.transcribe(source.load(item)).text
        assert len(text) <= 3 * len(item.sentence), (item.sentence, ratios[item.id], text)
    if max(ratios.values()) <= 3:
        pytest.skip(
            f"no clip loops unguarded on this CPU (longest {max(ratios.values()):.1f}x its "
            "reference): the guard was checked, but had no loop to stop"
        )


# ------------------------------------------------------------------ loop guard


def test_compression_ratio_and_is_looping():
    loop = "Det var det. " * 40
    assert compression_ratio(loop) > 2.4
    assert compression_ratio("Hej, hur mår du i dag?") < 2.4
    assert is_looping(loop, duration_s=30.0)  # compresses like a loop
    assert is_looping("abcdefghij klmnopqrst uvwxyzåäö " * 3, duration_s=1.0)  # too long for 1 s
    assert not is_looping("Hej, hur mår du i dag?", duration_s=2.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("det var det var det var det var", "det var"),
        ("Jag sa att. Jag sa att. Jag sa att.", "Jag sa att."),
        ("ja ja ja", "ja ja ja"),  # speech, not a loop
        ("nej nej nej nej nej", "nej"),
        ("hej på dig", "hej på dig"),
    ],
)
def test_trim_repetition(text, expected):
    assert trim_repetition(text) == expected


def test_max_new_tokens_bounded_by_duration():
    assert max_new_tokens_for(1.0) < max_new_tokens_for(10.0) <= 445
    assert max_new_tokens_for(60.0) == 445


def test_loop_guard_bounds_the_random_model(ct2, hf):
    # The random model never stops: with the guard its output is bounded by the clip's length.
    for transcriber in (ct2, hf):
        guarded = transcriber.transcribe(noise(1.0, seed=40), speech_gate=False)
        free = transcriber.transcribe(
            noise(1.0, seed=40), loop_guard=False, max_new_tokens=200, speech_gate=False
        )
        assert len(guarded.text) < len(free.text)
        assert not any(
            a.text.strip(" .,!?").lower() == b.text.strip(" .,!?").lower()
            for a, b in zip(guarded.segments, guarded.segments[1:], strict=False)
        )


def test_digital_silence_is_not_decoded_without_vad():
    from whisper_sv.infer.backends import sounding_spans

    audio = np.zeros(70 * SAMPLE_RATE, np.float32)
    audio[2 * SAMPLE_RATE : 10 * SAMPLE_RATE] = noise(8.0)
    audio[12 * SAMPLE_RATE : 20 * SAMPLE_RATE] = noise(8.0, seed=1)
    assert sounding_spans(audio) == [2.0, 20.0]  # the 2 s pause kept, the 50 s tail skipped
    assert sounding_spans(noise(40.0)) == "0"


def test_fallback_ladder_beam_first_then_hotter():
    from whisper_sv.infer.backends import fallback_ladder

    opts = TranscribeOptions()
    assert fallback_ladder(opts, opts.temperatures()) == [(0.0, 5, 0), (0.0, 5, 4)]  # deterministic
    hot = TranscribeOptions(temperature_fallback=True)
    assert fallback_ladder(hot, hot.temperatures())[2:] == [
        (t, 1, 0) for t in (0.2, 0.4, 0.6, 0.8, 1.0)
    ]
    beam = TranscribeOptions(beam_size=5)
    assert fallback_ladder(beam, beam.temperatures()) == [(0.0, 5, 4)]
    off = TranscribeOptions(loop_guard=False)
    assert fallback_ladder(off, off.temperatures()) == []


def test_loop_guard_is_deterministic(ct2):
    # The random model fails every rule, so every step of the ladder runs.
    clip = noise(2.0, seed=41)
    assert ct2.transcribe(clip).text == ct2.transcribe(clip).text


def test_alternating_zero_length_repeats_are_dropped_but_said_repeats_kept():
    from whisper_sv.infer.transcriber import Segment, loop_guarded

    tail = [
        Segment(118.5, 119.8, "sminkar sig"),
        Segment(121.0, 121.9, "slår upp"),
        Segment(122.2, 122.3, "skänker"),
        Segment(122.3, 122.3, "slår upp"),  # no time to say it: a loop
        Segment(122.3, 122.3, "skänker"),
        Segment(122.3, 122.3, "slår upp"),
    ]
    assert [s.text for s in loop_guarded(iter(tail))] == ["sminkar sig", "slår upp", "skänker"]
    # Said again, with the time it takes: a real repetition stays.
    said = [Segment(0.0, 1.0, "ja"), Segment(1.0, 2.0, "nej"), Segment(2.0, 3.0, "ja")]
    assert [s.text for s in loop_guarded(iter(said))] == ["ja", "nej", "ja"]


# --------------------------------------------------------------------------- the transcribe command

LEXIN = "/work/shared/data/lexin-phrases/aker_buss.mp3"


def cli(*args: str, stdin: bytes | None = None):
    """``whisper-sv transcribe ARGS`` in its own process, as a user runs it."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "whisper_sv", "transcribe", *args]
    return subprocess.run(command, input=stdin, capture_output=True, env=env, timeout=300)


def test_cli_missing_file_exits_2_before_the_model_loads(tmp_path):
    proc = cli(str(tmp_path / "nope.wav"), LEXIN, "--model", str(tmp_path / "no-model-here"))
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert err.count("\n") == 1 and "no such file" in err and "nope.wav" in err
    assert "loaded" not in err


def test_cli_unwritable_out_is_one_line_before_the_model_loads():
    proc = cli(LEXIN, "--out", "/proc/nope", "--model", "bundled:base")
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert err.count("\n") == 1 and "/proc/nope" in err and "--out" in err
    assert "Errno" not in err and "loaded" not in err


def test_cli_format_all_needs_out():
    proc = cli(LEXIN, "--format", "all")
    assert proc.returncode == 2 and "--out" in proc.stderr.decode()


def test_cli_format_all_writes_every_format(tiny_ct2_dir, tmp_path):
    import json

    proc = cli(LEXIN, "--model", str(tiny_ct2_dir), "--format", "all", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"aker_buss.{f}" for f in ("json", "srt", "txt", "vtt")
    ]
    doc = json.loads((tmp_path / "aker_buss.json").read_text("utf-8"))
    assert (tmp_path / "aker_buss.vtt").read_text("utf-8").startswith("WEBVTT")
    assert doc["language"] == "sv"


def test_cli_reads_standard_input(tiny_ct2_dir):
    from pathlib import Path

    args = ("--model", str(tiny_ct2_dir), "--format", "json", "--no-speech-gate")
    from_file = cli(LEXIN, *args)
    from_stdin = cli("-", *args, stdin=Path(LEXIN).read_bytes())
    assert from_stdin.returncode == 0, from_stdin.stderr.decode()
    import json

    same = ("text", "segments", "language")
    file_doc, stdin_doc = json.loads(from_file.stdout), json.loads(from_stdin.stdout)
    assert [stdin_doc[k] for k in same] == [file_doc[k] for k in same]
    empty = cli("-", *args, stdin=b"")
    assert empty.returncode == 2 and "standard input is empty" in empty.stderr.decode()


def test_cli_says_when_no_speech_was_found(tiny_ct2_dir, tmp_path):
    import soundfile as sf

    silence, short = tmp_path / "silence.wav", tmp_path / "short.wav"
    sf.write(silence, np.zeros(40 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    sf.write(short, np.zeros(SAMPLE_RATE // 10, np.float32), SAMPLE_RATE)
    proc = cli(str(silence), str(short), "--model", str(tiny_ct2_dir))
    err = proc.stderr.decode()
    assert proc.returncode == 0
    assert f"no speech found in {silence}" in err and f"no speech found in {short}" in err


def test_cli_failed_input_exits_1(tiny_ct2_dir, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio at all")
    proc = cli(str(broken), LEXIN, "--model", str(tiny_ct2_dir), "--no-speech-gate")
    assert proc.returncode == 1
    assert "1 of 2 input(s) failed" in proc.stderr.decode()


@pytest.mark.slow
def test_cli_language_auto_shows_language_and_probability(cv_sentence):
    import json

    # A real Common Voice sentence: the one-word lexin phrases are too short to tell.
    clip = str(cv_sentence)
    proc = cli(clip, "--language", "auto", "--format", "json")
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)
    assert doc["language"] == "sv" and 0.5 < doc["language_probability"] <= 1.0
    assert f"language sv (probability {doc['language_probability']:.2f})" in proc.stderr.decode()


def test_cli_threads_and_compute_type_reach_the_model(tiny_ct2_dir):
    args = ("--model", str(tiny_ct2_dir), "--no-speech-gate")
    proc = cli(LEXIN, *args, "--threads", "1", "--compute-type", "float32")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "(ct2, cpu, float32)" in proc.stderr.decode()
    bad = cli(LEXIN, *args, "--threads", "-1")
    assert bad.returncode == 2 and "cpu_threads" in bad.stderr.decode()


def test_cli_line_width_and_count_shape_the_subtitles(cv_sentence):
    # The real model on a real sentence: its words are words, so lines break between them.
    clip = str(cv_sentence)
    proc = cli(clip, "--format", "srt", "--max-line-width", "12", "--max-line-count", "1")
    assert proc.returncode == 0, proc.stderr.decode()
    blocks = [b.splitlines() for b in proc.stdout.decode().strip().split("\n\n")]
    texts = [b[2:] for b in blocks]
    assert len(texts) > 1 and all(len(t) == 1 for t in texts)  # one line a cue
    assert all(len(t[0]) <= 12 or " " not in t[0] for t in texts)
    bad = cli(clip, "--max-line-width", "5")
    assert bad.returncode == 2 and "max_line_chars" in bad.stderr.decode()


@pytest.fixture(scope="module")
def long_lexin(tmp_path_factory):
    """About 60 s of real Swedish phrases (lexin-phrases) joined with pauses."""
    from pathlib import Path

    from whisper_sv.data.longform import join_clips

    manifest = Path(LEXIN).parent / "manifest.tsv"
    out = tmp_path_factory.mktemp("long") / "long.wav"
    return join_clips(manifest, out, seconds=60.0)


def test_cli_progress_bar_counts_the_audio_seconds_of_one_long_file(long_lexin):
    import re

    proc = cli(str(long_lexin.path), "--progress")
    assert proc.returncode == 0, proc.stderr.decode()
    states = re.findall(r"(\d+)%\|[^|]*\| (\d+\.\d)/(\d+\.\d) s audio", proc.stderr.decode())
    total = f"{long_lexin.duration:.1f}"
    assert states and all(t == total for _, _, t in states), states
    assert states[-1][:2] == ("100", total)
    done = [float(n) for _, n, _ in states]
    assert done == sorted(done)
    # faster-whisper decodes window by window: the bar stood between 0 and the end too.
    assert any(0 < n < float(total) for n in done), states
    assert proc.stdout.strip()  # the transcript itself is on standard output, untouched
    for quiet in ((), ("--no-progress",)):  # standard error is a pipe here: no bar
        proc = cli(str(long_lexin.path), *quiet)
        assert proc.returncode == 0 and "s audio" not in proc.stderr.decode()


def test_cli_initial_prompt_reaches_the_decoder():
    import json

    # Common Voice: "... de hetaste ställena i Budapest." Whisper base writes "Budapest"; a
    # prompt spelling it "Budapäst" makes it write that (as in whisper, the prompt steers
    # spelling), and the JSON records the prompt used.
    clip = "/work/shared/data/cv-dev/clips/common_voice_sv-SE_18762217.mp3"
    plain = json.loads(cli(clip, "--format", "json").stdout)
    proc = cli(clip, "--format", "json", "--initial-prompt", "Budapäst")
    assert proc.returncode == 0, proc.stderr.decode()
    prompted = json.loads(proc.stdout)
    assert "Budapest" in plain["text"] and "Budapäst" not in plain["text"]
    assert "Budapäst" in prompted["text"], prompted["text"]
    assert prompted["options"]["initial_prompt"] == "Budapäst"
    assert plain["options"]["initial_prompt"] is None
    long = cli(clip, "--initial-prompt", " ".join(["ord"] * 300))
    err = long.stderr.decode()
    assert long.returncode == 2 and "initial_prompt is 300 tokens" in err and "223" in err


def test_word_timestamps_change_only_the_times_of_a_long_real_file(long_lexin):
    from whisper_sv.infer.subtitles import cues

    t = Transcriber("bundled:base", device="cpu")
    for vad in (True, False):  # faster-whisper's windows cut two ways (VAD, sounding clips)
        plain = t.transcribe(long_lexin.path, vad=vad)
        timed = t.transcribe(long_lexin.path, vad=vad, word_timestamps=True)
        assert [s.text for s in timed.segments] == [s.text for s in plain.segments]
        for s in timed.segments:  # each segment's words spell its text, inside the file
            assert "".join(w.text for w in s.words).split() == s.text.split()
            assert all(0 <= w.start <= w.end <= timed.duration for w in s.words)
        # Each word lies in the time its clip is heard (0.5 s slack: the alignment's 20 ms
        # frames and the clips' own silence), so cues timed by them stay with the speech.
        words = [w for s in timed.segments for w in s.words]
        heard = [
            w for w in words if any(a - 0.5 <= w.start <= b + 0.5 for a, b in long_lexin.spans)
        ]
        assert len(heard) >= 0.95 * len(words), (vad, len(heard), len(words))
        shown = [w for c in cues(timed.segments, spans=timed.speech) for w in c.lines]
        assert " ".join(shown).split() == " ".join(s.text for s in timed.segments).split()


def test_cli_word_timestamps_and_highlighted_words_on_real_speech(long_lexin, tmp_path):
    import json
    import re

    proc = cli(str(long_lexin.path), "--highlight-words", "--format", "all", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads((tmp_path / "long.json").read_text("utf-8"))
    assert doc["options"]["word_timestamps"]  # --highlight-words turns them on
    words = [w for s in doc["segments"] for w in s["words"]]
    assert len(words) >= 30  # ~40 phrases of one to four words
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and all(w["start"] <= w["end"] for w in words)
    assert starts[0] >= 0.0 and words[-1]["end"] <= doc["duration"]
    for s in doc["segments"]:  # each segment holds its words, which spell its text
        assert "".join(w["text"] for w in s["words"]).split() == s["text"].split()
    for fmt in ("srt", "vtt"):
        text = (tmp_path / f"long.{fmt}").read_text("utf-8")
        stamps = re.findall(
            r"(\d\d):(\d\d):(\d\d)[,.](\d{3}) --> (\d\d):(\d\d):(\d\d)[,.](\d{3})", text
        )
        times = [
            (
                int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000,
                int(h2) * 3600 + int(m2) * 60 + int(s2) + int(ms2) / 1000,
            )
            for h, m, s, ms, h2, m2, s2, ms2 in stamps
        ]
        assert all(a < b for a, b in times)  # no cue of zero length
        # in order, no overlap
        assert all(b <= c for (_, b), (c, _) in zip(times, times[1:], strict=False))
        assert times[0][0] >= 0.0 and times[-1][1] <= doc["duration"]  # inside the audio
        underlined = re.findall(r"<u>(.*?)</u>", text)
        assert underlined == doc["text"].split()  # every word once, in order
