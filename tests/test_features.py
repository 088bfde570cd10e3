"""Feature pipeline: bad inputs, counts, re-runs, --shard I/N, workers, augmentation, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ArraySource, speechlike

from whisper_sv.core.audio import SAMPLE_RATE
from whisper_sv.data.features import REASONS, BuildOptions, FeatureStore, build_store, report
from whisper_sv.data.sources import open_source
from whisper_sv.data.store import read_rejects


def write_wav(path: Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate, subtype="PCM_16")
    return path.name


def write_manifest(folder: Path, rows: list[tuple[str, bytes | str]]) -> Path:
    """``manifest.tsv`` with path/sentence/split rows; a bytes sentence is written raw."""
    lines = [b"path\tsentence\tsplit"]
    for i, (path, sentence) in enumerate(rows):
        text = sentence if isinstance(sentence, bytes) else sentence.encode()
        split = b"train" if i % 4 else b"test"
        lines.append(path.encode() + b"\t" + text + b"\t" + split)
    tsv = folder / "manifest.tsv"
    tsv.write_bytes(b"\n".join(lines) + b"\n")
    return tsv


@pytest.fixture(scope="module")
def good_clips(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    """A folder of 12 good wav clips (1-3 s) and their (path, sentence) rows."""
    folder = tmp_path_factory.mktemp("clips")
    rows = []
    for i in range(12):
        name = write_wav(folder / f"good{i:02d}.wav", speechlike(1 + (i % 5) * 0.5, i))
        rows.append((name, f"Det här är mening nummer {i}."))
    return folder, rows


def test_bad_inputs_are_rejected_with_reasons_and_good_ones_kept(tmp_path, processor):
    rng = np.random.default_rng(0)
    good = [write_wav(tmp_path / f"ok{i}.wav", speechlike(1.5, i)) for i in range(3)]
    # 44.1 kHz stereo: decoded, resampled and averaged to mono, then KEPT.
    stereo = np.stack([speechlike(2.0, 7), speechlike(2.0, 8)], axis=1)
    sf.write(tmp_path / "stereo44k.wav", np.asarray(_resample(stereo, 44100)), 44100)
    # The bytes of a RIFF header cut short: a damaged wav.
    full = (tmp_path / "ok0.wav").read_bytes()
    (tmp_path / "corrupt.wav").write_bytes(full[:30])
    (tmp_path / "zero.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_text("these are my notes, not audio\n" * 5)
    (tmp_path / "noise.bin").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    write_wav(tmp_path / "silent.wav", np.zeros(SAMPLE_RATE, np.float32))
    write_wav(tmp_path / "long40.wav", speechlike(40.0, 3))
    bad = {  # file -> reason (the manifest's ids are its paths)
        "corrupt.wav": "corrupt",
        "zero.wav": "empty",
        "notes.wav": "not audio",
        "noise.bin": "not audio",
        "silent.wav": "silent",
        "long40.wav": "too long",
        "missing.wav": "missing file",
    }
    rows: list[tuple[str, bytes | str]] = [(good[0], "En bra mening.")]
    rows += [(path, "En mening till sin fil.") for path in bad]
    rows += [
        (good[1], ""),  # empty sentence
        (good[2], "Trasig \xe5tta".encode("latin-1")),  # not UTF-8
        (good[2], " ".join(["mening"] * 500)),  # labels over 448 tokens (id "ok2.wav#2")
        ("stereo44k.wav", "Två kanaler och fel samplingstakt."),
        (good[1], "Åtta små öar i Östersjön."),  # id "ok1.wav#2"
    ]
    expected = {
        **bad,
        "ok1.wav": "empty sentence",
        "ok2.wav": "non-UTF-8 sentence",
        "ok2.wav#2": "labels too long",
    }
    tsv = write_manifest(tmp_path, rows)
    out = tmp_path / "store"
    summary = build_store(
        open_source(f"manifest:{tsv}"),
        out,
        BuildOptions(shard_size=4, progress=False),
        processor=processor,
    )

    rejects = {r.id: r for r in read_rejects(out)}
    assert {i: r.reason for i, r in rejects.items()} == expected
    assert all(r.detail and r.split in ("train", "test") for r in rejects.values())
    assert Path(rejects["long40.wav"].audio) == tmp_path / "long40.wav"
    assert set(expected.values()) <= set(REASONS)

    store = FeatureStore(out)
    kept = {m["id"]: m for s in store.splits() for m in store.metadata(s)}
    assert set(kept) == {"ok0.wav", "stereo44k.wav", "ok1.wav#2"}
    assert kept["stereo44k.wav"]["duration"] == pytest.approx(2.0, abs=0.01)  # now 16 kHz
    for split in summary.splits:
        assert split.n_in == split.kept + split.rejected
    assert sum(s.n_in for s in summary.splits) == len(rows)
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["splits"].values():
        assert entry["in"] == entry["kept"] + entry["rejected"]
        assert sum(entry["reasons"].values()) == entry["rejected"]
    # rejects.tsv is a proper TSV with the documented columns.
    with open(out / "rejects.tsv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f, delimiter="\t"))
    assert list(table[0]) == ["split", "id", "audio", "reason", "detail"]
    assert len(table) == len(expected)


def _resample(audio: np.ndarray, rate: int) -> np.ndarray:
    from scipy.signal import resample_poly

    return resample_poly(audio, rate, SAMPLE_RATE, axis=0).astype(np.float32)


def test_rerun_skips_finished_shards(tmp_path, processor, good_clips):
    folder, rows = good_clips
    rows = rows + [("missing.wav", "Finns inte.")]
    tsv = write_manifest(folder, rows)
    out = tmp_path / "store"
    options = BuildOptions(shard_size=3, progress=False)
    first = build_store(open_source(f"manifest:{tsv}"), out, options, processor=processor)
    assert first.shards_written == 5 and first.shards_skipped == 0  # 10 train -> 4, 3 test -> 1
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    second = build_store(open_source(f"manifest:{tsv}"), out, options, processor=processor)
    assert second.shards_written == 0 and second.shards_skipped == 5 and second.processed == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == stamps
    assert len(read_rejects(out)) == 1  # not duplicated by the re-run
    assert [s.n_in for s in second.splits] == [s.n_in for s in first.splits]
    # A lost shard is made again, and only it.
    victim = sorted(stamps)[1]
    victim.unlink()
    third = build_store(open_source(f"manifest:{tsv}"), out, options, processor=processor)
    assert third.shards_written == 1 and victim.is_file()
    assert sum(s.kept for s in third.splits) == 12


def test_shard_i_of_n_partitions_one_store(tmp_path, processor, good_clips):
    folder, rows = good_clips
    tsv = write_manifest(folder, rows)
    source = open_source(f"manifest:{tsv}")
    whole = tmp_path / "whole"
    build_store(source, whole, BuildOptions(shard_size=2, progress=False), processor=processor)
    shared = tmp_path / "shared"
    parts = []
    for i in range(3):
        summary = build_store(
            source,
            shared,
            BuildOptions(shard_size=2, shard=(i, 3), progress=False),
            processor=processor,
        )
        parts.append({p.relative_to(shared) for p in shared.rglob("*.parquet")})
    # Machine i wrote shards k % 3 == i; together they are the whole store, nothing twice.
    mine = [parts[0], parts[1] - parts[0], parts[2] - parts[1]]
    for i, files in enumerate(mine):
        assert files and all(int(f.stem.split("-")[1]) % 3 == i for f in files)
    assert parts[2] == {p.relative_to(whole) for p in whole.rglob("*.parquet")}
    a, b = FeatureStore(whole), FeatureStore(shared)
    for split in a.splits():
        assert [m["id"] for m in a.metadata(split)] == [m["id"] for m in b.metadata(split)]
    assert all(s.complete for s in summary.splits)
    first_only = json.loads((shared / "manifest.json").read_text())
    assert first_only["splits"]["train"]["shards_expected"] == 5


def test_workers_give_the_same_store(tmp_path, processor, good_clips):
    folder, rows = good_clips
    tsv = write_manifest(folder, rows)
    source = open_source(f"manifest:{tsv}")
    one = build_store(
        source,
        tmp_path / "w1",
        BuildOptions(shard_size=5, chunk_size=2, progress=False),
        processor=processor,
    )
    two = build_store(
        source,
        tmp_path / "w2",
        BuildOptions(shard_size=5, chunk_size=2, workers=2, progress=False),
        processor=processor,
    )
    assert one.splits == two.splits
    a, b = FeatureStore(tmp_path / "w1"), FeatureStore(tmp_path / "w2")
    for split in a.splits():
        for ra, rb in zip(a.rows(split), b.rows(split), strict=True):
            assert ra["id"] == rb["id"] and ra["labels"] == rb["labels"]
            # Equal within float16: the log-mel matmul may round one value differently (one
            # float16 step) with another number of BLAS threads in the process computing it.
            np.testing.assert_allclose(
                ra["input_features"], rb["input_features"], rtol=0, atol=2e-3
            )


def test_limit_splits_and_normalized_text(tmp_path, processor):
    clips = {
        "train": [(f"t{i}", f"Hej, Världen {i}!", speechlike(1.0, i)) for i in range(5)],
        "validation": [("v0", "Nej.", speechlike(1.0, 9))],
    }
    out = tmp_path / "s"
    options = BuildOptions(splits=("train",), limit=3, normalize_text=True, progress=False)
    summary = build_store(ArraySource(clips), out, options, processor=processor)
    assert [s.split for s in summary.splits] == ["train"]
    store = FeatureStore(out)
    meta = store.metadata("train", columns=("id", "sentence", "text"))
    assert [m["id"] for m in meta] == ["t0", "t1", "t2"]
    assert meta[1]["sentence"] == "Hej, Världen 1!" and meta[1]["text"] == "hej världen 1"
    assert store.config.normalize_text is True
    assert store.manifest["splits"]["train"]["listed"] == 3


def test_augmentation_is_applied_to_train_only_and_recorded(tmp_path, processor):
    clips = {
        "train": [(f"t{i}", "En mening.", speechlike(2.0, i)) for i in range(4)],
        "test": [("x0", "En mening.", speechlike(2.0, 0))],
    }
    options = BuildOptions(noise_snr_db=10.0, speed=(1.25,), seed=5, progress=False)
    out = tmp_path / "aug"
    build_store(ArraySource(clips), out, options, processor=processor)
    store = FeatureStore(out)
    for m in store.metadata("train"):
        assert json.loads(m["augmentation"]) == {"noise_snr_db": 10.0, "speed": 1.25}
        assert m["duration"] == pytest.approx(2.0 / 1.25, abs=0.01)  # faster = shorter
    (test_row,) = store.metadata("test")
    assert test_row["augmentation"] == "" and test_row["duration"] == pytest.approx(2.0)
    assert store.manifest["pipeline"]["noise_snr_db"] == 10.0
    # Noise changed the features against the clean clip (t0 and x0 hold the same audio).
    train0 = next(store.rows("train"))["input_features"]
    test0 = next(store.rows("test"))["input_features"]
    assert not np.array_equal(train0, test0)
    # Same options, same draws: a second store is identical.
    build_store(ArraySource(clips), tmp_path / "aug2", options, processor=processor)
    again = next(FeatureStore(tmp_path / "aug2").rows("train"))["input_features"]
    np.testing.assert_array_equal(train0, again)


def test_report_writes_table_and_plot(tmp_path, processor):
    clips = {"train": [(f"t{i}", "Hej hej.", speechlike(1.0 + i, i)) for i in range(3)]}
    out = tmp_path / "s"
    build_store(ArraySource(clips), out, BuildOptions(progress=False), processor=processor)
    table, png = report(out)
    assert table.splitlines()[0].split()[:3] == ["split", "in", "kept"]
    assert table.splitlines()[1].split()[:4] == ["train", "3", "3", "0"]
    assert png == out / "report.png" and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_features_and_report(tmp_path, good_clips, tiny_model_dir, capsys):
    from whisper_sv.cli.main import main

    folder, rows = good_clips
    tsv = write_manifest(folder, rows[:6])
    out = tmp_path / "cli-store"
    argv = [
        "features",
        "--source",
        f"manifest:{tsv}",
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
    ]
    assert main([*argv, "--split", "train,test", "--shard-size", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "clips/s" in printed
    assert FeatureStore(out).num_rows("train") == 4
    assert main(["features", "--report", str(out)]) == 0
    assert (out / "report.png").is_file()
    assert main([*argv, "--shard", "3/2"]) == 2  # bad I/N: a one-line error, exit 2
    assert "shard" in capsys.readouterr().err
