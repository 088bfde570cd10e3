"""The run folder: everything one training run leaves behind, written so a crash never corrupts it.

Layout of ``RUN/``::

    config.yaml          everything the run used (model reference, store path + hash, options)
    metrics.csv          Step, Training Loss, Validation Loss, WER, CER (one row per evaluation)
    metrics.md           the same table in Markdown
    curves.png           loss curves and WER against the step
    checkpoints/step-00000500/   model weights, optimizer, scheduler, RNG, data position, metrics
    best/                transformers folder of the model the run hands on: the guarded
                         selection (train/selection.py): the best validation score among the
                         models whose real-speech guards held, or a WiSE-FT mix with the start
                         model; the start model itself when every fine-tuned one regressed
    guards.json          what the guards said about the run and best/ (runs with guards)
    model_card.md        data, hours, settings and the WER table
    ct2/                 CTranslate2 export of best/ (what faster-whisper loads)

A folder is a run once it has ``config.yaml`` (written before the model loads), and a run
with a model to use once it also has ``best/``: :func:`is_run_folder` decides both, for every
caller (training's resume, model references, the app's run list, translation's start model).

What the tables, curves and card say is :mod:`whisper_sv.core.run_metrics`; this module is
where they go and how they are written.

Every folder (checkpoint, ``best/``) is written into a temporary sibling and renamed into
place, and every file is written to ``*.tmp`` and renamed: a ``kill -9`` at any moment leaves
either the old or the new version, never half of one. Leftovers of a killed write are removed
by :meth:`RunFolder.recover`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from whisper_sv.core.fsutil import atomic_write_text
from whisper_sv.core.run_metrics import COLUMNS as COLUMNS  # re-exported
from whisper_sv.core.run_metrics import MetricsRow as MetricsRow  # re-exported
from whisper_sv.core.run_metrics import metrics_csv, metrics_markdown, plot_curves
from whisper_sv.core.run_metrics import model_card as model_card  # re-exported
from whisper_sv.core.run_metrics import read_metrics_csv as read_metrics_csv  # re-exported

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_CSV = "metrics.csv"
METRICS_MD = "metrics.md"
CURVES_PNG = "curves.png"
CHECKPOINTS = "checkpoints"
BEST = "best"
MODEL_CARD = "model_card.md"
CT2 = "ct2"
STATE_FILE = "state.json"  # written last into a checkpoint: a checkpoint without it is ignored

_CKPT_RE = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint folder."""

    path: Path
    step: int


write_text_atomic = atomic_write_text  # the name callers know


def is_run_folder(path: str | os.PathLike, *, with_model: bool = True) -> bool:
    """Whether ``path`` is a training run folder: it holds ``config.yaml`` and, with
    ``with_model`` (the default), ``best/`` (a run has it from its first evaluation on, so a
    run without it has no model to load yet; a resume needs only ``config.yaml``)."""
    p = Path(path)
    if not (p / CONFIG_FILE).is_file():
        return False
    return not with_model or (p / BEST).is_dir()


