"""The Gradio app: a chat where a recording, a file or a YouTube link comes back as Swedish
text and its English translation.

Only UI glue lives here: decoding is :mod:`whisper_sv.audio`, transcription
:mod:`whisper_sv.infer`, translation :mod:`whisper_sv.translate`, links :mod:`whisper_sv.links`.
One request is a generator of :class:`Reply` states; the chat renders each state as Markdown
while segments arrive, and the ``transcribe`` API endpoint returns the last one as plain text.

Safe by default: binds 127.0.0.1, limits upload size and audio length, queues requests beyond
``concurrency_limit``, and turns every failure into a sentence in the chat, never a traceback.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from whisper_sv import links, models, tasks, translate
from whisper_sv.audio import AudioError, duration_s, load_audio

if TYPE_CHECKING:
    import gradio as gr

    from whisper_sv.infer import Segment, Transcriber

log = logging.getLogger(__name__)

TRANSLATOR_CHOICES: tuple[tuple[str, str], ...] = (
    ("English by Whisper (offline)", "whisper"),
    ("English by Google Translate (online)", "google"),
    ("No translation", "none"),
)
# Spoken languages offered (label in its own language, Whisper code); Swedish first.
LANGUAGE_CHOICES: tuple[tuple[str, str], ...] = (
    ("Svenska", "sv"),
    ("English", "en"),
    ("Norsk", "no"),
    ("Dansk", "da"),
    ("Suomi", "fi"),
    ("Deutsch", "de"),
    ("Français", "fr"),
    ("Español", "es"),
)
LANGUAGE_NAMES = {code: name for name, code in LANGUAGE_CHOICES}
QUALITY_CHOICES: tuple[tuple[str, str], ...] = (
    ("Fast (greedy)", "fast"),
    ("Accurate (beam 5, about 1.6x slower)", "accurate"),
)
QUALITY_BEAMS = {"fast": 1, "accurate": 5}
_SIZE_RE = re.compile(r"\d+(\.\d+)?\s*(b|kb|mb|gb)?", re.IGNORECASE)  # Gradio's size syntax
HELP = (
    "Send a **recording** (microphone), an **audio or video file**, or a **YouTube link**. "
    "The reply is the Swedish transcript and its English translation."
)
# Every decoding request (chat or API) shares one concurrency group, so the limit is global.
_CONCURRENCY_ID = "decode"
_DOWNLOAD_TTL_S = 3_600  # transcript files offered for download are kept this long


@dataclass(frozen=True)
class AppOptions:
    """How the app is served and what it accepts."""

    model: str = models.DEFAULT_MODEL  # model selected when the page opens
    # Folders whose runs the model picker lists ("runs": train's usual place, "demo-out": the
    # demo's run); a run folder itself may be given too. None: no runs.
    runs_dir: str | tuple[str, ...] | None = ("runs", "demo-out")
    host: str = "127.0.0.1"  # interface to bind; 0.0.0.0 exposes the app to the network
    port: int = 7860  # TCP port
    max_file_size: str = "200mb"  # largest upload Gradio accepts: a number and b/kb/mb/gb
    max_duration_s: float = 3_600.0  # longer recordings (uploads and links) are refused
    concurrency_limit: int = 2  # requests decoded at once (2 fits 2 CPU cores); others queue
    max_queue: int = 64  # requests allowed to wait; beyond that users get "queue full"
    translator: str = "whisper"  # translation preselected: "whisper", "google" or "none"
    translate_timeout_s: float = 10.0  # online translator: give up after this many seconds
    beam_size: int = 1  # quality preselected: 1 = fast (greedy, 1.6x faster on CPU), 5 = accurate
    language: str = "sv"  # spoken language preselected (a code of LANGUAGE_CHOICES)
    timestamps_after_s: float = 30.0  # audio longer than this is shown with timestamps
    link_hosts: tuple[str, ...] = links.YOUTUBE_HOSTS  # link hosts; + $WHISPER_SV_LINK_HOSTS
    link_timeout_s: float = 20.0  # network timeout of link downloads, seconds
    allow_private_links: bool = False  # links to private/loopback addresses (see links.py)

    def __post_init__(self) -> None:
        if self.translator not in translate.BACKENDS:
            raise ValueError(
                f"translator must be one of {', '.join(translate.BACKENDS)}, not {self.translator!r}"
            )
        if not 0 < self.port < 65_536:
            raise ValueError(f"port must be 1-65535, got {self.port}")
        if self.concurrency_limit < 1 or self.max_queue < 1:
            raise ValueError("concurrency_limit and max_queue must be at least 1")
        if self.max_duration_s <= 0:
            raise ValueError(f"max_duration_s must be > 0, got {self.max_duration_s}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if not _SIZE_RE.fullmatch(str(self.max_file_size).strip()):
            raise ValueError(
                f"max file size must be a number with an optional unit b, kb, mb or gb "
                f"(e.g. 200mb), not {self.max_file_size!r}"
            )
        if self.language not in dict((code, n) for n, code in LANGUAGE_CHOICES):
            codes = ", ".join(code for _, code in LANGUAGE_CHOICES)
            raise ValueError(f"language must be one of {codes}, not {self.language!r}")

    def link_options(self) -> links.LinkOptions:
        return links.LinkOptions(
            allowed_hosts=self.link_hosts,
            max_duration_s=self.max_duration_s,
            timeout_s=self.link_timeout_s,
            allow_private=self.allow_private_links,
        )

    def run_folders(self) -> tuple[str, ...]:
        if not self.runs_dir:
            return ()
        return (self.runs_dir,) if isinstance(self.runs_dir, str) else tuple(self.runs_dir)

    @property
    def quality(self) -> str:
        """The quality preselected, from ``beam_size``."""
        return "fast" if self.beam_size == 1 else "accurate"


class UploadRefused(ValueError):
    """A file path that did not come from an upload to this app."""


@dataclass
class Reply:
    """The state of one request, updated as it goes (rendered after every change)."""

    source: str = ""  # what was sent: a file name or a link
    duration: float = 0.0  # seconds of audio
    status: str = ""  # what is happening now ("" once done)
    language: str = "sv"  # spoken language (Whisper code)
    model: str = ""  # which model wrote the transcript (a label)
    quality: str = ""  # "fast" or "accurate"
    swedish: list[Segment] = field(default_factory=list)  # transcript so far (any language)
    english: list[Segment] = field(default_factory=list)  # Whisper translation so far
    english_text: str = ""  # online translation (whole text)
    translator: str = "none"  # which translation is shown
    translation_model: str = ""  # which model or service wrote the English (a label)
    # Why there is no translation (online translator unreachable), or why another model than
    # the transcript's wrote the English (a run not checked on translation: tasks.py).
    translation_note: str = ""
    error: str = ""  # a failure, in words; nothing else is shown then
    files: list[str] = field(default_factory=list)  # SRT / VTT / TXT to download
    timestamps: bool = False  # long audio: segments with their times

    def snapshot(self) -> Reply:
        """A copy that later changes to this one do not touch."""
        return replace(
            self, swedish=list(self.swedish), english=list(self.english), files=list(self.files)
        )

    @property
    def text(self) -> str:
        """The transcript, one segment per line."""
        return "\n".join(s.text.strip() for s in self.swedish if s.text.strip())

    @property
    def translation(self) -> str:
        if self.translator == "google":
            return self.english_text
        return "\n".join(s.text.strip() for s in self.english if s.text.strip())


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
        choices = [(models.DEFAULT_MODEL, models.DEFAULT_MODEL)]
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
        from whisper_sv.infer import Transcriber

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
        reply.status = _progress("Transcribing", 0.0, reply.duration)
        yield reply
        stream = transcriber.stream(audio, language=request.language, beam_size=request.beam_size)
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
            source = translate.TranslateOptions(source=request.language)
            for segment in translate.translate_speech(
                transcriber,
                audio,
                source,
                beam_size=request.beam_size,
                swedish=reply.swedish,
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
                source=request.language,
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
        from whisper_sv.infer import subtitles

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
    if _is_run(root):
        return [root]
    return sorted(p for p in root.iterdir() if _is_run(p))


def _is_run(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() and (folder / "best").is_dir()


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


def render_markdown(reply: Reply) -> str:
    """The chat message for ``reply``: transcript, then English, then the progress line.

    Each section's head names the model (or service) that wrote it, so a reply whose English
    comes from another model than its transcript says so.
    """
    if reply.error:
        return f"⚠️ {reply.error}"
    parts = []
    head = f"**{LANGUAGE_NAMES.get(reply.language, reply.language)}**"
    head += f" · {_md(reply.source)}" if reply.source else ""
    if reply.duration:
        head += f" · {_length(reply.duration)}"
    if reply.model:
        head += f" · model {_md(reply.model)}" + (
            " (accurate)" if reply.quality == "accurate" else ""
        )
    parts.append(head)
    parts.append(_lines(reply.swedish, reply.timestamps) or "…")
    by = f" · model {_md(reply.translation_model)}" if reply.translation_model else ""
    if reply.translator == "whisper" and (reply.english or not reply.status):
        parts.append("**English** · Whisper (offline)" + by)
        if reply.translation_note:  # the English came from another model than the transcript
            parts.append(f"ℹ️ {_md(reply.translation_note)}")
        parts.append(_lines(reply.english, reply.timestamps) or "…")
    elif reply.translator == "google" and not reply.status:
        parts.append("**English** · Google Translate (online)")
        if reply.translation_note:
            parts.append(f"⚠️ {_md(reply.translation_note)}")
        else:
            parts.append(_md(reply.english_text) or "…")
    if reply.status:
        parts.append(f"*⏳ {reply.status}*")
    elif not reply.swedish:
        parts.append("*No speech found.*")
    return "\n\n".join(parts)


def _lines(segments: list[Segment], timestamps: bool) -> str:
    if timestamps:
        return "\n".join(
            f"`{_clock(s.start)}–{_clock(s.end)}` {_md(s.text.strip())}"
            for s in segments
            if s.text.strip()
        )
    return _md(" ".join(s.text.strip() for s in segments if s.text.strip()))


def _too_long(source: str, seconds: float, limit: float) -> str:
    return (
        f"**{_md(source)}** is {_length(seconds)} long; the limit is {_length(limit)}. "
        "Send a shorter recording."
    )


def _progress(what: str, done_s: float, total_s: float) -> str:
    share = min(1.0, done_s / total_s) if total_s else 0.0
    return f"{what}… {share:.0%} ({_clock(min(done_s, total_s))} of {_clock(total_s)})"


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


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>#|~"})


def _md(text: str) -> str:
    """``text`` with Markdown/HTML characters escaped (transcripts are shown verbatim)."""
    return text.translate(_MD_SPECIAL)


def _plain(markdown: str) -> str:
    """Undo the escaping and bold marks of a message, for API callers."""
    out = markdown.replace("**", "")
    for c in "\\`*_[]<>#|~":
        out = out.replace("\\" + c, c)
    return out


def _length(seconds: float) -> str:
    """A recording's length: "4.2 s" when short, else like :func:`_clock`."""
    return f"{seconds:.1f} s" if seconds < 60 else _clock(seconds)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


