"""What kind of model a local folder holds, from the files in it."""

from __future__ import annotations

from pathlib import Path


def is_transformers_dir(p: Path) -> bool:
    return (p / "config.json").is_file() and any(
        (p / n).is_file()
        for n in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    )


def is_ct2_dir(p: Path) -> bool:
    return (p / "model.bin").is_file()
