"""evaluate: manifests, reports, failures, and the evaluate/transcribe commands."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from whisper_sv.cli.main import main
from whisper_sv.core.audio import SAMPLE_RATE
from whisper_sv.core.text import error_rates
from whisper_sv.infer.evaluate import evaluate, read_manifest, write_report
from whisper_sv.infer.transcriber import TranscribeOptions, Transcriber

# The tiny random model never stops on its own; every window of it fails the loop guard's rules.
FAST = TranscribeOptions(max_new_tokens=8, loop_guard=False)


def write_wav(path, seconds: float, seed: int) -> None:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    sf.write(path, 0.1 * rng.standard_normal(round(seconds * SAMPLE_RATE)), SAMPLE_RATE)


@pytest.fixture
def manifest(tmp_path):
    """Three good clips (one in a subfolder), one missing, one text file, one empty sentence."""
    (tmp_path / "clips").mkdir()
    write_wav(tmp_path / "a.wav", 1.0, 0)
    write_wav(tmp_path / "clips" / "b.wav", 2.0, 1)
    write_wav(tmp_path / "c.wav", 1.5, 2)
    (tmp_path / "notes.wav").write_text("inte ljud")
    rows = [
        ("a.wav", "Hej, hur mår du?"),
        ("clips/b.wav", 'Det "citerade" ordet'),
        ("missing.mp3", "borta"),
        ("notes.wav", "text"),
        ("c.wav", ""),
        ("c.wav", "tre ord här"),
    ]
    path = tmp_path / "manifest.tsv"
    lines = ["client_id\tpath\tsentence\tup_votes"]
    lines += [f"x\t{p}\t{s}\t1" for p, s in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ct2(tiny_ct2_dir):
    return Transcriber(str(tiny_ct2_dir), backend="ct2", device="cpu")


def test_read_manifest(manifest):
    rows = read_manifest(manifest)
    assert [r.name for r in rows] == [
        "a.wav",
        "clips/b.wav",
        "missing.mp3",
        "notes.wav",
        "c.wav",
        "c.wav",
    ]
    assert rows[1].path == manifest.parent / "clips" / "b.wav"
    assert rows[1].sentence == 'Det "citerade" ordet'  # quotes are text, not CSV quoting
    assert len(read_manifest(manifest, limit=2)) == 2


def test_manifest_missing_column(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("file\ttext\na.wav\thej\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"lacks the column\(s\) path, sentence \(found 'file', 'text'\)"
    ):
        read_manifest(path)


def test_manifest_missing_or_empty(tmp_path):
    with pytest.raises(ValueError, match="manifest not found"):
        read_manifest(tmp_path / "nope.tsv")
    empty = tmp_path / "empty.tsv"
    empty.write_text("path\tsentence\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no rows"):
        read_manifest(empty)


def test_evaluate_report(manifest, ct2, tmp_path):
    report = evaluate(manifest, transcriber=ct2, options=FAST)
    assert report.backend == "ct2"
    assert report.rates.n == 3
    assert report.n_failed == 3
    reasons = {u.name: u.error for u in report.utterances if u.error}
    assert reasons["missing.mp3"] == "file not found"
    assert reasons["notes.wav"] == "not audio: the file holds text"
    assert reasons["c.wav"] == "empty sentence in manifest"
    scored = [u for u in report.utterances if not u.error]
    # The rates are those of the scored utterances, recomputed independently.
    assert report.rates == error_rates(
        [u.reference for u in scored], [u.hypothesis for u in scored]
    )
    assert report.audio_seconds == pytest.approx(1.0 + 2.0 + 1.5, abs=0.01)
    assert report.rtf == pytest.approx(report.seconds / report.audio_seconds)

    json_path, md_path = write_report(report, tmp_path / "out")
    data = json.loads(json_path.read_text(encoding="utf-8"))
    for key in (
        "wer",
        "cer",
        "wer_orthographic",
        "cer_orthographic",
        "n",
        "n_failed",
        "model",
        "backend",
        "seconds",
        "rtf",
    ):
        assert key in data
    assert (data["n"], data["n_failed"]) == (3, 3)
    assert data["wer"] == round(report.rates.wer, 2)
    assert {f["path"] for f in data["failed"]} == {"missing.mp3", "notes.wav", "c.wav"}
    md = md_path.read_text(encoding="utf-8")
    assert "| reference | hypothesis | errors |" in md
    assert "| missing.mp3 | file not found |" in md
    assert "Hej, hur mår du?" in md


def test_named_normalisers_and_speakers(tmp_path, ct2):
    write_wav(tmp_path / "a.wav", 1.0, 0)
    write_wav(tmp_path / "b.wav", 1.0, 1)
    rows = [("anna", "a.wav", "Det är 3 katter."), ("bo", "b.wav", "Hej!"), ("anna", "b.wav", "ja")]
    lines = ["client_id\tpath\tsentence"] + ["\t".join(r) for r in rows]
    (tmp_path / "m.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = evaluate(tmp_path / "m.tsv", transcriber=ct2, options=FAST)
    assert list(report.scores) == ["orthographic", "whisper_basic", "kblab_swedish"]
    assert [(sp.speaker, sp.n) for sp in report.speakers] == [("anna", 2), ("bo", 1)]
    data = json.loads(write_report(report, tmp_path / "out")[0].read_text(encoding="utf-8"))
    assert set(data["normalisers"]) == {"orthographic", "whisper_basic", "kblab_swedish"}
    assert data["normalisers"]["kblab_swedish"]["wer"] == round(
        report.scores["kblab_swedish"].wer, 2
    )
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| kblab_swedish |" in md and "KB-Whisper base 8.7" in md
    assert "| anna | 2 |" in md
    assert "kblab_swedish" in report.summary()


def test_long_file_scored_whole(tmp_path, ct2):
    write_wav(tmp_path / "long.wav", 45.0, 3)
    (tmp_path / "m.tsv").write_text("path\tsentence\nlong.wav\tett långt stycke\n")
    report = evaluate(tmp_path / "m.tsv", transcriber=ct2, options=replace(FAST, vad=False))
    assert report.rates.n == 1
    assert report.audio_seconds == pytest.approx(45.0, abs=0.01)
    assert [u.name for u in report.utterances] == ["long.wav"]  # one file, one score


def test_default_options_decode_long_files_in_sequence(tmp_path, ct2):
    # Without options, evaluate decodes long files 30 s after 30 s (as published WERs are
    # measured), with the loop guard on.
    write_wav(tmp_path / "a.wav", 1.0, 4)
    (tmp_path / "m.tsv").write_text("path\tsentence\na.wav\tx\n")
    report = evaluate(tmp_path / "m.tsv", transcriber=ct2)
    assert report.options.vad is False and report.options.loop_guard is True
    assert len(report.utterances[0].hypothesis) <= 30 * 1.0 + 40  # bounded by is_looping


def test_evaluate_limit(manifest, ct2):
    report = evaluate(manifest, transcriber=ct2, options=FAST, limit=2)
    assert (report.rates.n, report.n_failed) == (2, 0)


def test_markdown_cells_escape_pipes(tmp_path, ct2):
    write_wav(tmp_path / "a.wav", 1.0, 0)
    path = tmp_path / "m.tsv"
    path.write_text("path\tsentence\na.wav\tett | två\n", encoding="utf-8")
    md = evaluate(path, transcriber=ct2, options=FAST).to_markdown()
    assert "ett \\| två" in md


# ------------------------------------------------------------------ commands


def test_cli_evaluate(manifest, tiny_ct2_dir, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(
        ["evaluate", "--model", str(tiny_ct2_dir), "--manifest", str(manifest), "--out", str(out)]
    )
    captured = capsys.readouterr()
    assert rc == 1  # some files failed
    assert "on 3 utterances, 3 failed: WER" in captured.out
    assert "failed: missing.mp3: file not found" in captured.err
    assert json.loads((out / "report.json").read_text())["n"] == 3
    assert (out / "report.md").is_file()


def test_cli_evaluate_bad_manifest_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.tsv"
    path.write_text("file\ttext\n", encoding="utf-8")
    rc = main(["evaluate", "--manifest", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "lacks the column(s) path, sentence" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_transcribe_formats(tiny_ct2_dir, tmp_path, capsys):
    write_wav(tmp_path / "one.wav", 1.0, 0)
    write_wav(tmp_path / "two.wav", 1.0, 1)
    (tmp_path / "bad.mp3").write_bytes(b"")
    # Noise: the speech gate would rightly leave it without text; the formats are under test.
    args = ["transcribe", "--model", str(tiny_ct2_dir), "--output-dir", str(tmp_path / "o")]
    args.append("--no-speech-gate")
    rc = main([*args, "--format", "srt", str(tmp_path / "one.wav"), str(tmp_path / "bad.mp3")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "bad.mp3: empty file (0 bytes)" in err
    srt = (tmp_path / "o" / "one.srt").read_text(encoding="utf-8")
    assert srt.startswith("1\n00:00:00,")
    assert " --> " in srt
    rc = main([*args, "--format", "json", str(tmp_path / "two.wav")])
    assert rc == 0
    data = json.loads((tmp_path / "o" / "two.json").read_text(encoding="utf-8"))
    assert data["language"] == "sv" and data["segments"]
    rc = main([*args, "--format", "vtt", str(tmp_path / "two.wav")])
    assert (tmp_path / "o" / "two.vtt").read_text(encoding="utf-8").startswith("WEBVTT\n\n00:00:")


def test_cli_transcribe_to_stdout(tiny_ct2_dir, tmp_path, capsys):
    write_wav(tmp_path / "one.wav", 1.0, 0)
    args = ["transcribe", "--model", str(tiny_ct2_dir), str(tmp_path / "one.wav")]
    assert main([*args, "--no-speech-gate"]) == 0  # noise: the gate would leave it empty
    assert capsys.readouterr().out.strip()


# ------------------------------------------------------------------ real model (slow)


@pytest.mark.slow
def test_real_model_on_sv_words(sv_words_dir):
    report = evaluate(sv_words_dir / "manifest.tsv", limit=16)
    assert report.n_failed == 0
    # Whisper base on isolated Swedish words (the first 16 are clothes): it hears them but
    # rarely spells them right ("Hanskar." for handskar), and it writes some compounds as two
    # words or a word as a short phrase ("Ör hängen.", "Kall såg ni er?"): each such insertion
    # counts, so WER over one-word references goes past 100 % (150.0 here; 98.2 on all 164 words,
    # docs/benchmarks.md) while CER stays about 45 %. Silence or noise for output gives CER 100.
    assert 75.0 < report.rates.wer < 200.0
    assert 20.0 < report.rates.cer < 65.0
    assert sum(u.errors.substitutions == 0 for u in report.utterances) >= 1  # "Kofta."
