"""Choosing best/: the model a run hands on, under its real-speech guards.

:class:`BestModelSelector` is told every evaluation's scores (:meth:`~BestModelSelector.consider`)
and keeps best/ when a model scores better on ``TrainConfig.select`` and no guard regressed
beyond its tolerance against the start model (step 0). After training,
:meth:`~BestModelSelector.finish` tries the WiSE-FT mixes of the best-validation weights with
the start weights (``TrainConfig.interpolate``) and writes RUN/guards.json. It works through a
small interface: a :class:`~whisper_sv.train.saving.ModelSaver` (weights, best/) and a
:class:`~whisper_sv.train.model_scores.ModelScorer` (scores of the model as it is now); the
loop's state it reads and updates is the checkpointed :class:`TrainState`.

:func:`mix_weights` is ``a * fine-tuned + (1 - a) * start`` (WiSE-FT). For LoRA adapters the
start is "no adapter", so only the ``lora_B`` factor is scaled (``a * B @ A``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_sv.core.run_folder import RunFolder
from whisper_sv.train.checkpoints import TrainState
from whisper_sv.train.guards import GuardCheck, regressions, selection_score
from whisper_sv.train.selection_report import (
    INTERPOLATION_CSV,
    INTERPOLATION_MD,
    MixRow,
    guard_section,
    score_text,
    verdict,
    write_interpolation,
)

if TYPE_CHECKING:
    import torch

    from whisper_sv.train.config import TrainConfig
    from whisper_sv.train.model_scores import ModelScorer, Scores
    from whisper_sv.train.saving import ModelSaver

log = logging.getLogger(__name__)

__all__ = [
    "GUARDS_JSON",
    "BestModelSelector",
    "Decision",
    "best_verdict",
    "kept_start_advice",
    "mix_weights",
]

GUARDS_JSON = "guards.json"


@dataclass(frozen=True)
class Decision:
    """What the selector made of one evaluation."""

    kept: bool  # the model became best/
    stop_early: bool  # patience or guard_patience ran out: the loop should stop
    regressed: tuple[str, ...]  # GuardCheck.describe() of the guards beyond tolerance


def best_verdict(run: Path) -> str:
    """One sentence on what RUN's best/ is (:func:`selection_report.verdict`, from
    RUN/guards.json and RUN/interpolation.csv); "" for a run without guards."""
    import json

    path = run / GUARDS_JSON
    if not path.is_file():
        return ""
    return verdict(json.loads(path.read_text(encoding="utf-8")), run / INTERPOLATION_CSV)


def kept_start_advice(cfg: TrainConfig) -> str:
    """What to change when no fine-tuned model kept its guards, from what this run already
    did (measured at the demo's sizes: docs/experiments.md, section 9)."""
    tips = []
    if not cfg.interpolate:
        tips.append("interpolate: [0.2, 0.3, 0.5] (mixes with the start weights, WiSE-FT)")
    else:
        low = min(cfg.interpolate)
        tips.append(f"a mix below {low:g}, e.g. interpolate: [{low / 2:g}, {low:g}]")
    if cfg.distill < 0.8:
        tips.append(f"distill: 0.8 (now {cfg.distill:g}; distillation toward the start model)")
    tips.append(f"a lower lr (now {cfg.lr:g})")
    tips.append("more real speech in the training data")
    return "; ".join(tips)


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


class BestModelSelector:
    """best/ of one run (see the module docstring)."""

    def __init__(
        self,
        *,
        cfg: TrainConfig,
        state: TrainState,
        run: RunFolder,
        saver: ModelSaver,
        guard_names: Sequence[str] | None,
        is_main: bool,
    ) -> None:
        self._cfg, self._state, self._run, self._saver = cfg, state, run, saver
        self._guard_names = list(guard_names) if guard_names is not None else None
        self._is_main = is_main
        # The start model's trainable weights (taken before a checkpoint is loaded) and the
        # best-validation weights whatever the guards said: the two ends of WiSE-FT.
        self._start_weights = saver.trainable_copy() if cfg.interpolate else None
        self._raw_best_weights: dict[str, Any] | None = None

    def resume(self, state: TrainState) -> None:
        """Go on from a checkpoint's loop state (its best/, guard start values and counts)."""
        self._state = state

    @property
    def start_translations(self) -> dict[str, list[str]] | None:
        """The start model's English per translate guard (None before step 0 is scored)."""
        return self._state.guard_start.get("translations")

    def regressions(self, values: Mapping[str, float]) -> list[GuardCheck]:
        """The guard values worse than the start model's beyond the tolerances."""
        cfg = self._cfg
        return regressions(
            values,
            self._state.guard_start.get("values", {}),
            wer_tolerance=cfg.guard_tolerance,
            chrf_tolerance=cfg.guard_chrf_tolerance,
            english_tolerance=cfg.guard_english_tolerance,
            specs=cfg.guards,
        )

    @property
    def early_reject(self) -> Callable[[Mapping[str, float]], bool] | None:
        """What stops a model's guard scoring early (``guard_early_reject``): any regression.
        None when off, or before step 0 has given the start values to compare with."""
        if not self._cfg.guard_early_reject or not self._state.guard_start:
            return None
        return lambda values: bool(self.regressions(values))

    def _score(self, wer: float, values: Mapping[str, float]) -> float:
        """The selection score; a guard left unscored by early rejection counts as the start
        model's value (the model cannot become best/; the score only ranks it as the source
        of the WiSE-FT mixes)."""
        return selection_score(
            self._cfg.select, wer, {**self._state.guard_start.get("values", {}), **values}
        )

    def is_better(self, score: float) -> bool:
        """Whether a model of selection ``score`` should replace best/ (a lower one)."""
        st = self._state
        best = st.best_score if st.best_score is not None else st.best_wer
        return best is None or score < best

    def consider(self, step: int, scores: Scores) -> Decision:
        """Keep best/ when the model at ``step`` is better and no guard regressed; count
        evaluations without gain (patience) and with a regressed guard (guard_patience)."""
        st, cfg, values = self._state, self._cfg, scores.guards
        if self._guard_names is not None and not st.guard_start:
            st.guard_start = {"step": step, "values": values, "translations": scores.translations}
        checks = self.regressions(values)
        regressed = tuple(c.describe() for c in checks)
        result = scores.validation
        score = self._score(result.wer, values) if result is not None else None
        stop = self._track_guards(step, result.wer if result else None, checks, score)
        if result is None or score is None:
            kept = self._guard_names is not None and not checks
            if kept:  # No validation split: the latest model that keeps its guards.
                st.best_step, st.best_guards = step, dict(values)
                self._save_best()
            return Decision(kept, stop, regressed)
        if self.is_better(score) and not checks:
            st.best_wer, st.best_step, st.bad_evals = result.wer, step, 0
            st.best_score = score
            st.best_guards = dict(values)
            self._save_best()
            return Decision(True, stop, regressed)
        if step > 0:
            st.bad_evals += 1
            if cfg.patience and st.bad_evals >= cfg.patience:
                log.info(
                    "early stopping at step %d: no better WER in %d evaluations (best %.2f "
                    "at step %d)",
                    step,
                    st.bad_evals,
                    st.best_wer,
                    st.best_step,
                )
                stop = True
        return Decision(False, stop, regressed)

    def _track_guards(
        self, step: int, wer: float | None, checks: list[GuardCheck], score: float | None
    ) -> bool:
        """Keep the best trained model by selection score whatever the guards say (WiSE-FT
        starts from it), warn loudly when a better model is refused; whether guard_patience
        ran out. Step 0, the start model, is never the source: its mixes are itself, and with
        early rejection a trained step that lost a guard can rank below it."""
        st, cfg = self._state, self._cfg
        raw = st.raw_best_score if st.raw_best_score is not None else st.raw_best_wer
        better = raw is None or (score is not None and score < raw)
        if step > 0 and wer is not None and score is not None and better:
            st.raw_best_wer, st.raw_best_step, st.raw_best_score = wer, step, score
            if self._start_weights is not None:
                self._raw_best_weights = self._saver.trainable_copy()
        if not checks:
            st.guard_bad_evals = 0
            return False
        st.guard_bad_evals += 1
        log.warning(
            "step %d is not a candidate for best/: real-speech guard(s) regressed: %s",
            step,
            "; ".join(c.describe() for c in checks),
        )
        if cfg.guard_patience and st.guard_bad_evals >= cfg.guard_patience:
            log.warning(
                "early stopping at step %d: guards regressed in %d evaluations in a row",
                step,
                st.guard_bad_evals,
            )
            return True
        return False

    def _save_best(self) -> None:
        st = self._state
        self._saver.save_best(step=st.best_step, wer=st.best_wer, note=st.best_note)

    def finish(self, scorer: ModelScorer) -> None:
        """After training (all processes): make sure best/ exists (the last model when nothing
        chooses), try the WiSE-FT mixes, write RUN/guards.json."""
        st, run = self._state, self._run
        if not scorer.has_validation and self._guard_names is None:
            st.best_step = st.step  # the last model is the one to use
            self._save_best()
        elif not run.best_dir.is_dir():
            self._save_best()
        if self._cfg.interpolate and not (run.path / INTERPOLATION_CSV).is_file():
            self.interpolate(scorer)
        if self._is_main and self._guard_names is not None:
            self.write_summary()

    def interpolate(self, scorer: ModelScorer) -> list[MixRow]:
        """WiSE-FT over ``cfg.interpolate``: score each mix of the best-validation weights with
        the start weights; the best one whose guards hold becomes best/ when it beats best/.

        Writes RUN/interpolation.csv, .md and .png. Needs a validation split (the choice is by
        validation WER).
        """
        st, cfg, start = self._state, self._cfg, self._start_weights
        if not scorer.has_validation or start is None:
            log.warning("interpolate needs a validation split to choose by: skipped")
            return []
        tuned, from_step = self._raw_best_weights, st.raw_best_step
        if tuned is None:  # resumed after the best step: the weights at the end
            tuned, from_step = self._saver.trainable_copy(), st.step
        rows = []
        for alpha in sorted(cfg.interpolate):
            self._saver.load_trainable(mix_weights(start, tuned, alpha))
            scores = scorer.scores(self.start_translations, self.early_reject)
            result, values = scores.validation, scores.guards
            checks = self.regressions(values)
            score = self._score(result.wer, values)
            regressed = tuple(c.describe() for c in checks)
            rows.append(MixRow(alpha, result.wer, result.cer, values, regressed, score))
            log.info(
                "interpolation %.2f x step %s: validation WER %.2f%s",
                alpha,
                from_step,
                result.wer,
                "; regressed: " + "; ".join(regressed) if checks else "",
            )
        ok = [r for r in rows if not r.regressed and r.score is not None]
        pick = min(ok, key=lambda r: r.score, default=None)
        if pick is not None and self.is_better(pick.score):
            self._saver.load_trainable(mix_weights(start, tuned, pick.alpha))
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
            self._save_best()
        if self._is_main:
            write_interpolation(self._run.path, rows, from_step)
        return rows

    def summary(self) -> dict[str, Any]:
        """What the guards said about the run and its best/ (RUN/guards.json)."""
        st, cfg = self._state, self._cfg
        raw = next((r for r in st.rows if r["step"] == st.raw_best_step), None)
        raw_values = (raw or {}).get("extra", {})
        best_checks = self.regressions(st.best_guards) if st.best_guards else []
        guarded = self._guard_names is not None
        raw_regressed = [c.describe() for c in self.regressions(raw_values)]
        return {
            "guards": self._guard_names or [],
            # Whether each guard hears the training speakers ("in") or others ("out"), and the
            # WER points it may lose (its own tolerance, else the run's).
            "domains": {g.name: g.domain for g in cfg.guards},
            "guard_wer_tolerance": {
                g.name: g.tolerance if g.tolerance >= 0 else cfg.guard_tolerance for g in cfg.guards
            },
            "tolerance": {
                "wer": cfg.guard_tolerance,
                "english": cfg.guard_english_tolerance,
                "chrf": cfg.guard_chrf_tolerance,
            },
            "start": st.guard_start.get("values", {}),
            "best": {"step": st.best_step, "note": st.best_note, "values": st.best_guards},
            "best_validation_any_guards": {
                "step": st.raw_best_step,
                "wer": st.raw_best_wer,
                "values": raw_values,
                "regressed": raw_regressed,
            },
            # best/ is the start model and the best trained model regressed on a guard (a
            # trained model that simply scored worse than the start is no refusal).
            "kept_start": guarded and st.best_step == 0 and bool(raw_regressed),
            "regressed": [c.describe() for c in best_checks],
            "tasks": ["transcribe"]
            + (["translate"] if any(g.translate for g in cfg.guards) else []),
        }

    def write_summary(self) -> dict[str, Any]:
        """RUN/guards.json, and a loud warning when no fine-tuned model kept its guards."""
        import json

        from whisper_sv.core.fsutil import atomic_write_text

        data = self.summary()
        atomic_write_text(self._run.path / GUARDS_JSON, json.dumps(data, indent=2) + "\n")
        if data["kept_start"]:
            raw = data["best_validation_any_guards"]
            log.warning(
                "NO FINE-TUNED MODEL KEPT ITS REAL-SPEECH GUARDS: best/ is the start model. The "
                "best validation model (step %s, WER %s) regressed: %s. To try: %s.",
                raw["step"],
                score_text(raw["wer"]),
                "; ".join(raw["regressed"]) or "-",
                kept_start_advice(self._cfg),
            )
        return data

    def card_section(self) -> str | None:
        """The model card's section on guards and interpolation (None: the run had neither)."""
        if self._guard_names is None and not self._cfg.interpolate:
            return None
        return guard_section(self.summary(), self._run.path / INTERPOLATION_MD)
