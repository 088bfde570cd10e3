"""The training loop of one run: micro-batches, optimizer steps, evaluation, best/, checkpoints.

:class:`Trainer` is made and driven by :func:`whisper_sv.train.run.train`. Each evaluation is
:meth:`Trainer.evaluate` (scores) then :meth:`Trainer.record_evaluation` (metrics row), and
the best model is chosen in :meth:`Trainer.is_better` / kept by :meth:`Trainer.save_best`:
small steps, so checks on what is scored or kept go in one place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from whisper_sv.core import run_folder as registry
from whisper_sv.core.fsutil import newer
from whisper_sv.core.run_folder import MetricsRow, RunFolder
from whisper_sv.core.runtime import gather_objects, unwrap_base
from whisper_sv.data.store import pad_labels
from whisper_sv.train import run_guards
from whisper_sv.train.checkpoints import TrainState, read_checkpoint, write_checkpoint
from whisper_sv.train.config import TrainConfig, TrainResult
from whisper_sv.train.data_plan import RankBatches, StreamOrder
from whisper_sv.train.encoder_cache import Encoded, encode_clips, model_fingerprint
from whisper_sv.train.guards import GuardCheck, regressions, selection_score
from whisper_sv.train.objective import Objective
from whisper_sv.train.scoring import (
    EvalResult,
    Evaluator,
    decoder_io,
    finish_eval,
    has_prompt,
    strip_sot,
)
from whisper_sv.train.setup import set_train_mode, trainable_params

if TYPE_CHECKING:
    import torch
    from transformers import WhisperProcessor

    from whisper_sv.data.store import FeatureStore

log = logging.getLogger(__name__)

__all__ = ["Trainer"]


class Trainer:
    """The loop, its state, evaluation and checkpoints of one run."""

    def __init__(
        self,
        *,
        cfg: TrainConfig,
        run: RunFolder,
        store: FeatureStore,
        processor: WhisperProcessor,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        accelerator: Any,
        max_steps: int,
        has_val: bool,
        model_dir: Path,
        info: dict[str, Any],
        progress: bool,
        windows: list[list[int]] | None = None,
        translate_windows: Sequence[int] = (),
    ) -> None:
        self.cfg, self.run, self.store = cfg, run, store
        self.processor, self.model = processor, model
        self.optimizer, self.scheduler, self.acc = optimizer, scheduler, accelerator
        self.max_steps, self.has_val = max_steps, has_val
        self.model_dir, self.info, self.progress = model_dir, info, progress
        self.state = TrainState(world_size=accelerator.num_processes)
        tok = processor.tokenizer
        self.sot = int(tok.convert_tokens_to_ids("<|startoftranscript|>"))
        self.startofprev = int(tok.convert_tokens_to_ids("<|startofprev|>"))
        self.pad = int(tok.convert_tokens_to_ids("<|endoftext|>"))  # Whisper pads with EOT
        base = unwrap_base(model)
        self.evaluator = Evaluator(
            processor,
            base,
            language=store.config.language,
            task=store.config.task,
            max_new_tokens=cfg.eval_max_new_tokens,
            beam_size=cfg.eval_beam_size,
        )
        self.train_set = store.torch_dataset("train")
        self.windows = windows
        self.translate_windows = list(translate_windows)
        if windows is not None:
            from whisper_sv.data.packing import PackedRows

            texts = [m["text"] for m in store.metadata("train", columns=("text",))]
            self.train_set = PackedRows(
                self.train_set,
                windows,
                texts,
                processor.tokenizer,
                timestamp_share=cfg.timestamp_share,
                prompt_share=cfg.prompt_share,
                seed=cfg.seed,
            )
        # Shard by shard keeps reads local; cached encoder outputs are all in memory, so there
        # the whole split is shuffled at once: a mixed-in part that sits in a few shards (real
        # speech, translation windows) is then spread over every stretch of steps instead of
        # coming in bursts, between which the model forgets it (docs/experiments.md, sec. 8).
        offsets = self.train_set.offsets
        if cfg.uses_encoder_cache:
            offsets = np.array([0, len(self.train_set)], dtype=np.int64)
        self.order = StreamOrder(offsets, cfg.seed)
        self.val_set = store.torch_dataset("validation") if has_val else None
        n_val = len(self.val_set) if self.val_set is not None else 0
        self.val_indices = list(range(min(n_val, cfg.eval_limit) if cfg.eval_limit else n_val))
        self.cache_root = Path(cfg.cache_dir) if cfg.cache_dir else run.path / "cache"
        self.train_enc: Encoded | None = None
        self.val_enc: Encoded | None = None
        self.guards = self._make_guards(base) if cfg.guards else None
        # The start model's trainable weights (taken before a checkpoint is loaded) and the
        # best-validation weights whatever the guards said: the two ends of WiSE-FT.
        self.start_weights = self.trainable_copy() if cfg.interpolate else None
        self.objective = Objective(cfg, accelerator.unwrap_model(model))
        self.raw_best_weights: dict[str, Any] | None = None

    def _make_guards(self, base: Any) -> Any:
        from whisper_sv.core.fsutil import cache_dir
        from whisper_sv.train.run_guards import RunGuards

        # Guard stores outlive the run (RUN/cache is removed at the end): later runs and
        # other trials reuse them.
        root = Path(self.cfg.cache_dir) if self.cfg.cache_dir else cache_dir()
        return RunGuards(
            self.cfg.guards,
            processor=self.processor,
            model=base,
            model_ref=str(self.info["model"]),
            cache_root=root,
            max_new_tokens=self.cfg.eval_max_new_tokens,
            language=self.store.config.language,
        )

    def trainable_copy(self) -> dict[str, Any]:
        base = self.acc.unwrap_model(self.model)
        return {n: p.detach().to("cpu", copy=True) for n, p in trainable_params(base).items()}

    def load_trainable(self, weights: dict[str, Any]) -> None:
        import torch

        params = trainable_params(self.acc.unwrap_model(self.model))
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(weights[name].to(p.device, p.dtype))

    # ------------------------------------------------------------ data

    def _encoder_caches(self) -> None:
        if not self.cfg.uses_encoder_cache:
            return
        key = {
            "model": model_fingerprint(self.model_dir),
            "store": self.info["store_id"],
            "format": 1,
        }
        bs = self.cfg.eval_batch_size
        train_key = {**key, "split": "train", "timestamp_share": self.cfg.timestamp_share}
        if self.cfg.prompt_share:  # (keys of runs without prompts stay as they were)
            train_key["prompt_share"] = self.cfg.prompt_share
        self.train_enc = encode_clips(
            self.model,
            self.train_set,
            list(range(len(self.train_set))),
            self.cache_root,
            {**train_key, **({"windows": self.windows} if self.windows else {})},
            batch_size=bs,
            accelerator=self.acc,
            progress=self.progress,
            desc="encoding train windows" if self.windows else "encoding train clips",
        )
        if self.val_set is not None and self.val_indices:
            self.val_enc = encode_clips(
                self.model,
                self.val_set,
                self.val_indices,
                self.cache_root,
                {**key, "split": "validation", "n": len(self.val_indices)},
                batch_size=bs,
                accelerator=self.acc,
                progress=self.progress,
                desc="encoding validation clips",
            )
        if self.guards is not None:
            self.guards.encode(lambda g: self._encode_guard(g, key))
        self._distill_translations()

    def _encode_guard(self, guard: Any, key: dict[str, Any]) -> Encoded:
        from whisper_sv.data.store import store_id

        return encode_clips(
            self.model,
            guard.dataset,
            guard.indices,
            self.cache_root,
            {**key, "store": store_id(guard.store), "split": guard.split, "n": len(guard.indices)},
            batch_size=self.cfg.eval_batch_size,
            accelerator=self.acc,
            progress=self.progress,
            desc=f"encoding guard {guard.spec.name}",
        )

    def _distill_translations(self) -> None:
        """Label the translation windows (one clip each, ``translate_share`` of the clips:
        train_data.with_translation_windows) with the start model's English
        (made once, at step 0, and kept in RUN/translate-labels.json for a resume)."""
        import torch

        from whisper_sv.train.run_guards import translation_labels

        cfg, enc = self.cfg, self.train_enc
        if not self.translate_windows or enc is None:
            return
        path = self.run.path / "translate-labels.json"
        if path.is_file():
            made = {int(k): v for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
        elif self.state.step > 0:
            log.warning("%s is missing: training on without translation labels", path)
            return
        else:
            chosen = self.translate_windows
            base = self.acc.unwrap_model(self.model)
            base.eval()
            with torch.no_grad(), self.acc.autocast():
                made = translation_labels(
                    base,
                    self.processor,
                    enc.hidden,
                    enc.labels,
                    chosen,
                    language=self.store.config.language,
                    device=self.acc.device,
                    batch_size=cfg.eval_batch_size,
                )
            if self.acc.is_main_process:
                registry.write_text_atomic(path, json.dumps(made))
            log.info(
                "%d of %d translation clips labelled with the start model's English (the rest "
                "were empty, loops or not English: they train in Swedish); %d training windows "
                "in all",
                len(made),
                len(chosen),
                len(enc.labels),
            )
        for i, label in made.items():
            enc.labels[i] = label

    def _micro_batches(self, cursor: int) -> Iterator[dict[str, torch.Tensor]]:
        """Training micro-batches for this process from stream position ``cursor``."""
        import torch
        from torch.utils.data import DataLoader

        from whisper_sv.data.store import collate

        sampler = RankBatches(
            self.order, cursor, self.cfg.batch_size, self.acc.num_processes, self.acc.process_index
        )
        device = self.acc.device
        if self.train_enc is not None:
            enc = self.train_enc
            for idx in sampler:
                hidden = torch.from_numpy(np.stack([enc.hidden[i] for i in idx]))
                labels = pad_labels([enc.labels[i] for i in idx])
                yield {
                    "hidden": hidden.to(device, dtype=torch.float32, non_blocking=True),
                    **self._targets(labels.to(device)),
                }
            return
        workers = self.cfg.num_workers
        if workers < 0:
            workers = 4 if device.type == "cuda" else 0
        loader = DataLoader(
            self.train_set,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            # Its own generator: a DataLoader draws worker seeds from the global RNG when it
            # starts iterating, which would shift the dropout stream of a resumed run.
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )
        for batch in loader:
            yield {
                "input_features": batch["input_features"].to(device, non_blocking=True),
                **self._targets(batch["labels"].to(device)),
            }

    # ------------------------------------------------------------ loop

    def _targets(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's label arguments: rows with a previous-text prompt (prompt_share) need
        their decoder inputs spelt out, since the model's own right shift would feed it the
        prompt's ignored (-100) positions as padding."""
        if has_prompt(labels, self.startofprev):
            return decoder_io(labels, self.sot, self.pad)
        return {"labels": strip_sot(labels, self.sot)}

    def _forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to minimise, the labels' cross-entropy) of one micro-batch."""
        inputs = {k: v for k, v in batch.items() if k not in ("hidden", "input_features")}
        if "hidden" in batch:
            inputs["encoder_outputs"] = (batch["hidden"],)
        else:
            inputs["input_features"] = batch["input_features"]

        def run(net: Any, x: dict[str, Any]) -> Any:
            with self.acc.autocast():  # the teacher is not prepared by accelerate
                return net(use_cache=False, **x)

        return self.objective(self.model, self.acc.unwrap_model(self.model), inputs, run)

    def fit(self, resumed_from: int) -> TrainResult:
        """Train until the planned step (or early stopping); then best/, card and export."""
        from tqdm.auto import tqdm

        cfg, st = self.cfg, self.state
        done = st.step >= self.max_steps or st.stopped_early
        t_enc = time.perf_counter()
        if not done:
            self._encoder_caches()
        encode_seconds = time.perf_counter() - t_enc
        # Guards need the start model's values: they always evaluate step 0.
        if st.step == 0 and (cfg.eval_at_start or cfg.guards) and not st.rows:
            self._evaluate_and_record()
        start_step = st.step
        t0 = time.perf_counter()
        batches = None if done else self._micro_batches(st.cursor)
        bar = tqdm(
            total=self.max_steps,
            initial=st.step,
            desc="training",
            unit="step",
            disable=not self.progress or done,
        )
        set_train_mode(self.model, cfg)
        step_times: list[float] = []
        losses: list[float] = []
        while not done:
            t_step = time.perf_counter()
            mean_loss = self._step(batches)
            step_times.append(time.perf_counter() - t_step)
            losses.append(mean_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            done = self._after_step()
        bar.close()
        seconds = time.perf_counter() - t0
        self._finish()
        return self._result(resumed_from, start_step, seconds, encode_seconds, step_times, losses)

    def _step(self, batches: Iterator[dict[str, torch.Tensor]]) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; its mean loss (all processes)."""
        import torch

        cfg, st, acc = self.cfg, self.state, self.acc
        per_step = cfg.batch_size * acc.num_processes
        step_loss = torch.zeros((), device=acc.device)
        for k in range(cfg.grad_accum):
            batch = next(batches)
            last = k == cfg.grad_accum - 1
            # No gradient all-reduce until the last micro-batch of the step.
            ctx = acc.no_sync(self.model) if not last else contextlib.nullcontext()
            with ctx:
                loss, cross_entropy = self._forward(batch)
                acc.backward(loss / cfg.grad_accum)
            # The table's Training Loss stays the labels' cross-entropy, comparable across
            # objectives (objective.py).
            step_loss += cross_entropy.detach() / cfg.grad_accum
            st.cursor += per_step
        if cfg.max_grad_norm > 0:
            acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        mean_loss = float(acc.reduce(step_loss, reduction="mean"))  # waits for the step
        st.loss_sum += mean_loss
        st.loss_count += 1
        return mean_loss

    def _after_step(self) -> bool:
        """Evaluate and checkpoint when due; whether training is over."""
        cfg, st = self.cfg, self.state
        final = st.step >= self.max_steps
        if st.step % cfg.eval_steps == 0 or final:
            self._evaluate_and_record()
            set_train_mode(self.model, cfg)
            final = final or st.stopped_early
        if st.step % cfg.save_steps == 0 or final:
            self.save_checkpoint()
        return final

    def _result(
        self,
        resumed_from: int,
        start_step: int,
        seconds: float,
        encode_seconds: float,
        step_times: Sequence[float],
        losses: Sequence[float],
    ) -> TrainResult:
        cfg, st, acc = self.cfg, self.state, self.acc
        samples = (st.step - start_step) * cfg.batch_size * cfg.grad_accum * acc.num_processes
        return TrainResult(
            run=self.run.path,
            step=st.step,
            max_steps=self.max_steps,
            resumed_from=resumed_from,
            stopped_early=st.stopped_early,
            best_step=st.best_step,
            best_wer=st.best_wer,
            rows=tuple(MetricsRow.from_dict(r) for r in st.rows),
            train_seconds=seconds,
            samples=samples,
            config=cfg,
            world_size=acc.num_processes,
            encode_seconds=encode_seconds,
            step_seconds=tuple(step_times),
            losses=tuple(losses),
        )

    # ------------------------------------------------------------ evaluation

    def evaluate(self) -> EvalResult | None:
        """Validation loss and WER/CER over this run's validation clips (all processes)."""
        import torch

        if not self.val_indices:
            return None
        acc = self.acc
        base = acc.unwrap_model(self.model)
        base.eval()
        t0 = time.perf_counter()
        with torch.no_grad(), acc.autocast():
            if self.val_enc is not None:
                parts = self._score_cached(base, self.val_enc, self.evaluator)
            else:
                parts = self._score_live(base, self.val_set, self.val_indices, self.evaluator)
        everything = [p for ps in gather_objects(acc, parts) for p in ps]
        return finish_eval(everything, time.perf_counter() - t0)

    def _score_cached(self, base: Any, enc: Encoded, evaluator: Evaluator) -> list[Any]:
        """This process's share of some clips, from cached encoder outputs."""
        import torch

        acc, bs = self.acc, self.cfg.eval_batch_size
        # Similar lengths together: a batch decodes until its longest clip ends.
        order = sorted(range(len(enc.labels)), key=lambda i: len(enc.labels[i]))
        mine = order[acc.process_index :: acc.num_processes]
        parts = []
        for s in range(0, len(mine), bs):
            idx = mine[s : s + bs]
            hidden = torch.from_numpy(np.stack([enc.hidden[i] for i in idx]))
            hidden = hidden.to(acc.device, dtype=torch.float32)
            labels = pad_labels([enc.labels[i] for i in idx])
            parts.append(evaluator.batch(base, hidden, labels))
        return parts

    def _score_live(
        self, base: Any, dataset: Any, indices: Sequence[int], evaluator: Evaluator
    ) -> list[Any]:
        """This process's share of some clips, running the encoder."""
        from torch.utils.data import DataLoader, Subset

        from whisper_sv.data.store import collate

        acc = self.acc
        mine = list(indices)[acc.process_index :: acc.num_processes]
        loader = DataLoader(
            Subset(dataset, mine), batch_size=self.cfg.eval_batch_size, collate_fn=collate
        )
        encoder = unwrap_base(base).get_encoder()
        parts = []
        for batch in loader:
            hidden = encoder(batch["input_features"].to(acc.device)).last_hidden_state
            parts.append(evaluator.batch(base, hidden, batch["labels"]))
        return parts

    def guard_values(self) -> dict[str, float]:
        """The guards' metrics columns for the model as it is now ({} without guards). The
        first call (step 0) records the start model's values and translations."""
        import torch

        if self.guards is None:
            return {}
        acc, st = self.acc, self.state
        base = acc.unwrap_model(self.model)
        base.eval()

        def parts(guard: Any, evaluator: Evaluator) -> list[Any]:
            if guard.encoded is not None:
                mine = self._score_cached(base, guard.encoded, evaluator)
            else:
                mine = self._score_live(base, guard.dataset, guard.indices, evaluator)
            return [p for ps in gather_objects(acc, mine) for p in ps]

        with torch.no_grad(), acc.autocast():
            values, translations = self.guards.score(parts, st.guard_start.get("translations"))
        if not st.guard_start:
            st.guard_start = {"step": st.step, "values": values, "translations": translations}
        return values

    def guard_regressions(self, values: dict[str, float]) -> list[GuardCheck]:
        """The guard values worse than the start model's beyond the tolerances."""
        cfg = self.cfg
        return regressions(
            values,
            self.state.guard_start.get("values", {}),
            wer_tolerance=cfg.guard_tolerance,
            chrf_tolerance=cfg.guard_chrf_tolerance,
            english_tolerance=cfg.guard_english_tolerance,
            specs=cfg.guards,
        )

    def _evaluate_and_record(self) -> None:
        """The evaluation step: score, record the row, keep best/, decide early stopping."""
        result = self.evaluate() if self.has_val else None
        values = self.guard_values()
        self.record_evaluation(result, values)
        self._track_best(result, values)
        if self.acc.is_main_process:
            self.run.write_metrics([MetricsRow.from_dict(r) for r in self.state.rows])

    def record_evaluation(
        self, result: EvalResult | None, guard_values: dict[str, float] | None = None
    ) -> None:
        """The metrics row of this step (train loss since the last row, validation and
        guard scores)."""
        st = self.state
        train_loss = st.loss_sum / st.loss_count if st.loss_count else None
        row = MetricsRow(
            step=st.step,
            train_loss=train_loss,
            val_loss=result.val_loss if result else None,
            wer=result.wer if result else None,
            cer=result.cer if result else None,
            extra=dict(guard_values or {}),
        )
        st.rows = [r for r in st.rows if r["step"] != st.step] + [row.as_dict()]
        st.loss_sum, st.loss_count = 0.0, 0
        if result is not None:
            log.info(
                "step %d: train loss %s, val loss %.4f, WER %.2f, CER %.2f (%d clips, %.1f s)",
                st.step,
                f"{train_loss:.4f}" if train_loss is not None else "-",
                result.val_loss,
                result.wer,
                result.cer,
                result.n,
                result.seconds,
            )

    def score(self, result: EvalResult, guard_values: dict[str, float]) -> float:
        """What best/ minimises (``TrainConfig.select``; guards.selection_score)."""
        return selection_score(self.cfg.select, result.wer, guard_values)

    def is_better(self, score: float) -> bool:
        """Whether a model of selection ``score`` should replace best/ (a lower one)."""
        st = self.state
        best = st.best_score if st.best_score is not None else st.best_wer
        return best is None or score < best

    def _track_best(self, result: EvalResult | None, guard_values: dict[str, float]) -> None:
        """Keep best/ when ``result`` is better and no guard regressed; count evaluations
        without gain (patience) and with a regressed guard (guard_patience)."""
        st, cfg = self.state, self.cfg
        checks = self.guard_regressions(guard_values)
        score = self.score(result, guard_values) if result is not None else None
        self._track_guards(result, checks, score)
        if result is None or score is None:
            if self.guards is not None and not checks:
                # No validation split: the latest model that keeps its guards.
                st.best_step, st.best_guards = st.step, dict(guard_values)
                self.save_best()
            return
        if self.is_better(score) and not checks:
            st.best_wer, st.best_step, st.bad_evals = result.wer, st.step, 0
            st.best_score = score
            st.best_guards = dict(guard_values)
            self.save_best()
        elif st.step > 0:
            st.bad_evals += 1
            if cfg.patience and st.bad_evals >= cfg.patience:
                log.info(
                    "early stopping at step %d: no better WER in %d evaluations (best %.2f "
                    "at step %d)",
                    st.step,
                    st.bad_evals,
                    st.best_wer,
                    st.best_step,
                )
                st.stopped_early = True

    def _track_guards(
        self,
        result: EvalResult | None,
        checks: list[GuardCheck],
        score: float | None,
    ) -> None:
        """The best model by selection score whatever the guards say (WiSE-FT starts from it), the
        loud message when a better model is refused, and stopping on guard regressions."""
        st, cfg = self.state, self.cfg
        raw = st.raw_best_score if st.raw_best_score is not None else st.raw_best_wer
        if result is not None and score is not None and (raw is None or score < raw):
            st.raw_best_wer, st.raw_best_step, st.raw_best_score = result.wer, st.step, score
            if self.start_weights is not None:
                self.raw_best_weights = self.trainable_copy()
        if not checks:
            st.guard_bad_evals = 0
            return
        st.guard_bad_evals += 1
        log.warning(
            "step %d is not a candidate for best/: real-speech guard(s) regressed: %s",
            st.step,
            "; ".join(c.describe() for c in checks),
        )
        if cfg.guard_patience and st.guard_bad_evals >= cfg.guard_patience:
            log.warning(
                "early stopping at step %d: guards regressed in %d evaluations in a row",
                st.step,
                st.guard_bad_evals,
            )
            st.stopped_early = True

    # ------------------------------------------------------------ saving

    def _save_model_dir(self, out: Path) -> None:
        import copy

        model = self.acc.unwrap_model(self.model)
        if hasattr(model, "merge_and_unload"):  # LoRA: best/ is a plain model
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(out)
        self.processor.save_pretrained(out)

    def save_best(self) -> None:
        st = self.state
        if self.acc.is_main_process:

            def write(tmp: Path) -> None:
                self._save_model_dir(tmp)
                data = {"step": st.best_step, "wer": st.best_wer, "run": str(self.run.path)}
                if st.best_note:
                    data["note"] = st.best_note
                (tmp / "training_state.json").write_text(json.dumps(data))

            self.run.write_best(write)
        self.acc.wait_for_everyone()

    def save_checkpoint(self) -> None:
        write_checkpoint(
            self.run,
            self.state,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            accelerator=self.acc,
            max_steps=self.max_steps,
            keep=self.cfg.keep_checkpoints,
        )

    def load_checkpoint(self, folder: Path) -> None:
        self.state = read_checkpoint(
            folder,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            accelerator=self.acc,
            seed=self.cfg.seed,
        )
        if self.acc.is_main_process:
            # Rows after the checkpoint belong to the lost part of the run: they are redone.
            self.run.write_metrics([MetricsRow.from_dict(r) for r in self.state.rows])

    # ------------------------------------------------------------ the end

    def _finish(self) -> None:
        """best/ (the last model when there was no validation), curves, card, ct2 export."""
        acc, st, run = self.acc, self.state, self.run
        if not self.val_indices and self.guards is None:  # the last model is the one to use
            st.best_step = st.step
            self.save_best()
        elif not run.best_dir.is_dir():
            self.save_best()
        if self.cfg.interpolate and not (run.path / run_guards.INTERPOLATION_CSV).is_file():
            run_guards.interpolate(self)
        if acc.is_main_process and self.guards is not None:
            run_guards.write_summary(self)
        if acc.is_main_process:
            rows = [MetricsRow.from_dict(r) for r in st.rows]
            run.write_metrics(rows)
            run.write_curves(rows, title=run.path.name)
            run.write_model_card(self._card(rows))
            if self.cfg.export_ct2 and not newer(run.ct2_dir, run.best_dir):
                from whisper_sv.models.conversion import export_ct2

                log.info("exporting best/ to CTranslate2 in %s", run.ct2_dir)
                export_ct2(run.best_dir, run.ct2_dir, quantization=self.cfg.ct2_quantization)
            if not self.cfg.cache_dir:
                shutil.rmtree(self.cache_root, ignore_errors=True)
        acc.wait_for_everyone()

    def _card(self, rows: Sequence[MetricsRow]) -> str:
        from whisper_sv.core.config import to_dict

        splits = self.store.manifest.get("splits", {})
        data = {
            s: {"clips": self.store.num_rows(s), "hours": splits.get(s, {}).get("hours")}
            for s in self.store.splits()
        }
        settings = {k: v for k, v in to_dict(self.cfg).items()}
        settings["steps done"] = self.state.step
        settings["processes"] = self.acc.num_processes
        settings["precision"] = self.info.get("precision")
        card = registry.model_card(
            model=str(self.info["model"]),
            store=str(self.info["features"]),
            data=data,
            settings=settings,
            rows=rows,
            best_step=self.state.best_step,
            best_wer=self.state.best_wer,
            language=self.store.config.language,
        )
        if self.guards is None and not self.cfg.interpolate:
            return card
        return card.replace("## Use\n", run_guards.card_section(self) + "\n## Use\n", 1)
