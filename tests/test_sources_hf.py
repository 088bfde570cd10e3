"""hf:NAME[:CONFIG] on local datasets: the hub's parquet layout and save_to_disk folders.

The fixtures are written with pyarrow plus the ``huggingface`` schema metadata that marks a
column as an ``Audio`` feature, exactly as hub parquet files are (``datasets`` itself cannot
encode audio here: that needs torchcodec).
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from whisper_sv.core.audio import SAMPLE_RATE
from whisper_sv.data.sources import open_source
from whisper_sv.data.sources.hf import split_spec

AUDIO_TYPE = {"_type": "Audio"}
STRING = {"dtype": "string", "_type": "Value"}
INT = {"dtype": "int64", "_type": "Value"}


def wav_bytes(seconds: float, rate: int = 8_000, freq: float = 200.0) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def write_parquet(path: Path, columns: dict[str, list], features: dict[str, dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for name, values in columns.items():
        if features[name] == AUDIO_TYPE:
            kind = pa.struct({"bytes": pa.binary(), "path": pa.string()})
            arrays[name] = pa.array(values, type=kind)
        else:
            arrays[name] = pa.array(values)
    table = pa.table(arrays).replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


@pytest.fixture
def hub_layout(tmp_path) -> Path:
    """Common Voice-like columns in data/<split>-00000-of-00001.parquet."""
    root = tmp_path / "cv-sv"
    features = {"client_id": STRING, "audio": AUDIO_TYPE, "sentence": STRING, "gender": STRING}
    for split, n in (("train", 3), ("validation", 2), ("test", 2)):
        write_parquet(
            root / "data" / f"{split}-00000-of-00001.parquet",
            {
                "client_id": [f"spk{i % 2}" for i in range(n)],
                "audio": [
                    {"bytes": wav_bytes(0.5 + 0.25 * i), "path": f"{split}_{i}.wav"}
                    for i in range(n)
                ],
                "sentence": [f"Mening {i} i {split}." for i in range(n)],
                "gender": ["female", ""][:n] + ["female"] * max(0, n - 2),
            },
            features,
        )
    # A split the auto mapping leaves out, with a row whose audio cell is empty.
    write_parquet(
        root / "data" / "other-00000-of-00001.parquet",
        {
            "client_id": ["spk9"],
            "audio": [{"bytes": None, "path": None}],
            "sentence": ["Ingen ljudfil."],
            "gender": [""],
        },
        features,
    )
    return root


def test_hub_parquet_layout(hub_layout, tmp_path):
    src = open_source(f"hf:{hub_layout}", cache_dir=str(tmp_path / "cache"))
    assert src.splits() == ["train", "validation", "test"]  # "other" is not mapped
    items = list(src.items("train"))
    assert [i.id for i in items] == ["train/0000000", "train/0000001", "train/0000002"]
    first = items[0]
    assert first.sentence == "Mening 0 i train." and first.speaker == "spk0"
    assert isinstance(first.audio, bytes) and first.audio[:4] == b"RIFF"
    assert first.meta["gender"] == "female" and "gender" not in items[1].meta
    assert first.meta["source"] == "hf"
    audio = src.load(items[2])
    assert audio.dtype == np.float32
    assert abs(len(audio) / SAMPLE_RATE - 1.0) < 0.01  # 8 kHz wav resampled to 16 kHz
    other = open_source(
        f"hf:{hub_layout}", splits={"test": "other"}, cache_dir=str(tmp_path / "cache")
    )
    (empty,) = other.items("test")
    assert empty.audio is None
    assert empty.meta["error"] == "the audio cell has neither bytes nor a path"
    with pytest.raises(ValueError, match="neither bytes nor a path"):
        other.load(empty)


def test_streaming_gives_the_same_items(hub_layout, tmp_path):
    eager = open_source(f"hf:{hub_layout}", cache_dir=str(tmp_path / "cache"))
    lazy = open_source(f"hf:{hub_layout}", streaming=True)
    for split in ("train", "test"):
        assert list(lazy.items(split)) == list(eager.items(split))
    restored = pickle.loads(pickle.dumps(lazy))  # the loaded dataset is not pickled along
    assert restored._ds is None
    item = next(iter(lazy.items("validation")))
    assert np.array_equal(restored.load(item), eager.load(item))


@pytest.fixture
def saved_fleurs(tmp_path, hub_layout) -> Path:
    """A FLEURS-like DatasetDict written with save_to_disk: dev split, two text columns."""
    import datasets

    root = tmp_path / "fleurs-parquet"
    features = {
        "id": INT,
        "audio": AUDIO_TYPE,
        "transcription": STRING,
        "raw_transcription": STRING,
        "speaker_id": INT,
    }
    for split in ("train", "dev"):
        write_parquet(
            root / "data" / f"{split}-00000-of-00001.parquet",
            {
                "id": [1, 2],
                "audio": [
                    {"bytes": wav_bytes(0.3), "path": None},
                    {"bytes": wav_bytes(0.2), "path": None},
                ],
                "transcription": ["det var en gång", "två"],
                "raw_transcription": ["Det var en gång.", "Två."],
                "speaker_id": [7, 0],
            },
            features,
        )
    ds = datasets.load_dataset(str(root), cache_dir=str(tmp_path / "cache"))
    out = tmp_path / "fleurs-saved"
    ds.save_to_disk(str(out))
    return out


def test_save_to_disk_folder_with_fleurs_columns(saved_fleurs):
    src = open_source(f"hf:{saved_fleurs}")
    assert sorted(src.splits()) == ["train", "validation"]
    first, second = src.items("validation")
    assert first.id == "dev/0000000" and second.id == "dev/0000001"
    assert first.sentence == "Det var en gång."  # raw_transcription wins over transcription
    assert first.speaker == "7" and first.meta["id"] == 1
    assert second.speaker == "0"  # speaker 0 is a speaker, not a missing one
    assert len(src.load(first)) == int(0.3 * SAMPLE_RATE)
    with pytest.raises(ValueError, match="not audio or a file path"):
        list(open_source(f"hf:{saved_fleurs}", audio_column="speaker_id").items("train"))
    mapped = open_source(f"hf:{saved_fleurs}", splits={"test": "dev"}, text_column="transcription")
    assert mapped.splits() == ["test"]
    assert next(iter(mapped.items("test"))).sentence == "det var en gång"
    assert mapped.describe()["options"]["splits"] == {"test": "dev"}


def test_audio_as_relative_file_paths(tmp_path):
    import datasets

    root = tmp_path / "paths"
    (root / "clips").mkdir(parents=True)
    (root / "clips" / "a.wav").write_bytes(wav_bytes(0.4, rate=16_000))
    datasets.Dataset.from_dict({"file": ["clips/a.wav"], "text": ["Hej."]}).save_to_disk(str(root))
    src = open_source(f"hf:{root}", audio_column="file")
    (item,) = src.items("train")  # a single Dataset is the train split
    assert item.audio == str(root / "clips" / "a.wav")
    assert len(src.load(item)) == int(0.4 * SAMPLE_RATE)


def test_configuration_errors_name_the_fix(hub_layout, tmp_path):
    cache = str(tmp_path / "cache")
    with pytest.raises(ValueError, match="lacks; it has"):
        open_source(f"hf:{hub_layout}", splits={"train": "nope"}, cache_dir=cache).splits()
    with pytest.raises(ValueError, match="no text column.*set text_column"):
        list(open_source(f"hf:{hub_layout}", text_column="words", cache_dir=cache).items("test"))
    with pytest.raises(ValueError, match="no audio column 'nope'.*set audio_column"):
        list(open_source(f"hf:{hub_layout}", audio_column="nope", cache_dir=cache).items("test"))
    with pytest.raises(ValueError, match="cannot load dataset"):
        open_source(f"hf:{tmp_path / 'missing'}").splits()
    with pytest.raises(ValueError, match="two configs"):
        open_source("hf:some/dataset:sv_se", config="sv-SE")


def test_spec_parsing(hub_layout):
    assert split_spec("mozilla-foundation/common_voice_17_0:sv-SE") == (
        "mozilla-foundation/common_voice_17_0",
        "sv-SE",
    )
    assert split_spec("google/fleurs") == ("google/fleurs", "")
    assert split_spec(str(hub_layout)) == (str(hub_layout), "")
    src = open_source("hf:google/fleurs:sv_se")  # nothing is fetched until items are asked
    assert src.name == "hf:google/fleurs:sv_se" and src.options.config == "sv_se"
