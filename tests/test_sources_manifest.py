"""manifest:TSV: good rows, bad rows, split rules, and the real sv-words recordings."""

from __future__ import annotations

import io
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from whisper_sv.core.audio import SAMPLE_RATE, AudioError
from whisper_sv.data.sources import open_source
from whisper_sv.data.sources.manifest import EXPECTED_HEADER, hash_split


def write_wav(path: Path, seconds: float, rate: int = 22_050) -> None:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.25 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)


def write_manifest(folder: Path, text: str | bytes) -> Path:
    path = folder / "manifest.tsv"
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    (tmp_path / "audio").mkdir()
    for name, seconds in (("a.wav", 0.5), ("b.wav", 0.7), ("c.wav", 0.9)):
        write_wav(tmp_path / "audio" / name, seconds)
    return tmp_path


def test_rows_with_split_and_speaker_columns(folder):
    tsv = write_manifest(
        folder,
        "path\tsentence\tsplit\tspeaker\taccent\n"
        "audio/a.wav\tEn katt.\ttrain\tanna\tnorrland\n"
        "audio/b.wav\tTvå hundar.\tdev\tbo\t\n"
        "audio/c.wav\tTre fåglar.\tTEST\tcai\t\n",
    )
    src = open_source(f"manifest:{tsv}")
    assert src.splits() == ["train", "validation", "test"]
    (a,) = src.items("train")
    assert (a.id, a.sentence, a.speaker) == ("audio/a.wav", "En katt.", "anna")
    assert a.audio == str(folder / "audio" / "a.wav")  # relative to the manifest's folder
    assert a.meta["accent"] == "norrland" and a.meta["line"] == 2
    (b,) = src.items("validation")
    assert "accent" not in b.meta
    audio = pickle.loads(pickle.dumps(src)).load(b)
    assert audio.dtype == np.float32
    assert abs(len(audio) / SAMPLE_RATE - 0.7) < 0.01  # resampled 22.05 -> 16 kHz


def test_without_split_column_rows_are_hashed_or_put_in_one_split(folder):
    text = "sentence\tpath\n" + "".join(f"Mening {i}.\taudio/a.wav\n" for i in range(3))
    tsv = write_manifest(folder, text)
    src = open_source(f"manifest:{tsv}", split="test")
    assert src.splits() == ["test"] and len(list(src.items("test"))) == 3
    # same path three times: ids stay unique, and the hash puts them in one split
    hashed = open_source(f"manifest:{tsv}")
    assert len(hashed.splits()) == 1
    ids = [i.id for s in hashed.splits() for i in hashed.items(s)]
    assert ids == ["audio/a.wav", "audio/a.wav#2", "audio/a.wav#3"]


def test_hash_split_is_stable_proportional_and_keeps_speakers_together(folder):
    assert hash_split("clip-1.wav", (0.8, 0.1, 0.1)) == hash_split("clip-1.wav", (0.8, 0.1, 0.1))
    counts = Counter(hash_split(f"clip-{i}.wav", (0.8, 0.1, 0.1)) for i in range(5000))
    assert abs(counts["train"] / 5000 - 0.8) < 0.03
    assert abs(counts["test"] / 5000 - 0.1) < 0.02
    assert hash_split("x", (0.0, 0.0, 1.0)) == "test"
    lines = "".join(f"audio/a.wav\tRad {i}.\tspk{i % 7}\n" for i in range(200))
    tsv = write_manifest(folder, "path\tsentence\tspeaker\n" + lines)
    src = open_source(f"manifest:{tsv}")
    where: dict[str, set[str]] = {}
    for split in src.splits():
        for item in src.items(split):
            where.setdefault(item.speaker, set()).add(split)
    assert all(len(splits) == 1 for splits in where.values())


def test_bad_rows_are_yielded_with_the_reason(folder):
    raw = (
        b"path\tsentence\n"
        b"audio/a.wav\tBra rad.\n"
        b"audio/missing.wav\tFilen saknas.\n"
        b"audio/b.wav\t\n"  # empty transcript: yielded, the feature pipeline rejects it
        b"audio/c.wav\tEn\tflik f\xc3\xb6r mycket\n"  # a tab inside the sentence
        b"audio/c.wav\n"  # no sentence field at all
        b"audio/c.wav\tTr\xe4d i Latin-1.\n"  # not UTF-8
        b"\n"
        b"audio/a.wav\tSista raden.\r\n"  # CRLF
    )
    src = open_source(f"manifest:{write_manifest(folder, raw)}", split="train")
    items = list(src.items("train"))
    assert len(items) == 7
    ok, missing, empty, extra, short, latin1, crlf = items
    assert "error" not in ok.meta and "error" not in missing.meta and "error" not in empty.meta
    assert empty.sentence == ""
    with pytest.raises(AudioError, match="not found"):
        src.load(missing)
    assert extra.meta["error"] == "row has 3 tab-separated fields, the header has 2"
    assert short.meta["error"] == "row has 1 tab-separated fields, the header has 2"
    assert short.sentence == ""
    assert latin1.meta["error"] == "transcript is not valid UTF-8"
    assert latin1.sentence == "Tr\ufffdd i Latin-1."
    assert crlf.sentence == "Sista raden." and crlf.meta["line"] == 9


def test_header_problems_raise_naming_the_expected_header(folder):
    tsv = write_manifest(folder, "file\ttext\naudio/a.wav\tHej.\n")
    with pytest.raises(ValueError, match="missing column.*path, sentence") as err:
        open_source(f"manifest:{tsv}")
    assert EXPECTED_HEADER in str(err.value)
    with pytest.raises(ValueError, match="expected a header"):
        open_source(f"manifest:{write_manifest(folder, '')}")
    with pytest.raises(ValueError, match="does not exist"):
        open_source(f"manifest:{folder / 'nope.tsv'}")
    with pytest.raises(ValueError, match="add up to 1"):
        open_source(f"manifest:{tsv}", fractions=[0.5, 0.2, 0.2])


def test_bom_and_pandas_quoting_are_understood(folder):
    import pandas as pd

    buf = io.StringIO()
    pd.DataFrame({"path": ["audio/a.wav"], "sentence": ['Han sa "hej".']}).to_csv(
        buf, sep="\t", index=False
    )
    tsv = write_manifest(folder, b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8"))
    (item,) = open_source(f"manifest:{tsv}", split="test").items("test")
    assert item.sentence == 'Han sa "hej".'
    assert "error" not in item.meta


def test_real_recordings_from_sv_words(sv_words_dir):
    src = open_source(f"manifest:{sv_words_dir / 'manifest.tsv'}", split="test")
    items = list(src.items("test"))
    assert len(items) == 164
    assert all(i.sentence and "error" not in i.meta for i in items)
    audio = src.load(items[0])
    assert 1.0 < len(audio) / SAMPLE_RATE < 3.5
    assert np.sqrt(np.mean(audio**2)) > 0.005