# --------------------------------------------------------------------------- entry points


def build_app(options: AppOptions | None = None) -> gr.Blocks:
    """The app as Gradio Blocks, ready to ``launch()``."""
    return ChatApp(options).build()


def serve(options: AppOptions | None = None, **launch_kwargs) -> gr.Blocks:
    """Build and launch the app with the options' host, port and limits."""
    return ChatApp(options).launch(**launch_kwargs)


_SPACE_APP = '''\
"""whisper-sv: Swedish speech to text, with an English translation (Gradio app).

Run with `pip install -r requirements.txt && python app.py`, or as a Hugging Face Space.
The model is the CTranslate2 folder `model/` next to this file; the `whisper_sv` folder is the
toolkit's code, so nothing else needs installing.
"""

import logging
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the copy of whisper_sv next to this file wins

from whisper_sv.app import AppOptions, serve  # noqa: E402

OPTIONS = AppOptions(
    model=str(HERE / "model"),
    runs_dir=None,
    # Spaces set GRADIO_SERVER_NAME=0.0.0.0; anywhere else the app stays on this machine.
    host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
    port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
{limits})

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    serve(OPTIONS)
'''

_SPACE_README = """\
---
title: {title}
emoji: 🎙️
colorFrom: blue
colorTo: yellow
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
license: mit
---

# {title}

Swedish speech to text with Whisper, and an English translation. Send a recording, an audio or
video file, or a YouTube link. Made with whisper-sv.

- Model: `{model}` (CTranslate2, in `model/`), run with faster-whisper on CPU.
- Translation: Whisper's own speech translation (offline) by default; Google Translate
  (online) can be chosen in the page.
- Limits: uploads up to {max_file_size}, recordings up to {max_duration}.
- API: endpoint `/transcribe` (an audio file in; transcript and translation out), e.g.
  `gradio_client.Client(URL).predict(handle_file("clip.wav"), api_name="/transcribe")`.

Run it anywhere: `pip install -r requirements.txt && python app.py`.
"""

