"""A CTranslate2 Whisper ``model.bin`` mapped onto transformers' parameter names.

The pure part of the ct2 -> transformers conversion (numpy only): the model's shape
(``whisper_dims``) and its weights under transformers' names (``ct2_state_dict``). Writing
the transformers folder is ``models.convert_ct2_to_transformers``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["WhisperDims", "ct2_state_dict", "whisper_dims"]


@dataclass(frozen=True)
class WhisperDims:
    """Shape of a Whisper model, read from a CTranslate2 model.bin."""

    n_mels: int  # input mel bins (80, or 128 for large-v3)
    d_model: int  # hidden size
    vocab_size: int  # output tokens
    encoder_layers: int  # transformer blocks in the encoder
    decoder_layers: int  # transformer blocks in the decoder
    encoder_heads: int  # attention heads per encoder block
    decoder_heads: int  # attention heads per decoder block
    encoder_ffn_dim: int  # hidden size of the encoder MLP
    decoder_ffn_dim: int  # hidden size of the decoder MLP
    max_source_positions: int  # encoder positions (1500 = 30 s)
    max_target_positions: int  # decoder positions (448 tokens)


def _n_layers(names: Sequence[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)/")
    idx = {int(mt.group(1)) for n in names if (mt := pattern.match(n))}
    if idx != set(range(len(idx))):
        raise ValueError(f"layers under {prefix!r} are not numbered 0..N-1: {sorted(idx)}")
    return len(idx)


def whisper_dims(m: Any) -> WhisperDims:
    """The :class:`WhisperDims` of a parsed ``WhisperSpec`` model.bin (``ct2_format.Ct2Model``)."""
    names = m.names()
    conv1 = m["encoder/conv1/weight"]
    return WhisperDims(
        n_mels=int(conv1.shape[1]),
        d_model=int(conv1.shape[0]),
        vocab_size=int(m["decoder/embeddings/weight"].shape[0]),
        encoder_layers=_n_layers(names, "encoder/layer_"),
        decoder_layers=_n_layers(names, "decoder/layer_"),
        encoder_heads=int(m["encoder/num_heads"]),
        decoder_heads=int(m["decoder/num_heads"]),
        encoder_ffn_dim=int(m["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(m["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(m["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(m["decoder/position_encodings/encodings"].shape[0]),
    )


# Scalars of the spec that transformers' Whisper hard-codes; checked, not converted.
_EXPECTED_SCALARS = {
    "decoder/activation": 3,  # GELU (ctranslate2 Activation enum)
    "decoder/alibi": 0,
    "decoder/alibi_use_positive_positions": 0,  # written by newer ctranslate2 converters
    "decoder/scale_alibi": 0,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
}


class _Mapping:
    """The transformers state dict being filled from ``m``, and the variables read so far."""

    def __init__(self, m: Any, d_model: int) -> None:
        self.m = m
        self.d = d_model
        self.used: set[str] = set()
        self.sd: dict[str, np.ndarray] = {}

    def get(self, name: str) -> np.ndarray:
        """Variable ``name`` as float32 (int8/int16 weights scaled back)."""
        self.used.add(name)
        arr = self.m[name]
        scale_name = name + "_scale"
        if scale_name in self.m:  # int8/int16 weights: ctranslate2 stored round(w * scale)
            self.used.add(scale_name)
            scale = np.asarray(self.m[scale_name], dtype=np.float32)
            arr = arr.astype(np.float32)
            if scale.ndim == 0:
                return arr / scale
            return arr / scale.reshape(-1, *([1] * (arr.ndim - 1)))
        return np.asarray(arr, dtype=np.float32)

    def check_scalars(self) -> None:
        m = self.m
        for name, want in _EXPECTED_SCALARS.items():
            if name in m:
                self.used.add(name)
                if int(m[name]) != want:
                    raise ValueError(f"{name} = {int(m[name])}, Whisper needs {want}")
        self.used.update(
            n
            for n in ("encoder/num_heads", "decoder/num_heads")
            if n in m  # read by whisper_dims
        )
        # Alignment heads live in config.json too; ctranslate2 stores them here for its own use.
        self.used.update(
            n for n in ("decoder/alignment_heads", "decoder/alignment_layer") if n in m
        )

    def linear(self, dst: str, src: str) -> None:
        self.sd[f"{dst}.weight"] = self.get(f"{src}/weight")
        self.sd[f"{dst}.bias"] = self.get(f"{src}/bias")

    def norm(self, dst: str, src: str) -> None:
        self.sd[f"{dst}.weight"] = self.get(f"{src}/gamma")
        self.sd[f"{dst}.bias"] = self.get(f"{src}/beta")

    def split(self, dst: str, src: str, projs: Sequence[str]) -> None:
        """A fused projection cut into ``projs`` (q, k, v); the k bias must be zero."""
        d = self.d
        w, b = self.get(f"{src}/weight"), self.get(f"{src}/bias")
        n = len(projs)
        if w.shape != (n * d, d) or b.shape != (n * d,):
            raise ValueError(f"{src}: shape {w.shape}, expected {(n * d, d)} ({'+'.join(projs)})")
        for i, proj in enumerate(projs):
            self.sd[f"{dst}.{proj}.weight"] = w[i * d : (i + 1) * d]
            bias = b[i * d : (i + 1) * d]
            if proj == "k_proj":
                if np.any(bias != 0):
                    raise ValueError(
                        f"{src}: the k bias is not zero (max |b| {np.abs(bias).max():.3g}); "
                        "transformers' Whisper k_proj has no bias"
                    )
                continue
            self.sd[f"{dst}.{proj}.bias"] = bias

    def block(self, side: str, i: int) -> None:
        """One encoder or decoder layer."""
        src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
        self.split(
            f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj")
        )
        self.linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        self.norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        if side == "decoder":
            self.linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
            self.split(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k_proj", "v_proj"))
            self.linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
            self.norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        self.linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        self.linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        self.norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")

    def check_projection(self) -> None:
        """proj_out must equal the embeddings (transformers ties them) and have no bias."""
        proj = "decoder/projection/weight"
        tied = self.m.aliases.get(proj) == "decoder/embeddings/weight"
        embeddings = self.sd["model.decoder.embed_tokens.weight"]
        if not tied and not np.array_equal(self.get(proj), embeddings):
            raise ValueError(f"{proj} differs from the embeddings; Whisper ties them")
        self.used.add(proj)
        bias = "decoder/projection/bias"
        if bias in self.m and np.any(self.get(bias) != 0):
            raise ValueError(f"{bias} is not zero; Whisper's proj_out has no bias")


def ct2_state_dict(m: Any) -> tuple[WhisperDims, dict[str, np.ndarray]]:
    """Map a parsed CTranslate2 ``WhisperSpec`` onto transformers' parameter names (float32).

    Inverts ctranslate2's ``WhisperLoader``: fused self-attention ``linear_0`` is q,k,v; the
    cross-attention ``linear_0`` is q and ``linear_1`` is k,v; the k bias (which transformers'
    ``k_proj`` does not have) must be zero. ``proj_out`` is tied to the decoder embeddings.
    Every variable of the file is used or checked; anything else is an error.
    """
    if m.spec != "WhisperSpec":
        raise ValueError(f"not a Whisper model: model.bin holds a {m.spec}")
    if m.revision != 3:
        raise ValueError(f"WhisperSpec revision {m.revision}; only revision 3 is supported")
    dims = whisper_dims(m)
    mapping = _Mapping(m, dims.d_model)
    mapping.check_scalars()
    for side, n_layers in (("encoder", dims.encoder_layers), ("decoder", dims.decoder_layers)):
        hf = f"model.{side}"
        mapping.sd[f"{hf}.embed_positions.weight"] = mapping.get(
            f"{side}/position_encodings/encodings"
        )
        mapping.norm(f"{hf}.layer_norm", f"{side}/layer_norm")
        for i in range(n_layers):
            mapping.block(side, i)
    mapping.linear("model.encoder.conv1", "encoder/conv1")
    mapping.linear("model.encoder.conv2", "encoder/conv2")
    mapping.sd["model.decoder.embed_tokens.weight"] = mapping.get("decoder/embeddings/weight")
    mapping.check_projection()
    left = sorted(set(m.names()) - mapping.used)
    if left:
        raise ValueError(f"model.bin variables not understood (not converted): {left[:10]}")
    return dims, mapping.sd