class RunFolder:
    """Reader and writer of one run folder's state: its config, checkpoints and ``best/``
    (see the module docstring for the layout); its reports are :attr:`reports`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    # ---------------------------------------------------------------- paths

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def best_dir(self) -> Path:
        return self.path / BEST

    @property
    def ct2_dir(self) -> Path:
        return self.path / CT2

    def is_run(self) -> bool:
        """Whether the folder holds a run, finished or not (its ``config.yaml``)."""
        return is_run_folder(self.path, with_model=False)

    @property
    def reports(self) -> RunReports:
        """Its metrics tables, curves and model card."""
        return RunReports(self.path)

    # ---------------------------------------------------------------- config

    def read_config(self) -> dict[str, Any]:
        data = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{self.config_path} is not a run config (expected a mapping)")
        return data

    def write_config(self, data: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        write_text_atomic(self.config_path, text)

    # ---------------------------------------------------------------- recovery

    def recover(self) -> None:
        """Finish or undo what a killed process left: temporary folders/files, a moved ``best/``.

        ``best/`` is replaced in two renames (old aside, new in): if the process died between
        them, the old one is put back.
        """
        if not self.path.is_dir():
            return
        for parent in (self.path, self.checkpoints_dir):
            if not parent.is_dir():
                continue
            for p in parent.iterdir():
                if p.name.startswith(".") and ".tmp-" in p.name:
                    log.info("removing %s left by an interrupted write", p)
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
        olds = sorted(self.path.glob(f".{BEST}.old-*"))
        for old in olds:
            if not self.best_dir.exists():
                os.replace(old, self.best_dir)
            else:
                shutil.rmtree(old, ignore_errors=True)

    # ---------------------------------------------------------------- checkpoints

    def checkpoints(self) -> list[Checkpoint]:
        """Complete checkpoints (those with ``state.json``), oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for p in self.checkpoints_dir.iterdir():
            m = _CKPT_RE.match(p.name)
            if m and p.is_dir() and (p / STATE_FILE).is_file():
                found.append(Checkpoint(path=p, step=int(m.group(1))))
        return sorted(found, key=lambda c: c.step)

    def latest_checkpoint(self) -> Checkpoint | None:
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None

    def write_checkpoint(
        self, step: int, write: Callable[[Path], None], *, keep: int = 0
    ) -> Checkpoint:
        """Write a checkpoint for ``step`` with ``write(tmp_dir)``, rename it into place, prune.

        ``write`` must put ``state.json`` last. ``keep`` > 0 deletes all but the newest
        ``keep`` checkpoints once the new one is in place.
        """
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        final = self.checkpoints_dir / f"step-{step:08d}"
        tmp = self.checkpoints_dir / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            write(tmp)
            if not (tmp / STATE_FILE).is_file():
                raise RuntimeError(f"checkpoint writer left no {STATE_FILE}")
            _replace_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if keep > 0:
            for old in self.checkpoints()[:-keep]:
                shutil.rmtree(old.path, ignore_errors=True)
        return Checkpoint(path=final, step=step)

    # ---------------------------------------------------------------- best

    def write_best(self, write: Callable[[Path], None]) -> Path:
        """Replace ``best/`` with what ``write(tmp_dir)`` puts into a temporary folder."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{BEST}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            write(tmp)
            _replace_dir(tmp, self.best_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.best_dir


class RunReports:
    """What a run reports about itself, written next to its model: ``metrics.csv``,
    ``metrics.md``, ``curves.png`` and ``model_card.md`` (their contents are
    :mod:`whisper_sv.core.run_metrics`'). Apart from :class:`RunFolder` because they are views,
    rewritten whole from rows the trainer keeps; the model, checkpoints and config are state."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def read_metrics(self) -> list[MetricsRow]:
        return read_metrics_csv(self.path / METRICS_CSV)

    def write_metrics(self, rows: Iterable[MetricsRow]) -> None:
        """Rewrite ``metrics.csv`` and ``metrics.md`` from ``rows``.

        The whole table is rewritten each time (it is a few hundred rows at most), so a row
        is never duplicated or half-written, and a resume can drop rows past its checkpoint.
        """
        rows = sorted(rows, key=lambda r: r.step)
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path / METRICS_CSV, metrics_csv(rows))
        write_text_atomic(self.path / METRICS_MD, metrics_markdown(rows))

    def write_curves(self, rows: Sequence[MetricsRow], title: str = "") -> Path | None:
        return plot_curves(rows, self.path / CURVES_PNG, title=title)

    def write_model_card(self, text: str) -> Path:
        path = self.path / MODEL_CARD
        write_text_atomic(path, text)
        return path


def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``; an existing ``dst`` is moved aside first, then removed.

    ``os.replace`` cannot overwrite a non-empty folder, so this takes two renames; the
    ``.NAME.old-*`` folder it leaves if killed between them is restored by ``recover``.
    """
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
