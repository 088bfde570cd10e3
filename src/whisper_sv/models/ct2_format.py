"""Reader and writer of CTranslate2's ``model.bin`` (binary version 6).

The layout, as ctranslate2's ``specs/model_spec.py`` (``ModelSpec._serialize``) writes it,
all integers little-endian:

    u32 binary_version
    str spec_name                      # e.g. "WhisperSpec"
    u32 spec_revision
    u32 n_variables
    n_variables x:
        str name                       # e.g. "encoder/layer_0/ffn/linear_0/weight"
        u8  rank; rank x u32 dims
        u8  dtype_id                   # 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16
        u32 n_bytes; n_bytes of data   # C order
    u32 n_aliases
    n_aliases x: str alias, str target # alias -> variable it shares
where ``str`` is u16 length (including a trailing NUL), the UTF-8 bytes, then the NUL.

Only numpy is needed: reading does not import ctranslate2 or torch.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BINARY_VERSION = 6  # what ctranslate2 >= 3 writes, and the only version read here

# Order matches the DataType enum in CTranslate2's include/ctranslate2/types.h.
DTYPES: tuple[str, ...] = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


class Ct2FormatError(ValueError):
    """A model.bin that is not in the format described above; the message names the file."""


@dataclass(frozen=True)
class Ct2Model:
    """The content of a model.bin."""

    spec: str  # specification name, e.g. "WhisperSpec"
    revision: int  # specification revision (layout of the weights), e.g. 3
    variables: Mapping[str, np.ndarray]  # name -> array; bfloat16 comes back as float32
    aliases: Mapping[str, str] = field(default_factory=dict)  # alias name -> variable name
    binary_version: int = BINARY_VERSION  # version of the container format

    def __getitem__(self, name: str) -> np.ndarray:
        """A variable by name, following aliases."""
        return self.variables[self.aliases.get(name, name)]

    def __contains__(self, name: object) -> bool:
        return name in self.variables or name in self.aliases

    def names(self) -> list[str]:
        """All names, variables and aliases, sorted."""
        return sorted([*self.variables, *self.aliases])

    @property
    def num_bytes(self) -> int:
        """Bytes of variable data (aliases share storage)."""
        return sum(a.nbytes for a in self.variables.values())


class _Reader:
    def __init__(self, data: bytes | memoryview, path: str) -> None:
        self.data = data
        self.pos = 0
        self.path = path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise Ct2FormatError(
                f"{self.path}: truncated at byte {self.pos} (wanted {n} more, file has "
                f"{len(self.data)}); is the file complete?"
            )
        out = memoryview(self.data)[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        n = self.u16()
        raw = bytes(self.take(n))
        if n == 0 or raw[-1] != 0:
            raise Ct2FormatError(f"{self.path}: bad string at byte {self.pos - n}")
        return raw[:-1].decode("utf-8")


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    # bfloat16 is the top half of a float32: shift the bits back into place.
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_model_bin(path: str | os.PathLike) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` (a file, or the folder holding it).

    The arrays are read-only views of the file's bytes (float32 copies for bfloat16).
    Raises :class:`Ct2FormatError` for a file in another format or version.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "model.bin"
    if not p.is_file():
        raise Ct2FormatError(f"{p}: no such file; a CTranslate2 folder holds model.bin")
    data = p.read_bytes()
    r = _Reader(data, str(p))
    version = r.u32()
    if version != BINARY_VERSION:
        raise Ct2FormatError(
            f"{p}: binary version {version}, only {BINARY_VERSION} is supported; "
            "re-export the model with ctranslate2 >= 3"
        )
    spec = r.string()
    revision = r.u32()
    variables: dict[str, np.ndarray] = {}
    for _ in range(r.u32()):
        name = r.string()
        shape = tuple(r.u32() for _ in range(r.u8()))
        type_id = r.u8()
        if type_id >= len(DTYPES):
            raise Ct2FormatError(f"{p}: variable {name} has unknown dtype id {type_id}")
        dtype = DTYPES[type_id]
        n_bytes = r.u32()
        buf = r.take(n_bytes)
        np_dtype = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * np.dtype(np_dtype).itemsize != n_bytes:
            raise Ct2FormatError(
                f"{p}: variable {name} has {n_bytes} bytes, its shape {shape} and dtype "
                f"{dtype} need {count * np.dtype(np_dtype).itemsize}"
            )
        arr = np.frombuffer(buf, dtype=np_dtype, count=count).reshape(shape)
        if dtype == "bfloat16":
            arr = _bfloat16_to_float32(arr)
        variables[name] = arr
    aliases: dict[str, str] = {}
    for _ in range(r.u32()):
        alias = r.string()
        aliases[alias] = r.string()
    if r.pos != len(data):
        raise Ct2FormatError(f"{p}: {len(data) - r.pos} unexpected bytes after the aliases")
    missing = sorted(t for t in aliases.values() if t not in variables)
    if missing:
        raise Ct2FormatError(f"{p}: aliases point at missing variables {missing}")
    return Ct2Model(
        spec=spec, revision=revision, variables=variables, aliases=aliases, binary_version=version
    )


def _write_string(f, s: str) -> None:
    raw = s.encode("utf-8")
    f.write(struct.pack("<H", len(raw) + 1))
    f.write(raw)
    f.write(b"\0")


def write_model_bin(model: Ct2Model, path: str | os.PathLike) -> Path:
    """Write ``model`` as a model.bin (variables and aliases in name order, as ctranslate2 does).

    Arrays must be float32, int8, int16, int32 or float16 (bfloat16 is not a numpy dtype).
    Returns the path written.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "model.bin"
    for name, target in model.aliases.items():
        if target not in model.variables:
            raise ValueError(f"alias {name} -> {target}: no variable named {target}")
    with open(p, "wb") as f:
        f.write(struct.pack("<I", model.binary_version))
        _write_string(f, model.spec)
        f.write(struct.pack("<I", model.revision))
        f.write(struct.pack("<I", len(model.variables)))
        for name in sorted(model.variables):
            arr = np.asarray(model.variables[name])
            dtype = arr.dtype.name
            if dtype not in DTYPES:
                raise ValueError(
                    f"variable {name} has dtype {dtype}; use one of {', '.join(DTYPES[:5])}"
                )
            _write_string(f, name)
            f.write(struct.pack("<B", arr.ndim))
            for dim in arr.shape:
                f.write(struct.pack("<I", dim))
            f.write(struct.pack("<B", DTYPES.index(dtype)))
            data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)
            f.write(struct.pack("<I", data.nbytes))
            f.write(data.tobytes())
        f.write(struct.pack("<I", len(model.aliases)))
        for alias in sorted(model.aliases):
            _write_string(f, alias)
            _write_string(f, model.aliases[alias])
    return p
