"""What a training run reports: the metrics table (CSV and Markdown), its curves, and the
model card's text.

These are contents, not places: :mod:`whisper_sv.core.run_folder` decides where they go in
``RUN/`` and writes them crash-safely; the tuner and the CLI read the table through here too.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whisper_sv.core.fsutil import temp_name

__all__ = [
    "COLUMNS",
    "MetricsRow",
    "extra_columns",
    "metrics_csv",
    "metrics_markdown",
    "card_path",
    "model_card",
    "plot_curves",
    "read_metrics_csv",
]

COLUMNS = ("Step", "Training Loss", "Validation Loss", "WER", "CER")


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


def format_float(value: float | None, digits: int = 2, missing: str = "") -> str:
    """``value`` with ``digits`` decimals for a table cell; ``missing`` for None or NaN (a
    metric not measured at that row: empty in CSV, so it reads back as None; "-" in Markdown)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
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
    cells = [
        format_float(r.train_loss, 4),
        format_float(r.val_loss, 4),
        format_float(r.wer, 2),
        format_float(r.cer, 2),
    ]
    return [str(r.step), *cells, *(format_float(r.extra.get(c), 2) for c in extra)]


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
    title: str | None = None,
    base_model: str | None = None,
    base_model_revision: str | None = None,
    home: str | os.PathLike | None = None,
) -> str:
    """``model_card.md``: what was trained on what, with which settings, and how well.

    ``model``: the start model as the card's first sentence names it (Markdown), ``title`` its
    short name for the heading. ``base_model``: the hub id of the start model, which the hub
    links the card to (it must be a hub model id, so a revision goes in
    ``base_model_revision``); None for a local model. ``data``: per-split clip counts and
    hours (``{"train": {"clips": 120, "hours": 0.2}}``). A card is published: the store and
    every absolute path among the settings are shown relative to ``home`` (the folder that
    holds the run) when inside it, else by their last two parts (:func:`card_path`).
    """
    from huggingface_hub import ModelCardData

    metadata = ModelCardData(
        language=language,
        library_name="transformers",
        tags=["whisper", "automatic-speech-recognition", "whisper-sv"],
        base_model=base_model,
        **({"base_model_revision": base_model_revision} if base_model_revision else {}),
    )
    base = Path(home) if home is not None else None
    lines = [
        "---",
        metadata.to_yaml().rstrip(),
        "---",
        "",
        f"# Whisper fine-tuned for Swedish ({title or model})",
        "",
        f"Fine-tuned from {model} on the feature store `{card_path(store, base)}`.",
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
        lines.append(f"| {key} | {_card_value(value, base)} |")
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


def card_path(path: str | os.PathLike, home: Path | None) -> str:
    """``path`` as a published card shows it: relative to ``home`` when inside it, else its
    last two parts (``cv-dev/manifest.tsv``: an absolute path names a folder of this machine
    only, a bare ``manifest.tsv`` says too little); relative paths as they are."""
    p = Path(path)
    if not p.is_absolute():
        return str(path)
    if home is not None:
        root = Path(os.path.abspath(home))
        if p.is_relative_to(root) and p != root:
            return p.relative_to(root).as_posix()
    return Path(*p.parts[1:][-2:]).as_posix() if len(p.parts) > 1 else p.name


def _card_value(value: Any, home: Path | None) -> Any:
    """A setting with every absolute path in it (also inside lists and mappings) shown by
    :func:`card_path`."""
    if isinstance(value, str):
        return card_path(value, home) if os.path.isabs(value) else value
    if isinstance(value, dict):
        return {k: _card_value(v, home) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_card_value(v, home) for v in value)
    return value
