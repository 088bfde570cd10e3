"""An extracted Common Voice release, as Mozilla ships it.

Layout (``DIR`` is the locale folder, e.g. ``cv-corpus-17.0-2024-03-15/sv-SE``; the release
folder above it also works when it holds exactly one locale)::

    DIR/clips/*.mp3
    DIR/train.tsv  DIR/dev.tsv  DIR/test.tsv     (dev -> "validation")

TSV columns: ``client_id path sentence up_votes down_votes age gender accents locale segment``
(newer releases add ``variant``, ``sentence_id``, ``sentence_domain``; older ones say
``accent``). Only ``path`` and ``sentence`` are required; every other non-empty column goes
into ``Item.meta`` (``accents`` as ``accent``), ``client_id`` becomes the speaker.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisper_sv.data.sources import Item
from whisper_sv.data.sources._tsv import read_header, read_rows

log = logging.getLogger(__name__)

__all__ = ["CommonVoiceOptions", "CommonVoiceSource"]

REQUIRED = ("path", "sentence")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class CommonVoiceOptions:
    train: str = "train.tsv"  # TSV of the train split, relative to DIR ("" = no train split)
    validation: str = "dev.tsv"  # TSV of the validation split (Common Voice calls it dev)
    test: str = "test.tsv"  # TSV of the test split
    clips: str = "clips"  # folder holding the audio files, relative to DIR

    def tsv(self, split: str) -> str:
        return {"train": self.train, "validation": self.validation, "test": self.test}[split]


class CommonVoiceSource:
    """Items of a Common Voice release; audio decoded from ``clips/`` by ``audio.load_audio``."""

    def __init__(self, root: str | Path, options: CommonVoiceOptions | None = None) -> None:
        self.options = options or CommonVoiceOptions()
        self.root = _locale_dir(Path(root).expanduser(), self.options)
        self.name = f"commonvoice:{self.root}"
        self.clips = self.root / self.options.clips
        if not self.clips.is_dir():
            raise ValueError(
                f"{self.root} has no {self.options.clips}/ folder; expected Common Voice's "
                "layout: clips/*.mp3 next to train.tsv, dev.tsv, test.tsv"
            )
        self._splits = []
        for split in SPLITS:
            name = self.options.tsv(split)
            if not name:
                continue
            path = self.root / name
            if not path.is_file():
                log.warning("%s: no %s, so no %s split", self.root, name, split)
                continue
            header = read_header(path)
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise ValueError(
                    f"{path}: missing column(s) {', '.join(missing)}; Common Voice's header is "
                    "client_id<TAB>path<TAB>sentence<TAB>up_votes<TAB>down_votes<TAB>age"
                    "<TAB>gender<TAB>accents<TAB>locale<TAB>segment"
                )
            self._splits.append(split)
        if not self._splits:
            raise ValueError(
                f"{self.root} has none of {', '.join(self.options.tsv(s) for s in SPLITS)}"
            )

    def splits(self) -> list[str]:
        return list(self._splits)

    def items(self, split: str) -> Iterator[Item]:
        if split not in self._splits:
            raise ValueError(f"{self.name} has no split {split!r}; it has {self._splits}")
        path = self.root / self.options.tsv(split)
        _, rows = read_rows(path)
        seen: dict[str, int] = {}
        for row in rows:
            f = row.fields
            clip = f.get("path", "").strip()
            if clip and not Path(clip).suffix and (self.clips / f"{clip}.mp3").is_file():
                clip += ".mp3"  # the first releases listed clips without the extension
            item_id = clip or f"{path.name}:{row.line}"
            seen[item_id] = seen.get(item_id, 0) + 1
            if seen[item_id] > 1:
                item_id = f"{item_id}#{seen[item_id]}"
            meta: dict = {"source": "commonvoice", "line": row.line}
            for key, value in f.items():
                if key in ("path", "sentence", "client_id") or not value.strip():
                    continue
                meta["accent" if key == "accents" else key] = value.strip()
            if row.error:
                meta["error"] = row.error
            yield Item(
                id=item_id,
                split=split,
                sentence=f.get("sentence", ""),
                audio=str(self.clips / clip) if clip else None,
                speaker=f.get("client_id", "").strip(),
                meta=meta,
            )

    def load(self, item: Item) -> np.ndarray:
        from whisper_sv.core.audio import AudioError, load_audio

        if not item.audio:
            raise AudioError(item.id, "the row names no audio file")
        return load_audio(item.audio, name=item.id)

    def describe(self) -> dict:
        return {
            "source": "commonvoice",
            "root": str(self.root),
            "options": dataclasses.asdict(self.options),
        }


def _locale_dir(root: Path, options: CommonVoiceOptions) -> Path:
    """``root`` itself, or its one locale folder when ``root`` is the release folder."""
    if not root.is_dir():
        raise ValueError(f"Common Voice folder {root} does not exist")
    if (root / options.clips).is_dir():
        return root
    candidates = [d for d in sorted(root.iterdir()) if (d / options.clips).is_dir()]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        names = ", ".join(d.name for d in candidates)
        raise ValueError(f"{root} holds several locales ({names}); name one, e.g. {candidates[0]}")
    return root  # the caller reports the missing clips/ folder
