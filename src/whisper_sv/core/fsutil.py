"""File-system helpers every layer may use: atomic writes, freshness checks, the cache folder.

The bottom layer: it imports nothing from the package, so any module can use it.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "cache_dir", "newer", "temp_name"]


def cache_dir() -> Path:
    """Where converted models and other caches live: ``$WHISPER_SV_CACHE`` or
    ``~/.cache/whisper-sv``."""
    env = os.environ.get("WHISPER_SV_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "whisper-sv"


def file_digest(*paths: str | os.PathLike) -> str:
    """sha256 (hex) of the files' bytes, one after another."""
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def temp_name(path: Path, suffix: str = "") -> Path:
    """A temporary sibling of ``path`` no other writer uses: ``.NAME.tmp-HOST-PID-RANDOM``.

    Host and process id let :func:`whisper_sv.data.store.remove_stale_tmp` tell a killed writer's
    leftovers from a live one's; the dot hides it from globs of finished files.
    """
    tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{path.name}.tmp-{tag}{suffix}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, even
    after a crash (fsync before the rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def newer(a: Path, b: Path) -> bool:
    """Whether ``a`` exists and is newer than ``b`` (or ``b`` is missing): an output ``a``
    made from ``b`` is then up to date."""
    if not a.exists():
        return False
    return not b.exists() or a.stat().st_mtime_ns > b.stat().st_mtime_ns
