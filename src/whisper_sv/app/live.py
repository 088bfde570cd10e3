"""The app's Live mode: captions of the microphone while someone speaks.

Gradio streams the microphone (``gr.Audio(streaming=True)``) in pieces of ``stream_every``
seconds; each browser session gets its own ``StreamingTranscriber`` (the loaded model is shared
between sessions). Confirmed lines are shown in the normal colour with their English below,
the words still tentative greyed after them. When the recording stops (the microphone's Stop
button), the rest is confirmed and the transcript is offered as SRT and VTT (and the English
as .en.srt/.en.vtt).
"""

from __future__ import annotations

import html
import threading
from typing import TYPE_CHECKING

import numpy as np

from whisper_sv.infer.streaming import (
    LiveLine,
    StreamingOptions,
    StreamingTranscriber,
    line_segments,
)

if TYPE_CHECKING:
    from whisper_sv.app.chat import ChatApp

__all__ = ["LiveCaptions", "LiveSession", "build_live"]

SAMPLE_RATE = 16_000  # what the streaming transcriber takes
STREAM_EVERY_S = 0.5  # how often the browser sends the microphone's audio
MAX_RECORDING_S = 3_600  # a recording is cut after an hour (Gradio's time_limit)
WAITING = "<div id='live-captions' class='live-idle'>Press Record and speak Swedish.</div>"


class LiveSession:
    """One recording: its transcriber, decoding in a thread of its own.

    The browser's pieces are only queued by the Gradio handler (``push``): a handler that
    decoded would keep Gradio's stream busy, and the pieces the browser records meanwhile
    were lost (about 85 % of the audio on 2 shared cores). The worker feeds all queued audio
    to the transcriber at once, so it keeps up by decoding longer buffers when it lags.
    """

    def __init__(self, live: StreamingTranscriber) -> None:
        self.live = live  # this recording's stream (model shared with other sessions)
        # What the page shows, set by the worker between decodings (never a half-made state):
        # (closed lines, confirmed words of the open line, tentative words)
        self.shown: tuple[tuple[LiveLine, ...], str, str] = ((), "", "")
        self._pending: list[np.ndarray] = []
        self._ended = False
        self._wake = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="live-captions", daemon=True)
        self._worker.start()

    def push(self, samples: np.ndarray) -> None:
        with self._wake:
            self._pending.append(samples)
            self._wake.notify()

    def end(self) -> None:
        """Decode what is queued, then confirm the rest (the recording stopped)."""
        with self._wake:
            self._ended = True
            self._wake.notify()
        self._worker.join()
        self.live.finish()
        self._publish("")

    def _work(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._pending or self._ended)
                pieces, self._pending = self._pending, []
                ended = self._ended
            if pieces:
                update = self.live.feed(np.concatenate(pieces))
                self._publish("".join(w.text for w in update.tentative).strip())
            if ended:
                return

    def _publish(self, tentative: str) -> None:
        lines = tuple(self.live.lines)
        in_lines = sum(len(x.segment.words) for x in lines)
        open_text = "".join(w.text for w in self.live.confirmed[in_lines:]).strip()
        self.shown = (lines, open_text, tentative)


class LiveCaptions:
    """The Live mode's handlers; one loaded model per (model, translate) choice."""

    def __init__(self, app: ChatApp, translate: bool = True) -> None:
        self.app = app
        self.translate = translate  # English under each line (Whisper's translate task)
        self._backends: dict[str, object] = {}
        self._lock = threading.Lock()

    def _session(self, model: str) -> LiveSession:
        options = StreamingOptions(model=model, translate=self.translate)
        with self._lock:  # two sessions starting at once load the model once
            shared = self._backends.get(model)
            live = StreamingTranscriber(options, backend=shared)
            self._backends[model] = live.backend
        return LiveSession(live)

    def chunk(self, audio, session: LiveSession | None, model: str | None):
        """One piece of the microphone: (captions HTML, session)."""
        if audio is None:
            return _render(session), session
        if session is None:
            session = self._session(model or self.app.options.model)
        rate, samples = audio
        session.push(as_16k(rate, samples))
        return _render(session), session

    def stop(self, session: LiveSession | None):
        """The recording ended: (captions HTML, download files, None for the next recording)."""
        import gradio as gr

        if session is None:
            return WAITING, gr.File(value=None, visible=False), None
        session.end()
        files = self._files(session.live.lines)
        return _render(session), gr.File(value=files or None, visible=bool(files)), None

    def _files(self, lines: list[LiveLine]) -> list[str]:
        """SRT and VTT of the lines (and of their English) in the app's download folder."""
        from whisper_sv.infer.transcriber import subtitles

        if not lines:
            return []
        folder = self.app.downloads.folder
        stem = f"live-{id(lines):x}"
        out = []
        for english in (False, True) if any(x.english for x in lines) else (False,):
            for fmt in ("srt", "vtt"):
                path = folder / f"{stem}{'.en' if english else ''}.{fmt}"
                path.write_text(subtitles(line_segments(lines, english), fmt), encoding="utf-8")
                out.append(str(path))
        return out


def as_16k(rate: int, samples: np.ndarray) -> np.ndarray:
    """A microphone piece (int16 or float, mono or channels last) as 16 kHz mono float32."""
    x = np.asarray(samples)
    x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != SAMPLE_RATE:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(int(rate), SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, int(rate) // g).astype(np.float32)
    return x


def _render(session: LiveSession | None) -> str:
    """Confirmed lines (English below each), the open line, then the tentative words greyed."""
    if session is None:
        return WAITING
    lines, open_text, tentative = session.shown
    parts = []
    for line in lines:
        s = line.segment
        parts.append(
            f"<p class='live-line'><span class='live-time'>{int(s.start // 60):02d}:"
            f"{s.start % 60:04.1f}</span> {html.escape(s.text)}</p>"
        )
        if line.english:
            parts.append(
                f"<p class='live-en' style='font-style:italic'>{html.escape(line.english)}</p>"
            )
    parts.append(
        f"<p class='live-open'>{html.escape(open_text)} "
        f"<span class='live-tentative' style='color:#8a8a8a'>{html.escape(tentative)}</span></p>"
    )
    return "<div id='live-captions'>" + "".join(parts) + "</div>"


def build_live(app: ChatApp, model) -> None:
    """The Live panel (inside the caller's Blocks): microphone, captions, downloads."""
    import gradio as gr

    captions = LiveCaptions(app)
    with gr.Accordion("Live captions (microphone)", open=False, elem_id="live"):
        mic = gr.Audio(
            sources=["microphone"],
            streaming=True,
            type="numpy",
            label="Microphone: Record starts live captions, Stop ends them",
            elem_id="live-mic",
        )
        shown = gr.HTML(WAITING, elem_id="live-output")
        files = gr.File(
            label="Download the live transcript (SRT, VTT; English .en.srt, .en.vtt)",
            file_count="multiple",
            interactive=False,
            visible=False,
            elem_id="live-downloads",
        )
        state = gr.State(None)
        mic.stream(
            captions.chunk,
            [mic, state, model],
            [shown, state],
            stream_every=STREAM_EVERY_S,
            time_limit=MAX_RECORDING_S,
            api_visibility="private",
            concurrency_limit=None,  # every open microphone streams; each session is its own
            show_progress="hidden",
        )
        mic.stop_recording(captions.stop, state, [shown, files, state], api_visibility="private")
