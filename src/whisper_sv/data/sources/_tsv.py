"""Tolerant reading of tab-separated transcript files (Common Voice's and manifests).

A data file with 50,000 rows should not be lost to one bad row, so rows are read one by one:
a row with the wrong number of fields or with bytes that are not UTF-8 comes back with an
``error`` (and whatever fields could be read) instead of raising. Fields are split on tabs
only; quotes are not special (Common Voice sentences contain them), except that a field
wholly wrapped in double quotes with doubled inner quotes (pandas' ``to_csv`` style) is
unwrapped. Tabs or newlines inside a field are not supported.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line number in the file
    fields: dict[str, str] = field(default_factory=dict)  # column name -> value (as read)
    error: str = ""  # why the row is malformed; "" when it is fine


def read_header(path: Path) -> list[str]:
    """Column names of the first non-blank line (lower-cased, stripped)."""
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                return _header(raw.removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n"), path)
    return []


def _header(raw: bytes, path: Path) -> list[str]:
    try:
        return [h.strip().lower() for h in raw.decode("utf-8").split("\t")]
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: the header line is not UTF-8 text ({err})") from err


def read_rows(path: Path, *, text_column: str = "sentence") -> tuple[list[str], Iterator[Row]]:
    """``(header, rows)``; see the module docstring for how bad rows come back."""
    return _split(path, text_column=text_column)


def _split(path: Path, text_column: str = "sentence") -> tuple[list[str], Iterator[Row]]:
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # BOM written by Excel and Notepad
        data = data[3:]
    lines = data.split(b"\n")
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    if start == len(lines):
        return [], iter(())
    header = _header(lines[start].rstrip(b"\r"), path)

    def rows() -> Iterator[Row]:
        for number, raw in enumerate(lines[start + 1 :], start=start + 2):
            raw = raw.rstrip(b"\r")
            if not raw.strip():
                continue
            parts = raw.split(b"\t")
            values: list[str] = []
            bad: list[str] = []
            for i, part in enumerate(parts):
                name = header[i] if i < len(header) else f"field {i + 1}"
                try:
                    values.append(_unquote(part.decode("utf-8")))
                except UnicodeDecodeError:
                    values.append(_unquote(part.decode("utf-8", errors="replace")))
                    bad.append(name)
            fields = dict(zip(header, values, strict=False))
            error = ""
            if bad:
                error = (
                    "transcript is not valid UTF-8"
                    if text_column in bad
                    else f"column {', '.join(bad)} is not valid UTF-8"
                )
            elif len(parts) != len(header):
                error = f"row has {len(parts)} tab-separated fields, the header has {len(header)}"
            yield Row(number, fields, error)

    return header, rows()


_QUOTED = re.compile(r'^"((?:[^"]|"")*)"$')


def _unquote(value: str) -> str:
    m = _QUOTED.match(value)
    return m.group(1).replace('""', '"') if m else value
