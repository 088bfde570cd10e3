"""The whisper-sv command: flags made from option dataclasses, one function per command. Imports
everything below it.

The names below are what other subpackages may use; each loads its module on first use.
"""

from whisper_sv import lazy_exports

_WHERE = {
    "build_parser": "main",
    "main": "main",
}
__all__ = [
    "build_parser",
    "main",
]
__getattr__ = lazy_exports(__name__, _WHERE)
