"""The files a reply offers for download (SRT, VTT, TXT), in a folder removed with the app."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
import weakref
from pathlib import Path

from whisper_sv.app.render import Reply

__all__ = ["DOWNLOAD_TTL_S", "DownloadFiles", "safe_stem"]

DOWNLOAD_TTL_S = 3_600  # transcript files offered for download are kept this long


class DownloadFiles:
    """A reply's transcript as files, in a folder made on first use and removed with the app."""

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._cleanup: weakref.finalize | None = None

    @property
    def folder(self) -> Path:
        if self._folder is None:
            folder = Path(tempfile.mkdtemp(prefix="whisper-sv-app-"))
            # Removed by close(), or when the app is garbage-collected or the process exits
            # (the CLI turns SIGTERM into a normal exit, so that covers `kill` too).
            self._cleanup = weakref.finalize(self, shutil.rmtree, folder, True)
            self._folder = folder
        return self._folder

    def write(self, reply: Reply) -> list[str]:
        """The transcript as SRT, VTT and TXT (and the English as SRT and VTT) in a fresh
        folder; folders older than :data:`DOWNLOAD_TTL_S` go."""
        if not reply.swedish:
            return []
        from whisper_sv.infer.transcriber import subtitles

        now = time.time()
        for old in self.folder.iterdir():
            if now - old.stat().st_mtime > DOWNLOAD_TTL_S:
                shutil.rmtree(old, ignore_errors=True)
        folder = self.folder / uuid.uuid4().hex
        folder.mkdir()
        stem = safe_stem(reply.source)
        wanted = [(f"{stem}.{ext}", reply.swedish, ext) for ext in ("srt", "vtt", "txt")]
        if reply.english:
            wanted += [(f"{stem}.en.{ext}", reply.english, ext) for ext in ("srt", "vtt")]
        out = []
        for name, segments, ext in wanted:
            path = folder / name
            path.write_text(subtitles(segments, ext), encoding="utf-8")
            out.append(str(path))
        return out

    def close(self) -> None:
        """Remove the transcript files offered for download."""
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None
            self._folder = None


def safe_stem(name: str) -> str:
    """A download's file name from the source's name: letters, digits, - and _ only."""
    stem = Path(name).stem if name else "transcript"
    clean = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem).strip("_")
    return (clean or "transcript")[:80]
