"""Whisper models by reference (bundled, hub model at a revision, local folder, run folder):
loading, the processor and generation config, CTranslate2 format and conversion (cached), and
where a model comes from (for model cards). Imports core.

The names below are what other subpackages may use; each loads its module on first use.
"""

from whisper_sv import lazy_exports

_WHERE = {
    "cached_hub_models": "hub",
    "ct2_dir": "references",
    "DEFAULT_MODEL": "references",
    "export_ct2": "conversion",
    "load_model": "references",
    "load_processor": "references",
    "model_origin": "origin",
    "ModelOrigin": "origin",
    "resolve": "references",
    "transformers_dir": "references",
}
__all__ = [
    "cached_hub_models",
    "ct2_dir",
    "DEFAULT_MODEL",
    "export_ct2",
    "load_model",
    "load_processor",
    "model_origin",
    "ModelOrigin",
    "resolve",
    "transformers_dir",
]
__getattr__ = lazy_exports(__name__, _WHERE)
