"""Live captions: ``StreamingTranscriber``, the ``Transcriber``'s sibling for audio that arrives
while it is spoken (a microphone, a stream, standard input).

Audio is appended to a buffer; every ``chunk_s`` seconds of new audio the whole buffer is
decoded again (CTranslate2, one window of at most 30 s, word timestamps, prompted with the
confirmed text said before the buffer). A word is *confirmed* once two consecutive decodings
agree on it: LocalAgreement-2 of Macháček, Dominik and Bojar (2023), "Turning Whisper into
Real-Time Transcription System" (``live_agreement``); the rest of the latest decoding is
*tentative*. Once the buffer is longer than ``trim_s`` it is cut at the end of the last
decoded segment whose words are all confirmed, and never grows past ``max_buffer_s``.

Every decoding goes through the same rules as ``Transcriber``'s: the loop guard's fallback
ladder and output bound (``Ct2Backend.decode_windows``), repeated tails cut
(``loop_guarded``), and the speech guard (``hallucination.judge``: silero VAD's speech gate,
OpenAI's no-speech rule, known invented phrases). A buffer where silero VAD finds no speech
is not decoded at all, so silence and noise give no text.

The buffer is decoded with its audio padded with silence to 30 s before the log-mel, as
Whisper was trained and as ``Transcriber`` does for short clips, not through faster-whisper's
``WhisperModel.transcribe``, which pads the log-mel with zeros (17.5 WER points worse on
sv-words, docs/benchmarks.md): a live buffer of a few seconds is exactly that case.

Confirmed words are gathered into lines: a line closes at a word ending a sentence (or a
clause, once the line is half full), before a pause of ``line_pause_s``, before it grows past
``max_line_chars``, when the buffer is cut at a segment end, and at ``finish``. With
``translate``, each closed line's audio is translated to English
(``translate.translate_speech`` with the model ``translation_model`` picks, as the app does)
and the line carries it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from whisper_sv.core.audio import CHUNK_LENGTH, SAMPLE_RATE
from whisper_sv.infer.backends import is_silent, padded_for_stft
from whisper_sv.infer.ct2_backend import Ct2Backend
from whisper_sv.infer.hallucination import judge
from whisper_sv.infer.live_agreement import LocalAgreement
from whisper_sv.infer.subtitles import speech_spans
from whisper_sv.infer.transcriber import loop_guarded
from whisper_sv.infer.types import Dropped, Segment, TranscribeOptions, Word
from whisper_sv.models.references import DEFAULT_MODEL

__all__ = ["LiveLine", "LiveUpdate", "StreamingOptions", "StreamingTranscriber", "line_segments"]

# Words that end a sentence close a line; a clause mark closes one half of max_line_chars long.
SENTENCE_END = (".", "?", "!")
CLAUSE_END = (",", ";", ":")
# Audio kept of a buffer without speech: a word may be starting there.
SILENCE_KEPT_S = 1.0
# Audio kept behind the buffer for translating lines that started before a cut (seconds).
HISTORY_S = 60.0
# Audio kept around a line when it is translated (seconds each side).
LINE_MARGIN_S = 0.3


@dataclass(frozen=True)
class StreamingOptions:
    """How live captions are made; the defaults keep up on 2 CPU cores with whisper-base int8."""

    model: str = DEFAULT_MODEL  # any model reference (bundled:base, a run folder, a hub id)
    language: str = "sv"  # Whisper language code of the speech (no "auto": too few seconds)
    translate: bool = False  # English of each closed line (Whisper's translate task)
    # seconds of new audio between two decodings of the buffer (1.0: 0.94 CPU s per audio s,
    # p50 latency 2.8 s; 0.5: 1.1 CPU s on 2 cores, p50 2.1 s; bench/bench_live.py)
    chunk_s: float = 0.5
    # Seconds of audio one step takes in when at least this much waits (a file at
    # --speed 0, a fast pipe): two decodings a step, chunk_s apart, instead of one decoding
    # per chunk_s (docs/live.md).
    backlog_step_s: float = 4.0
    agreement: int = 2  # consecutive decodings that must agree on a word (LocalAgreement-n)
    trim_s: float = 8.0  # past this length the buffer is cut at a confirmed segment end
    max_buffer_s: float = 20.0  # the buffer never holds more (cut at the last confirmed word)
    prompt_chars: int = 200  # confirmed text before the buffer given as Whisper's prompt
    line_pause_s: float = 0.8  # a pause this long between confirmed words closes the line
    max_line_chars: int = 84  # a line closes before it grows past this (two subtitle lines)
    beam_size: int = 1  # 1 = greedy (the loop guard re-decodes bad windows with beam 5)
    compute_type: str | None = None  # CTranslate2 type; None: int8 on CPU, float16 on CUDA
    cpu_threads: int = 0  # CPU threads for CTranslate2 (0: all cores this process may use)
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"

    def __post_init__(self) -> None:
        if self.language == "auto":
            raise ValueError("live captions need the language named: use e.g. language='sv'")
        TranscribeOptions(language=self.language, beam_size=self.beam_size)  # same checks
        if not 0.1 <= self.chunk_s <= 10:
            raise ValueError(f"chunk_s must be between 0.1 and 10 seconds, not {self.chunk_s!r}")
        if not isinstance(self.agreement, int) or self.agreement < 2:
            raise ValueError(f"agreement must be an integer >= 2, not {self.agreement!r}")
        if not 0 < self.trim_s < self.max_buffer_s <= CHUNK_LENGTH:
            raise ValueError(
                f"need 0 < trim_s < max_buffer_s <= {CHUNK_LENGTH} (one Whisper window), not "
                f"trim_s={self.trim_s!r}, max_buffer_s={self.max_buffer_s!r}"
            )
        if not 0 < self.backlog_step_s <= self.trim_s:
            raise ValueError(
                f"backlog_step_s must be > 0 and <= trim_s ({self.trim_s}) seconds, not "
                f"{self.backlog_step_s!r}"
            )
        if self.max_buffer_s + self.step_s > CHUNK_LENGTH:
            raise ValueError(
                f"max_buffer_s + backlog_step_s (or chunk_s, the larger) must fit one Whisper "
                f"window ({CHUNK_LENGTH} s), not {self.max_buffer_s} + {self.step_s}"
            )
        if self.prompt_chars < 0 or self.cpu_threads < 0:
            raise ValueError("prompt_chars and cpu_threads must be >= 0")
        if self.line_pause_s <= 0 or self.max_line_chars < 1:
            raise ValueError("line_pause_s must be > 0 seconds and max_line_chars >= 1")

    @property
    def step_s(self) -> float:
        """The most new audio one decoding takes in (backlog_step_s, at least chunk_s)."""
        return max(self.chunk_s, self.backlog_step_s)

    def decoding(self) -> TranscribeOptions:
        """The TranscribeOptions every decoding of the buffer uses (guards at their defaults)."""
        return TranscribeOptions(
            language=self.language, beam_size=self.beam_size, word_timestamps=True
        )


@dataclass(frozen=True)
class LiveLine:
    """A closed line of confirmed words (and its English with ``translate``)."""

    segment: Segment  # times in seconds from the start of the stream, words included
    english: str = ""  # Whisper's English of the line's audio ("" without translate)


@dataclass(frozen=True)
class LiveUpdate:
    """What one step of the stream changed."""

    confirmed: tuple[Word, ...]  # words confirmed by this step, in order (stream times)
    tentative: tuple[Word, ...]  # the latest decoding's words after the confirmed ones
    lines: tuple[LiveLine, ...]  # lines this step closed
    received_s: float  # seconds of audio received so far
    decoded_s: float  # seconds of audio the latest decoding reached (received - backlog)


class StreamingTranscriber:
    """Turns audio that arrives in chunks into confirmed and tentative words and lines.

    ``feed(samples)`` (16 kHz mono float32) decodes when ``chunk_s`` of new audio has come
    and returns a ``LiveUpdate``; ``finish()`` decodes the rest, confirms the last decoding
    and closes the last line. ``lines`` holds every closed line.
    """

    def __init__(
        self, options: StreamingOptions | None = None, *, backend: Ct2Backend | None = None
    ) -> None:
        """``backend``: the loaded model of another stream of the same options, to share it
        (an app serving several microphones); None loads ``options.model``."""
        self.options = options or StreamingOptions()
        o = self.options
        self._backend = backend or Ct2Backend(o.model, o.device, o.compute_type, o.cpu_threads)
        self._decoding = o.decoding()
        self._backend.check(self._decoding)
        self._translator = None  # a Transcriber for the English, loaded on first use
        self.reset()

    @property
    def backend(self) -> Ct2Backend:
        """The loaded model (pass it to another stream's constructor to share it)."""
        return self._backend

    def reset(self) -> None:
        """Forget the stream (the model stays loaded)."""
        self._agreement = LocalAgreement(self.options.agreement)
        self._audio = np.zeros(0, dtype=np.float32)  # received audio from _audio_at on
        self._audio_at = 0.0  # stream time (s) of _audio[0]
        self._buffer_at = 0.0  # stream time (s) where the decoded buffer starts
        self._decoded_to = 0.0  # stream time (s) the latest decoding reached
        self._open: list[Word] = []  # confirmed words of the line not yet closed
        self.lines: list[LiveLine] = []  # every closed line
        self.dropped: list[Dropped] = []  # what the speech guard left out (stream times)
        self._segment_ends: tuple[float, ...] = ()  # ends of the latest decoding's segments
        self._heard_speech = False  # whether silero VAD found speech in the latest buffer
        self._pair_open = False  # a backlog step's first decoding is done, its second is due

    @property
    def received_s(self) -> float:
        return self._audio_at + len(self._audio) / SAMPLE_RATE

    @property
    def buffer_s(self) -> float:
        """Seconds of audio the next decoding of the buffer covers."""
        return self.received_s - self._buffer_at

    @property
    def confirmed(self) -> tuple[Word, ...]:
        return tuple(self._agreement.confirmed)

    @property
    def tentative(self) -> tuple[Word, ...]:
        return self._agreement.tentative

    def feed(self, samples: np.ndarray) -> LiveUpdate:
        """Append ``samples``; decode the buffer when ``chunk_s`` of new audio is there.

        More new audio than ``chunk_s`` is taken in decodings of up to ``backlog_step_s``
        each, all of it before this returns.
        """
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._audio = np.concatenate([self._audio, samples])
        return self._update(*self._steps(self.options.chunk_s))

    def step(self) -> LiveUpdate:
        """Decode the buffer now, up to ``backlog_step_s`` of the audio not yet decoded.

        (Every step decodes, pauses included: skipping the decodings of a pause after
        confirmed words saved 25 % of them and cost 5.2 WER points on 90 s of lexin phrases
        fed 0.5 s at a time, 34.5 -> 39.7; consecutive decodings over the pause are what
        settle the words before it.)
        """
        words = self._hypothesis()
        confirmed = self._agreement.insert(words)
        lines = self._take(confirmed)
        lines += self._trim()
        return self._update(confirmed, lines)

    def finish(self) -> LiveUpdate:
        """The stream has ended: decode what is left, confirm it and close the last line."""
        confirmed, lines = self._steps(1e-6)
        last = self._agreement.flush()
        lines += self._take(last) + self._close()
        return self._update(confirmed + last, lines)

    def _steps(self, least_s: float) -> tuple[list[Word], list[LiveLine]]:
        """Step while at least ``least_s`` of audio is not decoded; what the steps confirmed
        and the lines they closed."""
        confirmed: list[Word] = []
        lines: list[LiveLine] = []
        while self.received_s - self._decoded_to >= least_s:
            update = self.step()
            confirmed += update.confirmed
            lines += update.lines
        return confirmed, lines

    # ------------------------------------------------------------------ decoding

    def _hypothesis(self) -> list[Word]:
        """The kept words of one decoding of the buffer, in stream times."""
        start = int(round((self._buffer_at - self._audio_at) * SAMPLE_RATE))
        self._decoded_to = min(self.received_s, self._decoded_to + self._advance())
        end = int(round((self._decoded_to - self._audio_at) * SAMPLE_RATE))
        buffer = self._audio[start:end]
        spans = () if is_silent(buffer) else tuple(speech_spans(buffer))
        self._segment_ends = ()
        self._heard_speech = bool(spans)
        if not spans:
            return []  # nothing silero VAD calls speech: not decoded (silence, noise)
        prompted = dataclasses.replace(self._decoding, initial_prompt=self._prompt() or None)
        windows = self._backend.decode_windows([padded_for_stft(buffer)], prompted)
        dropped: list[Dropped] = []
        kept = list(judge(loop_guarded(iter(windows[0])), self._decoding, spans, dropped))
        at = self._buffer_at
        self.dropped += [dataclasses.replace(d, segment=_shifted(d.segment, at)) for d in dropped]
        self._segment_ends = tuple(s.end + at for s in kept)
        return [_word_at(w, at) for s in kept for w in s.words]

    def _advance(self) -> float:
        """Seconds of new audio the next decoding takes in.

        Less than backlog_step_s waiting: all of it. More (a file at --speed 0, a fast
        pipe): a step of backlog_step_s taken as a pair, a decoding chunk_s short of the
        step and then one chunk_s more, so that two consecutive decodings differ by chunk_s
        of audio, as at real time, and agree on their words (LocalAgreement); steps of a
        whole backlog_step_s each agreed so rarely that most words reached the buffer's
        limit unconfirmed.
        """
        o = self.options
        waiting = self.received_s - self._decoded_to
        if self._pair_open:
            self._pair_open = False
            return o.chunk_s
        if waiting < o.step_s or o.step_s < 2 * o.chunk_s:
            return waiting  # at real time, or a CPU a little behind: all that came
        self._pair_open = True
        return o.step_s - o.chunk_s

    def _prompt(self) -> str:
        """The confirmed text said before the buffer, at most ``prompt_chars`` of it."""
        before = [w.text for w in self._agreement.confirmed if w.end <= self._buffer_at + 1e-3]
        text = "".join(before).strip()
        return text[-self.options.prompt_chars :] if self.options.prompt_chars else ""

    def _trim(self) -> list[LiveLine]:
        """Cut the buffer at a confirmed segment end (or at max_buffer_s); lines it closes."""
        o = self.options
        decoded = self._decoded_to
        length = decoded - self._buffer_at
        confirmed_end = self._agreement.confirmed_end
        cut = None
        if not self._heard_speech and not self._agreement.tentative:
            # No speech in the buffer: drop the silence, keep the last second (a word may be
            # starting that silero VAD cannot tell from noise yet).
            cut = max(self._buffer_at, decoded - SILENCE_KEPT_S)
        elif length > o.trim_s:
            done = [end for end in self._segment_ends[:-1] if end <= confirmed_end + 1e-3]
            cut = done[-1] if done else None
        lines: list[LiveLine] = []
        if cut is None and length > o.max_buffer_s:
            cut = max(confirmed_end, decoded - o.max_buffer_s)
            # The buffer is full: its words before the cut are taken as they stand rather
            # than lost with the audio under them.
            lines += self._take(self._agreement.confirm_until(cut))
        if cut is None or cut <= self._buffer_at:
            return lines
        self._buffer_at = cut
        keep_from = min(cut, self._open[0].start if self._open else cut) - HISTORY_S
        self._drop_audio_before(max(keep_from, self._audio_at))
        closed = self._close() if self._open and self._open[-1].end <= cut + 1e-3 else []
        return lines + closed

    def _drop_audio_before(self, t: float) -> None:
        k = int(round((t - self._audio_at) * SAMPLE_RATE))
        if k > 0:
            self._audio = self._audio[k:]
            self._audio_at += k / SAMPLE_RATE

    # ------------------------------------------------------------------ lines

    def _take(self, words: Sequence[Word]) -> list[LiveLine]:
        """Add confirmed ``words`` to the open line; the lines they close."""
        lines: list[LiveLine] = []
        o = self.options
        for w in words:
            length = sum(len(x.text) for x in self._open) + len(w.text)
            paused = self._open and w.start - self._open[-1].end >= o.line_pause_s
            if paused or length > o.max_line_chars + 1:  # +1: the line's leading space
                lines += self._close()
            self._open.append(w)
            text = w.text.strip()
            clause = length >= o.max_line_chars // 2 and text.endswith(CLAUSE_END)
            if text.endswith(SENTENCE_END) or clause:
                lines += self._close()
        return lines

    def _close(self) -> list[LiveLine]:
        if not self._open:
            return []
        words, self._open = tuple(self._open), []
        segment = Segment(
            start=words[0].start,
            end=words[-1].end,
            text="".join(w.text for w in words).strip(),
            words=words,
        )
        line = LiveLine(segment, self._english(segment) if self.options.translate else "")
        self.lines.append(line)
        return [line]

    def _english(self, segment: Segment) -> str:
        """Whisper's English of ``segment``'s audio, by the model the app would use."""
        from whisper_sv.infer import translate
        from whisper_sv.infer.transcriber import Transcriber
        from whisper_sv.infer.translation_model import translation_model

        o = self.options
        if self._translator is None:
            choice = translation_model(o.model)
            self._translator = Transcriber(
                choice.model,
                device=o.device,
                compute_type=o.compute_type,
                cpu_threads=o.cpu_threads,
            )
        start = max(self._audio_at, segment.start - LINE_MARGIN_S)
        a = int(round((start - self._audio_at) * SAMPLE_RATE))
        b = int(round((segment.end + LINE_MARGIN_S - self._audio_at) * SAMPLE_RATE))
        clip = self._audio[a:b]
        english = translate.translate_speech(
            self._translator,
            clip,
            translate.TranslateOptions(source=o.language),
            swedish=[_shifted(segment, -start)],
            beam_size=o.beam_size,
        )
        return " ".join(s.text for s in english).strip()

    def _update(self, confirmed: Sequence[Word], lines: Sequence[LiveLine]) -> LiveUpdate:
        return LiveUpdate(
            confirmed=tuple(confirmed),
            tentative=self._agreement.tentative,
            lines=tuple(lines),
            received_s=self.received_s,
            decoded_s=self._decoded_to,
        )


def line_segments(lines: Sequence[LiveLine], english: bool = False) -> list[Segment]:
    """The lines as Segments (their English with ``english``) for ``subtitles``."""
    if not english:
        return [line.segment for line in lines]
    return [dataclasses.replace(line.segment, text=line.english, words=()) for line in lines]


def _word_at(w: Word, offset: float) -> Word:
    return dataclasses.replace(w, start=round(w.start + offset, 3), end=round(w.end + offset, 3))


def _shifted(s: Segment, offset: float) -> Segment:
    return dataclasses.replace(
        s,
        start=round(s.start + offset, 3),
        end=round(s.end + offset, 3),
        words=tuple(_word_at(w, offset) for w in s.words),
    )
