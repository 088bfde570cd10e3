"""What kind of model a local folder holds, from the files in it."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def is_transformers_dir(p: Path) -> bool:
    return (p / "config.json").is_file() and any(
        (p / n).is_file()
        for n in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    )


def is_ct2_dir(p: Path) -> bool:
    return (p / "model.bin").is_file()


def is_whisper_dir(p: Path) -> bool:
    """Whether ``p`` holds a Whisper model: a transformers config of ``model_type`` whisper,
    or a CTranslate2 ``model.bin`` whose header names the ``WhisperSpec``."""
    if is_transformers_dir(p):
        try:
            config = json.loads((p / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(config, dict) and config.get("model_type") == "whisper"
    if is_ct2_dir(p):
        return _ct2_spec_name(p / "model.bin") == "WhisperSpec"
    return False


def _ct2_spec_name(path: Path) -> str:
    """The spec name in a model.bin header (u32 version, u16 length, the name, a NUL); only
    the first bytes are read (ct2_format has the whole layout)."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
            if len(head) < 6:
                return ""
            (length,) = struct.unpack("<H", head[4:6])
            return f.read(length).rstrip(b"\0").decode("utf-8", "replace")
    except OSError:
        return ""
