"""Anti-forgetting methods side by side, at equal compute (``whisper-sv experiment forgetting``).

Question: fine-tuning Whisper's decoder on synthetic Swedish speech improves the synthetic test
but can make real Swedish and the translate task worse; which of the project's methods keep
real speech from getting worse, and what do they cost on the synthetic gain?

Every method trains the same steps on the same store (the demo's recipe, smaller), from the
same start model, with the same guards, and is scored on the same held-out sets the demo uses
(synthetic test, real held-out phrases and words, a long-form file, English agreement with the
pretrained model). Methods differ only in training options (:data:`METHODS`). The pretrained
model is scored once. Results: ``STUDY/results.md``, ``results.json``, ``results.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["METHODS", "MethodResult", "run_study"]

# name -> (what it is, TrainConfig options on top of the shared recipe). Methods whose name
# starts with "mix" train on the store with the real sets' training parts mixed in.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("no guard, best validation step (the earlier demo)", {"guards": []}),
    "guards": ("guarded selection of best/ only", {}),
    "wise-ft": ("guards + WiSE-FT interpolation", {"interpolate": [0.25, 0.5, 0.75]}),
    "timestamps": ("guards + timestamps on half the windows", {"timestamp_share": 0.5}),
    "translate": (
        "guards + 10% of clips also trained alone on the start model's English",
        {"translate_share": 0.1},
    ),
    "lower-lr": ("guards + lr 3e-5 instead of 1e-4", {"lr": 3e-5}),
    "lora": ("guards + LoRA rank 16 on q/v (lr 1e-3)", {"lora_rank": 16, "lr": 1e-3}),
    "mix": ("guards + a third of the real sets mixed into training (2 copies)", {}),
    "mix-all": (
        "mix + timestamps on half the windows + WiSE-FT",
        {"timestamp_share": 0.5, "interpolate": [0.25, 0.5, 0.75]},
    ),
    "mix-translate": (
        "mix + half the real clips also trained alone on the start model's English",
        {"translate_share": 0.5, "translate_sources": ["manifest"]},
    ),
}


@dataclass(frozen=True)
class MethodResult:
    name: str
    description: str
    synthetic_wer: float
    real_wer: dict[str, float]  # held-out real set -> WER
    long_form_wer: float | None
    segments: int  # long-form segments (subtitle cues)
    translate_chrf: float | None  # English vs the pretrained model's, held-out phrases
    translate_english: float | None  # percent of those translations that are English
    best: str  # how best/ was chosen (step, interpolation, or the start model)
    seconds: float  # fine-tune wall time


def run_study(out: Path, methods: list[str] | None = None, **demo_options: Any) -> list[Any]:
    """Train and score each method; write the results table and plot. Re-runs reuse runs."""
    from whisper_sv.data.store import FeatureStore
    from whisper_sv.workflows.demo import (
        DemoOptions,
        build_training_store,
        fine_tune_guarded,
        prepare_real_sets,
        score_sets,
    )

    names = methods or list(METHODS)
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    out.mkdir(parents=True, exist_ok=True)
    o = DemoOptions(out=out, **demo_options)
    real = prepare_real_sets(o, out)
    build_training_store(o, out / "store", [])
    store = FeatureStore(out / "store")
    if any(n.startswith("mix") for n in names):
        build_training_store(o, out / "store-mix", real)
    before = score_sets(o.model, store, real, o)
    rows: list[Any] = [_result("pretrained", "the start model", before, "-", 0.0)]
    for name in names:
        description, changes = METHODS[name]
        sets = [f"{k}={json.dumps(v)}" for k, v in changes.items()]
        shared = [f"cache_dir={out / 'cache'}"] + list(o.train_set)
        mo = dataclasses.replace(
            o,
            train_set=tuple(shared + sets),
            wise_ft=False,
            timestamp_share=0.0,
            translate_share=0.0,
        )
        t0 = time.perf_counter()
        store_path = out / ("store-mix" if name.startswith("mix") else "store")
        run = fine_tune_guarded(mo, store_path, out / "runs" / name, real)
        seconds = time.perf_counter() - t0
        after = score_sets(str(run), store, real, o, start=before)
        rows.append(_result(name, description, after, _best_note(run), seconds))
        write_study_results(out, rows, results_markdown, _plot)
        print(results_markdown(rows), flush=True)
    return rows


def _best_note(run: Path) -> str:
    state = json.loads((run / "best" / "training_state.json").read_text(encoding="utf-8"))
    return state.get("note") or f"step {state.get('step')}"


def _result(name: str, description: str, scores: dict, best: str, seconds: float) -> MethodResult:
    real = {k: v.wer for k, v in scores.items() if k not in ("synthetic", "long-form")}
    chrfs = [v.chrf for v in scores.values() if v.chrf is not None]
    english = [v.english for v in scores.values() if v.english is not None]
    long = scores.get("long-form")
    return MethodResult(
        name=name,
        description=description,
        synthetic_wer=scores["synthetic"].wer,
        real_wer=real,
        long_form_wer=long.wer if long else None,
        segments=long.segments if long else 0,
        translate_chrf=chrfs[0] if chrfs else (100.0 if name == "pretrained" else None),
        translate_english=english[0] if english else None,
        best=best,
        seconds=seconds,
    )


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def results_markdown(rows: list[MethodResult]) -> str:
    real_names = list(rows[0].real_wer)
    head = ["method", "synthetic WER", *[f"{n} WER" for n in real_names]]
    head += ["long-form WER (segments)", "English %", "English chrF", "best/", "fine-tune s"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 3) + "---|---:|"]
    for r in rows:
        cells = [f"{r.name}", _f(r.synthetic_wer), *[_f(r.real_wer.get(n)) for n in real_names]]
        cells += [f"{_f(r.long_form_wer)} ({r.segments})", _f(r.translate_english)]
        cells += [_f(r.translate_chrf), r.best]
        cells.append(f"{r.seconds:.0f}" if r.seconds else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_study_results(
    out: Path, rows: list[Any], markdown: Callable[[list[Any]], str], plot: Callable
) -> None:
    """A study's ``results.md`` (``markdown(rows)``), ``results.json`` (the rows as dicts) and
    ``results.png`` (``plot(path, rows)``) in ``out``: the layout every study writes."""
    from whisper_sv.core.fsutil import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.md", markdown(rows))
    data = [dataclasses.asdict(r) for r in rows]
    atomic_write_text(out / "results.json", json.dumps(data, indent=2, ensure_ascii=False))
    plot(out / "results.png", rows)


def _plot(path: Path, rows: list[MethodResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from whisper_sv.core.fsutil import temp_name

    series = {"synthetic test": [r.synthetic_wer for r in rows]}
    for name in rows[0].real_wer:
        series[f"real: {name}"] = [r.real_wer.get(name, np.nan) for r in rows]
    series["real long-form"] = [r.long_form_wer or np.nan for r in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5), constrained_layout=True)
    x = np.arange(len(rows))
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series.items()):
        ax.bar(x + k * width, values, width, label=label)
    ax.set_xticks(x + 0.4 - width / 2, [r.name for r in rows], rotation=30, ha="right")
    ax.set_ylabel("WER % (lower is better)")
    # Above the plot: inside it the legend would hide the tallest bars.
    above = {"fontsize": "small", "loc": "lower center", "bbox_to_anchor": (0.5, 1.0)}
    ax.legend(ncol=len(series), **above)
    ax.grid(axis="y", alpha=0.3)
    bx.bar(x - 0.2, [r.translate_english or 0 for r in rows], 0.4, label="English share %")
    bx.bar(x + 0.2, [r.translate_chrf or 0 for r in rows], 0.4, label="chrF vs pretrained")
    bx.set_xticks(x, [r.name for r in rows], rotation=30, ha="right")
    bx.set_ylabel("translate task (higher keeps it)")
    bx.legend(ncol=2, **above)
    bx.grid(axis="y", alpha=0.3)
    tmp = temp_name(path, ".png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
