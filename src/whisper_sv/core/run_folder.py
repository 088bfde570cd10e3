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

Every folder (checkpoint, ``best/``) is written into a temporary sibling and renamed into
place, and every file is written to ``*.tmp`` and renamed: a ``kill -9`` at any moment leaves
either the old or the new version, never half of one. Leftovers of a killed write are removed
by :meth:`RunFolder.recover`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from whisper_sv.core.fsutil import atomic_write_text, temp_name

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

COLUMNS = ("Step", "Training Loss", "Validation Loss", "WER", "CER")
_CKPT_RE = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class MetricsRow:
    """One line of the metrics table (losses are mean token cross-entropy, rates percent)."""

    step: int  # optimizer steps done when the row was written
    train_loss: float | None  # mean training loss since the previous row
    val_loss: float | None  # validation loss (None when the store has no validation split)
    wer: float | None  # validation WER, percent, normalised text
    cer: float | None  # validation CER, percent, normalised text
    # Further columns after CER, by name: the real-speech guards ("lexin WER", "lexin CER",
    # "lexin translate chrF"; guards.py). Same names in every row of one run.
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "wer": self.wer,
            "cer": self.cer,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetricsRow:
        return cls(
            step=int(d["step"]),
            train_loss=d.get("train_loss"),
            val_loss=d.get("val_loss"),
            wer=d.get("wer"),
            cer=d.get("cer"),
            extra={str(k): float(v) for k, v in (d.get("extra") or {}).items()},
        )


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint folder."""

    path: Path
    step: int


write_text_atomic = atomic_write_text  # the name callers know


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def _num(text: str) -> float | None:
    return float(text) if text.strip() else None


def extra_columns(rows: Sequence[MetricsRow]) -> list[str]:
    """The extra (guard) column names of ``rows``, in order of first appearance."""
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r.extra))
    return list(names)


def _cells(r: MetricsRow, extra: Sequence[str]) -> list[str]:
    cells = [_fmt(r.train_loss, 4), _fmt(r.val_loss, 4), _fmt(r.wer, 2), _fmt(r.cer, 2)]
    return [str(r.step), *cells, *(_fmt(r.extra.get(c), 2) for c in extra)]


def metrics_csv(rows: Sequence[MetricsRow]) -> str:
    """The metrics table as CSV text (header ``Step,Training Loss,Validation Loss,WER,CER``
    and then one column per guard value)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    extra = extra_columns(rows)
    w.writerow([*COLUMNS, *extra])
    for r in rows:
        w.writerow(_cells(r, extra))
    return buf.getvalue()


def metrics_markdown(rows: Sequence[MetricsRow]) -> str:
    """The metrics table in Markdown, the layout of the Hugging Face Trainer's model cards."""
    extra = extra_columns(rows)
    header = [*COLUMNS, *extra]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("-----:" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(c or "-" for c in _cells(r, extra)) + " |")
    return "\n".join(lines) + "\n"


def read_metrics_csv(path: Path) -> list[MetricsRow]:
    """Rows of a ``metrics.csv`` (empty list when the file does not exist)."""
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        names = tuple(reader.fieldnames or ())
        if names[: len(COLUMNS)] != COLUMNS:
            raise ValueError(f"{path}: columns {list(names)}, expected {list(COLUMNS)} first")
        extra = names[len(COLUMNS) :]
        return [
            MetricsRow(
                step=int(row["Step"]),
                train_loss=_num(row["Training Loss"]),
                val_loss=_num(row["Validation Loss"]),
                wer=_num(row["WER"]),
                cer=_num(row["CER"]),
                extra={c: v for c in extra if (v := _num(row[c] or "")) is not None},
            )
            for row in reader
        ]


