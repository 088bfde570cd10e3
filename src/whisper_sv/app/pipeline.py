"""One request, from input checks to the reply: decode the file (or download the link),
transcribe, translate, write the download files.

Decoding is :mod:`whisper_sv.core.audio`, transcription :mod:`whisper_sv.infer.transcriber`,
translation :mod:`whisper_sv.infer.translate`, links :mod:`whisper_sv.infer.links`; this module
orders them and turns each step into a :class:`Reply` state the chat can show.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from whisper_sv.app.api import NOT_UPLOADED
from whisper_sv.app.downloads import DownloadFiles
from whisper_sv.app.options import LANGUAGE_NAMES, QUALITY_BEAMS, AppOptions
from whisper_sv.app.render import Reply, escape_md, progress_line, too_long_message
from whisper_sv.core.audio import AudioError, duration_s, load_audio
from whisper_sv.core.run_folder import is_run_folder
from whisper_sv.infer import links, translate
from whisper_sv.infer import translation_model as tasks
from whisper_sv.infer.types import AUTO
from whisper_sv.models.references import DEFAULT_MODEL

if TYPE_CHECKING:
    from whisper_sv.infer.transcriber import Transcriber

__all__ = [
    "HELP",
    "Request",
    "RequestPipeline",
    "UploadRefused",
    "declared_duration",
    "find_runs",
    "upload_folder",
]

log = logging.getLogger(__name__)

HELP = (
    "Send a **recording** (microphone), an **audio or video file**, or a **YouTube link**. "
    "The reply is the Swedish transcript and its English translation."
)


class UploadRefused(ValueError):
    """A file path that did not come from an upload to this app."""


@dataclass(frozen=True)
class Request:
    """What one request asks for (the page's choices, or the app's defaults)."""

    model: str  # model reference
    translator: str  # "whisper", "google" or "none"
    language: str = "sv"  # spoken language (Whisper code)
    beam_size: int = 1  # 1 = fast (greedy), 5 = accurate
    # Text the transcript's first 30 s are conditioned on: names, spellings (None: none)
    initial_prompt: str | None = None


class RequestPipeline:
    """The loaded models and the steps of one request (checks, audio, transcript, English,
    files).

    :meth:`run` trusts its ``file`` argument; the Gradio handlers first pass theirs through
    :meth:`uploaded`, which accepts only files inside Gradio's upload folder.
    """

    def __init__(self, options: AppOptions, downloads: DownloadFiles) -> None:
        self.options = options
        self.downloads = downloads  # where the reply's SRT / VTT / TXT files are written
        self._transcribers: dict[str, Transcriber] = {}
        self._lock = threading.Lock()
        self._hub: list[str] | None = None  # the hub cache's Whisper models, read on first use

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, reference) of the bundled model, every run found, every Whisper model in
        the hub cache (each cached branch and tag, e.g. KB-Whisper's ``subtitle``), and
        ``model``."""
        choices = [(DEFAULT_MODEL, DEFAULT_MODEL)]
        seen = set()
        for folder in self.options.run_folders():
            for run in find_runs(folder):
                if run.resolve() not in seen:
                    seen.add(run.resolve())
                    choices.append((f"run: {_run_label(run)}", str(run)))
        choices += [(f"hub: {ref}", ref) for ref in self._hub_models()]
        if self.options.model not in [ref for _, ref in choices]:
            choices.append((_model_label(self.options.model), self.options.model))
        return choices

    def _hub_models(self) -> list[str]:
        # Read once: the picker is built per request, a scan of the hub cache walks every repo.
        if self._hub is None:
            from whisper_sv.models import cached_hub_models

            self._hub = cached_hub_models() if self.options.hub_models else []
        return self._hub

    def model_label(self, ref: str) -> str:
        return next((label for label, r in self.model_choices() if r == ref), _model_label(ref))

    def transcriber(self, ref: str) -> Transcriber:
        """The Transcriber of ``ref``, loaded once and shared by all requests."""
        from whisper_sv.infer.transcriber import Transcriber

        with self._lock:  # one load per model even when two requests ask at once
            if ref not in self._transcribers:
                log.info("loading model %s", ref)
                self._transcribers[ref] = Transcriber(ref, backend="ct2")
            return self._transcribers[ref]

    # ------------------------------------------------------------------ one request

    def run(
        self,
        file: str | None,
        link: str | None,
        model: str | None,
        translator: str | None,
        *,
        language: str | None = None,
        quality: str | None = None,
        initial_prompt: str | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Reply]:
        """Transcribe (and translate) one file or link, yielding the reply as it grows.

        ``cancel``: once set, the request stops at its next step (the download within
        :data:`~whisper_sv.infer.links.CANCEL_POLL_S`, decoding and translation at the next
        segment) and its last state is ``cancelled``. It is set when the request ends, however
        it ends (a generator closed early included), so nothing the request started outlives it.

        Never raises: a failure ends the stream with ``reply.error`` set. Each state is a
        snapshot, so a caller may keep them all. ``file`` is trusted (any path on this
        machine): the Gradio handlers check theirs with :meth:`uploaded` first.
        ``initial_prompt``: as ``TranscribeOptions.initial_prompt`` (blank: none).
        """
        opts = self.options
        request = Request(
            model=model or opts.model,
            translator=translator or opts.translator,
            language=language or opts.language,
            beam_size=QUALITY_BEAMS.get(quality or "", opts.beam_size),
            initial_prompt=(initial_prompt or "").strip() or None,
        )
        reply = Reply(source=Path(file).name if file else (link or ""), language=request.language)
        cancel = cancel if cancel is not None else threading.Event()
        try:
            for state in self._run(reply, file, link, request, cancel):
                if cancel.is_set():
                    break
                yield state.snapshot()
            if cancel.is_set():
                # What a step left half done (no audio after a stopped download) is no error.
                reply.status, reply.error, reply.files, reply.cancelled = "", "", [], True
                yield reply.snapshot()
        except Exception as err:  # the last line of defence: a sentence, not a traceback
            log.exception("request failed: %s", reply.source)
            reply.status = ""
            reply.error = (
                f"Something went wrong ({type(err).__name__}); the server log has the details."
            )
            yield reply.snapshot()
        finally:
            cancel.set()  # stops a download still running in its thread

    def _run(
        self,
        reply: Reply,
        file: str | None,
        link: str | None,
        request: Request,
        cancel: threading.Event,
    ) -> Iterator[Reply]:
        if request.model not in [ref for _, ref in self.model_choices()]:
            reply.error = f"Unknown model {request.model!r}; pick one from the list."
            yield reply
            return
        if request.language not in LANGUAGE_NAMES:
            reply.error = f"Unknown language {request.language!r}; pick one from the list."
            yield reply
            return
        # 1. The audio, as a 16 kHz array.
        audio = None
        if file:
            states = self._read_file(reply, file)
        else:
            states = self._fetch(reply, link, cancel) if link else ()
        for state in states:
            if isinstance(state, np.ndarray):
                audio = state
            else:
                yield reply
        if audio is None:
            reply.error = reply.error or HELP
            yield reply
            return
        if not self._check_length(reply, audio):
            yield reply
            return
        # 2. The model (loaded once, then shared).
        if request.model not in self._transcribers:
            reply.status = "Loading the model…"
            yield reply
        try:
            transcriber = self.transcriber(request.model)
        except ValueError as err:
            reply.error = f"Cannot load the model: {escape_md(str(err))}"
            yield reply
            return
        try:  # a prompt too long for the model: one sentence, before any decoding
            transcriber.options(initial_prompt=request.initial_prompt)
        except ValueError as err:
            reply.error = escape_md(str(err))
            yield reply
            return
        reply.model = self.model_label(request.model)
        reply.quality = "fast" if request.beam_size == 1 else "accurate"
        # 3. The transcript, segment by segment; 4. English; 5. files to download.
        yield from self._transcribe(reply, transcriber, audio, request)
        yield from self._translate(reply, transcriber, audio, request)
        reply.files = self.downloads.write(reply)
        reply.status = ""
        yield reply

    def _read_file(self, reply: Reply, file: str) -> Iterator[np.ndarray | None]:
        """Decode ``file``, yielding None with progress, then the audio (nothing on failure)."""
        reply.status = "Reading the file…"
        yield None
        declared = declared_duration(file)
        if declared > self.options.max_duration_s:
            # Refused before decoding: 200 MB of low-bitrate audio can be days of sound.
            reply.error = too_long_message(reply.source, declared, self.options.max_duration_s)
            return
        try:
            yield load_audio(file, name=reply.source)
        except AudioError as err:
            reply.error = f"Could not read **{escape_md(reply.source)}**: {escape_md(err.reason)}."

    def _check_length(self, reply: Reply, audio: np.ndarray) -> bool:
        reply.duration = duration_s(audio)
        if reply.duration > self.options.max_duration_s:
            reply.error = too_long_message(
                reply.source, reply.duration, self.options.max_duration_s
            )
        elif reply.duration == 0:
            reply.error = f"**{escape_md(reply.source)}** holds no sound."
        reply.timestamps = reply.duration > self.options.timestamps_after_s
        return not reply.error

    def _transcribe(
        self, reply: Reply, transcriber: Transcriber, audio: np.ndarray, request: Request
    ) -> Iterator[Reply]:
        if request.language == AUTO:
            reply.status = "Detecting the language…"
            yield reply
            reply.language, reply.language_probability = transcriber.detect_language(audio)
        reply.status = progress_line("Transcribing", 0.0, reply.duration)
        yield reply
        stream = transcriber.stream(
            audio,
            language=reply.language,
            beam_size=request.beam_size,
            initial_prompt=request.initial_prompt,
            word_timestamps=True,  # each word's probability: unsure words are shown so
            dropped=reply.dropped,
        )
        for segment in stream:
            reply.swedish.append(segment)
            reply.status = progress_line("Transcribing", segment.end, reply.duration)
            yield reply

    def _translate(
        self, reply: Reply, transcriber: Transcriber, audio: np.ndarray, request: Request
    ) -> Iterator[Reply]:
        reply.translator = request.translator
        if request.translator == "whisper":
            # A run never checked on translation answers in Swedish: its start model translates,
            # and the English head says so.
            choice = tasks.translation_model(request.model)
            if choice.model != request.model:
                transcriber = self.transcriber(choice.model)
                reply.translation_note = choice.note
            reply.translation_model = self.model_label(choice.model)
            reply.status = "Translating…"
            yield reply
            source = translate.TranslateOptions(source=reply.language)
            for segment in translate.translate_speech(
                transcriber,
                audio,
                source,
                beam_size=request.beam_size,
                swedish=reply.swedish,
                dropped=reply.english_dropped,
            ):
                reply.english.append(segment)
                reply.status = progress_line("Translating", segment.end, reply.duration)
                yield reply
        elif request.translator == "google" and reply.text:
            reply.translation_model = "Google Translate"
            reply.status = "Translating online…"
            yield reply
            online = translate.TranslateOptions(
                backend="google",
                source=reply.language,
                timeout_s=self.options.translate_timeout_s,
            )
            try:
                reply.english_text = translate.translate_text(reply.text, online)
            except translate.TranslationUnavailable as err:
                reply.translation_note = str(err)

    def _fetch(
        self, reply: Reply, link: str, cancel: threading.Event
    ) -> Iterator[np.ndarray | None]:
        """Download ``link`` in a thread, yielding None with progress, then the audio (nothing
        once ``cancel`` is set: the thread then stops within ``links.CANCEL_POLL_S``)."""
        done: dict[str, Any] = {}
        fraction = [0.0]

        def work() -> None:
            try:
                done["audio"] = links.fetch_audio(
                    link,
                    self.options.link_options(),
                    on_progress=lambda f: fraction.__setitem__(0, f),
                    cancel=cancel,
                )
            except links.LinkError as err:
                done["error"] = err
            except Exception as err:  # reported by run() like any other failure
                done["crash"] = err

        worker = threading.Thread(target=work, name="link-download", daemon=True)
        worker.start()
        while worker.is_alive():
            reply.status = f"Downloading the audio… {fraction[0]:.0%}"
            yield None
            worker.join(links.CANCEL_POLL_S)
            if cancel.is_set():
                return
        if "crash" in done:
            raise done["crash"]
        if "error" in done:
            reply.status = ""
            reply.error = f"Could not use the link: {escape_md(str(done['error']))}."
            return
        got: links.LinkAudio = done["audio"]
        reply.source = got.title
        yield got.audio

    def uploaded(self, path: str) -> str:
        """``path`` if it lies inside Gradio's upload folder (symlinks resolved), else
        UploadRefused. Nothing is opened: the refusal is the same whether the file exists."""
        folder = upload_folder()
        real = Path(os.path.realpath(path))
        if not os.path.isabs(path) or not real.is_relative_to(folder) or real == folder:
            raise UploadRefused(NOT_UPLOADED)
        return str(real)


