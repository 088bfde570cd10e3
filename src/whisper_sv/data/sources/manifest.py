"""Any folder of audio files listed in a TSV manifest.

Header: at least ``path`` and ``sentence`` (Common Voice's names); optional ``split`` and
``speaker``; any other column goes into ``Item.meta``. ``path`` is relative to the manifest's
folder (absolute paths work too); any audio format PyAV decodes.

Which split a row lands in, first rule that applies:

1. the ``split`` column, when the row has a value (``dev``/``val``/``valid`` read as
   ``validation``; other names are kept as they are);
2. ``ManifestOptions.split``, when set: every row in that one split (``split="test"`` for an
   evaluation set);
3. a hash of the row's speaker (or of its path when there is no speaker), against
   ``ManifestOptions.fractions`` (train/validation/test, default 0.8/0.1/0.1): the same
   file always lands in the same split, adding rows never moves old ones, and with a
   ``speaker`` column no speaker is in two splits.

Bad rows are yielded, not dropped (see ``whisper_sv.data.sources``): a missing file or an empty
sentence as is; a row with the wrong number of fields or non-UTF-8 bytes with
``meta["error"]`` set (e.g. ``"transcript is not valid UTF-8"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisper_sv.data.sources import Item
from whisper_sv.data.sources._tsv import Row, read_rows

log = logging.getLogger(__name__)

__all__ = ["EXPECTED_HEADER", "ManifestOptions", "ManifestSource"]

EXPECTED_HEADER = "path<TAB>sentence[<TAB>split][<TAB>speaker]"
_SPLIT_ORDER = ("train", "validation", "test")
_ALIASES = {"dev": "validation", "val": "validation", "valid": "validation"}


@dataclass(frozen=True)
class ManifestOptions:
    split: str = ""  # put rows without a split column value in this split ("" = hash split)
    # train/validation/test shares for the hash split (used when neither of the above applies)
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def __post_init__(self) -> None:
        if len(self.fractions) != 3 or any(f < 0 for f in self.fractions):
            raise ValueError("fractions must be three shares >= 0: (train, validation, test)")
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(f"fractions must add up to 1, got {sum(self.fractions)}")
        if self.split != self.split.strip() or "/" in self.split:
            raise ValueError(f"split {self.split!r} is not a split name (e.g. 'test')")


class ManifestSource:
    """Rows of a ``path``/``sentence`` TSV; audio decoded by ``audio.load_audio``."""

    def __init__(self, tsv: str | Path, options: ManifestOptions | None = None) -> None:
        self.options = options or ManifestOptions()
        self.tsv = Path(tsv).expanduser().resolve()
        self.name = f"manifest:{self.tsv}"
        if not self.tsv.is_file():
            raise ValueError(f"manifest {self.tsv} does not exist (expected a TSV file)")
        self._items: dict[str, list[Item]] | None = None
        self._read()  # header problems surface now, not in a worker

    def splits(self) -> list[str]:
        items = self._read()
        known = [s for s in _SPLIT_ORDER if s in items]
        return known + sorted(s for s in items if s not in _SPLIT_ORDER)

    def items(self, split: str) -> Iterator[Item]:
        items = self._read()
        if split not in items:
            raise ValueError(f"{self.name} has no split {split!r}; it has {self.splits()}")
        yield from items[split]

    def load(self, item: Item) -> np.ndarray:
        from whisper_sv.core.audio import AudioError, load_audio

        if not item.audio:
            raise AudioError(item.id, "the manifest row names no audio file")
        return load_audio(item.audio, name=item.id)

    def describe(self) -> dict:
        return {
            "source": "manifest",
            "tsv": str(self.tsv),
            "options": dataclasses.asdict(self.options),
        }

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_items"] = None  # workers only load audio; keep the pickle small
        return state

    def _read(self) -> dict[str, list[Item]]:
        if self._items is not None:
            return self._items
        header, rows = read_rows(self.tsv)
        missing = [c for c in ("path", "sentence") if c not in header]
        if missing:
            raise ValueError(
                f"{self.tsv}: missing column(s) {', '.join(missing)}; expected a header "
                f"{EXPECTED_HEADER} (found {header or 'an empty file'})"
            )
        out: dict[str, list[Item]] = {}
        seen: dict[str, int] = {}
        for row in rows:
            item = self._item(row, seen)
            out.setdefault(item.split, []).append(item)
        self._items = out
        return out

    def _item(self, row: Row, seen: dict[str, int]) -> Item:
        f = row.fields
        path = f.get("path", "").strip()
        speaker = f.get("speaker", "").strip()
        item_id = path or f"line{row.line}"
        seen[item_id] = seen.get(item_id, 0) + 1
        if seen[item_id] > 1:
            item_id = f"{item_id}#{seen[item_id]}"
        meta: dict = {"source": "manifest", "line": row.line}
        for key, value in f.items():
            if key not in ("path", "sentence", "split", "speaker") and value.strip():
                meta[key] = value.strip()
        if row.error:
            meta["error"] = row.error
        return Item(
            id=item_id,
            split=self._split_of(f.get("split", ""), speaker or path or f"line{row.line}"),
            sentence=f.get("sentence", ""),
            audio=str(self.tsv.parent / path) if path else None,
            speaker=speaker,
            meta=meta,
        )

    def _split_of(self, value: str, key: str) -> str:
        value = value.strip().lower()
        if value:
            return _ALIASES.get(value, value)
        if self.options.split:
            return self.options.split
        return hash_split(key, self.options.fractions)


def hash_split(key: str, fractions: tuple[float, float, float]) -> str:
    """``"train"``/``"validation"``/``"test"`` for ``key``, stable across runs and machines."""
    x = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    edge = 0.0
    for name, share in zip(_SPLIT_ORDER, fractions, strict=True):
        edge += share
        if x < edge:
            return name
    return next(n for n, s in zip(_SPLIT_ORDER[::-1], fractions[::-1], strict=True) if s > 0)
