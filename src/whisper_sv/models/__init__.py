"""Whisper models by reference (bundled, hub, local folder, run folder): loading, the processor
and generation config, CTranslate2 format and conversion (cached). Imports core.

The names below are what other subpackages may use; each loads its module on first use.
"""

from whisper_sv import lazy_exports

_WHERE = {
    "ct2_dir": "references",
    "DEFAULT_MODEL": "references",
    "export_ct2": "conversion",
    "load_model": "references",
    "load_processor": "references",
    "resolve": "references",
    "transformers_dir": "references",
}
__all__ = [
    "ct2_dir",
    "DEFAULT_MODEL",
    "export_ct2",
    "load_model",
    "load_processor",
    "resolve",
    "transformers_dir",
]
__getattr__ = lazy_exports(__name__, _WHERE)
