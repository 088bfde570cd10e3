"""Shared fixtures: the real Whisper tokenizer and a tiny random Whisper built around it.

The tiny model has the real vocabulary (51,865 ids) and the real generation config, so any
code path (features, training, generate, export, faster-whisper) runs on it in seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# Tests never reach the hub: everything they load is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SV_WORDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sv-words"
# A real Common Voice sentence (a man reads "Var inte orolig, ditt jobb är lika viktigt, men du
# behöver den här."): long enough to tell the language, and Whisper base's English of it is a
# real translation, not one of the outros the speech guard drops.
CV_SENTENCE = SV_WORDS.parent / "cv-dev" / "clips" / "common_voice_sv-SE_18713247.mp3"

# Tiny model shape: small enough to build, save and load in about a second.
TINY_D_MODEL = 64
TINY_LAYERS = 2
TINY_HEADS = 2
TINY_FFN = 128


@pytest.fixture(scope="session")
def processor():
    """The real multilingual Whisper processor (bundled tokenizer + timestamp tokens, 80 mels)."""
    from whisper_sv.models.bundled import bundled_tokenizer_json
    from whisper_sv.models.processor import build_processor

    return build_processor(bundled_tokenizer_json(), n_mels=80)


def build_tiny_model(processor, seed: int = 0):
    """A random ``WhisperForConditionalGeneration`` with Whisper's real vocabulary and config."""
    import json

    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from whisper_sv.models.bundled import bundled_data_dir
    from whisper_sv.models.processor import VOCAB_SIZE, generation_config_for

    bundled = json.loads((bundled_data_dir(1) / "config.json").read_text())
    config = WhisperConfig(
        vocab_size=VOCAB_SIZE,
        num_mel_bins=80,
        d_model=TINY_D_MODEL,
        encoder_layers=TINY_LAYERS,
        decoder_layers=TINY_LAYERS,
        encoder_attention_heads=TINY_HEADS,
        decoder_attention_heads=TINY_HEADS,
        encoder_ffn_dim=TINY_FFN,
        decoder_ffn_dim=TINY_FFN,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=50257,
        bos_token_id=50257,
        eos_token_id=50257,
        decoder_start_token_id=50258,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    # Fresh layers have zero biases and unit norms; make every parameter distinct so a test
    # of any weight mapping (q/k/v splits, biases, norms) sees a swap or a loss.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("embed_positions.weight"):
                continue
            if "layer_norm" in name and name.endswith(".weight"):
                param.add_(0.1 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.copy_(0.05 * torch.randn_like(param))
    model.generation_config = generation_config_for(
        processor,
        suppress_tokens=bundled["suppress_ids"],
        begin_suppress_tokens=bundled["suppress_ids_begin"],
        lang_ids=bundled["lang_ids"],
        alignment_heads=[[TINY_LAYERS - 1, h] for h in range(TINY_HEADS)],
    )
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, processor) -> Path:
    """A transformers folder (model + processor + generation config) of a tiny random Whisper."""
    out = tmp_path_factory.mktemp("tiny-whisper")
    model = build_tiny_model(processor)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """(model, processor) loaded from ``tiny_model_dir`` with ``load_model``."""
    from whisper_sv.models.references import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_ct2_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model exported to CTranslate2 (float16) with ``export_ct2``."""
    from whisper_sv.models.conversion import export_ct2

    out = tmp_path_factory.mktemp("tiny-ct2") / "ct2"
    return export_ct2(tiny_model_dir, out)


@pytest.fixture(scope="session")
def sv_words_dir() -> Path:
    """The 164 real Swedish single-word recordings in ../shared/data/sv-words."""
    if not SV_WORDS.is_dir():
        pytest.skip(f"{SV_WORDS} not found (shared data absent)")
    return SV_WORDS


@pytest.fixture(scope="session")
def cv_sentence() -> Path:
    """CV_SENTENCE, the real recording of one Swedish sentence (skips when the data is absent)."""
    if not CV_SENTENCE.is_file():
        pytest.skip(f"{CV_SENTENCE} not found (shared data absent)")
    return CV_SENTENCE


# --------------------------------------------------------------------------- shared helpers
# Sources and stores several test modules build; import them with ``from conftest import ...``.


def speechlike(seconds: float, seed: int = 0, *, tail_silence: float = 0.0) -> np.ndarray:
    """Harmonics under a syllable-rate envelope, plus a little noise; float32 at 16 kHz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16_000)
    t = np.arange(n) / 16_000
    f0 = 110 + 60 * rng.random() + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16_000
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.random() * 6)
    audio = 0.2 * voice * envelope + 0.003 * rng.standard_normal(n)
    if tail_silence:
        audio = np.concatenate([audio, np.zeros(int(tail_silence * 16_000))])
    return audio.astype(np.float32)


