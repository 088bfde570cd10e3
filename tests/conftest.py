"""Shared fixtures: the real Whisper tokenizer and a tiny random Whisper built around it.

The tiny model has the real vocabulary (51,865 ids) and the real generation config, so any
code path (features, training, generate, export, faster-whisper) runs on it in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the hub: everything they load is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SV_WORDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sv-words"

# Tiny model shape: small enough to build, save and load in about a second.
TINY_D_MODEL = 64
TINY_LAYERS = 2
TINY_HEADS = 2
TINY_FFN = 128


@pytest.fixture(scope="session")
def processor():
    """The real multilingual Whisper processor (bundled tokenizer + timestamp tokens, 80 mels)."""
    from whisper_sv import models

    return models.build_processor(models.bundled_tokenizer_json(), n_mels=80)


def build_tiny_model(processor, seed: int = 0):
    """A random ``WhisperForConditionalGeneration`` with Whisper's real vocabulary and config."""
    import json

    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from whisper_sv import models

    bundled = json.loads((models.bundled_data_dir(1) / "config.json").read_text())
    config = WhisperConfig(
        vocab_size=models.VOCAB_SIZE,
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
    model.generation_config = models.generation_config_for(
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
    """(model, processor) loaded from ``tiny_model_dir`` with ``models.load_model``."""
    from whisper_sv import models

    return models.load_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_ct2_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model exported to CTranslate2 (float16) with ``models.export_ct2``."""
    from whisper_sv import models

    out = tmp_path_factory.mktemp("tiny-ct2") / "ct2"
    return models.export_ct2(tiny_model_dir, out)


@pytest.fixture(scope="session")
def sv_words_dir() -> Path:
    """The 164 real Swedish single-word recordings in ../shared/data/sv-words."""
    if not SV_WORDS.is_dir():
        pytest.skip(f"{SV_WORDS} not found (shared data absent)")
    return SV_WORDS