# What the exported app imports (whisper_sv's training stack is not needed to serve).
_SPACE_REQUIREMENTS = (
    "gradio",
    "gradio_client",
    "faster-whisper",
    "ctranslate2",
    "av",
    "numpy",
    "pyyaml",
    "yt-dlp",
    "deep-translator",
    "requests",
)
# Options written into the exported app.py (the rest are the Space's host/port/model).
_SPACE_LIMITS = (
    "max_file_size",
    "max_duration_s",
    "concurrency_limit",
    "max_queue",
    "translator",
    "beam_size",
)


def export_space(
    out_dir: str | os.PathLike,
    options: AppOptions | None = None,
    *,
    title: str = "whisper-sv",
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write a Hugging Face Space folder that serves ``options.model`` with ``python app.py``.

    The folder holds ``app.py``, ``requirements.txt``, ``README.md`` (Space front matter),
    ``model/`` (the model in CTranslate2 format, from :func:`models.ct2_dir`) and a copy of
    the ``whisper_sv`` package. Refuses a non-empty ``out_dir``.
    """
    from importlib import metadata

    options = options or AppOptions()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; pass a new or empty folder to --export-space")
    say = progress or log.info
    say(f"preparing the model {options.model} in CTranslate2 format")
    ct2 = models.ct2_dir(options.model)
    out.mkdir(parents=True, exist_ok=True)
    say(f"copying the model to {out / 'model'}")
    shutil.copytree(ct2, out / "model", ignore=shutil.ignore_patterns(".*", "*.lock"))
    package = Path(__file__).resolve().parent
    shutil.copytree(package, out / "whisper_sv", ignore=shutil.ignore_patterns("__pycache__"))

    def pinned(name: str) -> str:
        try:
            return f"{name}=={metadata.version(name)}"
        except metadata.PackageNotFoundError:
            return name

    (out / "requirements.txt").write_text(
        "\n".join(pinned(n) for n in _SPACE_REQUIREMENTS) + "\n", encoding="utf-8"
    )
    limits = "".join(f"    {k}={getattr(options, k)!r},\n" for k in _SPACE_LIMITS)
    (out / "app.py").write_text(_SPACE_APP.format(limits=limits), encoding="utf-8")
    (out / "README.md").write_text(
        _SPACE_README.format(
            title=title,
            gradio_version=metadata.version("gradio"),
            model=options.model,
            max_file_size=options.max_file_size,
            max_duration=_clock(options.max_duration_s),
        ),
        encoding="utf-8",
    )
    say(f"wrote {out}: run it with `cd {out} && python app.py`")
    return out
