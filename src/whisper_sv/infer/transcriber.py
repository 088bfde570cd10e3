"""Transcription: one ``Transcriber`` over two backends with the same typed results.

- ``ct2`` (default): faster-whisper on CTranslate2, int8 on CPU and float16 on CUDA. Clips of
  up to 30 s are decoded straight on the CTranslate2 model (in batches on CUDA, see
  ``transcribe_many``); longer audio goes through faster-whisper's own decoding loop (its
  silero VAD for long audio). Word timestamps always take faster-whisper's loop.
- ``transformers``: ``WhisperForConditionalGeneration.generate`` (float32 on CPU, float16 on
  CUDA); long audio is cut at the pauses silero VAD finds into windows of at most 30 s,
  decoded in batches, or without VAD decoded 30 s at a time from the last timestamp on.

The language is passed to Whisper (Swedish by default): its language detection guesses wrong
on short and synthetic Swedish clips. ``language="auto"`` detects it (ct2 backend: on the
first 30 s of speech, with no encoder pass of its own when that is also the first window
decoded: encoder_reuse.py) and the Transcript carries the language found and its
probability, so a clip in another language says so instead of being read as Swedish.

The speech guard (``speech_guard``) judges every decoded segment before it is kept: text
where silero VAD finds no speech, windows OpenAI's no-speech rule calls silence, phrases
Whisper is known to invent (``hallucinations.txt``) and English the transcript does not
support are left out and listed in ``Transcript.dropped`` with the reason.

The loop guard (``TranscribeOptions.loop_guard``, on by default) keeps greedy decoding's
speed and removes its loops: every 30 s window is decoded greedily first; only a window whose
output fails OpenAI's rules (compression ratio > 2.4 or average log-prob < -1.0, unless its
no-speech probability says it is silence) is decoded again, from the same encoder output,
with beam 5, and if that still loops, with beam 5 barred from repeating any 4 tokens; both
deterministic, and the cost is paid by bad windows only (``temperature_fallback`` adds
sampling at 0.2 ... 1.0 after that). Long audio goes through faster-whisper's own
fallback with the same thresholds; the transformers backend re-decodes a bad window with
transformers' temperature fallback. The output of a window is bounded by the audio's length (``max_new_tokens_for``), a repeated tail is cut
(``trim_repetition``) and a segment that repeats the previous one is dropped. Short clips are
decoded with their audio padded to 30 s of silence before the log-mel, as Whisper was trained
(faster-whisper pads the log-mel with zeros instead, which cost 17.5 WER points on sv-words:
docs/benchmarks.md). ``is_looping`` is the same check as a pure function for other decoders.

The backends live in ``infer_backends``, the options and results in ``infer_types`` and the
text rules of the loop guard in ``loop_guard``; all are importable from here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import numpy as np

from whisper_sv.core.audio import N_SAMPLES, SAMPLE_RATE, AudioError, load_audio
from whisper_sv.infer.backends import (
    BEST_OF,
    FALLBACK_BEAM,
    HF_COMPRESSION_RATIO_THRESHOLD,
    LOG_PROB_THRESHOLD,
    NO_REPEAT_NGRAM_SIZE,
    NO_SPEECH_THRESHOLD,
    SAMPLING_SEED,
    SILENCE_PEAK,
    TIME_PRECISION_S,
    DecoderBackend,
    is_silent,
    padded_for_stft,
    speech_windows,
)
from whisper_sv.infer.ct2_backend import Ct2Backend
from whisper_sv.infer.hallucination import judge, judge_translation
from whisper_sv.infer.repetition import (
    COMPRESSION_RATIO_THRESHOLD,
    MAX_CHARS_PER_SECOND,
    MAX_NEW_TOKENS,
    MAX_TOKENS_PER_SECOND,
    MIN_CHARS,
    MIN_NEW_TOKENS,
    compression_ratio,
    is_looping,
    max_new_tokens_for,
    trim_repetition,
)
from whisper_sv.infer.subtitles import fit_to_speech
from whisper_sv.infer.transformers_backend import TransformersBackend
from whisper_sv.infer.types import (
    AUTO,
    FALLBACK_STEP,
    TASKS,
    Dropped,
    Segment,
    TranscribeOptions,
    Transcript,
    Word,
)
from whisper_sv.models.references import DEFAULT_MODEL

__all__ = [
    "BEST_OF",
    "COMPRESSION_RATIO_THRESHOLD",
    "FALLBACK_BEAM",
    "FALLBACK_STEP",
    "FORMATS",
    "HF_COMPRESSION_RATIO_THRESHOLD",
    "LOG_PROB_THRESHOLD",
    "MAX_CHARS_PER_SECOND",
    "MAX_NEW_TOKENS",
    "MAX_TOKENS_PER_SECOND",
    "MIN_CHARS",
    "MIN_NEW_TOKENS",
    "NO_REPEAT_NGRAM_SIZE",
    "NO_SPEECH_THRESHOLD",
    "SAMPLING_SEED",
    "SILENCE_PEAK",
    "TASKS",
    "TIME_PRECISION_S",
    "Dropped",
    "Segment",
    "TranscribeOptions",
    "Transcriber",
    "Transcript",
    "Word",
    "audio_progress",
    "compression_ratio",
    "format_transcript",
    "is_looping",
    "max_new_tokens_for",
    "speech_windows",
    "trim_repetition",
]

log = logging.getLogger(__name__)

AudioInput = str | os.PathLike | bytes | np.ndarray
Span = tuple[float, float]
Backend = Literal["ct2", "transformers"]
Tick = Callable[[float], None]  # told how far (seconds of audio) decoding has come
DECODER_BACKENDS = ("ct2", "transformers")
DEVICES = ("auto", "cpu", "cuda")


class Transcriber:
    """A loaded model that turns audio into Transcripts.

    ``model``: any model reference (``resolve``). ``backend``: "ct2" (faster-whisper) or
    "transformers". ``device``: "auto" (CUDA when present), "cpu" or "cuda". ``compute_type``:
    ct2: a CTranslate2 type ("int8", "int8_float16", "float16", "float32"; default int8 on CPU,
    float16 on CUDA); transformers: "float32", "float16" or "bfloat16" (default float32 on
    CPU, float16 on CUDA). ``cpu_threads``: CPU threads for ct2 (0: all cores this process
    may use). ``batched``: decode several windows per model call (``transcribe_many``, VAD
    windows); None: on CUDA only. On CPU every window is a padded 30 s and the encoder is
    compute-bound, so batches only add memory traffic: 16 sv-words clips took 13.2 s one by
    one, 13.8-14.4 s at batch 1, 15.7-17.1 s at batch 2 and 4 (whisper-base int8, 2 cores).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        backend: Backend = "ct2",
        device: str = "auto",
        compute_type: str | None = None,
        cpu_threads: int = 0,
        batched: bool | None = None,
    ) -> None:
        if backend not in DECODER_BACKENDS:
            raise ValueError(
                f"unknown backend {backend!r}; use one of: {', '.join(DECODER_BACKENDS)}"
            )
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; use one of: {', '.join(DEVICES)}")
        self.model = str(model)  # the reference as given
        self.backend: Backend = backend
        if backend == "ct2":
            self._impl: DecoderBackend = Ct2Backend(model, device, compute_type, cpu_threads)
        else:
            self._impl = TransformersBackend(model, device, compute_type)
        self.device = self._impl.device  # "cpu" or "cuda", as resolved
        self.compute_type = self._impl.compute_type  # as resolved
        self.batched = (self.device == "cuda") if batched is None else batched
        log.info("loaded %s (%s, %s, %s)", self.model, backend, self.device, self.compute_type)

    # ------------------------------------------------------------------ public API

    @property
    def batched(self) -> bool:
        """Whether several windows share one model call (see the class doc)."""
        return self._impl.batched

    @batched.setter
    def batched(self, value: bool) -> None:
        self._impl.batched = bool(value)

    def transcribe(
        self,
        audio: AudioInput,
        options: TranscribeOptions | None = None,
        *,
        transcript: Sequence[Segment] | None = None,
        progress: bool = False,
        **overrides,
    ) -> Transcript:
        """Transcribe (or translate) one input: a path, encoded bytes, or a 16 kHz array.

        ``transcript``: with task "translate" and ``check_translation``, the kept transcript
        of the same audio when the caller has it (None: it is decoded first). ``progress``:
        a bar of the audio seconds decoded on standard error (``audio_progress``).
        """
        opts = self._options(options, overrides)
        samples, source = _as_samples(audio)
        return self._one(samples, source, opts, transcript, progress=progress)

    def options(self, options: TranscribeOptions | None = None, **overrides) -> TranscribeOptions:
        """The options a call with these arguments decodes with, checked against this model
        (an initial prompt's length in tokens, what the backend can do): ValueError naming
        the fix, before any audio is read."""
        return self._options(options, overrides)

    def detect_language(self, audio: AudioInput) -> tuple[str, float]:
        """(Whisper language code, probability) heard in the first 30 s of speech (ct2).

        Digital silence gives ("sv", 0.0): there is nothing to hear.
        """
        samples, _ = _as_samples(audio)
        return self._detect(samples, _speech(samples, TranscribeOptions(fit_to_speech=True)))

    def stream(
        self,
        audio: AudioInput,
        options: TranscribeOptions | None = None,
        *,
        dropped: list[Dropped] | None = None,
        transcript: Sequence[Segment] | None = None,
        **overrides,
    ) -> Iterator[Segment]:
        """The kept Segments of one input as they are decoded (for live display).

        What the speech guard drops is appended to ``dropped`` when given; ``transcript`` as
        in ``transcribe``.
        """
        opts = self._options(options, overrides)
        samples, _ = _as_samples(audio)
        out = dropped if dropped is not None else []
        spans = _speech(samples, opts)
        if opts.language == AUTO:
            opts = dataclasses.replace(opts, language=self._detect(samples, spans)[0])
        yield from self._kept(samples, opts, spans, out, transcript)

    def transcribe_many(
        self,
        audios: Sequence[AudioInput],
        options: TranscribeOptions | None = None,
        *,
        progress: bool = False,
        **overrides,
    ) -> list[Transcript | AudioError]:
        """Transcribe many inputs; batched, up to ``batch_size`` short ones (<= 30 s) together.

        The result has one entry per input, in order: its Transcript, or the AudioError that
        stopped it (the others go on). Without batching (the default on CPU) every input goes
        through ``transcribe``. Batched, a short input decodes to the same text as
        ``transcribe`` gives it alone in the usual case (same features, prompt and rules);
        an output cut off inside a window keeps its last words instead of decoding the rest
        of the window again. Inputs over 30 s, and word timestamps or temperature fallback,
        are never batched. ``progress`` shows a progress bar on standard error: of the files
        done, or with one input, of its audio seconds decoded (as ``transcribe``).
        """
        from tqdm.auto import tqdm

        opts = self._options(options, overrides)
        results: list[Transcript | AudioError | None] = [None] * len(audios)
        one_by_one = (
            not self.batched
            or opts.word_timestamps
            or opts.temperature_fallback
            or opts.language == AUTO
        )
        one_input = len(audios) == 1  # its own bar: audio seconds instead of files
        with tqdm(total=len(audios), unit="file", disable=not progress or one_input) as bar:
            for first in range(0, len(audios), opts.batch_size):
                batch: list[tuple[int, np.ndarray, str]] = []
                for i in range(first, min(first + opts.batch_size, len(audios))):
                    try:
                        samples, source = _as_samples(audios[i])
                    except AudioError as err:
                        log.debug("skipped %s", err)
                        results[i] = err
                        bar.update()
                        continue
                    if one_by_one or len(samples) > N_SAMPLES:
                        results[i] = self._one(
                            samples, source, opts, progress=progress and one_input
                        )
                        bar.update()
                    else:
                        batch.append((i, samples, source))
                if batch:
                    clips = [samples for _, samples, _ in batch]
                    for (i, samples, source), (segments, spans, dropped) in zip(
                        batch, self._kept_short(clips, opts), strict=True
                    ):
                        results[i] = _transcript(segments, samples, source, opts, spans, dropped)
                    bar.update(len(batch))
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ internals

    def _options(self, options: TranscribeOptions | None, overrides: dict) -> TranscribeOptions:
        opts = options or TranscribeOptions()
        if overrides:
            valid = {f.name for f in dataclasses.fields(TranscribeOptions)}
            unknown = sorted(set(overrides) - valid)
            if unknown:
                raise ValueError(
                    f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
                )
            opts = dataclasses.replace(opts, **overrides)
        self._impl.check(opts)
        return opts

    def _one(
        self,
        samples: np.ndarray,
        source: str,
        opts: TranscribeOptions,
        transcript: Sequence[Segment] | None = None,
        *,
        progress: bool = False,
    ) -> Transcript:
        """The Transcript of one input, its language detected first with language="auto"."""
        spans = _speech(samples, opts)
        probability = None
        if opts.language == AUTO:
            language, probability = self._detect(samples, spans)
            opts = dataclasses.replace(opts, language=language)
        dropped: list[Dropped] = []
        with audio_progress(len(samples) / SAMPLE_RATE, enabled=progress) as tick:
            segments = tuple(self._kept(samples, opts, spans, dropped, transcript, tick))
        result = _transcript(segments, samples, source, opts, spans, dropped)
        return dataclasses.replace(result, language_probability=probability)

    def _detect(self, samples: np.ndarray, spans: tuple[Span, ...] | None) -> tuple[str, float]:
        """The language of the 30 s from the first speech silero VAD found (or the start)."""
        if is_silent(samples):
            return "sv", 0.0
        first = int(spans[0][0] * SAMPLE_RATE) if spans else 0
        return self._impl.detect_language(padded_for_stft(samples[first:]))

    def _kept(
        self,
        samples: np.ndarray,
        opts: TranscribeOptions,
        spans: tuple[Span, ...] | None,
        dropped: list[Dropped],
        transcript: Sequence[Segment] | None = None,
        tick: Tick | None = None,
    ) -> Iterator[Segment]:
        """The segments of one input that the speech guard keeps (``speech_guard``).

        ``tick`` is told each decoded segment's end; when the transcript is decoded here
        first, each pass counts for half the audio."""
        if opts.task == "translate" and opts.check_translation:
            if transcript is None:
                as_said = dataclasses.replace(opts, task="transcribe")
                half = len(samples) / SAMPLE_RATE / 2
                first = (lambda s: tick(s / 2)) if tick else None
                transcript = list(self._kept(samples, as_said, spans, [], tick=first))
                tick = (lambda s, done=tick: done(half + s / 2)) if tick else None
            if not transcript:  # nothing kept to translate: no English is decoded at all
                return
            english = self._judged(samples, opts, spans, dropped, tick)
            yield from judge_translation(english, transcript, opts, dropped)
        else:
            yield from self._judged(samples, opts, spans, dropped, tick)

    def _judged(
        self,
        samples: np.ndarray,
        opts: TranscribeOptions,
        spans: tuple[Span, ...] | None,
        dropped: list[Dropped],
        tick: Tick | None = None,
    ) -> Iterator[Segment]:
        if opts.speech_gate and spans == ():
            return  # no speech found: not decoded (the guard would drop every segment)
        yield from judge(self._segments(samples, opts, spans, tick), opts, spans, dropped)

    def _segments(
        self,
        samples: np.ndarray,
        opts: TranscribeOptions,
        spans: tuple[Span, ...] | None,
        tick: Tick | None = None,
    ) -> Iterator[Segment]:
        if is_silent(samples):
            return
        duration = len(samples) / SAMPLE_RATE
        segments = _monotonic(self._impl.segments(padded_for_stft(samples), opts), duration)
        if tick is not None:
            segments = _ticking(segments, tick)
        if opts.loop_guard:
            segments = loop_guarded(segments)
        if opts.fit_to_speech and spans:
            segments = fit_to_speech(segments, spans)
        yield from segments

    def _kept_short(
        self, clips: list[np.ndarray], opts: TranscribeOptions
    ) -> list[tuple[tuple[Segment, ...], tuple[Span, ...] | None, list[Dropped]]]:
        """(kept segments, speech spans, dropped) of clips <= 30 s each, decoded batched."""
        spans = [_speech(c, opts) for c in clips]
        source: list[tuple[Segment, ...] | None] = [None] * len(clips)
        if opts.task == "translate" and opts.check_translation:
            as_said = dataclasses.replace(opts, task="transcribe")
            source = [kept for kept, _, _ in self._kept_short(clips, as_said)]
        todo = [
            i
            for i, c in enumerate(clips)
            if not (opts.speech_gate and spans[i] == ()) and source[i] != ()
        ]
        decoded: list[list[Segment]] = [[] for _ in clips]
        decodings = self._decode_short([clips[i] for i in todo], opts)
        for i, segments in zip(todo, decodings, strict=True):
            fitted = opts.fit_to_speech and spans[i]
            decoded[i] = list(fit_to_speech(segments, spans[i]) if fitted else segments)
        out = []
        for i, segments in enumerate(decoded):
            dropped: list[Dropped] = []
            kept = judge(segments, opts, spans[i], dropped)
            if source[i] is not None:
                kept = judge_translation(kept, source[i], opts, dropped)
            out.append((tuple(kept), spans[i], dropped))
        return out

    def _decode_short(
        self, clips: list[np.ndarray], opts: TranscribeOptions
    ) -> list[list[Segment]]:
        """Segments of clips <= 30 s each, digital silence skipped, the rest decoded batched."""
        out: list[list[Segment]] = [[] for _ in clips]
        todo = [i for i, c in enumerate(clips) if not is_silent(c)]
        for first in range(0, len(todo), opts.batch_size):
            group = todo[first : first + opts.batch_size]
            decoded = self._impl.decode_windows([padded_for_stft(clips[i]) for i in group], opts)
            for i, segments in zip(group, decoded, strict=True):
                kept = _monotonic(segments, len(clips[i]) / SAMPLE_RATE)
                out[i] = list(loop_guarded(kept) if opts.loop_guard else kept)
        return out


