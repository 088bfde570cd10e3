"""The Gradio app: a chat where a recording, a file or a YouTube link comes back as Swedish
text and its English translation.

:class:`ChatApp` holds the app's parts and the Gradio handlers: the request pipeline
(:mod:`whisper_sv.app.pipeline`), the download files (:mod:`whisper_sv.app.downloads`) and the
page (:mod:`whisper_sv.app.layout`); a reply is rendered by :mod:`whisper_sv.app.render`.
One request is a generator of :class:`Reply` states; the chat renders each state as Markdown
while segments arrive, and the ``transcribe`` API endpoint returns the last one as plain text.

Safe by default: binds 127.0.0.1, limits upload size and audio length, queues requests beyond
``concurrency_limit``, and turns every failure into a sentence in the chat, never a traceback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from whisper_sv.app.api import API_TASKS, api_result, choice_error
from whisper_sv.app.budget import LOOPBACK_HOSTS, UploadBudget
from whisper_sv.app.downloads import DownloadFiles, private_gradio_folder
from whisper_sv.app.layout import build_blocks
from whisper_sv.app.options import (
    LANGUAGE_CHOICES,
    LANGUAGE_NAMES,
    QUALITY_BEAMS,
    QUALITY_CHOICES,
    TRANSLATOR_CHOICES,
    AppOptions,
)
from whisper_sv.app.pipeline import (
    HELP,
    Request,
    RequestPipeline,
    UploadRefused,
    find_runs,
    upload_folder,
)
from whisper_sv.app.render import CANCELLED, Reply, plain_text, render_markdown
from whisper_sv.app.space import export_space
from whisper_sv.infer import links

if TYPE_CHECKING:
    import gradio as gr

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

# How often the serving thread wakes while it waits for Ctrl+C or SIGTERM (seconds).
SERVE_POLL_S = 0.5


class ChatApp:
    """The app: its options, request pipeline and download files, and the Gradio handlers.

    :meth:`run` is the library entry: it trusts its ``file`` argument. The Gradio handlers
    (:meth:`chat`, :meth:`transcribe_api`) accept only files inside Gradio's upload folder
    (:meth:`uploaded`), whatever a client sends.
    """

    def __init__(self, options: AppOptions | None = None) -> None:
        self.options = options or AppOptions()
        self.downloads = DownloadFiles()
        self.pipeline = RequestPipeline(self.options, self.downloads)
        # The cancel event of each page's running job, by the page's key (``chat(page=)``).
        self._jobs: dict[str, threading.Event] = {}
        self._jobs_lock = threading.Lock()

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, reference) of the bundled model, every run found, and ``model``."""
        return self.pipeline.model_choices()

    def model_label(self, ref: str) -> str:
        """How the page names the model ``ref``."""
        return self.pipeline.model_label(ref)

    def uploaded(self, path: str) -> str:
        """``path`` if Gradio's upload folder holds it, else :class:`UploadRefused`."""
        return self.pipeline.uploaded(path)

    def run(
        self,
        file: str | None,
        link: str | None,
        model: str | None,
        translator: str | None,
        **choices,
    ) -> Iterator[Reply]:
        """Transcribe (and translate) one file or link, yielding the reply as it grows.

        ``choices``: ``language``, ``quality``, ``initial_prompt`` and ``cancel``, as
        :meth:`RequestPipeline.run` takes them; never raises (a failure is the last state's
        ``error``).
        """
        return self.pipeline.run(file, link, model, translator, **choices)

    def close(self) -> None:
        """Remove the transcript files offered for download."""
        self.downloads.close()

    # ------------------------------------------------------------------ handlers

    def chat(
        self,
        message: dict | str | None,
        history: list | None,
        model: str | None,
        translator: str | None,
        language: str | None = None,
        quality: str | None = None,
        page: str | None = None,
    ) -> Iterator[tuple[list, None, dict, dict]]:
        """Chat handler: yields (history, input box value, downloads update, cancel update).

        ``page``: the key of the browser page sending it; :meth:`cancelled` with the same key
        stops the job at its next step.
        """
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
        cancel = threading.Event()
        if page:
            with self._jobs_lock:
                self._jobs[page] = cancel
        choices = {"language": language, "quality": quality, "cancel": cancel}
        try:
            for reply in self.run(file, link, model, translator, **choices):
                shown = [*history, {"role": "assistant", "content": render_markdown(reply)}]
                files_shown = gr.update(value=reply.files or None, visible=bool(reply.files))
                yield shown, None, files_shown, gr.update(visible=bool(reply.status))
        finally:
            if page:
                with self._jobs_lock:
                    if self._jobs.get(page) is cancel:
                        del self._jobs[page]

    def cancelled(self, history: list | None, page: str | None = None) -> tuple[list, dict]:
        """Cancel handler: the job of ``page`` stops at its next step (a download within a
        fraction of a second, decoding at the next segment) and ends with a cancelled reply;
        the last reply, if still running, says so at once."""
        import gradio as gr

        if page:
            with self._jobs_lock:
                job = self._jobs.get(page)
            if job is not None:
                job.set()
        history = list(history or [])
        if history and history[-1].get("role") == "assistant":
            content = history[-1].get("content")
            if isinstance(content, list):  # as the page sends it: [{"type": "text", ...}]
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if isinstance(content, str) and "⏳" in content:
                kept = content.rsplit("\n\n*⏳", 1)[0]
                history[-1] = {"role": "assistant", "content": f"{kept}\n\n{CANCELLED}"}
        return history, gr.update(visible=False)

    def transcribe_api(
        self,
        file: str | None,
        language: str | None = None,
        quality: str | None = None,
        model: str | None = None,
        task: str | None = None,
        translator: str | None = None,
        initial_prompt: str | None = None,
    ) -> dict:
        """API handler: the :class:`ApiResult` (as JSON) of one uploaded audio file.

        Choices left out are the page's; ``initial_prompt`` (names, spellings) conditions
        the transcript as ``whisper-sv transcribe --initial-prompt`` does. Every failure (no file, a path that was not
        uploaded, a bad file, too long, an unknown choice) raises ``gr.Error`` with one
        sentence; no speech is an answer (``no_speech``), not a failure.
        """
        import gradio as gr

        task, translator = task or API_TASKS[0], translator or self.options.translator
        quality = quality or self.options.quality
        if problem := choice_error(task, quality, translator):
            raise gr.Error(problem, print_exception=False)
        if not file:
            raise gr.Error(plain_text(HELP), print_exception=False)
        try:
            file = self.uploaded(file)
        except UploadRefused as err:
            raise gr.Error(str(err), print_exception=False) from None
        if task == "transcribe":
            translator = "none"
        last = Reply()
        choices = {"language": language, "quality": quality, "initial_prompt": initial_prompt}
        for state in self.run(file, None, model or self.options.model, translator, **choices):
            last = state
        if last.error:
            raise gr.Error(plain_text(last.error), print_exception=False)
        return api_result(last).as_json()

    # ------------------------------------------------------------------ serving

    def build(self) -> gr.Blocks:
        """The Gradio Blocks (not launched); queue settings applied."""
        return build_blocks(self)

    def launch(self, **kwargs) -> gr.Blocks:
        """Build and serve the app (blocks unless ``prevent_thread_lock=True``)."""
        opts = self.options
        if opts.host not in LOOPBACK_HOSTS:
            log.warning("serving on %s: the app is reachable from other machines", opts.host)
        if opts.host not in LOOPBACK_HOSTS or opts.budget_on_loopback:
            budget = UploadBudget(opts.uploads_per_hour, opts.upload_mb_per_hour)
            kwargs.setdefault("app_kwargs", {})["dependencies"] = [budget.dependency()]
        demo = self.build()
        demo.launch(
            server_name=opts.host,
            server_port=opts.port,
            max_file_size=opts.max_file_size,
            ssr_mode=False,  # server-side rendering needs Node; plain serving is enough
            share=False,
            # Gradio's own refusals (a path that was not uploaded, a file over the size
            # limit) reach API clients as their sentence, not as {"error": null}. The app's
            # handlers raise only gr.Error, whose sentence is sent either way.
            show_error=True,
            **kwargs,
        )
        return demo


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


# --------------------------------------------------------------------------- entry points


def build_app(options: AppOptions | None = None) -> gr.Blocks:
    """The app as Gradio Blocks, ready to ``launch()``."""
    return ChatApp(options).build()


def serve(options: AppOptions | None = None, **launch_kwargs) -> None:
    """Serve the app with the options' host, port and limits until it is stopped.

    Gradio keeps uploads and served files in a private folder for this process only
    (:func:`private_gradio_folder`); it and the download files are removed on every way out:
    a normal stop, Ctrl+C, SIGTERM (through the CLI) or a failure while starting.
    """
    if launch_kwargs.get("prevent_thread_lock"):
        raise ValueError("serve() blocks until stopped; use ChatApp(options).launch() instead")
    app = ChatApp(options)
    with private_gradio_folder() as folder:
        log.info("uploads and transcripts are kept in %s until the app stops", folder)
        demo = None
        try:
            demo = app.launch(prevent_thread_lock=True, **launch_kwargs)
            # Gradio's own wait (Blocks.block_thread) swallows Ctrl+C and returns normally;
            # this one lets it reach the CLI, which exits 130 as documented.
            while True:
                time.sleep(SERVE_POLL_S)
        finally:
            if demo is not None:
                demo.close()
            app.close()
