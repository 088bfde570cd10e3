"""Data sources: where (audio, transcript) pairs come from, one module per kind.

Every source lists cheap, picklable :class:`Item` descriptors up front and decodes (or renders)
the audio only in :meth:`Source.load`, which the feature pipeline calls in worker processes.

| spec | module | what |
|---|---|---|
| ``synthetic`` | ``synthetic.py`` | Swedish newsreel sentences spoken by espeak-ng (the default) |
| ``commonvoice:DIR`` | ``commonvoice.py`` | an extracted Common Voice release |
| ``manifest:TSV`` | ``manifest.py`` | any audio files listed in a ``path``/``sentence`` TSV |
| ``hf:NAME[:CONFIG]`` | ``hf.py`` | a Hugging Face dataset (hub id or local folder) |

Convention for bad rows: a source never drops an input silently and never crashes on one. An
item whose row was malformed carries ``meta["error"]`` (a reason in words); consumers must
reject such items with that reason. Empty transcripts and missing files are yielded as they
are, for the consumer's checks to report.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SPECS", "Item", "Source", "open_source"]

SPECS = ("synthetic", "commonvoice:DIR", "manifest:TSV", "hf:NAME[:CONFIG]")


@dataclass(frozen=True)
class Item:
    """One utterance, described but not decoded; cheap to list and to pickle."""

    id: str  # unique within the source, stable across runs
    split: str  # "train" | "validation" | "test" (or a split named by the data)
    sentence: str  # raw transcript (may be empty or bad: the feature pipeline rejects it)
    audio: str | bytes | None  # file path or encoded bytes; None when the source renders it
    speaker: str = ""  # speaker / voice id ("" when unknown)
    # gender, age, accent, voice, rate, pitch, source...; "error" marks a malformed row.
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Source(Protocol):
    """What the feature pipeline reads. Implementations must be picklable."""

    name: str  # e.g. "synthetic", "commonvoice:/data/cv-sv"

    def splits(self) -> list[str]:
        """Split names that have items, in a fixed order."""
        ...

    def items(self, split: str) -> Iterator[Item]:
        """The split's items, in a deterministic order."""
        ...

    def load(self, item: Item) -> np.ndarray:
        """(n,) float32 mono audio at 16 kHz; raises whisper_sv.core.audio.AudioError."""
        ...

    def describe(self) -> dict:
        """The options used, as plain data (recorded in the feature store's manifest)."""
        ...


def open_source(spec: str, **options: Any) -> Source:
    """The source named by ``spec`` (one of :data:`SPECS`), configured by ``options``.

    ``options`` are the fields of that source's options dataclass (``SyntheticOptions``,
    ``CommonVoiceOptions``, ``ManifestOptions``, ``HFOptions``); unknown names or wrong types
    raise ValueError naming the valid ones.
    """
    from whisper_sv.core.config import from_mapping

    scheme, sep, arg = spec.partition(":")
    scheme = scheme.strip().lower()
    if scheme == "synthetic" and not arg:
        from whisper_sv.data.sources.synthetic import SyntheticOptions, SyntheticSource

        return SyntheticSource(from_mapping(SyntheticOptions, options))
    if sep and arg:
        if scheme == "commonvoice":
            from whisper_sv.data.sources.commonvoice import CommonVoiceOptions, CommonVoiceSource

            return CommonVoiceSource(arg, from_mapping(CommonVoiceOptions, options))
        if scheme == "manifest":
            from whisper_sv.data.sources.manifest import ManifestOptions, ManifestSource

            return ManifestSource(arg, from_mapping(ManifestOptions, options))
        if scheme == "hf":
            from whisper_sv.data.sources.hf import HFOptions, HFSource, split_spec

            name, config = split_spec(arg)
            if config and options.get("config", config) != config:
                raise ValueError(
                    f"two configs for {name}: {config!r} in the spec and "
                    f"{options['config']!r} in the options; give one"
                )
            if config:
                options = {**options, "config": config}
            return HFSource(name, from_mapping(HFOptions, options))
    raise ValueError(f"unknown source {spec!r}; valid sources: {', '.join(SPECS)}")
