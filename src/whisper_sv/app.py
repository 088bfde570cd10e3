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

from whisper_sv import links, models, translate
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
    runs_dir: str | None = "runs"  # run registry listed in the model picker (None: no runs)
    host: str = "127.0.0.1"  # interface to bind; 0.0.0.0 exposes the app to the network
    port: int = 7860  # TCP port
    max_file_size: str = "200mb"  # largest upload Gradio accepts (its own size syntax)
    max_duration_s: float = 3_600.0  # longer recordings (uploads and links) are refused
    concurrency_limit: int = 2  # requests decoded at once (2 fits 2 CPU cores); others queue
    max_queue: int = 64  # requests allowed to wait; beyond that users get "queue full"
    translator: str = "whisper"  # translation preselected: "whisper", "google" or "none"
    translate_timeout_s: float = 10.0  # online translator: give up after this many seconds
    beam_size: int = 1  # 1 = greedy: 1.6x faster than beam 5 on CPU (docs/benchmarks.md)
    timestamps_after_s: float = 30.0  # audio longer than this is shown with timestamps
    link_hosts: tuple[str, ...] = links.YOUTUBE_HOSTS  # link hosts; + $WHISPER_SV_LINK_HOSTS
    link_timeout_s: float = 20.0  # network timeout of link downloads, seconds

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

    def link_options(self) -> links.LinkOptions:
        return links.LinkOptions(
            allowed_hosts=self.link_hosts,
            max_duration_s=self.max_duration_s,
            timeout_s=self.link_timeout_s,
        )


@dataclass
class Reply:
    """The state of one request, updated as it goes (rendered after every change)."""

    source: str = ""  # what was sent: a file name or a link
    duration: float = 0.0  # seconds of audio
    status: str = ""  # what is happening now ("" once done)
    swedish: list[Segment] = field(default_factory=list)  # transcript so far
    english: list[Segment] = field(default_factory=list)  # Whisper translation so far
    english_text: str = ""  # online translation (whole text)
    translator: str = "none"  # which translation is shown
    translation_note: str = ""  # why there is no translation (online translator unreachable)
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
        """The Swedish transcript, one segment per line."""
        return "\n".join(s.text.strip() for s in self.swedish if s.text.strip())

    @property
    def translation(self) -> str:
        if self.translator == "google":
            return self.english_text
        return "\n".join(s.text.strip() for s in self.english if s.text.strip())


# --------------------------------------------------------------------------- the request


