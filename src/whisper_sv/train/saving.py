"""What a training run writes of its model: best/, checkpoints, the model card and the
CTranslate2 export, and the copies of the trainable weights that WiSE-FT mixes.

:class:`ModelSaver` is the one place that turns the model in memory into files of the run
folder (:mod:`whisper_sv.core.run_folder`); the trainer and the best-model selector call it
and never write model files themselves.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_sv.core import run_metrics
from whisper_sv.core.run_folder import RunFolder
from whisper_sv.core.run_metrics import MetricsRow
from whisper_sv.train.checkpoints import TrainState, read_checkpoint, write_checkpoint
from whisper_sv.train.setup import trainable_params

if TYPE_CHECKING:
    from transformers import WhisperProcessor

    from whisper_sv.data.store import FeatureStore
    from whisper_sv.train.config import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["ModelSaver", "model_card"]


class ModelSaver:
    """The run's model to and from its files (see the module docstring)."""

    def __init__(
        self,
        *,
        cfg: TrainConfig,
        run: RunFolder,
        processor: WhisperProcessor,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        accelerator: Any,
        max_steps: int,
    ) -> None:
        self._cfg, self._run, self._processor = cfg, run, processor
        self._model, self._optimizer, self._scheduler = model, optimizer, scheduler
        self._acc, self._max_steps = accelerator, max_steps

    def trainable_copy(self) -> dict[str, Any]:
        """The trainable weights as they are now, copied to the CPU."""
        base = self._acc.unwrap_model(self._model)
        return {n: p.detach().to("cpu", copy=True) for n, p in trainable_params(base).items()}

    def load_trainable(self, weights: dict[str, Any]) -> None:
        """Set the trainable weights to ``weights`` (a :meth:`trainable_copy`, or a mix)."""
        import torch

        params = trainable_params(self._acc.unwrap_model(self._model))
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(weights[name].to(p.device, p.dtype))

    def save_best(self, *, step: int | None, wer: float | None, note: str) -> None:
        """RUN/best/ from the model as it is now (all processes call it; the main one writes);
        ``step``, ``wer`` and ``note`` go to its training_state.json."""
        if self._acc.is_main_process:

            def write(tmp: Path) -> None:
                self._save_model_dir(tmp)
                data = {"step": step, "wer": wer, "run": str(self._run.path)}
                if note:
                    data["note"] = note
                (tmp / "training_state.json").write_text(json.dumps(data))

            self._run.write_best(write)
        self._acc.wait_for_everyone()

    def _save_model_dir(self, out: Path) -> None:
        import copy

        model = self._acc.unwrap_model(self._model)
        if hasattr(model, "merge_and_unload"):  # LoRA: best/ is a plain model
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(out)
        self._processor.save_pretrained(out)

    def save_checkpoint(self, state: TrainState) -> None:
        """RUN/checkpoints/step-N/ of the run at ``state.step`` (all processes call it)."""
        write_checkpoint(
            self._run,
            state,
            model=self._model,
            optimizer=self._optimizer,
            scheduler=self._scheduler,
            accelerator=self._acc,
            max_steps=self._max_steps,
            keep=self._cfg.keep_checkpoints,
        )

    def load_checkpoint(self, folder: Path) -> TrainState:
        """Load the checkpoint ``folder`` into the model, optimizer and RNGs; its loop state."""
        return read_checkpoint(
            folder,
            model=self._model,
            optimizer=self._optimizer,
            scheduler=self._scheduler,
            accelerator=self._acc,
            seed=self._cfg.seed,
        )

    def export_ct2(self) -> None:
        """RUN/ct2/ from RUN/best/ (main process)."""
        from whisper_sv.models.conversion import export_ct2

        run = self._run
        log.info("exporting best/ to CTranslate2 in %s", run.ct2_dir)
        export_ct2(run.best_dir, run.ct2_dir, quantization=self._cfg.ct2_quantization)


def model_card(
    *,
    cfg: TrainConfig,
    store: FeatureStore,
    info: dict[str, Any],
    rows: Sequence[MetricsRow],
    state: TrainState,
    processes: int,
    guard_section: str | None,
    home: Path | None = None,
) -> str:
    """RUN/model_card.md's text: the run's data, settings and metrics, and ``guard_section``
    (the best-model selector's guards and interpolation, Markdown) before "## Use".

    The start model is named as ``info["model_origin"]`` recorded it when the run began (a
    hub model with its revision and commit); ``home`` is the folder holding the run, which
    paths on the card are shown relative to.
    """
    from whisper_sv.core.config import to_dict
    from whisper_sv.models import ModelOrigin, model_origin

    splits = store.manifest.get("splits", {})
    data = {
        s: {"clips": store.num_rows(s), "hours": splits.get(s, {}).get("hours")}
        for s in store.splits()
    }
    settings = {k: v for k, v in to_dict(cfg).items()}
    settings["steps done"] = state.step
    settings["processes"] = processes
    settings["precision"] = info.get("precision")
    recorded = info.get("model_origin")
    # Runs begun before origins were recorded name their model by reference only.
    origin = ModelOrigin(**recorded) if recorded else model_origin(str(info["model"]))
    card = run_metrics.model_card(
        model=origin.markdown(),
        title=origin.title,
        base_model=origin.hub_id,
        base_model_revision=origin.revision,
        home=home,
        store=str(info["features"]),
        data=data,
        settings=settings,
        rows=rows,
        best_step=state.best_step,
        best_wer=state.best_wer,
        language=store.config.language,
    )
    if guard_section is None:
        return card
    return card.replace("## Use\n", guard_section + "\n## Use\n", 1)
