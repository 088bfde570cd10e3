"""What a feature store holds: :class:`FeatureConfig`, the tokenizer identity, store errors.

Below both :mod:`whisper_sv.data.store` (which reads stores) and :mod:`whisper_sv.data.features` (which
builds them), so neither reaches up into the other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from whisper_sv.core.audio import SAMPLE_RATE

__all__ = [
    "MAX_DECODER_POSITIONS",
    "MAX_PREVIOUS_TOKENS",
    "FeatureConfig",
    "StoreError",
    "tokenizer_identity",
]

MAX_DECODER_POSITIONS = 448  # Whisper's decoder context (prompt + text + <|endoftext|>)
# The most previous-text tokens after <|startofprev|> (OpenAI's and faster-whisper's cut).
MAX_PREVIOUS_TOKENS = MAX_DECODER_POSITIONS // 2 - 1


class StoreError(ValueError):
    """A feature store that cannot be used as asked (missing, damaged, other config)."""


@dataclass(frozen=True)
class FeatureConfig:
    """What the stored features and labels are; a model can train on a store only if equal."""

    n_mels: int = 80  # mel bins of the model's encoder input (80; 128 for large-v3)
    sample_rate: int = SAMPLE_RATE  # Hz the audio is resampled to before the STFT
    language: str = "sv"  # language token in the label prefix
    task: str = "transcribe"  # task token in the label prefix ("transcribe" | "translate")
    max_duration_s: float = 30.0  # longer clips are rejected (Whisper sees 30 s windows)
    max_label_tokens: int = (
        MAX_DECODER_POSITIONS  # longer label sequences are rejected (decoder positions)
    )
    normalize_text: bool = False  # tokenize text.normalize(sentence) instead of the sentence
    # Tokenize " " + text, as Whisper writes a transcript: its first text token carries the
    # leading space ("ĠDet", never "Det"). Without it every clip starts with a word piece the
    # model never emits at a word start, and a single word is spelt in such pieces only; on
    # clips of 1-5 words that is a large share of the labels, and the fine-tune learned to glue
    # words together (general Swedish: deletions 7 -> 17 WER points). Stores made before this
    # field read as False.
    prefix_space: bool = True
    # A transcript written in lowercase without punctuation ("tvättar håret", as word lists and
    # normalised corpora are) is labelled as Whisper writes a sentence ("Tvättar håret."); any
    # other is left as it is. Trained on lowercase labels, the model learned to drop capitals
    # and full stops on every kind of speech (text.sentence_case). Off by default: it helped
    # LoRA on cv-dev (44.4 vs 45.7) and hurt the whole decoder (56.4 vs 52.0), one run each
    # (docs/experiments.md, section 10). Stores made before this field read as False.
    sentence_case: bool = False
    tokenizer: str = ""  # identity of the tokenizer: tokenizer_identity() of its vocabulary

    def __post_init__(self) -> None:
        if self.n_mels not in (80, 128):
            raise ValueError(f"n_mels must be 80 or 128 (Whisper's mel bins), got {self.n_mels}")
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"sample_rate must be {SAMPLE_RATE} (Whisper's input rate)")
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', got {self.task!r}")
        if not 0 < self.max_duration_s <= 30:
            raise ValueError("max_duration_s must be in (0, 30]: Whisper's window is 30 s")
        if not 4 < self.max_label_tokens <= MAX_DECODER_POSITIONS:
            raise ValueError(
                f"max_label_tokens must be in 5..{MAX_DECODER_POSITIONS} (the decoder has {MAX_DECODER_POSITIONS} positions)"
            )

    def hash(self) -> str:
        """Short stable digest of every field (stored in the manifest and in each shard)."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> str:
        """``{n_mels=80, ..., tokenizer=ab12...} (hash 0123...)``: for error messages."""
        fields = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self).items())
        return f"{{{fields}}} (hash {self.hash()})"

    def differences(self, other: FeatureConfig) -> list[str]:
        """``["n_mels: 80 != 128", ...]`` for each field that differs."""
        a, b = dataclasses.asdict(self), dataclasses.asdict(other)
        return [f"{k}: {a[k]!r} != {b[k]!r}" for k in a if a[k] != b[k]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise StoreError(
                f"feature config has unknown field(s) {unknown}: made by a newer whisper-sv?"
            )
        # Stores written before these fields existed tokenized the text as it came.
        return cls(**{"prefix_space": False, "sentence_case": False, **dict(data)})

    @classmethod
    def from_processor(cls, processor: Any, **choices: Any) -> FeatureConfig:
        """The config a model's ``WhisperProcessor`` implies (mel bins, tokenizer), plus
        ``choices`` for the other fields (language, task, normalize_text, ...)."""
        n_mels = int(processor.feature_extractor.feature_size)
        return cls(n_mels=n_mels, tokenizer=tokenizer_identity(processor.tokenizer), **choices)


def tokenizer_identity(tokenizer: Any) -> str:
    """sha256 (16 hex) of the vocabulary in id order: equal for the same ids, whatever the
    files or classes the tokenizer was loaded from."""
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab.items(), key=lambda kv: kv[1])
    blob = "\n".join(f"{i}\t{t}" for t, i in tokens).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]
