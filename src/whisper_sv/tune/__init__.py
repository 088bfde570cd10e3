"""Hyper-parameter studies with Optuna: search spaces, trials as child training processes,
storages and reports. Imports train and below.

The names below are what other subpackages may use; each loads its module on first use.
"""

from whisper_sv import lazy_exports

_WHERE = {
    "seeds_markdown": "study",
    "trials_markdown": "study",
    "tune": "study",
    "TuneOptions": "study",
}
__all__ = [
    "seeds_markdown",
    "trials_markdown",
    "tune",
    "TuneOptions",
]
__getattr__ = lazy_exports(__name__, _WHERE)