def plot_curves(rows: Sequence[MetricsRow], path: Path, title: str = "") -> Path | None:
    """Loss curves (training, validation) and WER/CER against the step, as a PNG.

    Returns None (and writes nothing) when there is no row to plot.
    """
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    def series(attr: str) -> tuple[list[int], list[float]]:
        pts = [(r.step, getattr(r, attr)) for r in rows if getattr(r, attr) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    # Segment counts of long-form guards are in the table, not on the percent axis.
    guard_cols = [c for c in extra_columns(rows) if not c.endswith((" CER", " segments"))]
    panels = 3 if guard_cols else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), constrained_layout=True)
    ax_loss, ax_wer = axes[0], axes[1]
    for attr, label in (("train_loss", "training loss"), ("val_loss", "validation loss")):
        xs, ys = series(attr)
        if xs:
            ax_loss.plot(xs, ys, marker="o", label=label)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    for attr, label in (("wer", "WER"), ("cer", "CER")):
        xs, ys = series(attr)
        if xs:
            ax_wer.plot(xs, ys, marker="o", label=label)
    ax_wer.set_xlabel("step")
    ax_wer.set_ylabel("percent (validation)")
    ax_wer.legend()
    ax_wer.grid(alpha=0.3)
    if guard_cols:
        # Real-speech guards: WER (lower is better) and translate chrF (higher is better).
        ax = axes[2]
        for col in guard_cols:
            pts = [(r.step, r.extra[col]) for r in rows if col in r.extra]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=col)
        ax.set_xlabel("step")
        ax.set_ylabel("real-speech guards (WER %, chrF)")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    tmp = temp_name(path, ".png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def is_run_folder(path: str | os.PathLike, *, with_model: bool = True) -> bool:
    """Whether ``path`` is a training run folder: it holds ``config.yaml`` and, with
    ``with_model`` (the default), ``best/`` (a run has it from its first evaluation on, so a
    run without it has no model to load yet; a resume needs only ``config.yaml``)."""
    p = Path(path)
    if not (p / CONFIG_FILE).is_file():
        return False
    return not with_model or (p / BEST).is_dir()


class RunFolder:
    """Reader and writer of one run folder (see the module docstring for the layout)."""

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

    # ---------------------------------------------------------------- metrics

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


def model_card(
    *,
    model: str,
    store: str,
    data: dict[str, Any],
    settings: dict[str, Any],
    rows: Sequence[MetricsRow],
    best_step: int | None,
    best_wer: float | None,
    language: str = "sv",
) -> str:
    """``model_card.md``: what was trained on what, with which settings, and how well.

    ``data``: per-split clip counts and hours (``{"train": {"clips": 120, "hours": 0.2}}``).
    """
    lines = [
        "---",
        f"language: {language}",
        "library_name: transformers",
        "tags: [whisper, automatic-speech-recognition, whisper-sv]",
        f"base_model: {model}",
        "---",
        "",
        f"# Whisper fine-tuned for Swedish ({Path(model).name or model})",
        "",
        f"Fine-tuned from `{model}` on the feature store `{store}`.",
        "",
    ]
    if best_wer is not None:
        lines += [
            f"Best validation WER **{best_wer:.2f} %** at step {best_step} "
            "(normalised text: lower case, no punctuation; this checkpoint is `best/`).",
            "",
        ]
    lines += ["## Data", "", "| split | clips | hours |", "|---|---:|---:|"]
    for split, info in data.items():
        hours = info.get("hours")
        hours_text = f"{hours:.3g}" if isinstance(hours, (int, float)) else "-"
        lines.append(f"| {split} | {info.get('clips', '-')} | {hours_text} |")
    lines += ["", "## Training settings", "", "| option | value |", "|---|---|"]
    for key, value in settings.items():
        lines.append(f"| {key} | {value} |")
    lines += ["", "## Results", "", metrics_markdown(rows).rstrip(), ""]
    lines += [
        "## Use",
        "",
        "```",
        "whisper-sv transcribe --model RUN_FOLDER audio.wav",
        "```",
        "",
        "`ct2/` holds the CTranslate2 export that faster-whisper loads offline.",
        "",
    ]
    return "\n".join(lines)
