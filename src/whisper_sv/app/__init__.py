"""The Gradio app: options, request pipeline, downloads, layout, API and the exported Space.
Imports infer and below.

The names below are what other subpackages may use; each loads its module on first use.
"""

from whisper_sv import lazy_exports

_WHERE = {
    "build_live": "live",
    "LiveCaptions": "live",
    "AppOptions": "chat",
    "chat": "chat",
    "export_space": "chat",
    "find_runs": "chat",
    "LANGUAGE_NAMES": "chat",
    "serve": "chat",
    "SIZE_PATTERN": "options",
}
__all__ = [
    "build_live",
    "LiveCaptions",
    "AppOptions",
    "chat",
    "export_space",
    "find_runs",
    "LANGUAGE_NAMES",
    "serve",
    "SIZE_PATTERN",
]
__getattr__ = lazy_exports(__name__, _WHERE)