def find_runs(runs_dir: str | os.PathLike) -> list[Path]:
    """Run folders (``config.yaml`` + ``best/``) directly under ``runs_dir`` (or ``runs_dir``
    itself when it is one), by name."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    if is_run_folder(root):
        return [root]
    return sorted(p for p in root.iterdir() if is_run_folder(p))


def _run_label(run: Path) -> str:
    """A run's name in the picker: "a-run" under runs/, else its parent too ("demo-out/run")."""
    return run.name if run.parent.name in ("runs", "") else f"{run.parent.name}/{run.name}"


def upload_folder() -> Path:
    """The folder Gradio keeps uploads in ($GRADIO_TEMP_DIR, else TMP/gradio), resolved."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def declared_duration(path: str) -> float:
    """Seconds the file's header claims (0.0 when unknown or unreadable; decoding decides)."""
    import av

    try:
        with av.open(path, metadata_errors="ignore") as container:
            return (container.duration or 0) / 1_000_000  # AV_TIME_BASE: microseconds
    except (av.error.FFmpegError, OSError, ValueError):
        return 0.0


def _model_label(ref: str) -> str:
    from whisper_sv.models import resolve

    try:
        kind = resolve(ref).kind
    except ValueError:
        kind = None
    if kind == "hub":
        return f"hub: {ref}"  # the whole id and revision: the name alone says too little
    return ref if ref.startswith("bundled:") else Path(ref).name or ref
