"""One training run: config and data plan, set-up and objective, the loop, model scores, guards
and the choice of best/, checkpoints, averaging and export. Imports core, models and data;
never infer.

The names below are what other subpackages may use; each loads its module on first use.
"""

from whisper_sv import lazy_exports

_WHERE = {
    "average_checkpoints": "averaging",
    "best_verdict": "selection",
    "chrf": "guards",
    "english_share": "guards",
    "evaluate_model": "averaging",
    "evaluate_split": "scoring",
    "Evaluator": "scoring",
    "export_run": "export",
    "finish_eval": "scoring",
    "greedy_decode": "scoring",
    "GUARDS_JSON": "selection",
    "GuardSpec": "guards",
    "planned_steps": "config",
    "prepare_guard_store": "guards",
    "train": "run",
    "train_units": "data_plan",
    "TrainConfig": "config",
}
__all__ = [
    "average_checkpoints",
    "best_verdict",
    "chrf",
    "english_share",
    "evaluate_model",
    "evaluate_split",
    "Evaluator",
    "export_run",
    "finish_eval",
    "greedy_decode",
    "GUARDS_JSON",
    "GuardSpec",
    "planned_steps",
    "prepare_guard_store",
    "train",
    "train_units",
    "TrainConfig",
]
__getattr__ = lazy_exports(__name__, _WHERE)
