"""audio.load_audio on files written here: every container, resampling, mono, and bad input."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from whisper_sv.core.audio import (
    HOP_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    AudioError,
    duration_s,
    load_audio,
)


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_audio(
    path: Path, signal: np.ndarray, rate: int, *, fmt: str, codec: str, channels: int = 1
) -> Path:
    """Encode ``signal`` (n,) float32 with PyAV; ``channels`` copies it to each channel."""
    import av

    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.stack([signal] * channels), format="fltp", layout=layout
        )
        frame.sample_rate = rate
        frame.pts = 0
        frame.time_base = Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


# (file name, container, codec, sample rate, channels)
FORMATS = [
    ("a.wav", "wav", "pcm_s16le", 44_100, 2),
    ("a.flac", "flac", "flac", 22_050, 1),
    ("a.ogg", "ogg", "libopus", 48_000, 2),
    ("a.mp3", "mp3", "libmp3lame", 44_100, 1),
    ("a.m4a", "ipod", "aac", 44_100, 2),
    ("a.webm", "webm", "libopus", 48_000, 1),
]


def test_constants_agree():
    assert N_SAMPLES == 30 * SAMPLE_RATE == 480_000
    assert N_FRAMES == N_SAMPLES // HOP_LENGTH == 3_000


@pytest.mark.parametrize(("name", "fmt", "codec", "rate", "channels"), FORMATS)
def test_every_format_decodes_to_16k_mono_float32(tmp_path, name, fmt, codec, rate, channels):
    path = write_audio(
        tmp_path / name, tone(1.0, rate), rate, fmt=fmt, codec=codec, channels=channels
    )
    audio = load_audio(path)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    # 1 s at 16 kHz; lossy codecs add up to ~25 ms of encoder delay/padding.
    assert abs(len(audio) - SAMPLE_RATE) <= 0.025 * SAMPLE_RATE
    # The tone survives: level near 0.5 (lossy codecs overshoot a little), not silence.
    assert 0.4 < np.abs(audio).max() < 0.6
    rms = np.sqrt(np.mean(audio[2000:14000] ** 2))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_bytes_decode_like_the_file(tmp_path):
    path = write_audio(tmp_path / "b.flac", tone(0.5, 22_050), 22_050, fmt="flac", codec="flac")
    np.testing.assert_array_equal(load_audio(path.read_bytes()), load_audio(path))


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_resampled_length(tmp_path, rate):
    path = write_audio(tmp_path / "r.wav", tone(2.0, rate), rate, fmt="wav", codec="pcm_s16le")
    audio = load_audio(path)
    assert abs(len(audio) - 2 * SAMPLE_RATE) <= 2
    assert duration_s(audio) == pytest.approx(2.0, abs=1e-3)


def test_resampling_keeps_the_pitch(tmp_path):
    path = write_audio(
        tmp_path / "p.wav", tone(1.0, 44_100, freq=1000.0), 44_100, fmt="wav", codec="pcm_s16le"
    )
    audio = load_audio(path)
    spectrum = np.abs(np.fft.rfft(audio))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(audio)
    assert peak_hz == pytest.approx(1000.0, abs=2.0)


def test_stereo_is_averaged_to_mono(tmp_path):
    import soundfile as sf

    left = tone(1.0, SAMPLE_RATE, amp=0.8)
    right = np.zeros_like(left)
    path = tmp_path / "lr.wav"
    sf.write(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    audio = load_audio(path)
    np.testing.assert_allclose(audio, left / 2, atol=1e-6)


def test_silent_file_decodes_to_zeros(tmp_path):
    import soundfile as sf

    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(8_000 * 3, dtype=np.int16), 8_000, subtype="PCM_16")
    audio = load_audio(path)
    assert len(audio) == 3 * SAMPLE_RATE
    assert not audio.any()


def test_wav_with_no_samples_gives_empty_array(tmp_path):
    import soundfile as sf

    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.int16), SAMPLE_RATE, subtype="PCM_16")
    audio = load_audio(path)
    assert audio.shape == (0,)
    assert audio.dtype == np.float32


@pytest.mark.slow
def test_45_minute_file(tmp_path):
    import soundfile as sf

    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(8_000 * 45 * 60, dtype=np.int16), 8_000, subtype="PCM_16")
    audio = load_audio(path)
    assert len(audio) == 45 * 60 * SAMPLE_RATE


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav: file not found"):
        load_audio(tmp_path / "nope.wav")


def test_directory(tmp_path):
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "zero.mp3"
    path.touch()
    with pytest.raises(AudioError, match=r"zero\.mp3: empty file \(0 bytes\)"):
        load_audio(path)


def test_zero_bytes_named():
    with pytest.raises(AudioError, match=r"upload\.ogg: empty input"):
        load_audio(b"", name="upload.ogg")


def test_text_renamed_to_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("Det här är ingen ljudfil, bara text.\n" * 20, encoding="utf-8")
    with pytest.raises(AudioError, match=r"notes\.wav: not audio: the file holds text") as info:
        load_audio(path)
    assert info.value.name == str(path)
    assert info.value.reason == "not audio: the file holds text"


@pytest.mark.parametrize(
    ("name", "fmt", "codec", "rate", "channels"),
    [f for f in FORMATS if f[0] in ("a.wav", "a.flac", "a.mp3", "a.ogg", "a.m4a")],
)
def test_header_then_garbage_is_corrupt(tmp_path, name, fmt, codec, rate, channels):
    good = write_audio(
        tmp_path / name, tone(1.0, rate), rate, fmt=fmt, codec=codec, channels=channels
    )
    data = good.read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, len(data) - 64, dtype=np.uint8)
    bad = tmp_path / f"bad-{name}"
    bad.write_bytes(data[:64] + noise.tobytes())
    with pytest.raises(AudioError, match=rf"bad-{name}: corrupt"):
        load_audio(bad)


def test_truncated_flac_is_corrupt(tmp_path):
    good = write_audio(tmp_path / "t.flac", tone(1.0, 22_050), 22_050, fmt="flac", codec="flac")
    bad = tmp_path / "cut.flac"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(AudioError, match="corrupt or truncated flac"):
        load_audio(bad)


def test_random_bytes_are_not_audio():
    noise = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(AudioError, match="<bytes>: not an audio file"):
        load_audio(noise)


def test_video_without_audio(tmp_path):
    import av

    path = tmp_path / "silent-film.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with pytest.raises(
        AudioError, match=r"silent-film\.mp4: no audio stream \(the file holds video\)"
    ):
        load_audio(path)


def test_audio_error_is_a_value_error():
    # The CLI prints ValueError as one line: AudioError must be one.
    assert issubclass(AudioError, ValueError)


@pytest.mark.parametrize(
    ("fmt", "subtype", "channels"),
    [
        ("WAV", "PCM_16", 1),
        ("WAV", "PCM_24", 2),
        ("WAV", "FLOAT", 1),
        ("FLAC", "PCM_16", 2),
    ],
)
def test_16k_files_read_by_libsndfile_equal_pyav(tmp_path, monkeypatch, fmt, subtype, channels):
    # The libsndfile fast path must give exactly what the PyAV path gives.
    import soundfile as sf

    from whisper_sv.core import audio

    rng = np.random.default_rng(channels)
    samples = np.clip(rng.standard_normal((16000, channels)) * 0.2, -1, 1)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, samples, 16000, format=fmt, subtype=subtype)
    assert audio._decode_16k_with_soundfile(str(path)) is not None  # the fast path is taken
    fast = audio.load_audio(path)
    fast_bytes = audio.load_audio(path.read_bytes())
    monkeypatch.setattr(audio, "_decode_16k_with_soundfile", lambda file: None)
    slow = audio.load_audio(path)
    assert fast.dtype == slow.dtype == np.float32
    assert np.array_equal(fast, slow) and np.array_equal(fast_bytes, slow)


def test_other_rates_and_damaged_wavs_go_through_pyav(tmp_path):
    import soundfile as sf

    from whisper_sv.core import audio

    path = tmp_path / "44k.wav"
    sf.write(path, np.zeros(4410, dtype=np.float32), 44100)
    assert audio._decode_16k_with_soundfile(str(path)) is None
    assert len(audio.load_audio(path)) == 1600
    good = tmp_path / "good.wav"
    sf.write(good, np.full(16000, 0.1, dtype=np.float32), 16000)
    damaged = tmp_path / "damaged.wav"
    damaged.write_bytes(good.read_bytes()[:30])  # header cut inside the fmt chunk
    assert audio._decode_16k_with_soundfile(str(damaged)) is None
    with pytest.raises(audio.AudioError, match="damaged.wav"):
        audio.load_audio(damaged)
