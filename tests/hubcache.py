"""A Hugging Face hub cache written in the hub client's own on-disk layout, for offline tests.

    HF_HUB_CACHE/models--ORG--NAME/
        blobs/<etag>                      the files' bytes: git blob sha1, or sha256 for LFS
        refs/<branch or tag>              the commit hash the name stands for
        snapshots/<commit>/<file>         relative symlinks into blobs/

``huggingface_hub.snapshot_download(..., local_files_only=True)`` and ``scan_cache_dir``
read it as they read a cache that downloads wrote; nothing here is whisper-sv's code.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

# Files the hub stores with Git LFS (their etag is the sha256 of the bytes).
LFS_SUFFIXES = (".safetensors", ".bin", ".model")


def _etag(path: Path) -> str:
    if path.name.endswith(LFS_SUFFIXES):
        h = hashlib.sha256()
    else:  # git's blob id: sha1 of a header and the bytes
        h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    # A hard link keeps a 290 MB revision free; another file system gets a copy.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def add_revision(
    cache: Path, repo_id: str, files: Mapping[str, Path], refs: Iterable[str] = ()
) -> str:
    """Write ``files`` ({name in the repo: local file}) as one commit of ``repo_id`` into the
    hub cache ``cache``, with the branch/tag names ``refs`` pointing at it; its commit hash."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    etags = {name: _etag(Path(src)) for name, src in sorted(files.items())}
    commit = hashlib.sha1(repr(sorted(etags.items())).encode()).hexdigest()  # 40 hex digits
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    for name, src in files.items():
        blob = repo / "blobs" / etags[name]
        if not blob.exists():
            _link_or_copy(Path(src), blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        path = repo / "refs" / ref
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(commit)  # the hub client writes the bare hash, no newline
    return commit


def model_files(folder: Path, skip: Iterable[str] = ()) -> dict[str, Path]:
    """The files of a local model folder as a hub repo holds them (no hidden files)."""
    skipped = set(skip)
    return {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name not in skipped
    }
