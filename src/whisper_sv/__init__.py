"""whisper-sv: make OpenAI Whisper good at Swedish, and serve it."""

__version__ = "0.1.0"

__all__ = ["__version__", "lazy_exports"]


def lazy_exports(package: str, where: dict[str, str]):
    """A module ``__getattr__`` (PEP 562) for a subpackage's public names.

    ``where`` maps each public name to the submodule that defines it (a submodule maps to
    itself). The submodule is imported on first use, so ``import whisper_sv.infer`` stays
    cheap: torch, gradio or optuna load only when a name that needs them is used.
    """
    import importlib

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{where[name]}")
        return module if where[name].split(".")[-1] == name else getattr(module, name)

    return __getattr__
