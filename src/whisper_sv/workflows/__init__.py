"""Several stages or runs: the pipeline, the demo, experiments and studies. Imports train, infer
and below.

The names below are what other subpackages may use; each loads its module on first use.
"""

from whisper_sv import lazy_exports

_WHERE = {
    "DemoOptions": "demo",
    "ExperimentOptions": "experiments",
    "PipelineConfig": "pipeline",
    "run_demo": "demo",
    "run_experiment": "experiments",
    "run_general_study": "general_study",
    "run_pipeline": "pipeline",
    "run_study": "forgetting",
}
__all__ = [
    "DemoOptions",
    "ExperimentOptions",
    "PipelineConfig",
    "run_demo",
    "run_experiment",
    "run_general_study",
    "run_pipeline",
    "run_study",
]
__getattr__ = lazy_exports(__name__, _WHERE)
