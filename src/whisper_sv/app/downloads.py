"""The files a reply offers for download (SRT, VTT, TXT) and the private folders they live in.

Two folders hold a user's data while the app serves: the transcript files written here
(:class:`DownloadFiles`) and Gradio's own cache of uploads and of every file it serves
(:func:`private_gradio_folder`). Both are private to the app's user and removed when it stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path

from whisper_sv.app.render import Reply

__all__ = ["DOWNLOAD_TTL_S", "DownloadFiles", "private_gradio_folder", "safe_stem"]

DOWNLOAD_TTL_S = 3_600  # transcript files offered for download are kept this long
# Files the app (and Gradio inside it) writes while serving: owner only (600 files, 700 folders).
_PRIVATE_UMASK = 0o077


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


@contextlib.contextmanager
def private_gradio_folder() -> Iterator[Path]:
    """A fresh folder (mode 700) that Gradio uses for uploads and served files while the
    context is open (``GRADIO_TEMP_DIR``), removed with everything in it on the way out.

    Without it Gradio keeps every upload and download in the shared ``$TMPDIR/gradio/``,
    readable by all (644 files in 755 folders), after the app has stopped. The umask makes
    what Gradio writes owner-only too. Gradio reads ``GRADIO_TEMP_DIR`` when it builds the
    Blocks, so build inside the context. The exit runs on a normal return, an exception
    (startup failures included), Ctrl+C and SIGTERM (the CLI turns it into ``SystemExit``).
    """
    folder = Path(tempfile.mkdtemp(prefix="whisper-sv-gradio-"))  # mkdtemp: mode 700
    before_env = os.environ.get("GRADIO_TEMP_DIR")
    before_umask = os.umask(_PRIVATE_UMASK)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    try:
        yield folder
    finally:
        os.umask(before_umask)
        if before_env is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = before_env
        shutil.rmtree(folder, ignore_errors=True)


def safe_stem(name: str) -> str:
    """A download's file name from the source's name: letters, digits, - and _ only."""
    stem = Path(name).stem if name else "transcript"
    clean = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem).strip("_")
    return (clean or "transcript")[:80]
