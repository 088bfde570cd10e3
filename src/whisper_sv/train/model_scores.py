"""Scoring the model of a training run as it is now: validation loss and WER/CER, and the
real-speech guards' metrics columns.

:class:`ModelScorer` owns the run's validation clips and guards (and their cached encoder
outputs when the encoder is frozen); the trainer asks it for :class:`Scores` at every
evaluation, and the best-model selector asks it again for each WiSE-FT mix. It reads nothing
of the trainer: it is given the model, the accelerator and the clips when it is made.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from whisper_sv.core.runtime import gather_objects, unwrap_base
from whisper_sv.data.store import pad_labels
from whisper_sv.train.encoder_cache import (
    Encoded,
    encode_clips,
    finish_encoder,
    first_trained_layer,
)
from whisper_sv.train.scoring import EvalResult, Evaluator, finish_eval

if TYPE_CHECKING:
    from transformers import WhisperProcessor

    from whisper_sv.data.store import FeatureStore
    from whisper_sv.train.config import TrainConfig
    from whisper_sv.train.guard_scores import GuardData, RejectFn, RunGuards

__all__ = ["ModelScorer", "Scores"]


@dataclass(frozen=True)
class Scores:
    """One model's scores at one evaluation."""

    validation: EvalResult | None  # validation loss and WER/CER (None: no validation clips)
    guards: dict[str, float]  # the guards' metrics columns ({} without guards)
    translations: dict[str, list[str]]  # each translate guard's English (chrF's reference)


