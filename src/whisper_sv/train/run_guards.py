"""The real-speech guards of one training run, and what keeps a fine-tune from forgetting.

:class:`RunGuards` holds each guard's clips (encoded once when the encoder is frozen) and
scores a model on them; the trainer records the values as extra metrics columns, keeps the
start model's values (step 0) and lets only models within the tolerances become ``best/``.

Two helpers work on the trainable weights:

- :func:`mix_weights`: ``a * fine-tuned + (1 - a) * start`` (WiSE-FT). For LoRA adapters the
  start is "no adapter", so only the ``lora_B`` factor is scaled (``a * B @ A``).
- :func:`translation_labels`: the start model's English for a share of training windows,
  labelled with the translate task (self-distillation), so the decoder keeps translating.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from whisper_sv.core.text import COMPRESSION_RATIO_THRESHOLD, compression_ratio
from whisper_sv.train.guards import (
    CER_SUFFIX,
    CHRF_SUFFIX,
    ENGLISH_SUFFIX,
    WER_SUFFIX,
    GuardSpec,
    chrf,
    english_share,
    is_english,
    prepare_guard_store,
)
from whisper_sv.train.scoring import Evaluator, finish_eval, greedy_decode, prompt_ids

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["GuardData", "RunGuards", "mix_weights", "translation_labels"]


@dataclass
class GuardData:
    """One guard's clips and its evaluators."""

    spec: GuardSpec
    store: Any  # FeatureStore
    split: str
    dataset: Any  # the split's FeatureRows
    indices: list[int]
    transcribe: Evaluator
    translate: Evaluator | None
    encoded: Any = None  # encoder_cache.Encoded when the encoder is frozen and cached


# (guard, evaluator) -> this process's evaluation parts; gathered by the caller's function.
ScoreFn = Callable[[GuardData, Evaluator], list[Any]]


class RunGuards:
    """The guards of one run (see the module docstring)."""

    def __init__(
        self,
        specs: Sequence[GuardSpec],
        *,
        processor: Any,
        model: Any,
        model_ref: str,
        cache_root: Path,
        max_new_tokens: int,
        language: str = "sv",
    ) -> None:
        from whisper_sv.train.guard_longform import LongFormGuard

        self.guards: list[GuardData] = []
        self.long_forms: list[LongFormGuard] = []
        self.model, self.processor = model, processor
        for spec in specs:
            if spec.long_form:
                self.long_forms.append(
                    LongFormGuard.build(
                        spec,
                        processor=processor,
                        model_ref=model_ref,
                        cache_root=cache_root,
                        language=language,
                    )
                )
                continue
            store, split = prepare_guard_store(
                spec, model=model_ref, cache_root=cache_root, processor=processor
            )
            n = store.num_rows(split)
            lang = store.config.language

            def evaluator(task: str, lang: str = lang) -> Evaluator:
                return Evaluator(
                    processor, model, language=lang, task=task, max_new_tokens=max_new_tokens
                )

            self.guards.append(
                GuardData(
                    spec=spec,
                    store=store,
                    split=split,
                    dataset=store.torch_dataset(split),
                    indices=list(range(min(n, spec.limit) if spec.limit else n)),
                    transcribe=evaluator("transcribe"),
                    translate=evaluator("translate") if spec.translate else None,
                )
            )
            log.info("guard %s: %d clips of %s (%s)", spec.name, n, spec.path, split)

    def encode(self, encode: Callable[[GuardData], Any]) -> None:
        """Encoder outputs of every guard's clips, once (``encode(guard) -> Encoded``)."""
        for guard in self.guards:
            guard.encoded = encode(guard)

    def score(
        self, score: ScoreFn, start_translations: Mapping[str, Sequence[str]] | None = None
    ) -> tuple[dict[str, float], dict[str, list[str]]]:
        """(metrics columns, translations per guard) of the model as it is now.

        Translations are compared with ``start_translations`` (chrF); without them (step 0)
        the model is the start model and agrees with itself: 100.
        """
        values: dict[str, float] = {}
        translations: dict[str, list[str]] = {}
        for g in self.guards:
            res = finish_eval(score(g, g.transcribe), 0.0)
            values[g.spec.name + WER_SUFFIX] = res.wer
            values[g.spec.name + CER_SUFFIX] = res.cer
            if g.translate is not None:
                hyps = [h for part in score(g, g.translate) for h in part[3]]
                start = (start_translations or {}).get(g.spec.name)
                values[g.spec.name + ENGLISH_SUFFIX] = english_share(hyps)
                values[g.spec.name + CHRF_SUFFIX] = chrf(hyps, start) if start else 100.0
                translations[g.spec.name] = hyps
        for lf in self.long_forms:
            values.update(lf.score(self.model, self.processor))
        return values, translations

    @property
    def names(self) -> list[str]:
        return [g.spec.name for g in self.guards] + [lf.spec.name for lf in self.long_forms]


