"""Which tasks a model can be trusted with, and which model to translate with.

A fine-tune that only ever saw ``<|transcribe|>`` labels forgets the translate task: asked for
English it answers in Swedish (measured in docs/experiments.md). A run is trusted to translate
only when its training checked translation against the start model (a guard with
``translate: true``: ``best/`` then never lost more than ``guard_english_tolerance`` points of
the share of its translations that are English). For any other run, English comes from the
model the run started from, and the caller says so.

Models that are not runs (the bundled model, a hub id, a folder from elsewhere) are taken as
they are: nothing says they lost a task.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from whisper_sv.core.run_folder import is_run_folder

log = logging.getLogger(__name__)

__all__ = ["TaskModel", "run_of", "translation_model"]


@dataclass(frozen=True)
class TaskModel:
    """The model to use for one task, and why."""

    model: str  # model reference to load for the task
    note: str  # "" when it is the model asked for; else why another one is used


def run_of(model_ref: str) -> Path | None:
    """The run folder behind ``model_ref``: the run itself, or its ``best/`` or ``ct2/``."""
    p = Path(model_ref).expanduser()
    for candidate in (p, p.parent):
        if is_run_folder(candidate):
            return candidate.resolve()
    return None


def _run_config(run: Path) -> dict:
    try:
        data = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        log.warning("cannot read %s (%s): treating its translation as unchecked", run, e)
        return {}
    return data if isinstance(data, dict) else {}


def translation_guarded(run: Path) -> bool:
    """Whether the run's training checked the translate task with a guard."""
    guards = (_run_config(run).get("train") or {}).get("guards") or []
    return any(isinstance(g, dict) and g.get("translate") for g in guards)


def translation_model(model_ref: str) -> TaskModel:
    """The model to translate with when the user picked ``model_ref``.

    A run whose translation was not guarded translates with its start model (recorded in its
    ``config.yaml``); every other reference translates with itself.
    """
    run = run_of(model_ref)
    if run is None or translation_guarded(run):
        return TaskModel(model_ref, "")
    start = str(_run_config(run).get("model") or "")
    if not start:
        from whisper_sv.models.references import DEFAULT_MODEL

        start = DEFAULT_MODEL
    note = (
        f"English by {start}: the fine-tuned run {run.name} was not checked on translation "
        "(train with a guard that has translate: true to use it for English)"
    )
    return TaskModel(start, note)