class ModelScorer:
    """Validation and guard scores of one run's model (see the module docstring)."""

    def __init__(
        self,
        *,
        cfg: TrainConfig,
        store: FeatureStore,
        processor: WhisperProcessor,
        model: Any,
        accelerator: Any,
        has_val: bool,
        guards: RunGuards | None,
    ) -> None:
        self._cfg, self._model, self._acc, self._guards = cfg, model, accelerator, guards
        self._evaluator = Evaluator(
            processor,
            unwrap_base(model),
            language=store.config.language,
            task=store.config.task,
            max_new_tokens=cfg.eval_max_new_tokens,
            beam_size=cfg.eval_beam_size,
        )
        self._val_set = store.torch_dataset("validation") if has_val else None
        n_val = len(self._val_set) if self._val_set is not None else 0
        self._val_indices = list(range(min(n_val, cfg.eval_limit) if cfg.eval_limit else n_val))
        self._val_enc: Encoded | None = None
        # Cached hidden states enter this encoder layer (encoder_top_layers); None: they are
        # the frozen encoder's output.
        self._cut = first_trained_layer(unwrap_base(model).get_encoder(), cfg.encoder_top_layers)

    @property
    def has_validation(self) -> bool:
        """Whether there are validation clips to score (and so to choose best/ by)."""
        return bool(self._val_indices)

    def encode(self, key: dict[str, Any], cache_root: Path, *, progress: bool) -> None:
        """Encoder outputs of the validation and guard clips, once (frozen encoder); ``key``
        names the model and store the cache entries belong to."""
        if self._val_set is not None and self._val_indices:
            self._val_enc = encode_clips(
                self._model,
                self._val_set,
                self._val_indices,
                cache_root,
                {**key, "split": "validation", "n": len(self._val_indices)},
                batch_size=self._cfg.eval_batch_size,
                accelerator=self._acc,
                progress=progress,
                desc="encoding validation clips",
                upto=self._cut,
            )
        if self._guards is not None:
            self._guards.encode(lambda g: self._encode_guard(g, key, cache_root, progress))

    def _encode_guard(
        self, guard: GuardData, key: dict[str, Any], cache_root: Path, progress: bool
    ) -> Encoded:
        from whisper_sv.data.store import store_id

        return encode_clips(
            self._model,
            guard.dataset,
            guard.indices,
            cache_root,
            {**key, "store": store_id(guard.store), "split": guard.split, "n": len(guard.indices)},
            batch_size=self._cfg.eval_batch_size,
            accelerator=self._acc,
            progress=progress,
            desc=f"encoding guard {guard.spec.name}",
            upto=self._cut,
        )

    def scores(
        self,
        start_translations: Mapping[str, Sequence[str]] | None,
        rejected: RejectFn | None = None,
    ) -> Scores:
        """Validation, then guard scores of the model as it is now (all processes);
        ``start_translations`` are the start model's (None at step 0: chrF is then 100);
        ``rejected`` stops the guards early (:meth:`RunGuards.score`)."""
        validation = self.validation()
        guards, translations = self.guard_scores(start_translations, rejected)
        return Scores(validation, guards, translations)

    def validation(self) -> EvalResult | None:
        """Validation loss and WER/CER over this run's validation clips (all processes)."""
        import torch

        if not self._val_indices:
            return None
        acc = self._acc
        base = acc.unwrap_model(self._model)
        base.eval()
        t0 = time.perf_counter()
        with torch.no_grad(), acc.autocast():
            if self._val_enc is not None:
                parts = self._score_cached(base, self._val_enc, self._evaluator)
            else:
                parts = self._score_live(base, self._val_set, self._val_indices, self._evaluator)
        everything = [p for ps in gather_objects(acc, parts) for p in ps]
        return finish_eval(everything, time.perf_counter() - t0)

    def guard_scores(
        self,
        start_translations: Mapping[str, Sequence[str]] | None,
        rejected: RejectFn | None = None,
    ) -> tuple[dict[str, float], dict[str, list[str]]]:
        """(the guards' metrics columns, each translate guard's English) of the model as it is
        now (({}, {}) without guards)."""
        import torch

        if self._guards is None:
            return {}, {}
        acc = self._acc
        base = acc.unwrap_model(self._model)
        base.eval()

        def parts(guard: GuardData, evaluator: Evaluator) -> list[Any]:
            if guard.encoded is not None:
                mine = self._score_cached(base, guard.encoded, evaluator)
            else:
                mine = self._score_live(base, guard.dataset, guard.indices, evaluator)
            return [p for ps in gather_objects(acc, mine) for p in ps]

        with torch.no_grad(), acc.autocast():
            return self._guards.score(parts, start_translations, rejected)

    def _score_cached(self, base: Any, enc: Encoded, evaluator: Evaluator) -> list[Any]:
        """This process's share of some clips, from cached encoder outputs."""
        import torch

        acc, bs = self._acc, self._cfg.eval_batch_size
        # Similar lengths together: a batch decodes until its longest clip ends.
        order = sorted(range(len(enc.labels)), key=lambda i: len(enc.labels[i]))
        mine = order[acc.process_index :: acc.num_processes]
        parts = []
        for s in range(0, len(mine), bs):
            idx = mine[s : s + bs]
            hidden = torch.from_numpy(np.stack([enc.hidden[i] for i in idx]))
            hidden = hidden.to(acc.device, dtype=torch.float32)
            if self._cut is not None:
                hidden = finish_encoder(unwrap_base(base).get_encoder(), hidden, self._cut)
            labels = pad_labels([enc.labels[i] for i in idx])
            parts.append(evaluator.batch(base, hidden, labels))
        return parts

    def _score_live(
        self, base: Any, dataset: Any, indices: Sequence[int], evaluator: Evaluator
    ) -> list[Any]:
        """This process's share of some clips, running the encoder."""
        from torch.utils.data import DataLoader, Subset

        from whisper_sv.data.store import collate

        acc = self._acc
        mine = list(indices)[acc.process_index :: acc.num_processes]
        loader = DataLoader(
            Subset(dataset, mine), batch_size=self._cfg.eval_batch_size, collate_fn=collate
        )
        encoder = unwrap_base(base).get_encoder()
        parts = []
        for batch in loader:
            hidden = encoder(batch["input_features"].to(acc.device)).last_hidden_state
            parts.append(evaluator.batch(base, hidden, batch["labels"]))
        return parts
