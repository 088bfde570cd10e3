"""Models from the Hugging Face hub: the local snapshot, offline-aware."""

from __future__ import annotations

import os
from pathlib import Path

from whisper_sv.models.folders import is_ct2_dir, is_transformers_dir


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_snapshot(repo_id: str) -> Path:
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
        if hub_offline():
            raise ValueError(alternatives) from None
        try:
            path = snapshot_download(repo_id, allow_patterns=patterns)
        except Exception as e:
            raise ValueError(f"{alternatives}. Download failed: {e}") from e
    folder = Path(path)
    if not (is_transformers_dir(folder) or is_ct2_dir(folder)):
        raise ValueError(
            f"hub repo {repo_id!r} holds no Whisper model (no safetensors or model.bin)"
        )
    return folder
