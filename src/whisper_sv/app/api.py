"""The ``/transcribe`` API contract: what a client sends, what it gets back, how it fails.

A call sends an uploaded file and, optionally, the page's choices (language, quality, model,
task, translator; each defaults to what the page preselects). It gets an :class:`ApiResult`
as JSON, or a ``gr.Error`` whose message is one sentence (``gradio_client`` raises it as
``AppError``). No speech is not a failure: ``no_speech`` is true and the texts are empty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from whisper_sv.app.render import Reply

if TYPE_CHECKING:
    import gradio as gr

__all__ = [
    "API_TASKS",
    "NOT_UPLOADED",
    "ApiResult",
    "api_result",
    "choice_error",
    "upload_only_file",
]

# "translate": the transcript and its English (as the page does); "transcribe": the
# transcript only, which skips the English decoding (about half the time with Whisper's).
API_TASKS = ("translate", "transcribe")
NOT_UPLOADED = (
    "Only files uploaded to this app are accepted: send the file itself, "
    "not a path on the server or a link."
)


@dataclass(frozen=True)
class ApiResult:
    """One transcription as the API returns it (JSON keys are the field names)."""

    swedish: str  # the transcript, one segment per line (in the spoken language; "" if none)
    english: str  # its English translation ("" with task "transcribe" or translator "none")
    language: str  # the spoken language (Whisper code), detected when "auto" was asked
    language_probability: float | None  # the model's certainty when it detected the language
    model: str  # the model that wrote the transcript (as the page names it)
    translation_model: str  # the model or service that wrote the English ("" when none)
    translation_note: str  # why the English is missing or came from another model ("" if not)
    no_speech: bool  # true: no speech was heard (or all was left out as invented); texts ""
    dropped: int  # parts the speech guard left out as probably invented
    swedish_srt: str  # the transcript as SRT subtitles ("" when no speech)
    swedish_vtt: str  # ... and as WebVTT
    english_srt: str  # the Whisper translation as SRT ("" when none or online-translated)
    english_vtt: str  # ... and as WebVTT

    def as_json(self) -> dict:
        return asdict(self)


def choice_error(task: str, quality: str, translator: str) -> str:
    """The sentence for a task, quality or translator the API does not know ("" if none)."""
    from whisper_sv.app.options import QUALITY_BEAMS
    from whisper_sv.infer.translate import TRANSLATORS

    for what, value, known in (
        ("task", task, API_TASKS),
        ("quality", quality, tuple(QUALITY_BEAMS)),
        ("translator", translator, tuple(TRANSLATORS)),
    ):
        if value not in known:
            return f"Unknown {what} {value!r}; give one of {', '.join(known)}."
    return ""


def api_result(reply: Reply) -> ApiResult:
    """The finished ``reply`` (no error) as the API's answer."""
    from whisper_sv.infer.transcriber import subtitles

    def subs(segments: list, ext: str) -> str:
        return subtitles(segments, ext) if segments else ""

    return ApiResult(
        swedish=reply.text,
        english=reply.translation,
        language=reply.language,
        language_probability=reply.language_probability,
        model=reply.model,
        translation_model=reply.translation_model,
        translation_note=reply.translation_note,
        no_speech=not reply.text,
        dropped=len(reply.dropped),
        swedish_srt=subs(reply.swedish, "srt"),
        swedish_vtt=subs(reply.swedish, "vtt"),
        english_srt=subs(reply.english, "srt"),
        english_vtt=subs(reply.english, "vtt"),
    )


def upload_only_file(**kwargs) -> gr.File:
    """A ``gr.File`` input that never fetches: a FileData whose ``path`` or ``url`` is a
    web address is refused with :data:`NOT_UPLOADED`, before any request leaves the server.

    Gradio's own input processing would download such an address into its cache (only
    private addresses are blocked there); the app's uploads never are addresses.
    """
    import gradio as gr
    from gradio_client import utils as client_utils

    # On this one instance, not a subclass: Gradio writes a .pyi stub next to the module of
    # every component subclass.
    component = gr.File(**kwargs)
    move = component.async_move_resource_to_block_cache

    async def refuse_addresses(url_or_file_path):
        if url_or_file_path is not None and client_utils.is_http_url_like(str(url_or_file_path)):
            raise gr.Error(NOT_UPLOADED, print_exception=False)
        return await move(url_or_file_path)

    component.async_move_resource_to_block_cache = refuse_addresses
    return component
