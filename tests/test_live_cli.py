"""``whisper-sv live`` in a real process: a real Swedish file, standard input, silence."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_live import joined_lexin

from whisper_sv.core.audio import SAMPLE_RATE, load_audio

SRC = Path(__file__).resolve().parents[1] / "src"


def live(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "whisper_sv", "live", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=600,
    )


def pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    return joined_lexin(tmp_path_factory.mktemp("live-cli"), seconds=12, seed=1)


def lines_of(stdout: bytes) -> list[str]:
    return [x for x in stdout.decode().splitlines() if x.startswith("[")]


@pytest.mark.slow
def test_a_real_file_prints_timed_swedish_lines_their_english_and_srt(joined, tmp_path):
    from whisper_sv.core.text import wer

    srt = tmp_path / "live.srt"
    proc = live(str(joined.path), "--speed", "0", "--translate", "--srt", str(srt))
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    out = proc.stdout.decode().splitlines()
    lines = lines_of(proc.stdout)
    assert lines and lines[0].startswith("[00:0"), out
    # Each Swedish line is followed by its English, indented.
    english = [out[out.index(x) + 1] for x in lines]
    assert all(e.startswith("    ") and e.strip() for e in english), out
    swedish = " ".join(x.split("] ", 1)[1] for x in lines)
    assert wer([joined.reference], [swedish]) < 70.0, swedish
    text = srt.read_text(encoding="utf-8")
    assert text.startswith("1\n00:00:") and "-->" in text
    assert "backlog" in proc.stderr.decode()


@pytest.mark.slow
def test_standard_input_at_real_time_pace(joined):
    audio = load_audio(joined.path)[: 8 * SAMPLE_RATE]
    started = time.monotonic()
    # --speed applies to files; standard input comes at the producer's pace (here: at once).
    proc = live("-", "--chunk-s", "1.0", stdin=pcm(audio))
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert lines_of(proc.stdout)
    assert time.monotonic() - started < 600


def test_silence_on_standard_input_prints_nothing(tiny_ct2_dir):
    silence = np.zeros(20 * SAMPLE_RATE, dtype=np.float32)
    proc = live("-", "--model", str(tiny_ct2_dir), "--device", "cpu", stdin=pcm(silence))
    assert proc.returncode == 1, proc.stderr.decode()[-2000:]
    assert lines_of(proc.stdout) == []
    assert "20.0 s heard, 0 words confirmed" in proc.stderr.decode()


def test_speed_paces_a_file(tiny_ct2_dir, tmp_path):
    import soundfile

    quiet = tmp_path / "quiet.wav"
    soundfile.write(quiet, np.zeros(6 * SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    started = time.monotonic()
    proc = live(str(quiet), "--speed", "3", "--model", str(tiny_ct2_dir), "--device", "cpu")
    # 6 s of audio at 3x real time cannot end in less than 2 s (plus the start-up).
    assert time.monotonic() - started >= 2.0
    assert proc.returncode == 1 and "6.0 s heard" in proc.stderr.decode()


def test_bad_input_is_a_one_line_error(tmp_path):
    proc = live(str(tmp_path / "missing.wav"), "--speed", "0")
    assert proc.returncode == 2
    assert "no such file" in proc.stderr.decode()
    assert live("x.wav", "--speed", "-1").returncode == 2
