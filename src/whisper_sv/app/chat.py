"""The Gradio app: a chat where a recording, a file or a YouTube link comes back as Swedish
text and its English translation.

Only UI glue lives here: decoding is :mod:`whisper_sv.core.audio`, transcription
:mod:`whisper_sv.infer.transcriber`, translation :mod:`whisper_sv.infer.translate`, links :mod:`whisper_sv.infer.links`.
One request is a generator of :class:`Reply` states; the chat renders each state as Markdown
while segments arrive, and the ``transcribe`` API endpoint returns the last one as plain text.

Safe by default: binds 127.0.0.1, limits upload size and audio length, queues requests beyond
``concurrency_limit``, and turns every failure into a sentence in the chat, never a traceback.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from whisper_sv.app.options import (
    LANGUAGE_CHOICES,
    LANGUAGE_NAMES,
    QUALITY_BEAMS,
    QUALITY_CHOICES,
    TRANSLATOR_CHOICES,
    AppOptions,
)
from whisper_sv.app.render import Reply, _md, _plain, _progress, _too_long, render_markdown
from whisper_sv.app.space import export_space
from whisper_sv.core.audio import AudioError, duration_s, load_audio
from whisper_sv.core.run_folder import is_run_folder
from whisper_sv.infer import links, translate
from whisper_sv.infer import translation_model as tasks
from whisper_sv.infer.types import AUTO
from whisper_sv.models.references import DEFAULT_MODEL

if TYPE_CHECKING:
    import gradio as gr

    from whisper_sv.infer.transcriber import Transcriber

__all__ = [
    "HELP",
    "LANGUAGE_CHOICES",
    "LANGUAGE_NAMES",
    "QUALITY_BEAMS",
    "QUALITY_CHOICES",
    "TRANSLATOR_CHOICES",
    "AppOptions",
    "ChatApp",
    "Reply",
    "Request",
    "UploadRefused",
    "build_app",
    "export_space",
    "find_runs",
    "render_markdown",
    "serve",
    "upload_folder",
]

log = logging.getLogger(__name__)

HELP = (
    "Send a **recording** (microphone), an **audio or video file**, or a **YouTube link**. "
    "The reply is the Swedish transcript and its English translation."
)
# Every decoding request (chat or API) shares one concurrency group, so the limit is global.
_CONCURRENCY_ID = "decode"
_DOWNLOAD_TTL_S = 3_600  # transcript files offered for download are kept this long


class UploadRefused(ValueError):
    """A file path that did not come from an upload to this app."""


@dataclass(frozen=True)
class Request:
    """What one request asks for (the page's choices, or the app's defaults)."""

    model: str  # model reference
    translator: str  # "whisper", "google" or "none"
    language: str = "sv"  # spoken language (Whisper code)
    beam_size: int = 1  # 1 = fast (greedy), 5 = accurate


# --------------------------------------------------------------------------- the request


class ChatApp:
    """The app's state (options, loaded models, download folder) and its request handlers.

    :meth:`run` is the library entry: it trusts its ``file`` argument. The Gradio handlers
    (:meth:`chat`, :meth:`transcribe_api`) accept only files inside Gradio's upload folder
    (:meth:`uploaded`), whatever a client sends.
    """

    def __init__(self, options: AppOptions | None = None) -> None:
        self.options = options or AppOptions()
        self._transcribers: dict[str, Transcriber] = {}
        self._lock = threading.Lock()
        self._downloads_dir: Path | None = None  # made on first use, removed with the app

    # ------------------------------------------------------------------ models

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, reference) of the bundled model, every run found, and ``model``."""
        choices = [(DEFAULT_MODEL, DEFAULT_MODEL)]
        seen = set()
        for folder in self.options.run_folders():
            for run in find_runs(folder):
                if run.resolve() not in seen:
                    seen.add(run.resolve())
                    choices.append((f"run: {_run_label(run)}", str(run)))
        if self.options.model not in [ref for _, ref in choices]:
            choices.append((_model_label(self.options.model), self.options.model))
        return choices

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
    ) -> Iterator[Reply]:
        """Transcribe (and translate) one file or link, yielding the reply as it grows.

        Never raises: a failure ends the stream with ``reply.error`` set. Each state is a
        snapshot, so a caller may keep them all. ``file`` is trusted (any path on this
        machine): the Gradio handlers check theirs with :meth:`uploaded` first.
        """
        opts = self.options
        request = Request(
            model=model or opts.model,
            translator=translator or opts.translator,
            language=language or opts.language,
            beam_size=QUALITY_BEAMS.get(quality or "", opts.beam_size),
        )
        reply = Reply(source=Path(file).name if file else (link or ""), language=request.language)
        try:
            for state in self._run(reply, file, link, request):
                yield state.snapshot()
        except Exception as err:  # the last line of defence: a sentence, not a traceback
            log.exception("request failed: %s", reply.source)
            reply.status = ""
            reply.error = (
                f"Something went wrong ({type(err).__name__}); the server log has the details."
            )
            yield reply.snapshot()

    def _run(
        self, reply: Reply, file: str | None, link: str | None, request: Request
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
        states = self._read_file(reply, file) if file else self._fetch(reply, link) if link else ()
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
            reply.error = f"Cannot load the model: {_md(str(err))}"
            yield reply
            return
        reply.model = self.model_label(request.model)
        reply.quality = "fast" if request.beam_size == 1 else "accurate"
        # 3. The transcript, segment by segment; 4. English; 5. files to download.
        yield from self._transcribe(reply, transcriber, audio, request)
        yield from self._translate(reply, transcriber, audio, request)
        reply.files = self._write_files(reply)
        reply.status = ""
        yield reply

    def _read_file(self, reply: Reply, file: str) -> Iterator[np.ndarray | None]:
        """Decode ``file``, yielding None with progress, then the audio (nothing on failure)."""
        reply.status = "Reading the file…"
        yield None
        declared = _declared_duration(file)
        if declared > self.options.max_duration_s:
            # Refused before decoding: 200 MB of low-bitrate audio can be days of sound.
            reply.error = _too_long(reply.source, declared, self.options.max_duration_s)
            return
        try:
            yield load_audio(file, name=reply.source)
        except AudioError as err:
            reply.error = f"Could not read **{_md(reply.source)}**: {_md(err.reason)}."

    def _check_length(self, reply: Reply, audio: np.ndarray) -> bool:
        reply.duration = duration_s(audio)
        if reply.duration > self.options.max_duration_s:
            reply.error = _too_long(reply.source, reply.duration, self.options.max_duration_s)
        elif reply.duration == 0:
            reply.error = f"**{_md(reply.source)}** holds no sound."
        reply.timestamps = reply.duration > self.options.timestamps_after_s
        return not reply.error

    def _transcribe(
        self, reply: Reply, transcriber: Transcriber, audio: np.ndarray, request: Request
    ) -> Iterator[Reply]:
        if request.language == AUTO:
            reply.status = "Detecting the language…"
            yield reply
            reply.language, reply.language_probability = transcriber.detect_language(audio)
        reply.status = _progress("Transcribing", 0.0, reply.duration)
        yield reply
        stream = transcriber.stream(
            audio,
            language=reply.language,
            beam_size=request.beam_size,
            word_timestamps=True,  # each word's probability: unsure words are shown so
            dropped=reply.dropped,
        )
        for segment in stream:
            reply.swedish.append(segment)
            reply.status = _progress("Transcribing", segment.end, reply.duration)
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
                reply.status = _progress("Translating", segment.end, reply.duration)
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

    def _fetch(self, reply: Reply, link: str) -> Iterator[np.ndarray | None]:
        """Download ``link`` in a thread, yielding None with progress, then the audio."""
        done: dict[str, Any] = {}
        fraction = [0.0]

        def work() -> None:
            try:
                done["audio"] = links.fetch_audio(
                    link,
                    self.options.link_options(),
                    on_progress=lambda f: fraction.__setitem__(0, f),
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
            worker.join(0.5)
        if "crash" in done:
            raise done["crash"]
        if "error" in done:
            reply.status = ""
            reply.error = f"Could not use the link: {_md(str(done['error']))}."
            return
        got: links.LinkAudio = done["audio"]
        reply.source = got.title
        yield got.audio

    @property
    def _downloads(self) -> Path:
        if self._downloads_dir is None:
            folder = Path(tempfile.mkdtemp(prefix="whisper-sv-app-"))
            # Removed by close(), or when the app is garbage-collected or the process exits
            # (the CLI turns SIGTERM into a normal exit, so that covers `kill` too).
            self._cleanup = weakref.finalize(self, shutil.rmtree, folder, True)
            self._downloads_dir = folder
        return self._downloads_dir

    def _write_files(self, reply: Reply) -> list[str]:
        """The transcript as SRT, VTT and TXT (and the English as SRT and VTT) in a fresh
        folder; folders older than 1 h go."""
        if not reply.swedish:
            return []
        from whisper_sv.infer.transcriber import subtitles

        now = time.time()
        for old in self._downloads.iterdir():
            if now - old.stat().st_mtime > _DOWNLOAD_TTL_S:
                shutil.rmtree(old, ignore_errors=True)
        folder = self._downloads / uuid.uuid4().hex
        folder.mkdir()
        stem = _safe_stem(reply.source)
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
        if self._downloads_dir is not None:
            self._cleanup()
            self._downloads_dir = None

    # ------------------------------------------------------------------ handlers

    def uploaded(self, path: str) -> str:
        """``path`` if it lies inside Gradio's upload folder (symlinks resolved), else
        UploadRefused. Nothing is opened: the refusal is the same whether the file exists."""
        folder = upload_folder()
        real = Path(os.path.realpath(path))
        if not os.path.isabs(path) or not real.is_relative_to(folder) or real == folder:
            raise UploadRefused(
                "Only files uploaded to this app are accepted: send the file itself, "
                "not a path on the server."
            )
        return str(real)

    def chat(
        self,
        message: dict | str | None,
        history: list | None,
        model: str | None,
        translator: str | None,
        language: str | None = None,
        quality: str | None = None,
    ) -> Iterator[tuple[list, None, dict, dict]]:
        """Chat handler: yields (history, input box value, downloads update, cancel update)."""
        import gradio as gr

        history = list(history or [])
        text, files = _split_message(message)
        file = files[0] if files else None
        link = None if file else (text.strip() or None)
        answer = None
        if file:
            try:
                file = self.uploaded(file)
            except UploadRefused as err:
                answer = f"⚠️ {err}"
        elif not link or not links.looks_like_link(link):
            answer = HELP  # an empty box, spaces, or words that are not a link
        if answer:
            if text.strip():
                history.append({"role": "user", "content": text})
            history.append({"role": "assistant", "content": answer})
            yield history, None, gr.update(value=None, visible=False), gr.update(visible=False)
            return
        user = {"path": file} if file else link
        history.append({"role": "user", "content": user})
        states = self.run(file, link, model, translator, language=language, quality=quality)
        for reply in states:
            shown = [*history, {"role": "assistant", "content": render_markdown(reply)}]
            files_shown = gr.update(value=reply.files or None, visible=bool(reply.files))
            yield shown, None, files_shown, gr.update(visible=bool(reply.status))

    def cancelled(self, history: list | None) -> tuple[list, dict]:
        """Cancel handler: the last reply, if still running, says it was cancelled."""
        import gradio as gr

        history = list(history or [])
        if history and history[-1].get("role") == "assistant":
            content = history[-1].get("content")
            if isinstance(content, list):  # as the page sends it: [{"type": "text", ...}]
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if isinstance(content, str) and "⏳" in content:
                kept = content.rsplit("\n\n*⏳", 1)[0]
                history[-1] = {"role": "assistant", "content": kept + "\n\n*⏹️ Cancelled.*"}
        return history, gr.update(visible=False)

    def transcribe_api(self, file: str | None) -> tuple[str, str]:
        """API handler: (transcript, English translation) of one uploaded audio file.

        Uses the model, language, quality and translator the app started with. A bad file
        (or a path that was not uploaded) gives ("", reason).
        """
        if not file:
            return "", _plain(HELP)
        try:
            file = self.uploaded(file)
        except UploadRefused as err:
            return "", str(err)
        last = Reply()
        for state in self.run(file, None, self.options.model, self.options.translator):
            last = state
        if last.error:
            return "", _plain(last.error)
        return last.text, last.translation or last.translation_note

    # ------------------------------------------------------------------ UI

    def _pickers(self) -> tuple:
        """The dropdowns above the chat: model, language, quality, translation."""
        import gradio as gr

        with gr.Row():
            model = gr.Dropdown(
                choices=self.model_choices(),
                value=self.options.model,
                label="Model",
                scale=3,
                elem_id="model",
            )
            language = gr.Dropdown(
                choices=list(LANGUAGE_CHOICES),
                value=self.options.language,
                label="Spoken language",
                scale=2,
                elem_id="language",
            )
            quality = gr.Dropdown(
                choices=list(QUALITY_CHOICES),
                value=self.options.quality,
                label="Quality",
                scale=2,
                elem_id="quality",
            )
            translator = gr.Dropdown(
                choices=list(TRANSLATOR_CHOICES),
                value=self.options.translator,
                label="Translation",
                scale=3,
                elem_id="translator",
            )
        return model, language, quality, translator

    def build(self) -> gr.Blocks:
        """The Gradio Blocks (not launched); queue settings applied."""
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
        import gradio as gr

        with gr.Blocks(title="whisper-sv", delete_cache=(3_600, 3_600)) as demo:
            gr.Markdown("## whisper-sv: Swedish speech to text\n" + HELP)
            model, language, quality, translator = self._pickers()
            chatbot = gr.Chatbot(
                label="Transcripts",
                height="62vh",
                min_height=360,
                elem_id="chat",
                buttons=["copy", "copy_all"],
            )
            box = gr.MultimodalTextbox(
                sources=["upload", "microphone"],
                file_count="single",
                placeholder="Record, drop an audio/video file, or paste a YouTube link",
                show_label=False,
                elem_id="input",
            )
            cancel = gr.Button("Cancel", variant="stop", visible=False, elem_id="cancel")
            downloads = gr.File(
                label="Download the transcript (SRT, VTT, TXT) and the English (.en.srt, .en.vtt)",
                file_count="multiple",
                interactive=False,
                visible=False,  # shown with the first reply that has files
                elem_id="downloads",
            )
            job = box.submit(
                self.chat,
                [box, chatbot, model, translator, language, quality],
                [chatbot, box, downloads, cancel],
                api_visibility="private",
                concurrency_id=_CONCURRENCY_ID,
                concurrency_limit=self.options.concurrency_limit,
            )
            cancel.click(
                self.cancelled,
                chatbot,
                [chatbot, cancel],
                cancels=[job],
                api_visibility="private",
                queue=False,
            )
            # Runs finished since the server started show up when the page is (re)loaded.
            demo.load(
                lambda: gr.Dropdown(choices=self.model_choices()),
                None,
                model,
                api_visibility="private",
                queue=False,
            )
            self._api_endpoint()
        demo.queue(
            default_concurrency_limit=self.options.concurrency_limit,
            max_size=self.options.max_queue,
        )
        return demo

    def _api_endpoint(self) -> None:
        """The ``/transcribe`` API: hidden components, same code path as the chat."""
        import gradio as gr

        api_file = gr.File(visible=False, label="audio")
        api_text = gr.Textbox(visible=False, label="transcript")
        api_translation = gr.Textbox(visible=False, label="translation")
        api_button = gr.Button(visible=False)
        api_button.click(
            self.transcribe_api,
            api_file,
            [api_text, api_translation],
            api_name="transcribe",
            api_description="Transcript and English translation of an uploaded audio file.",
            concurrency_id=_CONCURRENCY_ID,
            concurrency_limit=self.options.concurrency_limit,
        )

    def launch(self, **kwargs) -> gr.Blocks:
        """Build and serve the app (blocks unless ``prevent_thread_lock=True``)."""
        opts = self.options
        if opts.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("serving on %s: the app is reachable from other machines", opts.host)
        demo = self.build()
        demo.launch(
            server_name=opts.host,
            server_port=opts.port,
            max_file_size=opts.max_file_size,
            ssr_mode=False,  # server-side rendering needs Node; plain serving is enough
            share=False,
            **kwargs,
        )
        return demo


# --------------------------------------------------------------------------- helpers


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


def _declared_duration(path: str) -> float:
    """Seconds the file's header claims (0.0 when unknown or unreadable; decoding decides)."""
    import av

    try:
        with av.open(path, metadata_errors="ignore") as container:
            return (container.duration or 0) / 1_000_000  # AV_TIME_BASE: microseconds
    except (av.error.FFmpegError, OSError, ValueError):
        return 0.0


def _split_message(message: dict | str | None) -> tuple[str, list[str]]:
    """(text, file paths) of a MultimodalTextbox value."""
    if message is None:
        return "", []
    if isinstance(message, str):
        return message, []
    files = []
    for f in message.get("files") or []:
        path = f if isinstance(f, str) else (f.get("path") if isinstance(f, dict) else None)
        if path:
            files.append(path)
    return message.get("text") or "", files


def _model_label(ref: str) -> str:
    return ref if ref.startswith("bundled:") else Path(ref).name or ref


def _safe_stem(name: str) -> str:
    stem = Path(name).stem if name else "transcript"
    clean = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem).strip("_")
    return (clean or "transcript")[:80]


# --------------------------------------------------------------------------- entry points


def build_app(options: AppOptions | None = None) -> gr.Blocks:
    """The app as Gradio Blocks, ready to ``launch()``."""
    return ChatApp(options).build()


def serve(options: AppOptions | None = None, **launch_kwargs) -> gr.Blocks:
    """Build and launch the app with the options' host, port and limits."""
    return ChatApp(options).launch(**launch_kwargs)
