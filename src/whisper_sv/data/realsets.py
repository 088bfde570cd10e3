"""Real Swedish speech sets, split so that what guards a run is never what tests it.

The project ships no real speech (no corpus can be installed offline), but a checkout may
have folders of real recordings with a ``manifest.tsv`` (``path``, ``sentence`` and optional
group column such as ``theme``). :func:`split_by_group` cuts such a folder into parts by
*group* (a speaker where the set names one, else a theme, or the sentence itself for single
words), so a held-out part holds voices, phrases and words that the guard part never had: a
guard that improves because a run learned its exact words or voices would not say anything
about real speech in general. Sets in :data:`OUT_OF_DOMAIN` are never cut into training.

Where real sets are looked for (:func:`find_real_data`): ``$WHISPER_SV_REAL_DATA``, else a
``shared/data`` folder beside the checkout (``../shared/data`` from the repository root).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["OUT_OF_DOMAIN", "REAL_SETS", "RealSplit", "find_real_data", "split_by_group"]

# Known real sets: folder name -> the column that groups its rows (None: the sentence). A set
# with speakers is cut by speaker (Common Voice's client_id), so no voice is in two parts.
REAL_SETS: dict[str, str | None] = {
    "lexin-phrases": "theme",
    "sv-words": None,
    "cv-dev": "client_id",
}
# Sets whose speakers, microphones and style no other set has (Common Voice volunteers reading
# sentences at home): never trained on, they guard whole and say whether Swedish in general
# got worse. The others share speakers across their parts: "in domain".
OUT_OF_DOMAIN = frozenset({"cv-dev"})


@dataclass(frozen=True)
class RealSplit:
    """A real set cut into parts; each part is a manifest TSV with absolute audio paths."""

    name: str  # the set's folder name, e.g. "lexin-phrases"
    parts: dict[str, Path]  # part name ("guard", "test", "train") -> its manifest
    counts: dict[str, int]  # part name -> rows
    groups: dict[str, list[str]]  # part name -> the groups (themes / words) it holds


def find_real_data() -> Path | None:
    """The folder holding real sets (see the module docstring), or None."""
    env = os.environ.get("WHISPER_SV_REAL_DATA")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"WHISPER_SV_REAL_DATA={env} is not a folder")
        return path
    repo = Path(__file__).resolve().parents[3]
    for candidate in (repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if any((candidate / name / "manifest.tsv").is_file() for name in REAL_SETS):
            return candidate
    return None


def _group_rank(group: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}\0{group}".encode()).hexdigest()


def split_by_group(
    folder: Path,
    out: Path,
    *,
    shares: dict[str, float],
    group_column: str | None = None,
    seed: int = 0,
) -> RealSplit:
    """Cut ``folder/manifest.tsv`` into parts by group, in about the given ``shares`` of rows.

    Groups are dealt out in a seeded hash order, each to the part furthest below its share, so
    every group lands in exactly one part and the result depends only on (rows, seed).
    Writes ``out/<folder name>-<part>.tsv`` (``path`` absolute, ``sentence``, ``group``).
    """
    tsv = folder / "manifest.tsv"
    if not tsv.is_file():
        raise FileNotFoundError(f"{tsv} not found: a real set needs a manifest.tsv")
    if not shares or any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise ValueError(f"shares must be positive fractions per part, got {shares}")
    with open(tsv, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or "path" not in rows[0] or "sentence" not in rows[0]:
        raise ValueError(f"{tsv}: needs a header with path and sentence columns")
    if group_column and group_column not in rows[0]:
        raise ValueError(f"{tsv} has no {group_column!r} column to group by")
    by_group: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        key = (row.get(group_column) if group_column else row["sentence"]) or row["sentence"]
        by_group[key.strip()].append(row)
    total = sum(shares.values())
    want = {p: s / total * len(rows) for p, s in shares.items()}
    have = dict.fromkeys(shares, 0)
    groups: dict[str, list[str]] = {p: [] for p in shares}
    for group in sorted(by_group, key=lambda g: _group_rank(g, seed)):
        part = max(shares, key=lambda p: (want[p] - have[p], p))
        groups[part].append(group)
        have[part] += len(by_group[group])
    out.mkdir(parents=True, exist_ok=True)
    parts = {}
    for part, names in groups.items():
        path = out / f"{folder.name}-{part}.tsv"
        _write_manifest(path, folder, [r for g in names for r in by_group[g]], group_column)
        parts[part] = path
    log.info("%s: %s", folder.name, ", ".join(f"{p} {have[p]} rows" for p in shares))
    return RealSplit(folder.name, parts, have, {p: sorted(g) for p, g in groups.items()})


def _write_manifest(
    path: Path, folder: Path, rows: Sequence[dict[str, str]], group_column: str | None
) -> None:
    lines = ["path\tsentence\tgroup"]
    for row in rows:
        audio = Path(row["path"])
        audio = audio if audio.is_absolute() else (folder / audio).resolve()
        group = (row.get(group_column) or "") if group_column else row["sentence"]
        lines.append(f"{audio}\t{row['sentence'].strip()}\t{group.strip()}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