# --------------------------------------------------------------------------- helpers


def _as_samples(audio: AudioInput) -> tuple[np.ndarray, str]:
    """(16 kHz float32 mono samples, source name) of any accepted input."""
    if isinstance(audio, np.ndarray):
        if audio.ndim != 1:
            raise ValueError(
                f"audio arrays must be 1-D 16 kHz mono, got shape {audio.shape}; "
                "average the channels first or pass the file"
            )
        return audio.astype(np.float32, copy=False), "<array>"
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return load_audio(bytes(audio)), "<bytes>"
    return load_audio(audio), str(audio)


def _speech(samples: np.ndarray, opts: TranscribeOptions) -> tuple[Span, ...] | None:
    """Silero VAD's speech spans for fit_to_speech and the speech gate; () for digital
    silence, None when neither option asks for them."""
    if not (opts.fit_to_speech or opts.speech_gate):
        return None
    if is_silent(samples):
        return ()
    from whisper_sv.infer.subtitles import speech_spans

    return tuple(speech_spans(samples))


def _transcript(
    segments: tuple[Segment, ...],
    samples: np.ndarray,
    source: str,
    opts: TranscribeOptions,
    spans: tuple[Span, ...] | None = None,
    dropped: Sequence[Dropped] = (),
) -> Transcript:
    return Transcript(
        text=" ".join(s.text for s in segments if s.text),
        segments=segments,
        duration=len(samples) / SAMPLE_RATE,
        language=opts.language,
        task=opts.task,
        source=source,
        options=opts,
        speech=spans if opts.fit_to_speech and spans else (),
        dropped=tuple(sorted(dropped, key=lambda d: d.segment.start)),
    )