class ArraySource:
    """A Source over in-memory clips: {split: [(id, sentence, audio)]}. Picklable."""

    def __init__(self, clips: dict[str, list[tuple[str, str, np.ndarray]]], name: str = "arrays"):
        self.clips = clips
        self.name = name

    def splits(self) -> list[str]:
        return list(self.clips)

    def items(self, split: str):
        for i, (cid, sentence, _) in enumerate(self.clips[split]):
            from whisper_sv.data.sources import Item

            yield Item(
                id=cid,
                split=split,
                sentence=sentence,
                audio=None,
                speaker=f"spk{i % 3}",
                meta={"index": i, "voice": "v", "gender": "female" if i % 2 else "male"},
            )

    def load(self, item) -> np.ndarray:
        return next(a for cid, _, a in self.clips[item.split] if cid == item.id)

    def describe(self) -> dict:
        return {"source": self.name, "clips": {s: len(v) for s, v in self.clips.items()}}


SENTENCES = (
    "hej på dig",
    "god morgon",
    "det regnar i dag",
    "jag heter anna",
    "tack så mycket",
    "vi ses i morgon",
    "kaffe eller te",
    "en två tre fyra",
)


@dataclass
class ToySource:
    """A tiny in-memory Source: tone + noise clips of 0.5-0.9 s, one tone per sentence."""

    name: str = "toy"
    n_train: int = 16
    n_val: int = 6
    seed: int = 0

    def splits(self) -> list[str]:
        return ["train", "validation"]

    def items(self, split: str):
        from whisper_sv.data.sources import Item

        n = self.n_train if split == "train" else self.n_val
        for i in range(n):
            sentence = SENTENCES[(i + self.seed) % len(SENTENCES)]
            yield Item(id=f"{split}-{i}", split=split, sentence=sentence, audio=None)

    def load(self, item) -> np.ndarray:
        k = int(item.id.split("-")[1])
        rng = np.random.default_rng(k + 1000 * self.seed)
        t = np.arange(int(16000 * (0.5 + 0.1 * (k % 5)))) / 16000
        f = 200.0 + 60.0 * SENTENCES.index(item.sentence)
        tone = 0.3 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(len(t))
        return tone.astype(np.float32)

    def describe(self) -> dict:
        return {"name": self.name, "n_train": self.n_train, "n_val": self.n_val, "seed": self.seed}


def make_store(out: Path, processor, **source_options) -> Path:
    """A feature store built by the real pipeline from ToySource."""
    from whisper_sv.data.features import BuildOptions, build_store

    build_store(
        ToySource(**source_options),
        out,
        BuildOptions(progress=False, shard_size=8),
        processor=processor,
    )
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: test runs share a few cores with other work, and there a 2-thread
    step of the tiny model ran 5-10x slower than a 1-thread one (threads wait on each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def own_output_store(root: Path, processor, model, n: int = 8) -> Path:
    """A store of speech-like clips whose transcripts are ``model``'s own greedy output: a
    guard the model gets right, so any change of its output is a regression."""
    from whisper_sv.data.features import BuildOptions, build_store
    from whisper_sv.train.scoring import evaluate_split

    clips = [(f"g{i}", "ett ord", speechlike(0.7 + 0.1 * i, seed=40 + i)) for i in range(n)]
    opts = BuildOptions(progress=False)
    build_store(ArraySource({"validation": clips}), root / "draft", opts, processor=processor)
    hyps = evaluate_split(
        model, root / "draft", "validation", processor=processor, max_new_tokens=16
    )
    own = [(c[0], h, c[2]) for c, h in zip(clips, hyps.hypotheses, strict=True) if h.strip()]
    assert len(own) >= n // 2, hyps.hypotheses
    build_store(ArraySource({"validation": own}), root / "own", opts, processor=processor)
    return root / "own"


# The one fast training recipe of the tests: a few steps of the tiny model on a tiny store,
# frozen encoder (cached encoder outputs), no CTranslate2 export. Tests change what they test.
FAST_TRAIN = dict(
    lr=1e-3,
    warmup_steps=1,
    batch_size=4,
    max_steps=6,
    eval_steps=3,
    save_steps=3,
    eval_limit=4,
    eval_max_new_tokens=16,
    freeze_encoder=True,
    export_ct2=False,
    keep_checkpoints=0,
)


def fast_config(**changes):
    """``TrainConfig`` of the fast recipe with ``changes`` (validated like any config)."""
    from whisper_sv.train.config import TrainConfig

    return TrainConfig(**{**FAST_TRAIN, **changes})


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, processor, tiny_model_dir) -> Path:
    """A real feature store of synthetic Swedish speech (4 train, 2 validation, 1 test clips)
    for the tiny model: what training, tuning and averaging tests train on."""
    from whisper_sv.data.features import BuildOptions, build_store
    from whisper_sv.data.sources import open_source

    out = tmp_path_factory.mktemp("tiny-store") / "store"
    source = open_source("synthetic", train=4, validation=2, test=1)
    build_store(
        source, out, BuildOptions(model=str(tiny_model_dir), progress=False), processor=processor
    )
    return out


