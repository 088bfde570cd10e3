"""A request's state (``Reply``) and the chat message shown for it (``render_markdown``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from whisper_sv.app.options import LANGUAGE_NAMES

if TYPE_CHECKING:
    from whisper_sv.infer.transcriber import Dropped, Segment

__all__ = [
    "CANCELLED",
    "Reply",
    "clock",
    "escape_md",
    "plain_text",
    "progress_line",
    "render_markdown",
    "too_long_message",
]


@dataclass
class Reply:
    """The state of one request, updated as it goes (rendered after every change)."""

    source: str = ""  # what was sent: a file name or a link
    duration: float = 0.0  # seconds of audio
    status: str = ""  # what is happening now ("" once done)
    language: str = "sv"  # spoken language (Whisper code; "auto" until detected)
    language_probability: float | None = None  # the model's, when it detected the language
    model: str = ""  # which model wrote the transcript (a label)
    quality: str = ""  # "fast" or "accurate"
    swedish: list[Segment] = field(default_factory=list)  # transcript so far (any language)
    english: list[Segment] = field(default_factory=list)  # Whisper translation so far
    english_text: str = ""  # online translation (whole text)
    dropped: list[Dropped] = field(default_factory=list)  # transcript the speech guard left out
    english_dropped: list[Dropped] = field(default_factory=list)  # English it left out
    translator: str = "none"  # which translation is shown
    translation_model: str = ""  # which model or service wrote the English (a label)
    # Why there is no translation (online translator unreachable), or why another model than
    # the transcript's wrote the English (a run not checked on translation: tasks.py).
    translation_note: str = ""
    error: str = ""  # a failure, in words; nothing else is shown then
    files: list[str] = field(default_factory=list)  # SRT / VTT / TXT to download
    timestamps: bool = False  # long audio: segments with their times
    cancelled: bool = False  # stopped by the user; what was done by then is shown

    def snapshot(self) -> Reply:
        """A copy that later changes to this one do not touch."""
        return replace(
            self,
            swedish=list(self.swedish),
            english=list(self.english),
            files=list(self.files),
            dropped=list(self.dropped),
            english_dropped=list(self.english_dropped),
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


CANCELLED = "*⏹️ Cancelled.*"  # the last line of a cancelled reply


def render_markdown(reply: Reply) -> str:
    """The chat message for ``reply``: transcript, then English, then the progress line.

    Each section's head names the model (or service) that wrote it, so a reply whose English
    comes from another model than its transcript says so.
    """
    if reply.error:
        return f"⚠️ {reply.error}"
    parts = []
    head = f"**{LANGUAGE_NAMES.get(reply.language, reply.language)}**"
    if reply.language_probability is not None:
        head += f" (detected, {reply.language_probability:.0%} sure)"
    head += f" · {escape_md(reply.source)}" if reply.source else ""
    if reply.duration:
        head += f" · {_length(reply.duration)}"
    if reply.model:
        head += f" · model {escape_md(reply.model)}" + (
            " (accurate)" if reply.quality == "accurate" else ""
        )
    parts.append(head)
    parts.append(_lines(reply.swedish, reply.timestamps) or "…")
    if reply.dropped:
        parts.append(_dropped_line(reply.dropped, "of the transcript"))
    by = f" · model {escape_md(reply.translation_model)}" if reply.translation_model else ""
    done = not reply.status and not reply.cancelled
    if reply.translator == "whisper" and (reply.english or done):
        parts.append("**English** · Whisper (offline)" + by)
        if reply.translation_note:  # the English came from another model than the transcript
            parts.append(f"ℹ️ {escape_md(reply.translation_note)}")
        parts.append(_lines(reply.english, reply.timestamps) or "…")
        if reply.english_dropped:
            parts.append(_dropped_line(reply.english_dropped, "of the English"))
    elif reply.translator == "google" and done:
        parts.append("**English** · Google Translate (online)")
        if reply.translation_note:
            parts.append(f"⚠️ {escape_md(reply.translation_note)}")
        else:
            parts.append(escape_md(reply.english_text) or "…")
    if reply.status:
        parts.append(f"*⏳ {reply.status}*")
    elif reply.cancelled:
        parts.append(CANCELLED)
    elif not reply.swedish:
        parts.append("*No speech found.*")
    if any(_unsure(w) for s in [*reply.swedish, *reply.english] for w in s.words):
        parts.append(f"<sub>{_UNSURE_MARK} = the model was unsure of this word</sub>")
    return "\n\n".join(parts)


# A word the model gave less than this probability is marked (faster-whisper's word
# probability: the mean of its tokens' probabilities).
UNSURE_BELOW = 0.5
_UNSURE_MARK = "<u>underlined</u>"
_REASONS = {
    "no_speech_detected": "no speech heard there",
    "silence": "the model judged it silence",
    "known_hallucination": "a phrase Whisper is known to invent",
    "unconfirmed_translation": "no transcript under it",
    "translation_too_long": "much longer than the transcript",
}


def _unsure(word) -> bool:
    return word.probability < UNSURE_BELOW


def _dropped_line(dropped: list[Dropped], what: str) -> str:
    """One line saying how much the speech guard left out, and why (not the text itself)."""
    reasons = sorted({_REASONS.get(d.reason, d.reason) for d in dropped})
    n = len(dropped)
    return (
        f"ℹ️ Left out {n} part{'s' if n > 1 else ''} {what} as probably invented "
        f"({'; '.join(reasons)})."
    )


def _words(segment: Segment) -> str:
    """The segment's text, unsure words underlined (its words when it has them)."""
    if not segment.words:
        return escape_md(segment.text.strip())
    return " ".join(
        f"<u>{escape_md(w.text.strip())}</u>" if _unsure(w) else escape_md(w.text.strip())
        for w in segment.words
        if w.text.strip()
    )


def _lines(segments: list[Segment], timestamps: bool) -> str:
    if timestamps:
        return "\n".join(
            f"`{clock(s.start)}–{clock(s.end)}` {_words(s)}" for s in segments if s.text.strip()
        )
    return " ".join(_words(s) for s in segments if s.text.strip())


def too_long_message(source: str, seconds: float, limit: float) -> str:
    return (
        f"**{escape_md(source)}** is {_length(seconds)} long; the limit is {_length(limit)}. "
        "Send a shorter recording."
    )


def progress_line(what: str, done_s: float, total_s: float) -> str:
    share = min(1.0, done_s / total_s) if total_s else 0.0
    return f"{what}… {share:.0%} ({clock(min(done_s, total_s))} of {clock(total_s)})"


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>#|~"})


def escape_md(text: str) -> str:
    """``text`` with Markdown/HTML characters escaped (transcripts are shown verbatim)."""
    return text.translate(_MD_SPECIAL)


def plain_text(markdown: str) -> str:
    """Undo the escaping and bold marks of a message, for API callers."""
    out = markdown.replace("**", "")
    for c in "\\`*_[]<>#|~":
        out = out.replace("\\" + c, c)
    return out


def _length(seconds: float) -> str:
    """A recording's length: "4.2 s" when short, else like :func:`clock`."""
    return f"{seconds:.1f} s" if seconds < 60 else clock(seconds)


def clock(seconds: float) -> str:
    s = int(seconds)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )
