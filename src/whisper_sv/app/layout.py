"""The page: the Gradio Blocks of the chat (pickers, chat, input, downloads) and the hidden
``/transcribe`` API endpoint, wired to a :class:`~whisper_sv.app.chat.ChatApp`'s handlers."""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING

from whisper_sv.app.api import API_TASKS, upload_only_file
from whisper_sv.app.live import build_live
from whisper_sv.app.options import LANGUAGE_CHOICES, QUALITY_CHOICES, TRANSLATOR_CHOICES
from whisper_sv.app.pipeline import HELP

if TYPE_CHECKING:
    import gradio as gr

    from whisper_sv.app.chat import ChatApp

__all__ = ["CONCURRENCY_ID", "build_blocks"]

# Every decoding request (chat or API) shares one concurrency group, so the limit is global.
CONCURRENCY_ID = "decode"


def _pickers(app: ChatApp) -> tuple:
    """The dropdowns above the chat: model, language, quality, translation."""
    import gradio as gr

    opts = app.options
    # (element id and option, label, choices, width share); the ids are the browser tests'.
    pickers = (
        ("model", "Model", app.model_choices(), 3),
        ("language", "Spoken language", list(LANGUAGE_CHOICES), 2),
        ("quality", "Quality", list(QUALITY_CHOICES), 2),
        ("translator", "Translation", list(TRANSLATOR_CHOICES), 3),
    )
    with gr.Row():
        model, language, quality, translator = (
            gr.Dropdown(
                choices=choices, value=getattr(opts, name), label=label, scale=scale, elem_id=name
            )
            for name, label, choices, scale in pickers
        )
    return model, language, quality, translator


def build_blocks(app: ChatApp) -> gr.Blocks:
    """The page of ``app`` as Gradio Blocks (not launched), queue settings applied."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    import gradio as gr

    with gr.Blocks(title="whisper-sv", delete_cache=(3_600, 3_600)) as demo:
        gr.Markdown("## whisper-sv: Swedish speech to text\n" + HELP)
        model, language, quality, translator = _pickers(app)
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
        build_live(app, model)  # the Live mode: microphone captions (app/live.py)
        # A key per open page (a callable value: one per page load), so Cancel stops the
        # job of its own page.
        page = gr.State(lambda: uuid.uuid4().hex)
        box.submit(
            app.chat,
            [box, chatbot, model, translator, language, quality, page],
            [chatbot, box, downloads, cancel],
            api_visibility="private",
            concurrency_id=CONCURRENCY_ID,
            concurrency_limit=app.options.concurrency_limit,
        )
        # Cancel sets the job's cancel event; the job ends itself within a fraction of a
        # second (or at the next segment) with a normal last message. Not Gradio's
        # `cancels=`: it left the download running, and beside a CPU load the
        # input box's status tracker sometimes stayed on "Error" after its /cancel, covering
        # the send button so the page took no next job.
        cancel.click(
            app.cancelled,
            [chatbot, page],
            [chatbot, cancel],
            api_visibility="private",
            queue=False,
        )
        # Runs finished since the server started show up when the page is (re)loaded.
        demo.load(
            lambda: gr.Dropdown(choices=app.model_choices()),
            None,
            model,
            api_visibility="private",
            queue=False,
        )
        _api_endpoint(app)
    demo.queue(
        default_concurrency_limit=app.options.concurrency_limit,
        max_size=app.options.max_queue,
    )
    return demo


def _api_endpoint(app: ChatApp) -> None:
    """The ``/transcribe`` API (:mod:`whisper_sv.app.api`): hidden components whose values
    are the page's defaults, same code path and concurrency group as the chat."""
    import gradio as gr

    opts = app.options
    inputs = [
        upload_only_file(label="audio", visible=False),
        gr.Dropdown(
            [c for _, c in LANGUAGE_CHOICES], value=opts.language, label="language", visible=False
        ),
        gr.Dropdown(
            [c for _, c in QUALITY_CHOICES], value=opts.quality, label="quality", visible=False
        ),
        gr.Textbox(value=opts.model, label="model", visible=False),
        gr.Dropdown(list(API_TASKS), value=API_TASKS[0], label="task", visible=False),
        gr.Dropdown(
            [c for _, c in TRANSLATOR_CHOICES],
            value=opts.translator,
            label="translator",
            visible=False,
        ),
        gr.Textbox(value="", label="initial_prompt", visible=False),
    ]
    api_button = gr.Button(visible=False)
    api_button.click(
        app.transcribe_api,
        inputs,
        gr.JSON(visible=False, label="result"),
        api_name="transcribe",
        api_description=(
            "Swedish transcript, English translation, language, models and subtitles (SRT, VTT) "
            "of an uploaded audio file; no_speech is true when nothing was said."
        ),
        concurrency_id=CONCURRENCY_ID,
        concurrency_limit=opts.concurrency_limit,
    )