# --------------------------------------------------------------------------- hub caches
# Hub models at a revision, offline: a hub cache in the hub client's own layout (hubcache.py)
# with a CTranslate2-only default branch and a transformers-only "subtitle" tag, as KBLab
# ships KB-Whisper's style variants.

TINY_HUB = "sv-test/whisper-tiny"  # the tiny random Whisper
BASE_HUB = "sv-test/whisper-base"  # the bundled Whisper base's weights


@dataclass(frozen=True)
class HubCache:
    """A hub cache folder and the commit each ``ORG/NAME@REF`` of it stands for."""

    path: Path  # what HF_HUB_CACHE names
    commits: dict[str, str]  # "ORG/NAME@REF" -> commit hash


def use_hub_cache(monkeypatch, hub: HubCache) -> HubCache:
    """Make ``hub`` the hub cache of this test and of the processes it starts."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(hub.path))  # child processes (tune's trials)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub.path))  # read once at import
    return hub


@pytest.fixture(scope="session")
def tiny_hub_cache(tmp_path_factory, tiny_model_dir, tiny_ct2_dir) -> HubCache:
    from hubcache import add_revision, model_files

    path = tmp_path_factory.mktemp("hub")
    commits = {
        f"{TINY_HUB}@main": add_revision(path, TINY_HUB, model_files(tiny_ct2_dir), ["main"]),
        f"{TINY_HUB}@subtitle": add_revision(
            path, TINY_HUB, model_files(tiny_model_dir), ["subtitle"]
        ),
    }
    return HubCache(path, commits)


@pytest.fixture
def tiny_hub(tiny_hub_cache, monkeypatch, tmp_path) -> HubCache:
    """The tiny hub cache in use, with an empty whisper-sv cache (conversions start afresh)."""
    monkeypatch.setenv("WHISPER_SV_CACHE", str(tmp_path / "whisper-sv-cache"))
    return use_hub_cache(monkeypatch, tiny_hub_cache)


@pytest.fixture(scope="session")
def base_hub_cache(tmp_path_factory) -> HubCache:
    """BASE_HUB's default branch: the bundled weights in CTranslate2 only."""
    from hubcache import add_revision, model_files

    from whisper_sv.models.conversion import bundled_ct2_dir

    path = tmp_path_factory.mktemp("hub-base")
    commit = add_revision(path, BASE_HUB, model_files(bundled_ct2_dir()), ["main"])
    return HubCache(path, {f"{BASE_HUB}@main": commit})


@pytest.fixture(scope="session")
def base_hub_subtitle(base_hub_cache) -> HubCache:
    """BASE_HUB with a "subtitle" tag too: the bundled weights in transformers only (the
    bundled model's conversion, made once per whisper-sv cache)."""
    from hubcache import add_revision, model_files

    from whisper_sv.models.references import transformers_dir

    hf = transformers_dir("bundled:base")
    files = model_files(hf, skip=["ct2_config.json"])  # our converter's note, not a hub file
    commit = add_revision(base_hub_cache.path, BASE_HUB, files, ["subtitle"])
    return HubCache(base_hub_cache.path, {**base_hub_cache.commits, f"{BASE_HUB}@subtitle": commit})


class Trickle:
    """A local HTTP server whose every path sends a WAV's first bytes, then one byte a second
    (a link that never times out a read); ``gone`` is set when the client hangs up."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.gone = threading.Event()
        self.started = threading.Event()
        trickle = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.send_header("Content-Length", str(1_000_000))
                self.end_headers()
                trickle.started.set()
                try:
                    self.wfile.write(b"RIFF")
                    for _ in range(3_600):  # an hour, unless the client goes first
                        self.wfile.flush()
                        if trickle.closed.wait(1.0):
                            return
                        self.wfile.write(b"\0")
                except OSError:  # the client went away
                    trickle.gone.set()

            def log_message(self, *args) -> None:
                pass

        self.closed = threading.Event()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def trickle():
    """A :class:`Trickle` server for one test."""
    server = Trickle()
    yield server
    server.close()