# The audio bar: seconds of audio decoded of the total, and the speed in audio seconds a second.
AUDIO_BAR = (
    "{percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}, {rate_fmt}]"
)


@contextlib.contextmanager
def audio_progress(total_s: float, *, enabled: bool = True) -> Iterator[Tick]:
    """A tqdm bar of the audio seconds decoded (on standard error), and the function that
    moves it on to a time; it reaches the total when the block ends without an error.

    faster-whisper decodes a long file lazily, one 30 s window per step of its segment
    generator, so each segment's end time is how far decoding has come.
    """
    from tqdm.auto import tqdm

    total = round(total_s, 1)
    with tqdm(total=total, unit="s", disable=not enabled, bar_format=AUDIO_BAR) as bar:

        def tick(seconds: float) -> None:
            at = min(round(seconds, 1), total)
            if at > bar.n:
                bar.update(at - bar.n)

        yield tick
        tick(total)


def _ticking(segments: Iterator[Segment], tick: Tick) -> Iterator[Segment]:
    for s in segments:
        tick(s.end)
        yield s


# A segment shorter than this has no time to hold a word: repeating a recent one, it is a loop.
MIN_REPEAT_S = 0.2


def loop_guarded(segments: Iterator[Segment]) -> Iterator[Segment]:
    """Segments with repeated tails cut, repeats of the previous segment dropped, and
    near-zero-length repeats of either of the last two dropped: a fine-tuned decoder was seen
    ending a file with "slåra upp" / "sköntskej" alternating at one timestamp."""
    recent: list[str] = []
    for s in segments:
        text = trim_repetition(s.text)
        key = text.strip(" .,!?").lower()
        if key and recent and key == recent[-1]:
            continue
        if key and key in recent and s.end - s.start < MIN_REPEAT_S:
            continue
        recent = (recent + [key])[-2:]
        yield s if text == s.text else dataclasses.replace(s, text=text, words=())


