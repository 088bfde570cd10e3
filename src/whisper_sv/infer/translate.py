"""Translation of Swedish speech to English.

Two ways, picked with :class:`TranslateOptions`:

- ``whisper`` (the default, offline): Whisper's own speech translation, the ``translate``
  task. The model listens to the audio a second time and writes English directly; nothing
  leaves the machine.
- ``google`` (online, optional): the Swedish transcript, as text, through deep-translator's
  ``GoogleTranslator``. Often more fluent than Whisper base's translation, but it sends the
  text to Google and needs internet; when Google cannot be reached the call raises
  :class:`TranslationUnavailable` with a message that says so and names the offline choice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np

    from whisper_sv.infer.transcriber import Dropped, Segment, Transcriber

log = logging.getLogger(__name__)

Backend = Literal["whisper", "google", "none"]
TRANSLATORS: tuple[str, ...] = ("whisper", "google", "none")

# deep-translator refuses texts over 5,000 characters; stay below with room for escaping.
_GOOGLE_MAX_CHARS = 4_500


@dataclass(frozen=True)
class TranslateOptions:
    """How to translate a transcript."""

    backend: Backend = (
        "whisper"  # "whisper" (offline speech translation), "google" (online), "none"
    )
    source: str = "sv"  # language spoken in the audio / written in the transcript
    target: str = "en"  # language to translate into; Whisper can only translate into English
    timeout_s: float = 10.0  # online backend: give up after this many seconds

    def __post_init__(self) -> None:
        if self.backend not in TRANSLATORS:
            raise ValueError(
                f"unknown translation backend {self.backend!r}; choose one of {', '.join(TRANSLATORS)}"
            )
        if self.backend == "whisper" and self.target != "en":
            raise ValueError(
                f"Whisper translates only into English, not {self.target!r}; "
                "set target='en' or use backend='google'"
            )
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {self.timeout_s}")


class TranslationUnavailable(RuntimeError):
    """The online translator could not be used; the message says why and what to do."""


def translate_speech(
    transcriber: Transcriber,
    audio: str | bytes | np.ndarray,
    options: TranslateOptions | None = None,
    *,
    swedish: Sequence[Segment] | None = None,
    dropped: list[Dropped] | None = None,
    **overrides,
) -> Iterator[Segment]:
    """English segments of ``audio`` from Whisper's ``translate`` task, as they are decoded.

    Audio with no text in the source language is not translated (Whisper base turned 10 s of
    white noise into an English line repeated three times): ``swedish`` is its transcript
    when the caller has it; None transcribes it first. The English is checked against it
    (``TranscribeOptions.check_translation``); what the speech guard drops is appended to
    ``dropped`` when given. ``overrides`` go to :meth:`Transcriber.stream` (``beam_size``,
    ``vad``, ``loop_guard`` ...); the loop guard is on unless turned off there.
    """
    options = options or TranslateOptions()
    if swedish is None:
        swedish = transcriber.transcribe(audio, language=options.source, **overrides).segments
    if not any(s.text.strip() for s in swedish):
        log.info("no %s speech found: nothing to translate", options.source)
        return iter(())
    return transcriber.stream(
        audio,
        task="translate",
        language=options.source,
        transcript=swedish,
        dropped=dropped,
        **overrides,
    )


def translate_text(text: str, options: TranslateOptions | None = None) -> str:
    """``text`` translated online with Google Translate (``options.backend`` is ignored).

    Raises TranslationUnavailable when Google cannot be reached within ``options.timeout_s``
    or answers with an error. Long texts go in pieces of at most 4,500 characters, cut at
    line ends, so timestamps on their own lines stay with their text.
    """
    options = options or TranslateOptions(backend="google")
    if not text.strip():
        return ""
    pieces = _pieces(text, _GOOGLE_MAX_CHARS)
    return "\n".join(_google(piece, options) for piece in pieces)


def _pieces(text: str, limit: int) -> list[str]:
    """``text`` cut at line ends (then at spaces) into pieces of at most ``limit`` characters."""
    pieces: list[str] = []
    current = ""
    for line in text.splitlines():
        while len(line) > limit:
            if current:  # keep the order: what is gathered goes out first
                pieces.append(current)
                current = ""
            cut = line.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            pieces.append(line[:cut])
            line = line[cut:].lstrip()
        if current and len(current) + 1 + len(line) > limit:
            pieces.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        pieces.append(current)
    return pieces


def _google(text: str, options: TranslateOptions) -> str:
    # deep-translator calls requests.get without a timeout, so a black-holed connection would
    # hang the request for minutes. The call runs in a daemon thread that is abandoned after
    # timeout_s (a daemon thread never keeps the process from exiting).
    result: dict[str, object] = {}

    def call() -> None:
        try:
            from deep_translator import GoogleTranslator

            translator = GoogleTranslator(source=options.source, target=options.target)
            result["text"] = translator.translate(text)
        except Exception as err:  # handed to the caller's thread below
            result["error"] = err

    worker = threading.Thread(target=call, name="google-translate", daemon=True)
    worker.start()
    worker.join(options.timeout_s)
    if worker.is_alive():
        raise TranslationUnavailable(
            f"Google Translate did not answer within {options.timeout_s:g} s (no internet "
            "connection?); choose the offline Whisper translation instead"
        )
    if "error" in result:
        raise TranslationUnavailable(_explain(result["error"])) from result["error"]
    return str(result.get("text") or "")


def _explain(err: object) -> str:
    """Why the online translation failed, in the user's terms."""
    import requests
    from deep_translator import exceptions as dt

    offline = "; choose the offline Whisper translation instead"
    if isinstance(err, ImportError):
        return "the online translator needs deep-translator: pip install deep-translator"
    if isinstance(err, requests.exceptions.RequestException):
        log.debug("google translate unreachable: %s", err)
        return (
            "cannot reach Google Translate (translate.google.com): no internet connection" + offline
        )
    if isinstance(err, dt.TooManyRequests):
        return "Google Translate refused: too many requests, try again later" + offline
    if isinstance(err, dt.LanguageNotSupportedException):
        return f"Google Translate does not support this language pair ({err})"
    if isinstance(err, (dt.RequestError, dt.TranslationNotFound, dt.BaseError)):
        return f"Google Translate answered with an error ({err})" + offline
    return f"online translation failed ({type(err).__name__}: {err})" + offline