def mix_weights(
    start: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``alpha * tuned + (1 - alpha) * start`` per tensor (LoRA: ``lora_B`` scaled by alpha)."""
    out = {}
    for name, w in tuned.items():
        if ".lora_A." in name:
            out[name] = w.clone()
        elif ".lora_B." in name:
            out[name] = alpha * w
        else:
            out[name] = alpha * w + (1.0 - alpha) * start[name].to(w.dtype)
    return out


def translation_labels(
    model: Any,
    processor: Any,
    hidden: Any,
    labels: Sequence[Sequence[int]],
    chosen: Sequence[int],
    *,
    language: str,
    device: Any,
    batch_size: int = 16,
) -> dict[int, list[int]]:
    """{index: translate-task label} for the ``chosen`` rows of the encoder outputs ``hidden``.

    Greedy, bounded by 1.5x the row's Swedish label plus 10 tokens; a row whose English is
    empty, a loop (compression ratio > 2.4), cut off by the budget, or not English keeps its
    label. Why the last: a quarter of the pretrained base's "English" for single Swedish
    words is the word spelt back ("Hengel" for *hänger*); trained as translations, those
    teach the translate task to answer in Swedish (docs/experiments.md, section 8).
    """
    import torch

    tok = processor.tokenizer
    eot = int(tok.convert_tokens_to_ids("<|endoftext|>"))
    prompt = prompt_ids(processor, language, "translate")
    ev = Evaluator(processor, model, language=language, task="translate", max_new_tokens=440)
    out: dict[int, list[int]] = {}
    order = sorted(chosen, key=lambda i: len(labels[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        h = torch.from_numpy(np.stack([hidden[i] for i in idx])).to(device, dtype=torch.float32)
        budget = min(440 - len(prompt), int(1.5 * max(len(labels[i]) for i in idx)) + 10)
        ids = greedy_decode(
            model,
            h,
            prompt,
            max_new_tokens=budget,
            eot_id=eot,
            suppress_ids=ev.suppress,
            begin_suppress_ids=ev.begin,
        )
        for i, row in zip(idx, ids, strict=True):
            text = tok.decode(row, skip_special_tokens=True).strip()
            if len(row) < budget and usable_translation(text):
                out[i] = prompt + list(row) + [eot]
    return out


def usable_translation(text: str) -> bool:
    """Whether the start model's answer to the translate task can be trained as one: not
    empty, not a loop, and English (translation_labels says why)."""
    text = text.strip()
    return (
        bool(text) and compression_ratio(text) <= COMPRESSION_RATIO_THRESHOLD and is_english(text)
    )


# --------------------------------------------------------------------------- after training

INTERPOLATION_CSV = "interpolation.csv"
INTERPOLATION_MD = "interpolation.md"
INTERPOLATION_PNG = "interpolation.png"
GUARDS_JSON = "guards.json"


@dataclass(frozen=True)
class MixRow:
    """One interpolation weight, scored."""

    alpha: float  # share of the fine-tuned weights (1 - alpha of the start model's)
    wer: float | None  # validation WER
    cer: float | None
    guards: dict[str, float]  # guard columns
    regressed: tuple[str, ...]  # GuardCheck.describe() of the guards beyond tolerance
    score: float | None = None  # what best/ minimises (TrainConfig.select)


def interpolate(trainer: Any) -> list[MixRow]:
    """WiSE-FT over ``cfg.interpolate``: score each mix of the best-validation weights with
    the start weights; the best one whose guards hold becomes best/ when it beats best/.

    Writes RUN/interpolation.csv, .md and .png. Needs a validation split (the choice is by
    validation WER).
    """
    st, cfg = trainer.state, trainer.cfg
    if not trainer.has_val or trainer.start_weights is None:
        log.warning("interpolate needs a validation split to choose by: skipped")
        return []
    tuned = trainer.raw_best_weights
    from_step = st.raw_best_step
    if tuned is None:  # resumed after the best step: the weights at the end
        tuned, from_step = trainer.trainable_copy(), st.step
    rows = []
    for alpha in sorted(cfg.interpolate):
        trainer.load_trainable(mix_weights(trainer.start_weights, tuned, alpha))
        result = trainer.evaluate()
        values = trainer.guard_values()
        checks = trainer.guard_regressions(values)
        regressed = tuple(c.describe() for c in checks)
        score = trainer.score(result, values)
        rows.append(MixRow(alpha, result.wer, result.cer, values, regressed, score))
        log.info(
            "interpolation %.2f x step %s: validation WER %.2f%s",
            alpha,
            from_step,
            result.wer,
            "; regressed: " + "; ".join(rows[-1].regressed) if checks else "",
        )
    ok = [r for r in rows if not r.regressed and r.score is not None]
    pick = min(ok, key=lambda r: r.score, default=None)
    if pick is not None and trainer.is_better(pick.score):
        trainer.load_trainable(mix_weights(trainer.start_weights, tuned, pick.alpha))
        st.best_wer, st.best_step, st.best_guards = pick.wer, from_step, dict(pick.guards)
        st.best_score = pick.score
        st.best_note = (
            f"WiSE-FT interpolation: {pick.alpha:g} x step {from_step} + "
            f"{1 - pick.alpha:g} x the start model"
        )
        log.info(
            "best/ is the %s (validation WER %.2f, selection score %.2f)",
            st.best_note,
            pick.wer,
            pick.score,
        )
        trainer.save_best()
    if trainer.acc.is_main_process:
        _write_interpolation(trainer.run.path, rows, from_step)
    return rows


def _write_interpolation(run: Path, rows: Sequence[MixRow], from_step: int | None) -> None:
    import csv
    import io

    from whisper_sv.core.fsutil import atomic_write_text

    columns = list(dict.fromkeys(c for r in rows for c in r.guards))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["alpha", "WER", "CER", *columns, "score", "regressed"])
    for r in rows:
        cells = [f"{r.guards[c]:.2f}" if c in r.guards else "" for c in columns]
        w.writerow([r.alpha, _f(r.wer), _f(r.cer), *cells, _f(r.score), " | ".join(r.regressed)])
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
            f"| {r.alpha:g} | {_f(r.wer)} | {_f(r.cer)} | "
            + " | ".join([*cells, _f(r.score), hold])
            + " |"
        )
    atomic_write_text(run / INTERPOLATION_MD, "\n".join(lines) + "\n")
    _plot_interpolation(run / INTERPOLATION_PNG, rows, columns)


def _f(x: float | None) -> str:
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


def summary(trainer: Any) -> dict[str, Any]:
    """What the guards said about the run and its best/ (RUN/guards.json)."""
    st, cfg = trainer.state, trainer.cfg
    start = st.guard_start.get("values", {})
    raw = next((r for r in st.rows if r["step"] == st.raw_best_step), None)
    raw_values = (raw or {}).get("extra", {})
    best_checks = trainer.guard_regressions(st.best_guards) if st.best_guards else []
    return {
        "guards": trainer.guards.names if trainer.guards else [],
        # Whether each guard hears the training speakers ("in") or others ("out"), and the WER
        # points it may lose (its own tolerance, else the run's).
        "domains": {g.name: g.domain for g in cfg.guards},
        "guard_wer_tolerance": {
            g.name: g.tolerance if g.tolerance >= 0 else cfg.guard_tolerance for g in cfg.guards
        },
        "tolerance": {
            "wer": cfg.guard_tolerance,
            "english": cfg.guard_english_tolerance,
            "chrf": cfg.guard_chrf_tolerance,
        },
        "start": start,
        "best": {"step": st.best_step, "note": st.best_note, "values": st.best_guards},
        "best_validation_any_guards": {
            "step": st.raw_best_step,
            "wer": st.raw_best_wer,
            "values": raw_values,
            "regressed": [c.describe() for c in trainer.guard_regressions(raw_values)],
        },
        # best/ is the start model although a fine-tuned model scored better on validation:
        # every such model regressed on a guard.
        "kept_start": bool(trainer.guards)
        and st.best_step == 0
        and st.raw_best_step not in (None, 0),
        "regressed": [c.describe() for c in best_checks],
        "tasks": ["transcribe"] + (["translate"] if any(g.translate for g in cfg.guards) else []),
    }


def write_summary(trainer: Any) -> dict[str, Any]:
    """RUN/guards.json, and a loud warning when no fine-tuned model kept its guards."""
    import json

    from whisper_sv.core.fsutil import atomic_write_text

    data = summary(trainer)
    atomic_write_text(trainer.run.path / GUARDS_JSON, json.dumps(data, indent=2) + "\n")
    if data["kept_start"]:
        raw = data["best_validation_any_guards"]
        log.warning(
            "NO FINE-TUNED MODEL KEPT ITS REAL-SPEECH GUARDS: best/ is the start model. The "
            "best validation model (step %s, WER %s) regressed: %s. Lower the learning rate, "
            "mix real speech into the training data, or set interpolate: [0.25, 0.5, 0.75].",
            raw["step"],
            _f(raw["wer"]),
            "; ".join(raw["regressed"]) or "-",
        )
    return data


def guard_lines(data: dict[str, Any]) -> list[str]:
    """One line per guard of a guards.json summary: name, domain, WER tolerance, start and
    best/ WER (the model card's list; out-of-domain guards say so)."""
    from whisper_sv.train.guards import DOMAIN_NAMES, WER_SUFFIX

    lines = []
    for name in data["guards"]:
        column = name + WER_SUFFIX
        start, best = data["start"].get(column), data["best"]["values"].get(column)
        scores = f": WER {_f(start)} -> {_f(best)}" if start is not None else ""
        domain = DOMAIN_NAMES[data.get("domains", {}).get(name, "")]
        tol = data.get("guard_wer_tolerance", {}).get(name, data["tolerance"]["wer"])
        lines.append(f"{name} ({domain}; may lose {tol:g} WER points){scores}")
    return lines


def card_section(trainer: Any) -> str:
    """The model card's section on guards and interpolation (Markdown)."""
    data = summary(trainer)
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
            + " | ".join(_f(data["best"]["values"].get(c)) for c in data["start"])
            + " |",
            "",
        ]
    if data["best"]["note"]:
        lines += [f"best/ is the {data['best']['note']}.", ""]
    if data["kept_start"]:
        lines += ["**No fine-tuned model kept its guards: best/ is the start model.**", ""]
    md = trainer.run.path / INTERPOLATION_MD
    if md.is_file():
        lines += ["### Interpolation with the start model", "", md.read_text("utf-8"), ""]
    return "\n".join(lines)
