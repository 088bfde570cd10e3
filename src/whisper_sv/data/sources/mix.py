"""Several sources as one, each with a sampling weight: real speech mixed into synthetic.

Fine-tuning on synthetic speech alone pulls Whisper away from real voices; mixing a little
real speech into the training data holds it near them. :class:`MixSource` lists the items of
each part source, tagged with the part's name, and repeats a part's items ``repeat`` times in
the splits named by ``repeat_splits`` (oversampling a small real set against a large
synthetic one; each copy is its own row, so every epoch sees the ratio). Audio is loaded by the
part the item came from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from whisper_sv.data.sources import Item, Source

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MixPart", "MixSource"]


@dataclass(frozen=True)
class MixPart:
    """One source of a mix."""

    name: str  # short tag, used in item ids ("real:...") and meta["mix"]
    source: Source
    repeat: int = 1  # copies of each item in the repeated splits (oversampling)
    repeat_splits: tuple[str, ...] = ("train",)  # splits where copies are made

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name:
            raise ValueError(f"mix part name {self.name!r}: give a short name without ':'")
        if self.repeat < 1:
            raise ValueError(f"mix part {self.name}: repeat must be >= 1 (got {self.repeat})")


class MixSource:
    """The union of several sources' splits (see the module docstring)."""

    def __init__(self, parts: Sequence[MixPart]) -> None:
        if not parts:
            raise ValueError("a mix needs at least one source")
        names = [p.name for p in parts]
        if len(set(names)) != len(names):
            raise ValueError(f"mix part names must differ, got {names}")
        self.parts = tuple(parts)
        self.name = "mix:" + "+".join(names)

    def splits(self) -> list[str]:
        seen: dict[str, None] = {}
        for part in self.parts:
            seen.update(dict.fromkeys(part.source.splits()))
        return list(seen)

    def items(self, split: str) -> Iterator[Item]:
        for part in self.parts:
            if split not in part.source.splits():
                continue
            copies = part.repeat if split in part.repeat_splits else 1
            for item in part.source.items(split):
                for k in range(copies):
                    suffix = f"#{k}" if copies > 1 else ""
                    meta = {**item.meta, "mix": part.name}
                    yield replace(item, id=f"{part.name}:{item.id}{suffix}", meta=meta)

    def load(self, item: Item) -> np.ndarray:
        name, _, inner = item.id.partition(":")
        part = next((p for p in self.parts if p.name == name), None)
        if part is None:
            raise ValueError(f"item {item.id!r} belongs to no part of {self.name}")
        copied = part.repeat > 1 and item.split in part.repeat_splits
        inner_id = inner.rsplit("#", 1)[0] if copied else inner
        return part.source.load(replace(item, id=inner_id))

    def describe(self) -> dict:
        return {
            "source": "mix",
            "parts": [
                {
                    "name": p.name,
                    "repeat": p.repeat,
                    "repeat_splits": list(p.repeat_splits),
                    "describe": p.source.describe(),
                }
                for p in self.parts
            ],
        }