class ChatApp:
    """The app's state (options, loaded models, download folder) and its request handler."""

    def __init__(self, options: AppOptions | None = None) -> None:
        self.options = options or AppOptions()
        self._transcribers: dict[str, Transcriber] = {}
        self._lock = threading.Lock()
        self._downloads_dir: Path | None = None  # made on first use, removed with the app

    # ------------------------------------------------------------------ models

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, reference) of the bundled model, every run in ``runs_dir``, and ``model``."""
        choices = [(models.DEFAULT_MODEL, models.DEFAULT_MODEL)]
        if self.options.runs_dir:
            choices += [(f"run: {p.name}", str(p)) for p in find_runs(self.options.runs_dir)]
        if self.options.model not in [ref for _, ref in choices]:
            choices.append((_model_label(self.options.model), self.options.model))
        return choices

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
        self, file: str | None, link: str | None, model: str | None, translator: str | None
    ) -> Iterator[Reply]:
        """Transcribe (and translate) one file or link, yielding the reply as it grows.

        Never raises: a failure ends the stream with ``reply.error`` set. Each state is a
        snapshot, so a caller may keep them all.
        """
        reply = Reply(source=Path(file).name if file else (link or ""))
        try:
            for state in self._run(reply, file, link, model or self.options.model, translator):
                yield state.snapshot()
        except Exception as err:  # the last line of defence: a sentence, not a traceback
            log.exception("request failed: %s", reply.source)
            reply.status = ""
            reply.error = (
                f"Something went wrong ({type(err).__name__}); the server log has the details."
            )
            yield reply.snapshot()

    def _run(
        self, reply: Reply, file: str | None, link: str | None, model: str, translator: str | None
    ) -> Iterator[Reply]:
        opts = self.options
        if model not in [ref for _, ref in self.model_choices()]:
            reply.error = f"Unknown model {model!r}; pick one from the list."
            yield reply
            return
        translator = translator or opts.translator

        # 1. The audio, as a 16 kHz array.
        if file:
            reply.status = "Reading the file…"
            yield reply
            declared = _declared_duration(file)
            if declared > opts.max_duration_s:
                # Refused before decoding: 200 MB of low-bitrate audio can be days of sound.
                reply.error = (
                    f"**{_md(reply.source)}** is {_length(declared)} long; the limit is "
                    f"{_length(opts.max_duration_s)}. Send a shorter recording."
                )
                yield reply
                return
            try:
                audio = load_audio(file, name=reply.source)
            except AudioError as err:
                reply.error = f"Could not read **{_md(reply.source)}**: {_md(err.reason)}."
                yield reply
                return
        elif link:
            audio = None
            for state in self._fetch(reply, link):
                if isinstance(state, np.ndarray):
                    audio = state
                else:
                    yield reply
            if audio is None:
                yield reply
                return
        else:
            reply.error = HELP
            yield reply
            return
        reply.duration = duration_s(audio)
        if reply.duration > opts.max_duration_s:
            reply.error = (
                f"**{_md(reply.source)}** is {_length(reply.duration)} long; the limit is "
                f"{_length(opts.max_duration_s)}. Send a shorter recording."
            )
            yield reply
            return
        if reply.duration == 0:
            reply.error = f"**{_md(reply.source)}** holds no sound."
            yield reply
            return
        reply.timestamps = reply.duration > opts.timestamps_after_s

        # 2. The model (loaded once, then shared).
        if model not in self._transcribers:
            reply.status = "Loading the model…"
            yield reply
        try:
            transcriber = self.transcriber(model)
        except ValueError as err:
            reply.error = f"Cannot load the model: {_md(str(err))}"
            yield reply
            return

        # 3. Swedish, segment by segment.
        reply.status = _progress("Transcribing", 0.0, reply.duration)
        yield reply
        for segment in transcriber.stream(audio, language="sv", beam_size=opts.beam_size):
            reply.swedish.append(segment)
            reply.status = _progress("Transcribing", segment.end, reply.duration)
            yield reply

        # 4. English.
        reply.translator = translator
        if translator == "whisper":
            reply.status = "Translating…"
            yield reply
            for segment in translate.translate_speech(
                transcriber,
                audio,
                translate.TranslateOptions(),
                beam_size=opts.beam_size,
                swedish=reply.swedish,
            ):
                reply.english.append(segment)
                reply.status = _progress("Translating", segment.end, reply.duration)
                yield reply
        elif translator == "google" and reply.text:
            reply.status = "Translating online…"
            yield reply
            online = translate.TranslateOptions(
                backend="google", timeout_s=opts.translate_timeout_s
            )
            try:
                reply.english_text = translate.translate_text(reply.text, online)
            except translate.TranslationUnavailable as err:
                reply.translation_note = str(err)

        # 5. Files to download.
        reply.files = self._write_files(reply)
        reply.status = ""
        yield reply

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
            # Removed by close(), or when the app is garbage-collected or the process exits.
            self._cleanup = weakref.finalize(self, shutil.rmtree, folder, True)
            self._downloads_dir = folder
        return self._downloads_dir

    def _write_files(self, reply: Reply) -> list[str]:
        """The transcript as SRT, VTT and TXT in a fresh folder; folders older than 1 h go."""
        if not reply.swedish:
            return []
        now = time.time()
        for old in self._downloads.iterdir():
            if now - old.stat().st_mtime > _DOWNLOAD_TTL_S:
                shutil.rmtree(old, ignore_errors=True)
        folder = self._downloads / uuid.uuid4().hex
        folder.mkdir()
        stem = _safe_stem(reply.source)
        out = []
        from whisper_sv.infer import subtitles

        for ext in ("srt", "vtt", "txt"):
            path = folder / f"{stem}.{ext}"
            path.write_text(subtitles(reply.swedish, ext), encoding="utf-8")
            out.append(str(path))
        return out

    def close(self) -> None:
        """Remove the transcript files offered for download."""
        if self._downloads_dir is not None:
            self._cleanup()
            self._downloads_dir = None

    # ------------------------------------------------------------------ handlers

    def chat(
        self, message: dict | str | None, history: list | None, model: str, translator: str
    ) -> Iterator[tuple[list, dict | None, list[str] | None]]:
        """Chat handler: yields (history, input box value, download files)."""
        history = list(history or [])
        text, files = _split_message(message)
        file = files[0] if files else None
        link = None if file else (text.strip() or None)
        if link and not links.looks_like_link(link):
            history += [
                {"role": "user", "content": text},
                {"role": "assistant", "content": HELP},
            ]
            yield history, None, None
            return
        user = (
            {"role": "user", "content": {"path": file}}
            if file
            else {"role": "user", "content": link}
        )
        history.append(user)
        for reply in self.run(file, link, model, translator):
            shown = [*history, {"role": "assistant", "content": render_markdown(reply)}]
            yield shown, None, (reply.files or None)

    def transcribe_api(self, file: str | None) -> tuple[str, str]:
        """API handler: (Swedish transcript, English translation) of one audio file.

        Uses the model and translator the app started with. A bad file gives ("", reason).
        """
        last = Reply()
        for state in self.run(file, None, self.options.model, self.options.translator):
            last = state
        if last.error:
            return "", _plain(last.error)
        return last.text, last.translation or last.translation_note

    # ------------------------------------------------------------------ UI

    def build(self) -> gr.Blocks:
        """The Gradio Blocks (not launched); queue settings applied."""
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
        import gradio as gr

        with gr.Blocks(title="whisper-sv", delete_cache=(3_600, 3_600)) as demo:
            gr.Markdown("## whisper-sv: Swedish speech to text\n" + HELP)
            with gr.Row():
                model = gr.Dropdown(
                    choices=self.model_choices(),
                    value=self.options.model,
                    label="Model",
                    scale=3,
                    elem_id="model",
                )
                translator = gr.Dropdown(
                    choices=list(TRANSLATOR_CHOICES),
                    value=self.options.translator,
                    label="Translation",
                    scale=3,
                    elem_id="translator",
                )
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
            downloads = gr.File(
                label="Download the transcript (SRT, VTT, TXT)",
                file_count="multiple",
                interactive=False,
                elem_id="downloads",
            )
            box.submit(
                self.chat,
                [box, chatbot, model, translator],
                [chatbot, box, downloads],
                api_visibility="private",
                concurrency_id=_CONCURRENCY_ID,
                concurrency_limit=self.options.concurrency_limit,
            )
            # Runs finished since the server started show up when the page is (re)loaded.
            demo.load(
                lambda: gr.Dropdown(choices=self.model_choices()),
                None,
                model,
                api_visibility="private",
                queue=False,
            )
            # The API endpoint: hidden components, same code path as the chat.
            api_file = gr.File(visible=False, label="audio")
            api_text = gr.Textbox(visible=False, label="transcript")
            api_translation = gr.Textbox(visible=False, label="translation")
            api_button = gr.Button(visible=False)
            api_button.click(
                self.transcribe_api,
                api_file,
                [api_text, api_translation],
                api_name="transcribe",
                api_description="Swedish transcript and English translation of an audio file.",
                concurrency_id=_CONCURRENCY_ID,
                concurrency_limit=self.options.concurrency_limit,
            )
        demo.queue(
            default_concurrency_limit=self.options.concurrency_limit,
            max_size=self.options.max_queue,
        )
        return demo

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
    """Run folders (``config.yaml`` + ``best/``) directly under ``runs_dir``, by name."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if (p / "config.yaml").is_file() and (p / "best").is_dir()
    )


def _declared_duration(path: str) -> float:
    """Seconds the file's header claims (0.0 when unknown or unreadable; decoding decides)."""
    import av

    try:
        with av.open(path, metadata_errors="ignore") as container:
            return (container.duration or 0) / 1_000_000  # AV_TIME_BASE: microseconds
    except (av.error.FFmpegError, OSError, ValueError):
        return 0.0


def render_markdown(reply: Reply) -> str:
    """The chat message for ``reply``: Swedish, then English, then the progress line."""
    if reply.error:
        return f"⚠️ {reply.error}"
    parts = []
    head = f"**Svenska** · {_md(reply.source)}" if reply.source else "**Svenska**"
    if reply.duration:
        head += f" · {_length(reply.duration)}"
    parts.append(head)
    parts.append(_lines(reply.swedish, reply.timestamps) or "…")
    if reply.translator == "whisper" and (reply.english or not reply.status):
        parts.append("**English** · Whisper (offline)")
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
