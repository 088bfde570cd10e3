"""Mixing sources: every part's items once (or ``repeat`` times in training), tagged with the
part, and loaded by the part they came from; a mixed store made by the real feature pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest


@dataclass
class Tones:
    name: str
    freq: float
    n: int = 3

    def splits(self):
        return ["train", "test"]

    def items(self, split):
        from whisper_sv.data.sources import Item

        for i in range(self.n):
            yield Item(id=f"{split}-{i}", split=split, sentence=f"ord {i}", audio=None)

    def load(self, item):
        assert item.id.count("-") == 1 and "#" not in item.id  # the part's own id comes back
        t = np.arange(8000) / 16000
        return (0.3 * np.sin(2 * np.pi * self.freq * t)).astype(np.float32)

    def describe(self):
        return {"name": self.name, "freq": self.freq}


def test_mix_lists_each_part_and_repeats_only_training_items():
    from whisper_sv.data.sources.mix import MixPart, MixSource

    mix = MixSource([MixPart("syn", Tones("a", 300.0)), MixPart("real", Tones("b", 600.0), 2)])
    train = list(mix.items("train"))
    assert len(train) == 3 + 2 * 3
    assert len({i.id for i in train}) == len(train)
    assert sum(i.meta["mix"] == "real" for i in train) == 6
    assert len(list(mix.items("test"))) == 6  # held-out splits are never oversampled
    real = next(i for i in train if i.id == "real:train-1#1")
    freq = np.abs(np.fft.rfft(mix.load(real))).argmax() * 16000 / 8000
    assert freq == pytest.approx(600.0, abs=3)
    assert [p["name"] for p in mix.describe()["parts"]] == ["syn", "real"]
    with pytest.raises(ValueError, match="names must differ"):
        MixSource([MixPart("x", Tones("a", 1.0)), MixPart("x", Tones("b", 1.0))])
    with pytest.raises(ValueError, match="repeat must be >= 1"):
        MixPart("x", Tones("a", 1.0), 0)


def test_mixed_store_holds_both_parts(tmp_path, processor):
    from whisper_sv.data.features import BuildOptions, build_store
    from whisper_sv.data.sources.mix import MixPart, MixSource
    from whisper_sv.data.store import FeatureStore

    mix = MixSource([MixPart("syn", Tones("a", 300.0)), MixPart("real", Tones("b", 600.0), 3)])
    build_store(mix, tmp_path / "s", BuildOptions(progress=False), processor=processor)
    store = FeatureStore(tmp_path / "s")
    assert store.num_rows("train") == 3 + 9 and store.num_rows("test") == 6
    ids = [m["id"] for m in store.metadata("train", columns=("id",))]
    assert sum(i.startswith("real:") for i in ids) == 9