def _monotonic(segments, duration: float) -> Iterator[Segment]:
    """Drop empty segments; keep start times non-decreasing and times inside the audio.

    Whisper predicts timestamps up to 30 s whatever the audio's length (a random model does
    nothing else), and faster-whisper passes them on unchecked.
    """
    last_start = 0.0
    limit = math.floor(duration * 1000) / 1000  # times are given in ms: round the end down
    for s in segments:
        if not s.text:
            continue
        start = min(max(round(s.start, 3), last_start), limit)
        end = min(max(round(s.end, 3), start), limit)
        if (start, end) != (s.start, s.end):
            s = dataclasses.replace(s, start=start, end=end)
        last_start = start
        yield s


# --------------------------------------------------------------------------- output formats

FORMATS = ("txt", "srt", "vtt", "json")


def format_transcript(transcript: Transcript, fmt: str = "txt", subtitle_options=None) -> str:
    """``transcript`` as plain text (one segment a line), SubRip, WebVTT or JSON.

    ``subtitle_options``: a ``whisper_sv.infer.subtitles.SubtitleOptions`` (cue and line limits).
    """
    if fmt == "json":
        import json

        return json.dumps(dataclasses.asdict(transcript), ensure_ascii=False, indent=2) + "\n"
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    return subtitles(transcript.segments, fmt, subtitle_options, spans=transcript.speech)


def subtitles(
    segments: Sequence[Segment],
    fmt: str = "srt",
    options=None,
    spans: Sequence[tuple[float, float]] = (),
) -> str:
    """Segments as plain text (one a line), SubRip or WebVTT; empty segments are left out.

    Subtitle cues follow ``whisper_sv.infer.subtitles.cues``: at most ``options.max_cue_s`` (7 s)
    and two lines of 42 characters, no overlaps, none of zero length; ``spans`` (speech spans)
    time the cues inside a segment. ``options.highlight_words``: one cue per word, the word
    underlined (``subtitles.highlighted``).
    """
    from whisper_sv.infer import subtitles as subs

    if fmt == "txt":
        return "".join(f"{s.text.strip()}\n" for s in segments if s.text.strip())
    if fmt not in ("srt", "vtt"):
        raise ValueError(f"unknown subtitle format {fmt!r}; use txt, srt or vtt")
    cue_list = subs.cues(segments, options, spans)
    if options is not None and options.highlight_words:
        cue_list = subs.highlighted(cue_list)
    return subs.render(cue_list, fmt)
