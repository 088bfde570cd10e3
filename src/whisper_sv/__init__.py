"""whisper-sv: make OpenAI Whisper good at Swedish, and serve it."""

__version__ = "0.1.0"

__all__ = ["__version__"]
