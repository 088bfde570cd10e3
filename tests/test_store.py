"""Feature store: exact log-mel reconstruction, round trip, reader API, config checks."""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
import pytest
from conftest import ArraySource, speechlike

from whisper_sv.core.audio import N_FRAMES, SAMPLE_RATE
from whisper_sv.data.features import BuildOptions, build_store
from whisper_sv.data.logmel import log_mel_batch, n_audio_frames, pad_log_mel
from whisper_sv.data.store import FeatureStore, ShardSampler, StoreError, collate

# float16 keeps 11 significant bits: log-mel values (about -1.5..2) round by <= 2**-10.
F16_TOL = 1.1e-3


def test_logmel_matches_whisper_feature_extractor(processor):
    fe = processor.feature_extractor
    clips = [
        speechlike(0.05, 1),
        speechlike(1.0, 2),
        speechlike(4.37, 3, tail_silence=1.5),  # trailing silence is trimmed, then restored
        speechlike(12.0, 4),
        speechlike(29.99, 5),
        speechlike(30.0, 6),  # no padding at all: Whisper's own reflect at the 30 s edge
        speechlike(2.0, 7) * 1e-4,  # quiet: the max-8 clamp sits near the -10 floor
    ]
    reference = fe(clips, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
    mels = log_mel_batch(clips, fe.mel_filters)
    for clip, ref, mel in zip(clips, reference, mels, strict=True):
        assert ref.shape == (80, N_FRAMES)
        assert mel.features.shape[1] <= n_audio_frames(len(clip))
        exact = pad_log_mel(mel.features, mel.pad_value)
        np.testing.assert_allclose(exact, ref, atol=1e-4, rtol=0)
        stored = pad_log_mel(mel.features.astype(np.float16), mel.pad_value)
        np.testing.assert_allclose(stored, ref, atol=F16_TOL, rtol=0)
        if mel.features.shape[1] < N_FRAMES:  # the pad value is what Whisper's padding holds
            assert ref[:, -1] == pytest.approx(np.full(80, mel.pad_value), abs=1e-6)
    # Trailing silence costs no storage: 1.5 s of zeros are not kept.
    assert mels[2].features.shape[1] <= n_audio_frames(int(4.37 * SAMPLE_RATE)) + 1


def test_logmel_128_mels():
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=128)
    clip = speechlike(3.0, 9)
    ref = fe(clip, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
    (mel,) = log_mel_batch([clip], fe.mel_filters)
    assert mel.features.shape[0] == 128
    np.testing.assert_allclose(pad_log_mel(mel.features, mel.pad_value), ref, atol=1e-4)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, processor):
    clips = {
        "train": [
            (f"tr{i}", f"Mening nummer {i} på svenska.", speechlike(1 + i * 0.4, i))
            for i in range(7)
        ],
        "test": [("te0", "Hej då!", speechlike(2.2, 99))],
    }
    out = tmp_path_factory.mktemp("store") / "s"
    options = BuildOptions(shard_size=3, progress=False)
    summary = build_store(ArraySource(clips), out, options, processor=processor)
    return out, clips, summary


