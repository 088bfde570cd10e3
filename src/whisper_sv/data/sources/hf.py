"""A Hugging Face dataset: Common Voice sv-SE, FLEURS sv_se, NST... from the hub or disk.

``hf:NAME[:CONFIG]`` where NAME is a hub id (needs the network, or the datasets cache) or a
local folder:

- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
  (``dataset_dict.json`` or ``state.json`` inside): read with ``load_from_disk``;
- a folder in the hub's file layout (``data/<split>-*.parquet``, arrow, csv...) or any
  folder ``datasets.load_dataset(path)`` understands.

Audio is *not* decoded by ``datasets``: its ``Audio()`` decoding needs torchcodec, whose PyPI
wheel wants CUDA libraries. The audio column is cast to ``Audio(decode=False)`` and each item
carries the encoded bytes (or the file path); ``load`` decodes them with PyAV
(``whisper_sv.core.audio.load_audio``), resampling to 16 kHz whatever the dataset's rate.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from whisper_sv.data.sources import Item

log = logging.getLogger(__name__)

__all__ = ["TEXT_COLUMNS", "HFOptions", "HFSource", "split_spec"]

# Tried in this order. FLEURS has both raw_transcription (cased, punctuated: what Whisper
# writes) and transcription (lower-cased, no punctuation), so the raw one goes first.
TEXT_COLUMNS = ("sentence", "raw_transcription", "transcription", "text", "normalized_text")
SPEAKER_COLUMNS = ("client_id", "speaker_id", "speaker")
_AUTO_SPLITS = {
    "train": ("train",),
    "validation": ("validation", "dev", "valid"),
    "test": ("test",),
}


@dataclass(frozen=True)
class HFOptions:
    config: str = ""  # dataset configuration, e.g. "sv-SE" or "sv_se" (or hf:NAME:CONFIG)
    audio_column: str = ""  # "" = "audio", else the first Audio column
    text_column: str = ""  # "" = the first of TEXT_COLUMNS present
    # our split -> the dataset's split, e.g. {"validation": "dev"}; {} = train, validation
    # (or dev/valid), test. Dataset splits not named (Common Voice's "other") are left out.
    splits: dict[str, str] = field(default_factory=dict)
    streaming: bool = False  # iterate without downloading/preparing the whole dataset
    cache_dir: str = ""  # datasets' cache folder ("" = its default, ~/.cache/huggingface)
    revision: str = ""  # hub revision (branch, tag or commit); "" = the default branch


def split_spec(arg: str) -> tuple[str, str]:
    """``"NAME[:CONFIG]"`` -> ``(NAME, CONFIG)``; an existing local path is all NAME."""
    if Path(arg).expanduser().exists() or ":" not in arg:
        return arg, ""
    name, config = arg.rsplit(":", 1)
    return name, config


class HFSource:
    """Items of a Hugging Face dataset; see the module docstring."""

    def __init__(self, name: str, options: HFOptions | None = None) -> None:
        self.options = options or HFOptions()
        self.dataset = name
        self.local = Path(name).expanduser().is_dir()
        self.name = f"hf:{name}" + (f":{self.options.config}" if self.options.config else "")
        self._ds: Any = None  # the loaded DatasetDict / IterableDatasetDict, not pickled

    # ---------------------------------------------------------------- Source protocol

    def splits(self) -> list[str]:
        return list(self._split_map())

    def items(self, split: str) -> Iterator[Item]:
        mapping = self._split_map()
        if split not in mapping:
            raise ValueError(f"{self.name} has no split {split!r}; it has {list(mapping)}")
        theirs = mapping[split]
        ds = self._load()[theirs]
        audio_col, text_col, audio_is_path = _columns(ds, self.options, self.name)
        from datasets import Audio

        # Every Audio column, not only ours: iterating decodes all of them otherwise, and
        # decoding needs torchcodec.
        for name, feature in (ds.features or {}).items():
            if isinstance(feature, Audio) and feature.decode:
                ds = ds.cast_column(name, Audio(decode=False))
        base = Path(self.dataset).expanduser() if self.local else None
        speaker_col = next((c for c in SPEAKER_COLUMNS if c in _column_names(ds)), "")
        for index, row in enumerate(ds):
            audio, error = _audio_ref(row.get(audio_col), audio_is_path, base)
            meta: dict[str, Any] = {"source": "hf", "dataset": self.dataset, "index": index}
            for key, value in row.items():
                if key in (audio_col, text_col, speaker_col) or not _is_scalar(value):
                    continue
                if value != "" and value is not None:
                    meta[key] = value
            if error:
                meta["error"] = error
            text = row.get(text_col)
            yield Item(
                id=f"{theirs}/{index:07d}",
                split=split,
                sentence=text if isinstance(text, str) else "",
                audio=audio,
                speaker=_text(row.get(speaker_col)) if speaker_col else "",
                meta=meta,
            )

    def load(self, item: Item) -> np.ndarray:
        from whisper_sv.core.audio import AudioError, load_audio

        if item.audio is None:
            raise AudioError(item.id, item.meta.get("error") or "the row holds no audio")
        return load_audio(item.audio, name=item.id)

    def describe(self) -> dict:
        return {
            "source": "hf",
            "dataset": self.dataset,
            "options": dataclasses.asdict(self.options),
            "splits": self._split_map() if self._ds is not None else dict(self.options.splits),
        }

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_ds"] = None  # workers only decode item bytes/paths; they reload if they list
        return state

    # ---------------------------------------------------------------- loading

    def _load(self) -> Any:
        if self._ds is not None:
            return self._ds
        import datasets

        o = self.options
        path = Path(self.dataset).expanduser()
        try:
            if self.local and (
                (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
            ):
                ds = datasets.load_from_disk(str(path))
                if o.streaming:
                    ds = (
                        datasets.IterableDatasetDict(
                            {k: v.to_iterable_dataset() for k, v in ds.items()}
                        )
                        if isinstance(ds, datasets.DatasetDict)
                        else ds.to_iterable_dataset()
                    )
            else:
                ds = datasets.load_dataset(
                    str(path) if self.local else self.dataset,
                    o.config or None,
                    streaming=o.streaming,
                    cache_dir=o.cache_dir or None,
                    revision=o.revision or None,
                )
        except (FileNotFoundError, ConnectionError, OSError, ValueError) as err:
            raise ValueError(
                f"cannot load dataset {self.dataset!r}"
                + (f" (config {o.config!r})" if o.config else "")
                + f": {err}. NAME must be a local dataset folder, or a hub id when online."
            ) from err
        if isinstance(ds, (datasets.Dataset, datasets.IterableDataset)):
            ds = {"train": ds}  # one unnamed split (save_to_disk of a single Dataset)
        self._ds = ds
        return ds

    def _split_map(self) -> dict[str, str]:
        available = list(self._load().keys())
        if self.options.splits:
            bad = {
                ours: theirs
                for ours, theirs in self.options.splits.items()
                if theirs not in available
            }
            if bad:
                raise ValueError(
                    f"{self.name}: split mapping {bad} names splits the dataset lacks; "
                    f"it has {available}"
                )
            return dict(self.options.splits)
        mapping = {}
        for ours, candidates in _AUTO_SPLITS.items():
            theirs = next((c for c in candidates if c in available), None)
            if theirs:
                mapping[ours] = theirs
        if not mapping:
            raise ValueError(
                f"{self.name}: no train/validation/test split among {available}; map them with "
                'splits={"train": "<name>", ...}'
            )
        left = sorted(set(available) - set(mapping.values()))
        if left:
            log.info(
                "%s: splits %s are left out (map them with the splits option)", self.name, left
            )
        return mapping


def _column_names(ds: Any) -> list[str]:
    names = getattr(ds, "column_names", None)
    if names is None and getattr(ds, "features", None) is not None:
        names = list(ds.features)
    return list(names or [])


def _columns(ds: Any, options: HFOptions, name: str) -> tuple[str, str, bool]:
    """``(audio_column, text_column, audio_is_a_path_string)``, checked against the data."""
    from datasets import Audio, Value

    features = ds.features or {}
    columns = _column_names(ds)
    audio_col = options.audio_column
    if not audio_col:
        audio_cols = [c for c, f in features.items() if isinstance(f, Audio)]
        audio_col = "audio" if "audio" in columns else (audio_cols[0] if audio_cols else "")
    if not audio_col or audio_col not in columns:
        raise ValueError(
            f"{name}: no audio column {options.audio_column or '(auto: audio)'!r}; columns are "
            f"{columns}; set audio_column"
        )
    text_col = options.text_column or next((c for c in TEXT_COLUMNS if c in columns), "")
    if not text_col or text_col not in columns:
        raise ValueError(
            f"{name}: no text column {options.text_column or TEXT_COLUMNS!r}; columns are "
            f"{columns}; set text_column"
        )
    feature = features.get(audio_col)
    audio_is_path = isinstance(feature, Value) and feature.dtype in ("string", "large_string")
    if not audio_is_path and feature is not None and not isinstance(feature, Audio):
        raise ValueError(
            f"{name}: column {audio_col!r} is {feature}, not audio or a file path; set audio_column"
        )
    return audio_col, text_col, audio_is_path


def _audio_ref(value: Any, is_path: bool, base: Path | None) -> tuple[str | bytes | None, str]:
    """What ``load_audio`` takes for a cell: encoded bytes or a path; or ``(None, reason)``."""
    if is_path:
        value = {"bytes": None, "path": value}
    if not isinstance(value, dict):
        return None, "the audio cell is empty"
    if value.get("bytes"):
        return bytes(value["bytes"]), ""
    path = value.get("path")
    if not path:
        return None, "the audio cell has neither bytes nor a path"
    p = Path(path)
    if not p.is_absolute() and base is not None:
        p = base / p  # a local dataset's relative paths are relative to its folder
    return str(p), ""


def _text(value: Any) -> str:
    """A speaker id as text: ``0`` is a speaker, ``None`` is none."""
    return "" if value is None else str(value).strip()


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None
