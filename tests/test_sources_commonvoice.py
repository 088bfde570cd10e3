"""commonvoice:DIR on a tiny release in Mozilla's layout (mp3 clips written with PyAV)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from whisper_sv.core.audio import SAMPLE_RATE, AudioError
from whisper_sv.data.sources import open_source

HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment"


def write_mp3(path: Path, seconds: float, freq: float = 330.0, rate: int = 48_000) -> None:
    """A mono mp3 tone, as Common Voice ships its clips (48 kHz mp3)."""
    import av

    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    with av.open(str(path), "w", format="mp3") as container:
        stream = container.add_stream("mp3", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.fixture
def release(tmp_path) -> Path:
    """cv-corpus-x/sv-SE with 3 train, 1 dev, 1 test clip (one train row lacks its file)."""
    root = tmp_path / "cv-corpus-99.0" / "sv-SE"
    (root / "clips").mkdir(parents=True)
    rows = {
        "train.tsv": [
            ("spk1", "common_voice_sv-SE_1.mp3", "Hej på dig.", "twenties", "female_feminine", "Stockholm"),
            ("spk1", "common_voice_sv-SE_2.mp3", 'Han sa "ja" till det.', "twenties", "female_feminine", "Stockholm"),
            ("spk2", "common_voice_sv-SE_3.mp3", "Det regnar i Göteborg.", "", "", ""),
        ],
        "dev.tsv": [("spk3", "common_voice_sv-SE_4.mp3", "Vi ses i morgon.", "fifties", "male_masculine", "")],
        "test.tsv": [("spk4", "common_voice_sv-SE_5.mp3", "Tack så mycket.", "", "", "Skåne")],
    }  # fmt: skip
    for name, entries in rows.items():
        lines = [HEADER]
        for client, clip, sentence, age, gender, accent in entries:
            lines.append(f"{client}\t{clip}\t{sentence}\t2\t0\t{age}\t{gender}\t{accent}\tsv-SE\t")
            if clip != "common_voice_sv-SE_3.mp3":  # this one is missing on disk
                write_mp3(root / "clips" / clip, seconds=0.6 + 0.1 * int(clip[-5]))
        (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_splits_items_and_metadata(release):
    src = open_source(f"commonvoice:{release}")
    assert src.splits() == ["train", "validation", "test"]
    train = list(src.items("train"))
    assert [i.id for i in train] == [f"common_voice_sv-SE_{n}.mp3" for n in (1, 2, 3)]
    first = train[0]
    assert first.sentence == "Hej på dig."
    assert train[1].sentence == 'Han sa "ja" till det.'  # quotes are text, not CSV quoting
    assert first.speaker == "spk1"
    assert first.audio == str(release / "clips" / "common_voice_sv-SE_1.mp3")
    assert first.meta["accent"] == "Stockholm"
    assert first.meta["gender"] == "female_feminine"
    assert first.meta["age"] == "twenties"
    assert first.meta["up_votes"] == "2"
    assert "segment" not in first.meta  # empty columns are left out
    assert "error" not in first.meta
    dev = list(src.items("validation"))
    assert [i.split for i in dev] == ["validation"] and dev[0].speaker == "spk3"


def test_load_decodes_mp3_to_16k(release):
    src = pickle.loads(pickle.dumps(open_source(f"commonvoice:{release}")))
    item = next(iter(src.items("test")))
    audio = src.load(item)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / SAMPLE_RATE - 1.1) < 0.1  # 0.6 + 0.1 * 5 seconds
    assert 0.2 < np.abs(audio).max() < 0.4


def test_missing_clip_is_yielded_and_fails_on_load(release):
    src = open_source(f"commonvoice:{release}")
    missing = next(i for i in src.items("train") if i.id.endswith("_3.mp3"))
    with pytest.raises(AudioError, match="not found"):
        src.load(missing)


def test_release_folder_with_one_locale_is_accepted(release):
    src = open_source(f"commonvoice:{release.parent}")
    assert src.name == f"commonvoice:{release}"


def test_minimal_columns_and_absent_split_files(release):
    (release / "dev.tsv").unlink()
    (release / "test.tsv").write_text(
        "path\tsentence\ncommon_voice_sv-SE_5.mp3\tTack så mycket.\n", encoding="utf-8"
    )
    src = open_source(f"commonvoice:{release}")
    assert src.splits() == ["train", "test"]
    (item,) = src.items("test")
    assert item.speaker == "" and item.sentence == "Tack så mycket."


def test_malformed_rows_are_flagged_not_fatal(release):
    with (release / "train.tsv").open("ab") as fh:
        fh.write(b"spk9\tcommon_voice_sv-SE_1.mp3\tbara tre\n")  # too few fields
        fh.write(b"spk9\tcommon_voice_sv-SE_2.mp3\tTr\xe4d\t1\t0\t\t\t\tsv-SE\t\n")  # Latin-1
    items = list(open_source(f"commonvoice:{release}").items("train"))
    assert len(items) == 5
    assert "header has 10" in items[3].meta["error"]
    assert items[4].meta["error"] == "transcript is not valid UTF-8"
    assert items[3].id == "common_voice_sv-SE_1.mp3#2"  # ids stay unique


def test_layout_errors_name_the_expected_layout(tmp_path, release):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="clips/"):
        open_source(f"commonvoice:{tmp_path / 'empty'}")
    (release / "train.tsv").write_text("client_id\tfile\ttext\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing column.*path, sentence"):
        open_source(f"commonvoice:{release}")
    with pytest.raises(ValueError, match="does not exist"):
        open_source(f"commonvoice:{tmp_path / 'nowhere'}")