def test_round_trip(small_store, processor):
    out, clips, summary = small_store
    store = FeatureStore(out, expect=BuildOptions().feature_config(processor))
    assert store.splits() == ["train", "test"]
    assert store.num_rows("train") == 7 and store.num_rows("test") == 1
    assert [p.name for p in store.shards("train")] == [
        "shard-00000.parquet",
        "shard-00001.parquet",
        "shard-00002.parquet",
    ]
    assert summary.shards_written == 4
    rows = list(store.rows("train"))
    assert [r["id"] for r in rows] == [c[0] for c in clips["train"]]  # the source's order
    tok = processor.tokenizer
    tok.set_prefix_tokens(language="swedish", task="transcribe", predict_timestamps=False)
    fe = processor.feature_extractor
    for row, (_, sentence, audio) in zip(rows, clips["train"], strict=True):
        ref = fe(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
        assert row["input_features"].dtype == np.float16
        assert row["input_features"].shape == (80, N_FRAMES)
        np.testing.assert_allclose(row["input_features"].astype(np.float32), ref, atol=F16_TOL)
        # After a space, as Whisper writes its transcripts (FeatureConfig.prefix_space).
        assert row["labels"] == tok(" " + sentence).input_ids
        assert tok.convert_ids_to_tokens(row["labels"][4]).startswith("Ġ")
        assert tok.convert_ids_to_tokens(row["labels"][:4]) == [
            "<|startoftranscript|>",
            "<|sv|>",
            "<|transcribe|>",
            "<|notimestamps|>",
        ]
        assert tok.convert_ids_to_tokens(row["labels"][-1]) == "<|endoftext|>"
        assert row["sentence"] == sentence
        assert row["duration"] == pytest.approx(len(audio) / SAMPLE_RATE, abs=1e-3)
        assert row["source"] == "arrays" and row["voice"] == "v"
        assert row["gender"] in ("male", "female") and row["speaker"].startswith("spk")


def test_manifest_contents(small_store):
    out, clips, _ = small_store
    store = FeatureStore(out)
    m = store.manifest
    assert m["config_hash"] == store.config.hash()
    assert m["config"]["n_mels"] == 80 and len(m["tokenizer"]) == 16
    assert m["model"] == "bundled:base" and m["source_name"] == "arrays"
    assert m["source"] == {"source": "arrays", "clips": {"train": 7, "test": 1}}
    train = m["splits"]["train"]
    seconds = sum(len(a) for _, _, a in clips["train"]) / SAMPLE_RATE
    assert train["in"] == 7 and train["kept"] == 7 and train["rejected"] == 0
    assert train["seconds"] == pytest.approx(seconds, abs=0.01)
    assert train["hours"] == pytest.approx(seconds / 3600, abs=1e-4)
    assert train["speakers"] == 3 and train["complete"] is True
    assert m["created"] and m["format_version"] == 1
    assert (out / "rejects.tsv").read_text().splitlines() == ["split\tid\taudio\treason\tdetail"]


def test_metadata_without_features(small_store):
    out, clips, _ = small_store
    meta = FeatureStore(out).metadata("train")
    assert len(meta) == 7
    assert "features" not in meta[0] and "labels" not in meta[0]
    assert {"id", "duration", "speaker", "n_labels", "n_frames", "augmentation"} <= set(meta[0])
    assert [m["id"] for m in meta] == [c[0] for c in clips["train"]]


def test_torch_dataset_and_collate(small_store, processor):
    import torch

    out, clips, _ = small_store
    ds = FeatureStore(out).torch_dataset("train", cache_shards=1)
    assert isinstance(ds, torch.utils.data.Dataset)
    assert len(ds) == 7
    item = ds[4]
    assert item["input_features"].dtype == torch.float32
    assert item["input_features"].shape == (80, N_FRAMES)
    assert item["labels"].dtype == torch.long
    ref = processor.feature_extractor(
        clips["train"][4][2], sampling_rate=SAMPLE_RATE
    ).input_features[0]
    np.testing.assert_allclose(item["input_features"].numpy(), ref, atol=F16_TOL)
    with pytest.raises(IndexError):
        ds[7]
    # Picklable (DataLoader workers) and usable through a DataLoader with the store's sampler.
    ds2 = pickle.loads(pickle.dumps(ds))
    assert torch.equal(ds2[4]["labels"], item["labels"])
    loader = torch.utils.data.DataLoader(
        ds, batch_size=3, sampler=ShardSampler(ds, seed=1), collate_fn=collate
    )
    batches = list(loader)
    assert [b["input_features"].shape[0] for b in batches] == [3, 3, 1]
    n_labels = sum(int((b["labels"] != -100).sum()) for b in batches)
    assert n_labels == sum(len(ds[i]["labels"]) for i in range(7))


def test_collate_pads_labels_with_minus_100():
    import torch

    batch = [
        {"input_features": np.zeros((80, N_FRAMES), np.float16), "labels": [1, 2, 3]},
        {"input_features": torch.ones(80, N_FRAMES), "labels": torch.tensor([4])},
    ]
    out = collate(batch)
    assert out["input_features"].shape == (2, 80, N_FRAMES)
    assert out["input_features"].dtype == torch.float32
    assert out["labels"].tolist() == [[1, 2, 3], [4, -100, -100]]
    assert collate(batch, pad_token_id=0)["labels"].tolist()[1] == [4, 0, 0]
    with pytest.raises(ValueError):
        collate([])


def test_shard_sampler_visits_each_row_once_shard_by_shard(small_store):
    out, _, _ = small_store
    ds = FeatureStore(out).torch_dataset("train")
    sampler = ShardSampler(ds, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(7))
    shards = [ds.locate(i)[0] for i in order]
    # Contiguous runs: each shard's rows come together.
    runs = [s for i, s in enumerate(shards) if i == 0 or s != shards[i - 1]]
    assert len(runs) == len(set(runs)) == 3
    sampler.set_epoch(1)
    assert sorted(sampler) == list(range(7))
    assert list(ShardSampler(ds, shuffle=False)) == list(range(7))


def test_other_config_refused_on_read_and_write(small_store, processor, tmp_path):
    out, clips, _ = small_store
    made = FeatureStore(out).config
    other = dataclasses.replace(made, normalize_text=True)
    with pytest.raises(StoreError) as err:
        FeatureStore(out, expect=other)
    message = str(err.value)
    assert made.hash() in message and other.hash() in message and "normalize_text" in message
    mels128 = dataclasses.replace(made, n_mels=128)
    with pytest.raises(StoreError, match="n_mels"):
        FeatureStore(out, expect=mels128)
    # Writing with another config into the store is refused before anything is written.
    before = sorted(p.stat().st_mtime_ns for p in out.rglob("*.parquet"))
    with pytest.raises(StoreError, match="another feature config"):
        build_store(
            ArraySource(clips),
            out,
            BuildOptions(shard_size=3, normalize_text=True, progress=False),
            processor=processor,
        )
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*.parquet")) == before
    # Other pipeline settings (here shard size) would mix two layouts: refused too.
    with pytest.raises(StoreError, match="pipeline"):
        build_store(
            ArraySource(clips), out, BuildOptions(shard_size=4, progress=False), processor=processor
        )


def test_check_processor_refuses_other_mel_bins(small_store, processor):
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    store = FeatureStore(small_store[0])
    store.check_processor(processor)  # the model the store was made for
    large_v3_like = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=processor.tokenizer
    )
    with pytest.raises(StoreError, match="n_mels: 80 != 128"):
        store.check_processor(large_v3_like)


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not a feature store"):
        FeatureStore(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a feature store"):
        build_store(
            ArraySource({"train": [("a", "hej", speechlike(1.0))]}),
            tmp_path,
            BuildOptions(progress=False),
            processor=None,  # refused before any model is loaded
        )


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    import socket
    import subprocess
    import sys

    from whisper_sv.data.store import remove_stale_tmp

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = socket.gethostname()
    folder = tmp_path / "train"
    folder.mkdir()
    stale = folder / f".shard-00001.parquet.tmp-{host}-{int(dead.stdout)}-abcd1234"
    live = folder / f".shard-00002.parquet.tmp-{host}-{os.getpid()}-abcd1234"
    other = folder / f".shard-00003.parquet.tmp-otherhost-{int(dead.stdout)}-abcd1234"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    assert remove_stale_tmp(tmp_path) == 1
    assert not stale.exists() and live.exists() and other.exists()


def test_training_stream_and_shard_sampler_shuffle_alike():
    """One shard-aware shuffle serves the sampler and the training stream: epoch e of the
    stream is the sampler's order for epoch e, each shard's rows together."""
    from whisper_sv.data.store import shard_permutation
    from whisper_sv.train.data_plan import StreamOrder

    class Rows:  # what ShardSampler reads: the shard offsets
        offsets = np.array([0, 5, 12, 20])

    sampler = ShardSampler(Rows(), seed=7)
    stream = StreamOrder(Rows.offsets, seed=7)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert order == stream.take(epoch * 20, 20)
        assert order == shard_permutation(Rows.offsets, 7, epoch).tolist()
        assert sorted(order) == list(range(20))
        shards = [int(np.searchsorted(Rows.offsets, r, side="right")) - 1 for r in order]
        assert shards == sorted(shards, key=shards.index)  # a shard's rows are consecutive
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert first != list(sampler)
    assert list(ShardSampler(Rows(), seed=7, shuffle=False)) == list(range(20))


def test_pad_labels_right_pads_with_the_ignore_id():
    from whisper_sv.data.store import pad_labels

    out = pad_labels([[1, 2, 3], [4]])
    assert out.tolist() == [[1, 2, 3], [4, -100, -100]]
    assert pad_labels([[5], [6, 7]], pad_token_id=0).tolist() == [[5, 0], [6, 7]]


def test_check_processor_refuses_another_tokenizer(small_store, processor):
    import dataclasses

    store = FeatureStore(small_store[0])
    store.config = dataclasses.replace(store.config, tokenizer="0" * 16)
    with pytest.raises(StoreError, match="another tokenizer.*rebuild the store"):
        store.check_processor(processor)
    store.config = dataclasses.replace(store.config, tokenizer="")  # older stores: not recorded
    store.check_processor(processor)


def test_labels_are_written_as_whisper_writes_a_sentence(tmp_path, processor):
    """A lowercase transcript without punctuation is labelled "Tvättar håret." after a space;
    a written sentence keeps its own form; --no-sentence-case keeps the text as given."""
    audio = speechlike(1.2, 5)
    clips = {"train": [("a", "tvättar håret", audio), ("b", "Hej då, Anna!", audio)]}
    tok = processor.tokenizer
    for case, expected in ((True, [" Tvättar håret.", " Hej då, Anna!"]), (False, None)):
        out = tmp_path / f"case-{case}"
        options = BuildOptions(progress=False, sentence_case=case)
        build_store(ArraySource(clips), out, options, processor=processor)
        rows = list(FeatureStore(out).rows("train"))
        texts = [tok.decode(r["labels"], skip_special_tokens=True) for r in rows]
        assert texts == (expected or [" tvättar håret", " Hej då, Anna!"])
        assert [r["text"] for r in rows] == [t.strip() for t in texts]


def test_a_store_made_before_the_label_choices_reads_as_made(small_store):
    """Manifests written before prefix_space and sentence_case existed hold neither: such
    a store was tokenized from the bare text, and says so."""
    from whisper_sv.data.feature_config import FeatureConfig

    out, _, _ = small_store
    config = FeatureStore(out).config.to_dict()
    old = {k: v for k, v in config.items() if k not in ("prefix_space", "sentence_case")}
    read = FeatureConfig.from_dict(old)
    assert read.prefix_space is False and read.sentence_case is False
    assert read.hash() != FeatureStore(out).config.hash()


def test_store_id_changes_with_the_labels_of_the_same_clips(tmp_path, processor):
    """Two stores of the same clips with other transcripts have the same shard names and
    rows; their ids must differ, or the encoder cache (which keeps labels) mixes them up."""
    from whisper_sv.data.store import store_id

    audio = speechlike(1.0, 7)
    ids = []
    for text in ("Ett.", "Två."):
        out = tmp_path / text
        build_store(
            ArraySource({"train": [("x", text, audio)]}),
            out,
            BuildOptions(progress=False),
            processor=processor,
        )
        ids.append(store_id(FeatureStore(out)))
    assert ids[0] != ids[1]
    out = tmp_path / "Ett."
    build_store(
        ArraySource({"train": [("x", "Ett.", audio)]}),
        out,
        BuildOptions(progress=False),
        processor=processor,
    )
    assert store_id(FeatureStore(out)) == ids[0]  # a re-run over the finished store: the same
