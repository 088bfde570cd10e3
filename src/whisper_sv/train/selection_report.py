"""The files that say how best/ was chosen: the WiSE-FT interpolation table and plot, the
guards' lines of the model card and its section on guards and interpolation.

They are written from plain data (:class:`MixRow` rows, a guards.json summary), so the
best-model selector (:mod:`whisper_sv.train.selection`) and the tests call them alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_sv.train.guards import CER_SUFFIX, DOMAIN_NAMES, WER_SUFFIX

__all__ = [
    "INTERPOLATION_CSV",
    "INTERPOLATION_MD",
    "INTERPOLATION_PNG",
    "MixRow",
    "score_text",
    "guard_lines",
    "guard_section",
    "verdict",
    "write_interpolation",
]

INTERPOLATION_CSV = "interpolation.csv"
INTERPOLATION_MD = "interpolation.md"
INTERPOLATION_PNG = "interpolation.png"


@dataclass(frozen=True)
class MixRow:
    """One interpolation weight, scored."""

    alpha: float  # share of the fine-tuned weights (1 - alpha of the start model's)
    wer: float | None  # validation WER
    cer: float | None
    guards: dict[str, float]  # guard columns
    regressed: tuple[str, ...]  # GuardCheck.describe() of the guards beyond tolerance
    score: float | None = None  # what best/ minimises (TrainConfig.select)


def write_interpolation(run: Path, rows: Sequence[MixRow], from_step: int | None) -> None:
    """RUN/interpolation.csv, .md and .png of the mixes ``rows`` of step ``from_step``."""
    import csv
    import io

    from whisper_sv.core.fsutil import atomic_write_text

    columns = list(dict.fromkeys(c for r in rows for c in r.guards))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["alpha", "WER", "CER", *columns, "score", "regressed"])
    for r in rows:
        cells = [f"{r.guards[c]:.2f}" if c in r.guards else "" for c in columns]
        scores = [score_text(r.wer), score_text(r.cer), *cells, score_text(r.score)]
        w.writerow([r.alpha, *scores, " | ".join(r.regressed)])
    atomic_write_text(run / INTERPOLATION_CSV, buf.getvalue())
    head = ["alpha", "validation WER", "CER", *columns, "selection score", "guards hold"]
    lines = [
        f"WiSE-FT: alpha x step {from_step} + (1 - alpha) x the start model",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---:|" * (len(head) - 1) + "---|",
    ]
    for r in rows:
        cells = [f"{r.guards[c]:.2f}" if c in r.guards else "-" for c in columns]
        hold = "yes" if not r.regressed else "no: " + "; ".join(r.regressed)
        lines.append(
            f"| {r.alpha:g} | {score_text(r.wer)} | {score_text(r.cer)} | "
            + " | ".join([*cells, score_text(r.score), hold])
            + " |"
        )
    atomic_write_text(run / INTERPOLATION_MD, "\n".join(lines) + "\n")
    _plot_interpolation(run / INTERPOLATION_PNG, rows, columns)


def score_text(x: float | None) -> str:
    """A score with two decimals; "" for none."""
    return "" if x is None else f"{x:.2f}"


def _plot_interpolation(path: Path, rows: Sequence[MixRow], columns: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from whisper_sv.core.fsutil import temp_name

    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    xs = [r.alpha for r in rows]
    ax.plot(xs, [r.wer for r in rows], marker="o", label="validation WER")
    for c in columns:
        if not c.endswith(CER_SUFFIX):
            ax.plot(xs, [r.guards.get(c) for r in rows], marker="s", label=c)
    ax.set_xlabel("alpha (share of the fine-tuned weights)")
    ax.set_ylabel("WER % / chrF")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    tmp = temp_name(path, ".png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def guard_lines(data: dict[str, Any]) -> list[str]:
    """One line per guard of a guards.json summary: name, domain, WER tolerance, start and
    best/ WER (the model card's list; out-of-domain guards say so)."""
    lines = []
    for name in data["guards"]:
        column = name + WER_SUFFIX
        start, best = data["start"].get(column), data["best"]["values"].get(column)
        scores = f": WER {score_text(start)} -> {score_text(best)}" if start is not None else ""
        domain = DOMAIN_NAMES[data.get("domains", {}).get(name, "")]
        tol = data.get("guard_wer_tolerance", {}).get(name, data["tolerance"]["wer"])
        lines.append(f"{name} ({domain}; may lose {tol:g} WER points){scores}")
    return lines


def guard_section(data: dict[str, Any], interpolation_md: Path) -> str:
    """The model card's section on guards and interpolation (Markdown) from a guards.json
    summary ``data`` and the interpolation table ``interpolation_md`` (when it exists)."""
    lines = ["## Real-speech guards", ""]
    if data["guards"]:
        lines += [f"- {line}" for line in guard_lines(data)] + [""]
        lines += [
            f"best/ may lose at most the WER points above, {data['tolerance']['english']:g} points "
            f"of English share in translation and {data['tolerance']['chrf']:g} chrF points of "
            "agreement with the start model's English against the start model (step 0). Their "
            "values are in the table below.",
            "",
            "| | " + " | ".join(data["start"]) + " |",
            "|---|" + "---:|" * len(data["start"]),
            "| start model | " + " | ".join(f"{v:.2f}" for v in data["start"].values()) + " |",
            f"| best/ (step {data['best']['step']}) | "
            + " | ".join(score_text(data["best"]["values"].get(c)) for c in data["start"])
            + " |",
            "",
        ]
    if data["best"]["note"]:
        lines += [f"best/ is the {data['best']['note']}.", ""]
    if data["kept_start"]:
        lines += ["**No fine-tuned model kept its guards: best/ is the start model.**", ""]
    if interpolation_md.is_file():
        text = interpolation_md.read_text("utf-8")
        lines += ["### Interpolation with the start model", "", text, ""]
    return "\n".join(lines)


def verdict(data: dict[str, Any], interpolation_csv: Path) -> str:
    """One sentence for a report on what best/ is, from a guards.json summary ``data`` and the
    interpolation table: when it is the start model, which candidates lost which guard, so a
    column of "fine-tuned" figures equal to the pretrained ones reads as the decision it is."""
    import csv

    best = data["best"]
    if best["step"]:
        what = f"the {best['note']}" if best["note"] else f"step {best['step']}"
        return f"best/ is {what}: it kept every real-speech guard."
    if not data["kept_start"]:
        return "best/ is the start model: no fine-tuned model scored better on validation."
    refused = []
    raw = data["best_validation_any_guards"]
    if raw.get("regressed"):
        refused.append(
            f"step {raw['step']} (the best on validation): {', '.join(raw['regressed'])}"
        )
    if interpolation_csv.is_file():
        with interpolation_csv.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                if row["regressed"]:
                    lost = row["regressed"].replace(" | ", ", ")
                    refused.append(f"the {row['alpha']} mix: {lost}")
    head = (
        "best/ is the start model: no fine-tuned model kept every real-speech guard, so the "
        "fine-tuned column repeats the pretrained one."
    )
    return head + (f" Refused: {'; '.join(refused)}." if refused else "")
