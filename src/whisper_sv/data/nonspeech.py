"""Audio with no speech in it, made with numpy: what Whisper must not write text for.

Silence, coloured noise, fan and room noise, mains hum, tones, chords, clicks and music-like
melodies, each seeded, so a benchmark (bench/bench_hallucination.py) and the tests decode the
same clips every time and nothing is stored. ``nonspeech_set`` is the list of clips;
``make`` builds one kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from whisper_sv.core.audio import SAMPLE_RATE

__all__ = ["KINDS", "NonSpeech", "make", "nonspeech_set"]

# Loudness of most clips: -20 dBFS RMS, a normal recording level.
LEVEL_RMS = 0.1
# Room tone: -40 dBFS RMS; "very quiet": -60 dBFS, a quiet room through a gain-less microphone.
ROOM_RMS = 0.01
QUIET_RMS = 0.001


@dataclass(frozen=True)
class NonSpeech:
    """One generated clip."""

    name: str  # kind and length, e.g. "pink-10s"
    samples: np.ndarray  # float32, 16 kHz mono, peak <= 1


def _rms(x: np.ndarray, rms: float) -> np.ndarray:
    x = x - x.mean()
    level = float(np.sqrt(np.mean(x**2))) or 1.0
    return np.clip(x * (rms / level), -1.0, 1.0).astype(np.float32)


def _coloured(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power falling as 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    f[0] = f[1]
    return np.fft.irfft(spectrum / f ** (exponent / 2), n)


def _tone(freq: float, t: np.ndarray, harmonics: int = 1) -> np.ndarray:
    return sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, harmonics + 1))


def _fan(rng: np.random.Generator, n: int, t: np.ndarray) -> np.ndarray:
    """Brown-ish noise with a blade-pass rumble (24 Hz) and a motor hum (100 Hz)."""
    noise = _coloured(rng, n, 1.5)
    noise /= np.abs(noise).max()
    return noise * (1 + 0.3 * np.sin(2 * np.pi * 24 * t)) + 0.2 * _tone(100, t, 3)


def _room(rng: np.random.Generator, n: int, t: np.ndarray) -> np.ndarray:
    """Pink noise with slow swells and a ventilation whine at 1.2 kHz."""
    noise = _coloured(rng, n, 1.0)
    noise /= np.abs(noise).max()
    return noise * (1 + 0.5 * np.sin(2 * np.pi * 0.2 * t)) + 0.02 * _tone(1200, t)


def _clicks(rng: np.random.Generator, n: int) -> np.ndarray:
    """Short decaying clicks at random times, about 3 a second."""
    x = np.zeros(n)
    decay = np.exp(-np.arange(80) / 10)
    for at in rng.integers(0, n - 80, size=max(1, 3 * n // SAMPLE_RATE)):
        x[at : at + 80] += rng.choice([-1, 1]) * decay
    return x


def _music(rng: np.random.Generator, n: int, t: np.ndarray) -> np.ndarray:
    """A melody of plucked notes over a bass line and a noise-burst beat (120 bpm)."""
    x = np.zeros(n)
    note_len = SAMPLE_RATE // 4
    scale = 220 * 2 ** (np.array([0, 2, 4, 5, 7, 9, 11, 12]) / 12)
    env = np.exp(-np.arange(note_len) / (0.08 * SAMPLE_RATE))
    for i, at in enumerate(range(0, n - note_len, note_len)):
        seg = t[at : at + note_len]
        x[at : at + note_len] += env * _tone(rng.choice(scale) * 2, seg, 4)
        if i % 4 == 0:
            x[at : at + note_len] += 0.8 * env * _tone(scale[i // 4 % 3] / 2, seg, 2)
        if i % 2 == 0:
            x[at : at + 800] += 0.5 * rng.standard_normal(800) * np.exp(-np.arange(800) / 150)
    return x


def _chord(t: np.ndarray) -> np.ndarray:
    """C major (C4, E4, G4) on an organ-like timbre, changing to F major half-way."""
    half = len(t) // 2
    x = np.zeros(len(t))
    x[:half] = sum(_tone(f, t[:half], 4) for f in (261.6, 329.6, 392.0))
    x[half:] = sum(_tone(f, t[half:], 4) for f in (349.2, 440.0, 523.3))
    return x


def make(kind: str, seconds: float, seed: int = 0) -> np.ndarray:
    """``seconds`` of non-speech audio of ``kind`` (one of KINDS), float32 16 kHz mono."""
    if kind not in KINDS:
        raise ValueError(f"unknown non-speech kind {kind!r}; use one of: {', '.join(KINDS)}")
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, not {seconds!r}")
    n = int(seconds * SAMPLE_RATE)
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    t = np.arange(n) / SAMPLE_RATE
    if kind == "silence":
        return np.zeros(n, np.float32)
    makers = {
        "white": lambda: rng.standard_normal(n),
        "pink": lambda: _coloured(rng, n, 1.0),
        "brown": lambda: _coloured(rng, n, 2.0),
        "fan": lambda: _fan(rng, n, t),
        "room": lambda: _room(rng, n, t),
        "hum": lambda: _tone(50, t, 5),
        "tone": lambda: _tone(440, t),
        "beeps": lambda: _tone(1000, t) * (np.sin(2 * np.pi * 1 * t) > 0),
        "chord": lambda: _chord(t),
        "clicks": lambda: _clicks(rng, n),
        "music": lambda: _music(rng, n, t),
        "quiet": lambda: rng.standard_normal(n),
    }
    level = {"quiet": QUIET_RMS, "room": ROOM_RMS}.get(kind, LEVEL_RMS)
    return _rms(makers[kind](), level)


KINDS = (
    "silence",
    "white",
    "pink",
    "brown",
    "fan",
    "room",
    "hum",
    "tone",
    "beeps",
    "chord",
    "clicks",
    "music",
    "quiet",
)
# (kind, seconds) of the standard set: every kind at 5 s, silence and noise at several
# lengths, and two over 30 s (they take the long-audio path).
STANDARD = (
    *((k, 5.0) for k in KINDS),
    ("silence", 1.0),
    ("silence", 30.0),
    ("white", 1.0),
    ("pink", 15.0),
    ("fan", 12.0),
    ("music", 20.0),
    ("quiet", 20.0),
    ("clicks", 10.0),
    ("room", 45.0),
    ("music", 40.0),
)


def nonspeech_set(seed: int = 0) -> list[NonSpeech]:
    """The standard non-speech clips (STANDARD), 23 of 1-45 s."""
    return [NonSpeech(f"{k}-{s:g}s", make(k, s, seed)) for k, s in STANDARD]
