"""Which recipe keeps general Swedish? Anti-forgetting methods as whole demo runs, side by side
(``whisper-sv experiment general``).

The demo's fine-tune improves its own held-out phrases, yet without an out-of-domain guard
it made Swedish worse for speakers it never heard (Common Voice: 44.0 -> 53.3 WER). Here each
method is a complete ``whisper-sv demo`` run: the same store, steps, seed and guards (the
out-of-domain ``cv-dev`` guard included, with the same WiSE-FT weights to choose from), so the
methods differ only in their training options and each row is what a user of that recipe
would get. Each run keeps its own folder (``STUDY/METHOD/``: ``demo.md``, ``run/``); a
finished one is reused. Results: ``STUDY/results.md`` and ``results.png``, with the error
types (substitutions, deletions, insertions, hypothesis length) on the out-of-domain set.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["GENERAL_METHODS", "GeneralRow", "read_demo", "run_general_study"]

# WiSE-FT weights every method may choose from (the guards pick one, or none).
MIXES = "interpolate=[0.2,0.3,0.4,0.5,0.6,0.7]"

# name -> (what it is, DemoOptions changes; train_set entries are TrainConfig KEY=VALUE)
# Every method but "distill" trains without the demo's default distillation.
PLAIN = {"distill": 0.0}
GENERAL_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "recipe": ("cross-entropy only (lr 1e-4, whole decoder)", {**PLAIN, "train_set": (MIXES,)}),
    "lower-lr": ("lr 3e-5 instead of 1e-4", {**PLAIN, "lr": 3e-5, "train_set": (MIXES,)}),
    "l2sp": (
        "L2-SP penalty 0.1 toward the start weights",
        {**PLAIN, "train_set": (MIXES, "l2sp=0.1")},
    ),
    "distill": (
        "LwF: half the loss is the KL to the start model (T = 2; the demo's default)",
        {"distill": 0.5, "distill_temperature": 2.0, "train_set": (MIXES,)},
    ),
    "top-layers": (
        "only the top 2 decoder layers and layer norms trained",
        {**PLAIN, "train_set": (MIXES, "decoder_top_layers=2")},
    ),
}


@dataclass(frozen=True)
class GeneralRow:
    """One method's demo run, read back from its ``demo.json``."""

    name: str
    description: str
    synthetic: float  # WER %, synthetic test (unseen voices)
    general: float | None  # WER %, the out-of-domain set (cv-dev)
    general_interval: tuple[float, float] | None  # 95% interval of its change, WER points
    in_domain: dict[str, float]  # held-out in-domain real set -> WER %
    long_form: float | None  # WER % of the long-form file
    english: float | None  # share of the held-out translations in English, %
    errors: dict[str, float] | None  # error types on the out-of-domain set (text.WordErrors)
    best: str  # what best/ is
    seconds: float  # the demo run's wall time


def _find(rows: list[dict], start: str) -> dict | None:
    return next((r for r in rows if r["name"].startswith(start)), None)


def read_demo(folder: Path, name: str, description: str, *, before: bool = False) -> GeneralRow:
    """A row from ``folder/demo.json``; ``before``: the pretrained model's side of it."""
    data = json.loads((folder / "demo.json").read_text(encoding="utf-8"))
    rows, side = data["rows"], "before" if before else "after"
    general, long = _find(rows, "general Swedish"), _find(rows, "real long-form")
    english = _find(rows, "translate:") if rows else None
    in_domain = {
        r["name"].split(":")[1].split(",")[0].strip(): r[side]
        for r in rows
        if r["name"].startswith("real: ")
    }
    best = "-"
    state = folder / "run" / "best" / "training_state.json"
    if not before and state.is_file():
        info = json.loads(state.read_text(encoding="utf-8"))
        best = info.get("note") or f"step {info.get('step')}"
    return GeneralRow(
        name=name,
        description=description,
        synthetic=_find(rows, "synthetic")[side],
        general=general[side] if general else None,
        general_interval=None if before or not general else _pair(general.get("interval")),
        in_domain=in_domain,
        long_form=long[side] if long else None,
        english=english[side] if english and english["metric"] == "English %" else None,
        errors=general.get(f"errors_{side}") if general else None,
        best=best,
        seconds=0.0 if before else sum(data.get("seconds", {}).values()),
    )


