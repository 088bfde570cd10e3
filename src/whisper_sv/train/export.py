"""CTranslate2 export of a run (or any model reference) for faster-whisper."""

from __future__ import annotations

import os
from pathlib import Path

from whisper_sv.core import run_folder as registry

__all__ = ["export_run"]


def export_run(
    run: str | os.PathLike, out: str | os.PathLike | None = None, *, quantization: str = "float16"
) -> Path:
    """CTranslate2 export of a run's ``best/`` (or of any model reference) to ``out``.

    ``out`` defaults to ``RUN/ct2`` for a run folder. faster-whisper loads the result offline.
    """
    from whisper_sv.models.conversion import export_ct2
    from whisper_sv.models.references import resolve, transformers_dir

    mref = resolve(str(run))
    if out is None:
        if mref.kind != "run":
            raise ValueError(f"{run} is not a run folder: give --out for the export")
        out = mref.path / registry.CT2
    return export_ct2(transformers_dir(mref), Path(out), quantization=quantization)
