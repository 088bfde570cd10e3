"""Packing short clips into 30 s windows: the plan, the window's log-mel against Whisper's
extractor on the joined audio, its label, and a packed training run on the tiny model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

SENTENCES = ("hej på dig", "god morgon", "det regnar i dag", "tack så mycket", "vi ses")


@dataclass
class ChirpSource:
    """Clips of 0.6-2.2 s: a rising tone plus noise, different loudness per clip (so the
    clips' log-mel floors differ, as real recordings' do)."""

    name: str = "chirps"
    n_train: int = 24
    n_val: int = 4

    def splits(self) -> list[str]:
        return ["train", "validation"]

    def items(self, split: str):
        from whisper_sv.data.sources import Item

        n = self.n_train if split == "train" else self.n_val
        for i in range(n):
            yield Item(id=f"{split}-{i}", split=split, sentence=SENTENCES[i % 5], audio=None)

    def load(self, item) -> np.ndarray:
        k = int(item.id.split("-")[1]) + (100 if item.id.startswith("validation") else 0)
        rng = np.random.default_rng(k)
        n = int(16000 * (0.6 + 0.4 * (k % 5)))
        t = np.arange(n) / 16000
        f = 150.0 + 80.0 * (k % 5) + 200.0 * t
        gain = 0.05 + 0.1 * (k % 3)
        clip = gain * np.sin(2 * np.pi * f * t) + 0.005 * rng.standard_normal(n)
        return clip.astype(np.float32)

    def describe(self) -> dict:
        return {"name": self.name, "n_train": self.n_train, "n_val": self.n_val}


@pytest.fixture(scope="module")
def chirp_store(tmp_path_factory, processor) -> Path:
    from whisper_sv.data.features import BuildOptions, build_store

    out = tmp_path_factory.mktemp("packing") / "store"
    build_store(
        ChirpSource(), out, BuildOptions(progress=False, shard_size=10), processor=processor
    )
    return out


# --------------------------------------------------------------------------- plan


def test_plan_keeps_every_clip_once_within_the_limits():
    from whisper_sv.data.packing import plan_windows

    rng = np.random.default_rng(0)
    frames = rng.integers(100, 1400, size=200)
    labels = rng.integers(8, 60, size=200)
    windows = plan_windows(frames, labels, max_clips=6, seed=3, max_labels=200)
    flat = [i for w in windows for i in w]
    assert sorted(flat) == list(range(200))
    for w in windows:
        assert 1 <= len(w) <= 6
        assert len(w) == 1 or sum(frames[i] for i in w) <= 3000
        assert len(w) == 1 or sum(labels[i] - 5 for i in w) + 5 <= 200
    # Mostly full: far fewer windows than clips, and none of two that would fit in one.
    assert len(windows) < 200 / 2
    assert windows == plan_windows(frames, labels, max_clips=6, seed=3, max_labels=200)
    assert windows != plan_windows(frames, labels, max_clips=6, seed=4, max_labels=200)


def test_plan_never_spans_two_shards_and_one_clip_is_off():
    from whisper_sv.data.packing import plan_windows

    frames, labels = [300] * 25, [20] * 25
    windows = plan_windows(frames, labels, max_clips=4, seed=0, shard_offsets=[0, 10, 20, 25])
    for w in windows:
        assert len({i // 10 for i in w}) == 1
    assert [len(w) for w in plan_windows(frames, labels, max_clips=1, seed=0)] == [1] * 25
    with pytest.raises(ValueError, match="max_clips must be >= 1"):
        plan_windows(frames, labels, max_clips=0, seed=0)
    with pytest.raises(ValueError, match="shard_offsets"):
        plan_windows(frames, labels, max_clips=2, seed=0, shard_offsets=[0, 10])


# --------------------------------------------------------------------------- windows


def test_window_matches_whisper_extractor_on_the_joined_audio(chirp_store, processor):
    from whisper_sv.data.packing import PackedRows
    from whisper_sv.data.store import FeatureStore

    store = FeatureStore(chirp_store)
    clips = store.torch_dataset("train")
    meta = store.metadata("train")
    window = [0, 1, 2, 4]  # clips of different loudness: the loudest sets the floor
    rows = PackedRows(clips, [window], [m["text"] for m in meta], processor.tokenizer)
    item = rows[0]

    source = ChirpSource()
    items = {it.id: it for it in source.items("train")}
    audio = np.concatenate([source.load(items[meta[i]["id"]]) for i in window])
    expected = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="np")[
        "input_features"
    ][0]
    got = item["input_features"].numpy()
    assert got.shape == expected.shape == (80, 3000)
    # Away from the joins (each clip's STFT frames are framed on their own) and the stored
    # float16 rounding, the window is the extractor's log-mel of the joined audio.
    joins = np.cumsum([round(meta[i]["duration"] * 100) for i in window])
    near = np.zeros(3000, dtype=bool)
    for j in [0, *joins]:
        near[max(0, j - 3) : j + 3] = True
    diff = np.abs(got - expected)
    assert diff[:, ~near].max() < 0.02, diff[:, ~near].max()
    # The padding is the joined audio's floor, not one clip's.
    assert got[0, 2999] == pytest.approx(expected[0, 2999], abs=1e-2)

    labels = item["labels"].tolist()
    tok = processor.tokenizer
    assert labels[:4] == clips[0]["labels"][:4].tolist()  # the prompt, once
    assert labels[-1] == tok.convert_tokens_to_ids("<|endoftext|>")
    text = tok.decode(labels, skip_special_tokens=True)
    # The joined texts after a space, as Whisper writes (the first word's token has it too).
    assert text == " " + " ".join(meta[i]["text"] for i in window)
    assert tok.convert_ids_to_tokens(labels[4]).startswith("Ġ")


# --------------------------------------------------------------------------- training


def _packed_config(tmp_path: Path, **changes):
    """A short decoder-only run on packed windows of the chirp store (``changes``: more)."""
    from whisper_sv.train.run import TrainConfig

    base = dict(
        lr=1e-3,
        warmup_steps=1,
        batch_size=2,
        eval_steps=100,
        save_steps=100,
        eval_limit=2,
        eval_max_new_tokens=8,
        freeze_encoder=True,
        export_ct2=False,
        cache_dir=str(tmp_path / "cache"),
    )
    return TrainConfig(**{**base, **changes})


def test_packed_training_uses_windows_and_learns(chirp_store, tiny_model_dir, tmp_path):
    from whisper_sv.train.run import TrainConfig, train

    cfg = _packed_config(tmp_path, epochs=3, max_steps=0, pack_clips=4)
    run = tmp_path / "run"
    result = train(chirp_store, run, model=str(tiny_model_dir), config=cfg, progress=False)
    # The encoder cache holds one entry per window, and the plan is recorded with it.
    keys = [json.loads(p.read_text())["key"] for p in (tmp_path / "cache").glob("*/done.json")]
    windows = next(k["windows"] for k in keys if k["split"] == "train")
    assert sorted(i for w in windows for i in w) == list(range(24))
    assert all(1 <= len(w) <= 4 for w in windows) and len(windows) < 12
    # Epochs count windows: 3 passes over them at batch 2.
    assert result.max_steps == -(-3 * len(windows) // 2)
    assert result.losses[-1] < result.losses[0]
    with pytest.raises(ValueError, match="pack_clips must be >= 1"):
        TrainConfig(pack_clips=0)


def test_timestamped_windows_place_each_clip_between_its_start_and_end(chirp_store, processor):
    from whisper_sv.data.packing import PackedRows
    from whisper_sv.data.store import FeatureStore

    store = FeatureStore(chirp_store)
    clips = store.torch_dataset("train")
    meta = store.metadata("train")
    texts = [m["text"] for m in meta]
    windows = [[0, 1, 2], [3, 4], [5, 6, 7]]
    plain = PackedRows(clips, windows, texts, processor.tokenizer)
    stamped = PackedRows(clips, windows, texts, processor.tokenizer, timestamp_share=1.0)
    half = PackedRows(clips, windows * 20, texts, processor.tokenizer, timestamp_share=0.5)
    assert not plain.timestamped.any() and stamped.timestamped.all()
    assert 0.25 < half.timestamped.mean() < 0.75  # a seeded draw per window

    tok = processor.tokenizer
    begin = tok.convert_tokens_to_ids("<|0.00|>")
    nots = tok.convert_tokens_to_ids("<|notimestamps|>")
    labels = stamped[0]["labels"].tolist()
    assert nots not in labels and nots in plain[0]["labels"].tolist()
    assert labels[:3] == plain[0]["labels"].tolist()[:3]  # <|sot|><|sv|><|transcribe|>
    stamps = [t for t in labels if begin <= t <= begin + 1500]
    assert len(stamps) == 2 * len(windows[0])  # a start and an end per clip
    times = [(t - begin) * 0.02 for t in stamps]
    assert times[0] == 0.0 and times == sorted(times)  # they only move forward
    # Each clip spans its duration (to the 0.02 s step), and the next starts where it ended.
    for k, i in enumerate(windows[0]):
        assert times[2 * k + 1] - times[2 * k] == pytest.approx(meta[i]["duration"], abs=0.03)
    # The text between the timestamps is the clips' texts, in order.
    assert (
        tok.decode(labels, skip_special_tokens=True).split()
        == " ".join(texts[i] for i in windows[0]).split()
    )


def test_translation_windows_are_single_clips_after_their_shards_windows():
    from whisper_sv.data.packing import add_single_windows

    offsets = [0, 5, 9]  # two shards: clips 0-4 and 5-8
    windows = [[3, 1], [0, 2, 4], [7, 5], [8, 6]]
    out, added = add_single_windows(windows, offsets, [6, 2, 4])
    assert [out[i] for i in added] == [[2], [4], [6]]
    # Every old window is kept, and windows of one shard stay together.
    assert sorted(map(tuple, out)) == sorted(map(tuple, windows + [[2], [4], [6]]))
    shards = [0 if w[0] < 5 else 1 for w in out]
    assert shards == sorted(shards)
    assert add_single_windows(windows, offsets, []) == (windows, [])


def test_prompted_windows_begin_with_the_previous_windows_text(chirp_store, processor):
    from whisper_sv.data.feature_config import MAX_DECODER_POSITIONS
    from whisper_sv.data.packing import PackedRows
    from whisper_sv.data.store import FeatureStore

    store = FeatureStore(chirp_store)
    clips = store.torch_dataset("train")
    texts = [m["text"] for m in store.metadata("train")]
    windows = [[0, 1, 2], [3, 4], [5, 6, 7], [10, 11], [12]]  # shards: clips 0-9, 10-19, ...
    rows = PackedRows(clips, windows, texts, processor.tokenizer, prompt_share=1.0)
    plain = PackedRows(clips, windows, texts, processor.tokenizer)
    assert list(rows.offsets[:3]) == [0, 3, 5]
    tok = processor.tokenizer
    prev, sot = tok.convert_tokens_to_ids(["<|startofprev|>", "<|startoftranscript|>"])
    for w in range(len(windows)):
        labels, bare = rows[w]["labels"].tolist(), plain[w]["labels"].tolist()
        if w in (0, 3):  # the first window of a shard has no text before it
            assert labels == bare
            continue
        start = labels.index(sot)
        assert labels[0] == prev and labels[start:] == bare
        assert tok.decode(labels[1:start]).strip() == " ".join(texts[i] for i in windows[w - 1])
    # A long previous text keeps its last 223 tokens, and prompt + label fit the decoder.
    long_texts = list(texts)
    long_texts[0] = " ".join(["hej på dig"] * 200)
    long = PackedRows(clips, windows, long_texts, processor.tokenizer, prompt_share=1.0)
    labels = long[1]["labels"].tolist()
    assert labels.index(sot) == 1 + 223 and len(labels) <= MAX_DECODER_POSITIONS
    # A seeded draw per window, apart from the timestamps' draw.
    half = PackedRows(clips, windows * 20, texts, tok, prompt_share=0.5, timestamp_share=0.5)
    assert 0.25 < half.prompted.mean() < 0.75
    assert (half.prompted != half.timestamped).any()


def test_decoder_io_skips_the_prompt_and_matches_the_models_shift(processor):
    import torch
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    from whisper_sv.data.store import pad_labels
    from whisper_sv.train.scoring import decoder_io, strip_sot

    tok = processor.tokenizer
    prev, sot, sv, tr, nots, eot = tok.convert_tokens_to_ids(
        [
            "<|startofprev|>",
            "<|startoftranscript|>",
            "<|sv|>",
            "<|transcribe|>",
            "<|notimestamps|>",
            "<|endoftext|>",
        ]
    )
    text = tok.encode(" god morgon", add_special_tokens=False)
    before = tok.encode(" hej på dig", add_special_tokens=False)
    plain = [sot, sv, tr, nots, *text, eot]
    prompted = [prev, *before, *plain]
    # Without prompts: exactly what the model's own shift of the SOT-less labels gives.
    labels = pad_labels([plain, plain[:-2] + [eot]])
    io = decoder_io(labels, sot, eot)
    stripped = strip_sot(labels, sot)
    assert torch.equal(io["labels"], stripped)
    assert torch.equal(io["decoder_input_ids"], shift_tokens_right(stripped, eot, sot))
    # With one: the decoder reads the prompt, and only the transcript is trained.
    io = decoder_io(pad_labels([prompted, plain]), sot, eot)
    assert io["decoder_input_ids"][0].tolist() == prompted[:-1]
    trained = [t for t in io["labels"][0].tolist() if t != -100]
    assert trained == plain[1:]
    assert io["labels"][1].tolist()[: len(plain) - 1] == plain[1:]


def test_prompted_training_reads_the_prompt_but_trains_only_the_transcript(
    chirp_store, tiny_model, tmp_path
):
    """The loss of a prompted window counts the same targets as the bare window's, and the
    prompt changes it (the decoder attends to it); a run with prompts on every window trains."""
    import torch

    from whisper_sv.data.packing import PackedRows
    from whisper_sv.data.store import FeatureStore, pad_labels
    from whisper_sv.train.scoring import decoder_io

    model, processor = tiny_model
    store = FeatureStore(chirp_store)
    clips = store.torch_dataset("train")
    texts = [m["text"] for m in store.metadata("train")]
    windows = [[0, 1], [2, 3]]
    tok = processor.tokenizer
    sot, eot = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|endoftext|>"])
    prompted = PackedRows(clips, windows, texts, tok, prompt_share=1.0)[1]
    bare = PackedRows(clips, windows, texts, tok)[1]
    hidden = torch.randn(1, 1500, model.config.d_model, generator=torch.Generator().manual_seed(0))
    target_logits, counts = [], []
    model.eval()
    with torch.no_grad():
        for item in (prompted, bare):
            io = decoder_io(pad_labels([item["labels"]]), sot, eot)
            scored = io["labels"] != -100
            counts.append(int(scored.sum()))
            logits = model(encoder_outputs=(hidden,), use_cache=False, **io).logits
            target_logits.append(logits[scored])
    assert counts[0] == counts[1] == len(bare["labels"]) - 1
    # The prompt changes the prediction of every target: compared on the logits, since the
    # tiny random model's mean loss moves by as little as 1e-5 of itself.
    change = (target_logits[0] - target_logits[1]).abs().amax(dim=-1)
    assert bool((change > 1e-3).all()), change


def test_packed_training_with_previous_text_prompts(chirp_store, tiny_model_dir, tmp_path):
    from whisper_sv.train.run import TrainConfig, train

    cfg = _packed_config(tmp_path, max_steps=12, pack_clips=2, prompt_share=1.0)
    result = train(
        chirp_store, tmp_path / "run", model=str(tiny_model_dir), config=cfg, progress=False
    )
    assert all(np.isfinite(result.losses)) and result.losses[-1] < result.losses[0]
    keys = [json.loads(p.read_text())["key"] for p in (tmp_path / "cache").glob("*/done.json")]
    assert any(k.get("prompt_share") == 1.0 for k in keys if k["split"] == "train")
    with pytest.raises(ValueError, match="prompt_share must be in"):
        TrainConfig(prompt_share=1.5)