def _pair(x: Any) -> tuple[float, float] | None:
    return (float(x[0]), float(x[1])) if x else None


def run_general_study(
    out: Path, methods: list[str] | None = None, **demo_options: Any
) -> list[GeneralRow]:
    """Run (or reuse) the demo once per method; write the table and the plot."""
    from whisper_sv.workflows.demo import DemoOptions, run_demo

    names = methods or list(GENERAL_METHODS)
    unknown = [m for m in names if m not in GENERAL_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(GENERAL_METHODS)}")
    rows: list[GeneralRow] = []
    for name in names:
        description, changes = GENERAL_METHODS[name]
        folder = out / name
        if not (folder / "demo.json").is_file():
            extra = tuple(demo_options.get("train_set", ()))
            options = {**demo_options, **changes}
            options["train_set"] = tuple(changes.get("train_set", ())) + extra
            run_demo(DemoOptions(out=folder, **options))
        if not rows:
            rows.append(read_demo(folder, "pretrained", "the start model", before=True))
        rows.append(read_demo(folder, name, description))
        write_results(out, rows)
    return rows


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def results_markdown(rows: list[GeneralRow]) -> str:
    sets = list(dict.fromkeys(k for r in rows for k in r.in_domain))
    head = ["method", "synthetic", "cv-dev (out of domain)", "95% interval"]
    head += [f"{s} (in domain)" for s in sets]
    head += ["long-form", "English %", "cv-dev S / D / I", "cv-dev length %", "best/"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    for r in rows:
        band = "-"
        if r.general_interval:
            band = f"{r.general_interval[0]:+.1f} to {r.general_interval[1]:+.1f}"
        e = r.errors or {}
        types = " / ".join(_f(e.get(k)) for k in ("substitutions", "deletions", "insertions"))
        cells = [r.name, _f(r.synthetic), _f(r.general), band]
        cells += [_f(r.in_domain.get(s)) for s in sets]
        cells += [_f(r.long_form), _f(r.english), types, _f(e.get("length")), r.best]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, rows: list[GeneralRow]) -> None:
    """``results.md``, ``results.json`` and ``results.png`` in ``out``."""
    from whisper_sv.workflows.forgetting import write_study_results

    write_study_results(out, rows, results_markdown, _plot)


def _plot(path: Path, rows: list[GeneralRow]) -> None:
    """WER of each method on each set (left), error types on cv-dev (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from whisper_sv.core.fsutil import temp_name

    nan = float("nan")
    series = {
        "synthetic test": [r.synthetic for r in rows],
        "cv-dev (out of domain)": [r.general if r.general is not None else nan for r in rows],
    }
    for s in dict.fromkeys(k for r in rows for k in r.in_domain):
        series[f"{s} (in domain)"] = [r.in_domain.get(s, nan) for r in rows]
    series["long-form"] = [r.long_form if r.long_form is not None else nan for r in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 4.8), constrained_layout=True)
    x = np.arange(len(rows))
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series.items()):
        ax.bar(x + k * width, values, width, label=label)
    ax.set_xticks(x + 0.4 - width / 2, [r.name for r in rows], rotation=30, ha="right")
    ax.set_ylabel("WER % (lower is better)")
    above = {"fontsize": "small", "loc": "lower center", "bbox_to_anchor": (0.5, 1.0)}
    ax.legend(ncol=3, **above)
    ax.grid(axis="y", alpha=0.3)
    bottom = np.zeros(len(rows))
    for kind in ("substitutions", "deletions", "insertions"):
        values = np.array([(r.errors or {}).get(kind, 0.0) for r in rows])
        bx.bar(x, values, 0.6, bottom=bottom, label=kind)
        bottom += values
    bx.set_xticks(x, [r.name for r in rows], rotation=30, ha="right")
    bx.set_ylabel("cv-dev WER points by error type")
    bx.legend(ncol=3, **above)
    bx.grid(axis="y", alpha=0.3)
    tmp = temp_name(path, ".png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
