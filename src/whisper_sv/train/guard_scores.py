"""Scoring a run's real-speech guards: each guard's clips (encoded once when the encoder is
frozen) and the metrics columns of a model on them.

:class:`RunGuards` is made once per run by :func:`make_run_guards`; the model scorer
(:mod:`whisper_sv.train.model_scores`) asks it for the guard columns at every evaluation, and
the best-model selector (:mod:`whisper_sv.train.selection`) compares them with the start
model's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_sv.train.guards import (
    CER_SUFFIX,
    CHRF_SUFFIX,
    ENGLISH_SUFFIX,
    WER_SUFFIX,
    GuardSpec,
    chrf,
    english_share,
    prepare_guard_store,
)
from whisper_sv.train.scoring import Evaluator, finish_eval

log = logging.getLogger(__name__)

__all__ = ["GuardData", "RejectFn", "RunGuards", "ScoreFn", "make_run_guards"]


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
# The guard columns scored so far -> whether the model is already rejected (scoring stops).
RejectFn = Callable[[Mapping[str, float]], bool]


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

        # Out-of-domain guards first: fine-tunes lose general Swedish long before their own
        # speakers (README, "What make demo shows"), and with early rejection a rejected model
        # then costs one guard, not all.
        self.guards.sort(key=lambda g: g.spec.domain != "out")

    def encode(self, encode: Callable[[GuardData], Any]) -> None:
        """Encoder outputs of every guard's clips, once (``encode(guard) -> Encoded``)."""
        for guard in self.guards:
            guard.encoded = encode(guard)

    def score(
        self,
        score: ScoreFn,
        start_translations: Mapping[str, Sequence[str]] | None = None,
        rejected: RejectFn | None = None,
    ) -> tuple[dict[str, float], dict[str, list[str]]]:
        """(metrics columns, translations per guard) of the model as it is now.

        Translations are compared with ``start_translations`` (chrF); without them (step 0)
        the model is the start model and agrees with itself: 100. With ``rejected``, scoring
        stops as soon as it says the columns so far reject the model; the rest are left out.
        """
        values: dict[str, float] = {}
        translations: dict[str, list[str]] = {}
        for g in self.guards:
            res = finish_eval(score(g, g.transcribe), 0.0)
            values[g.spec.name + WER_SUFFIX] = res.wer
            values[g.spec.name + CER_SUFFIX] = res.cer
            if rejected is not None and rejected(values):
                return self._stopped(values, translations)
            if g.translate is not None:
                hyps = [h for part in score(g, g.translate) for h in part[3]]
                start = (start_translations or {}).get(g.spec.name)
                values[g.spec.name + ENGLISH_SUFFIX] = english_share(hyps)
                values[g.spec.name + CHRF_SUFFIX] = chrf(hyps, start) if start else 100.0
                translations[g.spec.name] = hyps
                if rejected is not None and rejected(values):
                    return self._stopped(values, translations)
        for lf in self.long_forms:
            values.update(lf.score(self.model, self.processor))
        return values, translations

    def _stopped(
        self, values: dict[str, float], translations: dict[str, list[str]]
    ) -> tuple[dict[str, float], dict[str, list[str]]]:
        left = [n for n in self.names if not any(c.startswith(n + " ") for c in values)]
        if left:
            log.info("guards not scored (the model already regressed): %s", ", ".join(left))
        return values, translations

    @property
    def names(self) -> list[str]:
        return [g.spec.name for g in self.guards] + [lf.spec.name for lf in self.long_forms]


def make_run_guards(
    specs: Sequence[GuardSpec],
    *,
    processor: Any,
    model: Any,
    model_ref: str,
    cache_dir: str,
    max_new_tokens: int,
    language: str,
) -> RunGuards:
    """The guards of a run of ``model`` (the unwrapped base); ``cache_dir`` is
    ``TrainConfig.cache_dir`` ("" for the user cache)."""
    from whisper_sv.core.fsutil import cache_dir as user_cache_dir

    # Guard stores outlive the run (RUN/cache is removed at the end): later runs and
    # other trials reuse them.
    root = Path(cache_dir) if cache_dir else user_cache_dir()
    return RunGuards(
        specs,
        processor=processor,
        model=model,
        model_ref=model_ref,
        cache_root=root,
        max_new_tokens=max_new_tokens,
        language=language,
    )
