"""The training loop of one run: micro-batches, optimizer steps, the evaluation schedule and
the metrics table.

:class:`Trainer` is made and driven by :func:`whisper_sv.train.run.train`. The jobs around the
loop are objects of their own that it calls: scoring the model
(:class:`~whisper_sv.train.model_scores.ModelScorer`), choosing best/
(:class:`~whisper_sv.train.selection.BestModelSelector`) and writing the model's files
(:class:`~whisper_sv.train.saving.ModelSaver`). Each evaluation is: scores, the metrics row
(:meth:`Trainer.record_evaluation`), then the selector's decision.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from whisper_sv.core.fsutil import newer
from whisper_sv.core.run_folder import RunFolder
from whisper_sv.core.run_metrics import MetricsRow
from whisper_sv.core.runtime import unwrap_base
from whisper_sv.data.store import pad_labels
from whisper_sv.train.checkpoints import TrainState
from whisper_sv.train.config import TrainConfig, TrainResult
from whisper_sv.train.data_plan import RankBatches, StreamOrder
from whisper_sv.train.encoder_cache import (
    Encoded,
    encode_clips,
    finish_encoder,
    first_trained_layer,
    model_fingerprint,
)
from whisper_sv.train.guard_scores import make_run_guards
from whisper_sv.train.model_scores import ModelScorer, Scores
from whisper_sv.train.objective import Objective
from whisper_sv.train.saving import ModelSaver, model_card
from whisper_sv.train.scoring import EvalResult, decoder_io, has_prompt, strip_sot
from whisper_sv.train.selection import BestModelSelector
from whisper_sv.train.setup import set_train_mode

if TYPE_CHECKING:
    import torch
    from transformers import WhisperProcessor

    from whisper_sv.data.store import FeatureStore

log = logging.getLogger(__name__)

__all__ = ["Trainer"]


class Trainer:
    """The loop and its state of one run (see the module docstring)."""

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
        anchors: np.ndarray | None = None,
    ) -> None:
        self.cfg, self.run, self.store = cfg, run, store
        self.processor, self.model = processor, model
        self.optimizer, self.scheduler, self.acc = optimizer, scheduler, accelerator
        self.max_steps, self.model_dir = max_steps, model_dir
        self.info, self.progress = info, progress
        self.state = TrainState(world_size=accelerator.num_processes)
        tok = processor.tokenizer
        self.sot = int(tok.convert_tokens_to_ids("<|startoftranscript|>"))
        self.startofprev = int(tok.convert_tokens_to_ids("<|startofprev|>"))
        self.pad = int(tok.convert_tokens_to_ids("<|endoftext|>"))  # Whisper pads with EOT
        self.train_set = store.torch_dataset("train")
        self.windows = windows
        self.translate_windows = list(translate_windows)
        # Per training item: trained on the start model's distribution alone (anchor_sources)
        self.anchors = anchors if anchors is not None and anchors.any() else None
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
        self.cache_root = Path(cfg.cache_dir) if cfg.cache_dir else run.path / "cache"
        # The first trained encoder layer (encoder_top_layers): cached hidden states enter it,
        # and every forward pass runs the encoder from there. None: the encoder is frozen.
        encoder = accelerator.unwrap_model(model).get_encoder()
        self.encoder_cut = first_trained_layer(encoder, cfg.encoder_top_layers)
        self.train_enc: Encoded | None = None
        self._make_parts(has_val)
        self.objective = Objective(cfg, accelerator.unwrap_model(model))

    def _make_parts(self, has_val: bool) -> None:
        """The scorer, the saver and the best-model selector of this run."""
        from whisper_sv.core.runtime import unwrap_base

        cfg, acc = self.cfg, self.acc
        guards = None
        if cfg.guards:
            guards = make_run_guards(
                cfg.guards,
                processor=self.processor,
                model=unwrap_base(self.model),
                model_ref=str(self.info["model"]),
                cache_dir=cfg.cache_dir,
                max_new_tokens=cfg.eval_max_new_tokens,
                language=self.store.config.language,
            )
        self.scorer = ModelScorer(
            cfg=cfg,
            store=self.store,
            processor=self.processor,
            model=self.model,
            accelerator=acc,
            has_val=has_val,
            guards=guards,
        )
        self.saver = ModelSaver(
            cfg=cfg,
            run=self.run,
            processor=self.processor,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            accelerator=acc,
            max_steps=self.max_steps,
        )
        self.selector = BestModelSelector(
            cfg=cfg,
            state=self.state,
            run=self.run,
            saver=self.saver,
            guard_names=guards.names if guards is not None else None,
            is_main=acc.is_main_process,
        )

    # ------------------------------------------------------------ data

    def _encoder_caches(self) -> None:
        if not self.cfg.uses_encoder_cache:
            return
        key = {
            "model": model_fingerprint(self.model_dir),
            "store": self.info["store_id"],
            "format": 1,
            # bf16 and fp32 encoders give (slightly) different outputs; the cache may be shared
            # by runs of both (the demo keeps it in the user's cache folder).
            "precision": str(self.acc.mixed_precision),
        }
        train_key = {**key, "split": "train", "timestamp_share": self.cfg.timestamp_share}
        if self.cfg.prompt_share:  # (keys of runs without prompts stay as they were)
            train_key["prompt_share"] = self.cfg.prompt_share
        self.train_enc = encode_clips(
            self.model,
            self.train_set,
            list(range(len(self.train_set))),
            self.cache_root,
            {**train_key, **({"windows": self.windows} if self.windows else {})},
            batch_size=self.cfg.eval_batch_size,
            accelerator=self.acc,
            progress=self.progress,
            desc="encoding train windows" if self.windows else "encoding train clips",
            upto=self.encoder_cut,
        )
        self.scorer.encode(key, self.cache_root, progress=self.progress)
        if self.translate_windows:
            from whisper_sv.train.translation_labels import label_translation_windows

            label_translation_windows(
                self.train_enc,
                self.translate_windows,
                path=self.run.path / "translate-labels.json",
                resumed=self.state.step > 0,
                model=self.model,
                processor=self.processor,
                accelerator=self.acc,
                language=self.store.config.language,
                batch_size=self.cfg.eval_batch_size,
                encoder_from=self.encoder_cut,
            )

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
                batch = {
                    "hidden": hidden.to(device, dtype=torch.float32, non_blocking=True),
                    **self._targets(labels.to(device)),
                }
                if self.anchors is not None:
                    batch["anchor"] = torch.from_numpy(self.anchors[idx]).to(device)
                yield batch
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
        inputs = {k: v for k, v in batch.items() if k not in ("hidden", "input_features", "anchor")}
        if "hidden" in batch:
            inputs["encoder_outputs"] = (batch["hidden"],)
        else:
            inputs["input_features"] = batch["input_features"]

        def run(net: Any, x: dict[str, Any]) -> Any:
            with self.acc.autocast():  # the teacher is not prepared by accelerate
                if self.encoder_cut is not None:  # each network runs its own encoder top
                    encoder = unwrap_base(net).get_encoder()
                    hidden = finish_encoder(encoder, batch["hidden"], self.encoder_cut)
                    x = {**x, "encoder_outputs": (hidden,)}
                return net(use_cache=False, **x)

        return self.objective(
            self.model, self.acc.unwrap_model(self.model), inputs, run, batch.get("anchor")
        )

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

    def _evaluate_and_record(self) -> None:
        """The evaluation step: score, record the row, let the selector keep best/, stop
        early when it says so."""
        st = self.state
        scores = self._start_scores() if st.step == 0 else None
        if scores is None:
            sel = self.selector
            scores = self.scorer.scores(sel.start_translations, sel.early_reject)
            if st.step == 0:
                self._keep_start_scores(scores)
        self.record_evaluation(scores.validation, scores.guards)
        if self.selector.consider(st.step, scores).stop_early:
            st.stopped_early = True
        if self.acc.is_main_process:
            self.run.reports.write_metrics([MetricsRow.from_dict(r) for r in st.rows])

    @functools.cached_property
    def _start_scores_path(self) -> Path | None:
        """Where the start model's scores of this run's validation and guards are kept: the
        encoder cache's folder (shared between runs when ``cache_dir`` is set), one process
        only (several would each need the file). Worked out once: the key reads every guard
        clip's file size and time."""
        if not self.cfg.uses_encoder_cache or self.acc.num_processes > 1:
            return None
        import dataclasses
        import hashlib
        import json

        cfg = self.cfg
        key = {
            "model": model_fingerprint(self.model_dir),
            "store": self.info["store_id"],
            "guards": [[dataclasses.asdict(g), self._guard_content(g.path)] for g in cfg.guards],
            "eval": [cfg.eval_limit, cfg.eval_beam_size, cfg.eval_max_new_tokens],
            "precision": str(self.acc.mixed_precision),
            "format": 1,
        }
        text = json.dumps(key, sort_keys=True, default=str)
        return (
            self.cache_root / f"start-scores-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
        )

    def _guard_content(self, path: str) -> str:
        """Identity of a guard's clips: a manifest's text and audio, or a store's shards."""
        from whisper_sv.data.store import FeatureStore, store_id
        from whisper_sv.train.guards import manifest_key

        if Path(path).is_dir():
            return store_id(FeatureStore(path))
        return manifest_key(Path(path), str(self.info["model"]))

    def _start_scores(self) -> Scores | None:
        """The start model's step-0 scores from an earlier run with the same model, data and
        evaluation (they cost a full evaluation and never change), or None."""
        import json

        path = self._start_scores_path
        if path is None or not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        val = data["validation"]
        validation = None
        if val is not None:
            val.update(references=tuple(val["references"]), hypotheses=tuple(val["hypotheses"]))
            validation = EvalResult(**val)
        log.info("step 0: the start model's scores read from %s", path)
        return Scores(validation, data["guards"], data["translations"])

    def _keep_start_scores(self, scores: Scores) -> None:
        import dataclasses
        import json

        from whisper_sv.core.fsutil import atomic_write_text

        path = self._start_scores_path
        if path is None:
            return
        val = dataclasses.asdict(scores.validation) if scores.validation else None
        data = {"validation": val, "guards": scores.guards, "translations": scores.translations}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, ensure_ascii=False))

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

    # ------------------------------------------------------------ saving

    def save_checkpoint(self) -> None:
        self.saver.save_checkpoint(self.state)

    def load_checkpoint(self, folder: Path) -> None:
        self.state = self.saver.load_checkpoint(folder)
        self.selector.resume(self.state)
        if self.acc.is_main_process:
            # Rows after the checkpoint belong to the lost part of the run: they are redone.
            self.run.reports.write_metrics([MetricsRow.from_dict(r) for r in self.state.rows])

    # ------------------------------------------------------------ the end

    def _finish(self) -> None:
        """best/ (the selector's), curves, card, ct2 export."""
        acc, st, run = self.acc, self.state, self.run
        self.selector.finish(self.scorer)
        if acc.is_main_process:
            rows = [MetricsRow.from_dict(r) for r in st.rows]
            run.reports.write_metrics(rows)
            run.reports.write_curves(rows, title=run.path.name)
            card = model_card(
                cfg=self.cfg,
                store=self.store,
                info=self.info,
                rows=rows,
                state=st,
                processes=acc.num_processes,
                guard_section=self.selector.card_section(),
                home=run.path.parent,
            )
            run.reports.write_model_card(card)
            if self.cfg.export_ct2 and not newer(run.ct2_dir, run.best_dir):
                self.saver.export_ct2()
            if not self.cfg.cache_dir:
                shutil.rmtree(self.cache_root, ignore_errors=True)
        acc.wait_for_everyone()
