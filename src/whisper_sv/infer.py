"""Transcription: one ``Transcriber`` over two backends with the same typed results.

- ``ct2`` (default): faster-whisper on CTranslate2, int8 on CPU and float16 on CUDA. Clips of
  up to 30 s are decoded straight on the CTranslate2 model (in batches on CUDA, see
  ``transcribe_many``); longer audio goes through faster-whisper's own decoding loop (its
  silero VAD for long audio). Word timestamps always take faster-whisper's loop.
- ``transformers``: ``WhisperForConditionalGeneration.generate`` (float32 on CPU, float16 on
  CUDA); long audio is cut at the pauses silero VAD finds into windows of at most 30 s,
  decoded in batches, or without VAD decoded 30 s at a time from the last timestamp on.

The language is always passed to Whisper (Swedish by default): its language detection
guesses wrong on short and synthetic Swedish clips.

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
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from whisper_sv import models
from whisper_sv.audio import CHUNK_LENGTH, N_FFT, N_SAMPLES, SAMPLE_RATE, AudioError, load_audio

__all__ = [
    "FORMATS",
    "Segment",
    "TranscribeOptions",
    "Transcriber",
    "Transcript",
    "Word",
    "compression_ratio",
    "format_transcript",
    "is_looping",
    "max_new_tokens_for",
    "speech_windows",
    "trim_repetition",
]

log = logging.getLogger(__name__)

AudioInput = str | os.PathLike | bytes | np.ndarray
Backend = Literal["ct2", "transformers"]
BACKENDS = ("ct2", "transformers")
DEVICES = ("auto", "cpu", "cuda")
TASKS = ("transcribe", "translate")

# OpenAI's thresholds (also faster-whisper's and transformers' recommended values): a window
# whose <|nospeech|> probability is above 0.6 while its tokens average below -1.0 log-prob is
# silence or noise, and its text is dropped.
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0
# OpenAI's rule on text: zlib compresses a loop far better than speech.
COMPRESSION_RATIO_THRESHOLD = 2.4
# Output bound of a window: fast Swedish speech is about 4 words (7 tokens) a second; twice
# that plus room for timestamps and a short clip's single word.
MAX_TOKENS_PER_SECOND = 12
MIN_NEW_TOKENS = 24
# Characters a second no speech reaches (fast speech: about 15), for is_looping.
MAX_CHARS_PER_SECOND = 30
MIN_CHARS = 40
# Seed of fallback sampling (temperature_fallback; long audio through faster-whisper).
SAMPLING_SEED = 0
# Beam of the first re-decoding of a bad greedy window (OpenAI's and faster-whisper's beam).
FALLBACK_BEAM = 5
# Against a loop that beam search repeated too: beam search with no repeated 4-gram of tokens
# (deterministic, unlike sampling, whose CTranslate2 generator cannot be re-seeded per call).
NO_REPEAT_NGRAM_SIZE = 4
# Samples drawn per fallback temperature (faster-whisper's and OpenAI's best_of).
BEST_OF = 5
# The fallback ladder when asked for: up from the given temperature in OpenAI's 0.2 steps.
FALLBACK_STEP = 0.2
# transformers measures the compression ratio on token ids (zlib over the id bytes), where
# OpenAI's 2.4 on text corresponds to about 1.35 (transformers' documented value).
HF_COMPRESSION_RATIO_THRESHOLD = 1.35
# Below this peak (-80 dBFS, under one 16-bit step) a clip is digital silence. Whisper base
# does not stop on it: 5 s of zeros decoded to a 251-token loop that took minutes on CPU.
SILENCE_PEAK = 1e-4
TIME_PRECISION_S = 0.02  # seconds per timestamp token
# Whisper's decoder holds 448 positions; the prompt (<|startoftranscript|><|sv|><|transcribe|>)
# takes 3 of them.
MAX_NEW_TOKENS = 445


@dataclass(frozen=True)
class TranscribeOptions:
    """How to decode; every field has a safe default for Swedish."""

    language: str = "sv"  # Whisper language code, always passed (never detected)
    task: Literal["transcribe", "translate"] = "transcribe"  # translate: to English text
    beam_size: int = 1  # 1 = greedy; 5 is OpenAI's beam (about 1.6x slower on CPU)
    temperature: float = 0.0  # 0 = deterministic; > 0 samples
    temperature_fallback: bool = False  # re-decode bad windows hotter even with loop_guard off
    loop_guard: bool = True  # greedy first, bad windows re-decoded, output bounded (module doc)
    fit_to_speech: bool = True  # segment times cut to the speech silero VAD finds in them
    vad: bool = True  # long audio (> 30 s): skip non-speech found by silero VAD
    word_timestamps: bool = False  # per-word times in Segment.words (ct2 backend only)
    condition_on_previous_text: bool = False  # prompt each 30 s window with the previous text;
    # off because without the fallback a window that loops would pass the loop on
    batch_size: int = 16  # windows decoded together when batching (Transcriber.batched)
    max_new_tokens: int | None = None  # tokens per 30 s window (None: the model's 448 limit)

    def __post_init__(self) -> None:
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        if self.language not in _LANGUAGE_CODES:
            raise ValueError(
                f"unknown language {self.language!r}; use a Whisper language code such as "
                f"'sv' (Swedish) or 'en'; valid: {', '.join(sorted(_LANGUAGE_CODES))}"
            )
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; use one of: {', '.join(TASKS)}")
        if not isinstance(self.beam_size, int) or self.beam_size < 1:
            raise ValueError(
                f"beam_size must be an integer >= 1 (1 = greedy), not {self.beam_size!r}"
            )
        if not 0.0 <= self.temperature <= 1.0:
            raise ValueError(f"temperature must be between 0 and 1, not {self.temperature!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, not {self.batch_size!r}")
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(
                f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS} (or None for the "
                f"model's limit), not {self.max_new_tokens!r}"
            )

    def temperatures(self) -> tuple[float, ...]:
        """The temperatures tried in order (one unless loop_guard or temperature_fallback)."""
        if not (self.temperature_fallback or self.loop_guard):
            return (self.temperature,)
        n = int(round((1.0 - self.temperature) / FALLBACK_STEP))
        return tuple(round(self.temperature + i * FALLBACK_STEP, 2) for i in range(n + 1))


@dataclass(frozen=True)
class Word:
    """One word with its time span (word_timestamps=True)."""

    start: float  # seconds from the start of the audio
    end: float  # seconds, >= start
    text: str  # the word with its leading space, as Whisper wrote it
    probability: float  # the model's probability of the word's tokens


@dataclass(frozen=True)
class Segment:
    """A stretch of speech and its text."""

    start: float  # seconds from the start of the audio
    end: float  # seconds, >= start
    text: str  # stripped of surrounding spaces
    words: tuple[Word, ...] = ()  # filled only with word_timestamps=True


@dataclass(frozen=True)
class Transcript:
    """The result of one audio input."""

    text: str  # the segments' text joined by spaces
    segments: tuple[Segment, ...]  # in time order, start times never decreasing
    duration: float  # seconds of audio decoded
    language: str  # the language passed to Whisper
    task: str  # "transcribe" or "translate"
    source: str  # the file name, or "<bytes>"/"<array>"
    options: TranscribeOptions  # the options used
    speech: tuple[tuple[float, float], ...] = ()  # VAD speech spans, s (fit_to_speech only)


class Transcriber:
    """A loaded model that turns audio into Transcripts.

    ``model``: any model reference (``models.resolve``). ``backend``: "ct2" (faster-whisper) or
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
        model: str = models.DEFAULT_MODEL,
        *,
        backend: Backend = "ct2",
        device: str = "auto",
        compute_type: str | None = None,
        cpu_threads: int = 0,
        batched: bool | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; use one of: {', '.join(BACKENDS)}")
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; use one of: {', '.join(DEVICES)}")
        self.model = str(model)  # the reference as given
        self.backend: Backend = backend
        if backend == "ct2":
            self._impl: _Backend = _Ct2Backend(model, device, compute_type, cpu_threads)
        else:
            self._impl = _HfBackend(model, device, compute_type)
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
        self, audio: AudioInput, options: TranscribeOptions | None = None, **overrides
    ) -> Transcript:
        """Transcribe (or translate) one input: a path, encoded bytes, or a 16 kHz array."""
        opts = self._options(options, overrides)
        samples, source = _as_samples(audio)
        spans = _speech(samples, opts)
        segments = tuple(self._segments(samples, opts, spans))
        return _transcript(segments, samples, source, opts, spans)

    def stream(
        self, audio: AudioInput, options: TranscribeOptions | None = None, **overrides
    ) -> Iterator[Segment]:
        """The Segments of one input as they are decoded (for live display)."""
        opts = self._options(options, overrides)
        samples, _ = _as_samples(audio)
        yield from self._segments(samples, opts, _speech(samples, opts))

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
        are never batched. ``progress`` shows a progress bar.
        """
        from tqdm.auto import tqdm

        opts = self._options(options, overrides)
        results: list[Transcript | AudioError | None] = [None] * len(audios)
        one_by_one = not self.batched or opts.word_timestamps or opts.temperature_fallback
        with tqdm(total=len(audios), unit="file", disable=not progress) as bar:
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
                        spans = _speech(samples, opts)
                        segments = tuple(self._segments(samples, opts, spans))
                        results[i] = _transcript(segments, samples, source, opts, spans)
                        bar.update()
                    else:
                        batch.append((i, samples, source))
                if batch:
                    decoded = self._decode_short([s for _, s, _ in batch], opts)
                    for (i, samples, source), segments in zip(batch, decoded, strict=True):
                        spans = _speech(samples, opts)
                        if spans:
                            from whisper_sv.subtitles import fit_to_speech

                            segments = list(fit_to_speech(segments, spans))
                        results[i] = _transcript(tuple(segments), samples, source, opts, spans)
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
        if opts.word_timestamps and self.backend != "ct2":
            raise ValueError("word_timestamps needs backend='ct2' (faster-whisper)")
        self._impl.check(opts)
        return opts

    def _segments(
        self, samples: np.ndarray, opts: TranscribeOptions, spans: Sequence[tuple[float, float]]
    ) -> Iterator[Segment]:
        if _is_silent(samples):
            return
        duration = len(samples) / SAMPLE_RATE
        segments = _monotonic(self._impl.segments(_min_length(samples), opts), duration)
        if opts.loop_guard:
            segments = _guarded(segments)
        if spans:
            from whisper_sv.subtitles import fit_to_speech

            segments = fit_to_speech(segments, spans)
        yield from segments

    def _decode_short(
        self, clips: list[np.ndarray], opts: TranscribeOptions
    ) -> list[list[Segment]]:
        """Segments of clips <= 30 s each, digital silence skipped, the rest decoded batched."""
        out: list[list[Segment]] = [[] for _ in clips]
        todo = [i for i, c in enumerate(clips) if not _is_silent(c)]
        for first in range(0, len(todo), opts.batch_size):
            group = todo[first : first + opts.batch_size]
            decoded = self._impl.decode_windows([_min_length(clips[i]) for i in group], opts)
            for i, segments in zip(group, decoded, strict=True):
                kept = _monotonic(segments, len(clips[i]) / SAMPLE_RATE)
                out[i] = list(_guarded(kept) if opts.loop_guard else kept)
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


def _speech(samples: np.ndarray, opts: TranscribeOptions) -> tuple[tuple[float, float], ...]:
    """Speech spans for fit_to_speech (none for digital silence or with the option off)."""
    if not opts.fit_to_speech or _is_silent(samples):
        return ()
    from whisper_sv.subtitles import speech_spans

    return tuple(speech_spans(samples))


def _transcript(
    segments: tuple[Segment, ...],
    samples: np.ndarray,
    source: str,
    opts: TranscribeOptions,
    spans: tuple[tuple[float, float], ...] = (),
) -> Transcript:
    return Transcript(
        text=" ".join(s.text for s in segments if s.text),
        segments=segments,
        duration=len(samples) / SAMPLE_RATE,
        language=opts.language,
        task=opts.task,
        source=source,
        options=opts,
        speech=spans,
    )


def _max_length(
    prompt_length: int, opts: TranscribeOptions, model_max: int, duration_s: float
) -> int:
    """Decoder length (prompt included) for windows of at most ``duration_s`` seconds."""
    new_tokens = _new_tokens(opts, duration_s)
    if new_tokens is None:
        return model_max
    return min(model_max, prompt_length + new_tokens)


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over its zlib-compressed bytes (OpenAI's loop measure; > 2.4 loops)."""
    import zlib

    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def max_new_tokens_for(duration_s: float) -> int:
    """The most tokens worth generating for ``duration_s`` seconds of audio (one window)."""
    bound = MIN_NEW_TOKENS + math.ceil(MAX_TOKENS_PER_SECOND * max(duration_s, 0.0))
    return min(bound, MAX_NEW_TOKENS)


def is_looping(text: str, duration_s: float) -> bool:
    """Whether ``text`` decoded from ``duration_s`` seconds of audio is a decoding loop.

    True when it compresses like a loop (ratio > 2.4, OpenAI's rule) or is longer than any
    speech of that length (30 characters a second, 40 at least). A pure function for any
    decoder's output, e.g. a validation loop's greedy decoding.
    """
    limit = max(MIN_CHARS, MAX_CHARS_PER_SECOND * duration_s)
    return compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD or len(text) > limit


def trim_repetition(text: str, min_repeats: int = 3) -> str:
    """``text`` with a tail of one phrase repeated ``min_repeats`` times or more cut to one.

    ``"det var det var det var det var"`` -> ``"det var"``. A single word must repeat one time
    more than ``min_repeats`` (``"ja ja ja"`` is speech).
    """
    words = text.split()
    n = len(words)
    for size in range(1, n // min_repeats + 1):
        phrase = words[n - size :]
        repeats = 1
        while (
            repeats * size + size <= n
            and words[n - (repeats + 1) * size : n - repeats * size] == phrase
        ):
            repeats += 1
        if repeats >= min_repeats + (size == 1):
            return " ".join(words[: n - (repeats - 1) * size])
    return text


def _guarded(segments: Iterator[Segment]) -> Iterator[Segment]:
    """Segments with repeated tails cut and repeats of the previous segment dropped."""
    previous = None
    for s in segments:
        text = trim_repetition(s.text)
        key = text.strip(" .,!?").lower()
        if key and key == previous:
            continue
        previous = key
        yield s if text == s.text else dataclasses.replace(s, text=text, words=())


def _sounding(samples: np.ndarray, min_gap_s: int = 3) -> list[float] | str:
    """[start, end, start, end ...] seconds around digital silences of ``min_gap_s`` or more.

    faster-whisper's ``clip_timestamps``; "0" (everything) when there is no such silence.
    """
    seconds = math.ceil(len(samples) / SAMPLE_RATE)
    loud = [
        not _is_silent(samples[i * SAMPLE_RATE : (i + 1) * SAMPLE_RATE]) for i in range(seconds)
    ]
    spans: list[list[int]] = []
    for i, sounding in enumerate(loud):
        if not sounding:
            continue
        if spans and i - spans[-1][1] < min_gap_s:
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    if spans == [[0, seconds]]:
        return "0"
    end = len(samples) / SAMPLE_RATE
    return [float(min(t, end)) for span in spans for t in span] or [0.0, 0.0]


def _is_silent(samples: np.ndarray) -> bool:
    return len(samples) == 0 or float(np.max(np.abs(samples))) < SILENCE_PEAK


def _min_length(samples: np.ndarray) -> np.ndarray:
    # The STFT's reflect padding needs more than half a window of samples.
    if len(samples) >= N_FFT:
        return samples
    return np.pad(samples, (0, N_FFT - len(samples)))


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


def _tokens_to_segments(
    tokens: Sequence[int],
    *,
    timestamp_begin: int,
    eot: int,
    decode: Callable[[list[int]], str],
    duration: float,
    offset: float = 0.0,
    keep_tail: bool = True,
) -> tuple[list[Segment], float | None]:
    """Segments of one decoded 30 s window, and where to resume decoding.

    Mirrors OpenAI's rule (and faster-whisper's ``_split_segments_by_timestamps``): a pair of
    consecutive timestamps closes one segment and opens the next. When the output stops inside
    a segment, the second value is the time (s, window-relative) of the last closed one: a
    sequential decoder restarts there; ``keep_tail`` also returns the unfinished text with
    ``duration`` as its end (for windows decoded once, as in batches). None: window done.
    """
    # Text and timestamps only; transformers may pad rows with -100 or hand back floats.
    tokens = [int(t) for t in tokens if 0 <= t < eot or t >= timestamp_begin]

    def is_ts(t: int) -> bool:
        return t >= timestamp_begin

    def at(t: int) -> float:
        return (t - timestamp_begin) * TIME_PRECISION_S

    def text_of(piece: list[int]) -> str:
        return decode([t for t in piece if t < eot]).strip()

    single_ending = len(tokens) >= 2 and not is_ts(tokens[-2]) and is_ts(tokens[-1])
    cuts = [i for i in range(1, len(tokens)) if is_ts(tokens[i]) and is_ts(tokens[i - 1])]
    pieces: list[tuple[float, float, str]] = []
    resume: float | None = None
    if cuts:
        if single_ending:
            cuts.append(len(tokens))
        last = 0
        for cut in cuts:
            piece = tokens[last:cut]  # ends with a timestamp; the first may start with text
            start = at(piece[0]) if is_ts(piece[0]) else 0.0
            pieces.append((start, at(piece[-1]), text_of(piece)))
            last = cut
        if not single_ending:
            resume = at(tokens[last - 1])
            tail = tokens[last:]
            if keep_tail and text_of(tail):
                start = at(tail[0]) if is_ts(tail[0]) else resume
                pieces.append((start, duration, text_of(tail)))
    else:
        stamps = [t for t in tokens if is_ts(t)]
        end = duration
        if stamps and stamps[-1] != timestamp_begin:
            end = at(stamps[-1])
        start = at(tokens[0]) if tokens and is_ts(tokens[0]) else 0.0
        pieces.append((start, end, text_of(tokens)))

    segments = []
    for start, end, text in pieces:
        if not text:
            continue
        start = min(max(start, 0.0), duration)
        end = min(max(end, start), duration)
        segments.append(
            Segment(start=round(offset + start, 3), end=round(offset + end, 3), text=text)
        )
    return segments, resume


# --------------------------------------------------------------------------- backends


class _Backend:
    device: str
    compute_type: str
    batched: bool = False  # several windows per model call (Transcriber.batched)

    def check(self, opts: TranscribeOptions) -> None:
        """Raise ValueError when the model cannot do what ``opts`` asks."""

    def segments(self, samples: np.ndarray, opts: TranscribeOptions) -> Iterator[Segment]:
        raise NotImplementedError

    def decode_windows(
        self, windows: list[np.ndarray], opts: TranscribeOptions
    ) -> list[list[Segment]]:
        """Segments (window-relative times) of clips of at most 30 s each, batched."""
        raise NotImplementedError


_MALLOC_TUNED = False


def _reuse_freed_memory() -> None:
    """Make glibc keep large freed blocks for reuse instead of unmapping them (CPU ct2 only).

    CTranslate2's CPU encoder allocates and frees ~70 MB attention buffers per layer; glibc
    returns blocks that large to the system at once and maps them anew next time, so every
    window paid for hundreds of thousands of page faults: 4 encoder calls of whisper-base
    took 1.5 s of system time on top of 2.6 s of user time (619k minor faults). One malloc
    arena plus a 1 GB mmap threshold removed them (0 faults, 0.04 s system time; peak
    memory +35 MB). Process-wide; WHISPER_SV_MALLOPT=0 turns it off.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or os.environ.get("WHISPER_SV_MALLOPT", "1") == "0":
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_arena_max, m_mmap_threshold = -8, -3  # from glibc's malloc.h
        libc.mallopt(m_arena_max, 1)
        libc.mallopt(m_mmap_threshold, 1 << 30)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to do
        log.debug("mallopt not available; CPU decoding keeps the default allocator")


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class _Ct2Backend(_Backend):
    def __init__(self, ref: str, device: str, compute_type: str | None, cpu_threads: int) -> None:
        import ctranslate2
        from faster_whisper import WhisperModel

        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        if compute_type is None:
            compute_type = "float16" if device == "cuda" else "int8"
        folder = models.ct2_dir(ref)
        if device == "cpu":
            _reuse_freed_memory()
        try:
            self.model = WhisperModel(
                str(folder),
                device=device,
                compute_type=compute_type,
                # CTranslate2 defaults to 4 threads, which oversubscribes a 2-core machine.
                cpu_threads=cpu_threads or min(_cpu_count(), 16),
            )
        except ValueError as err:  # e.g. a compute type the device cannot run
            raise ValueError(
                f"cannot load {folder} with compute_type={compute_type!r}: {err}"
            ) from err
        self.device = device
        self.compute_type = compute_type

    def check(self, opts: TranscribeOptions) -> None:
        if not self.model.model.is_multilingual and opts.language != "en":
            raise ValueError("this model is English-only; use a multilingual Whisper model")

    def segments(self, samples: np.ndarray, opts: TranscribeOptions) -> Iterator[Segment]:
        if len(samples) <= N_SAMPLES and not opts.word_timestamps:
            # One window, its audio padded with silence (decode_windows' doc).
            yield from self.decode_windows([samples], opts)[0]
            return
        import ctranslate2

        long = len(samples) > N_SAMPLES
        temps = opts.temperatures()
        ctranslate2.set_random_seed(SAMPLING_SEED)
        pieces, _info = self.model.transcribe(
            samples,
            language=opts.language,
            task=opts.task,
            beam_size=opts.beam_size,
            best_of=BEST_OF,
            temperature=list(temps) if len(temps) > 1 else temps[0],
            compression_ratio_threshold=COMPRESSION_RATIO_THRESHOLD if len(temps) > 1 else None,
            condition_on_previous_text=opts.condition_on_previous_text,
            word_timestamps=opts.word_timestamps,
            vad_filter=opts.vad and long,
            without_timestamps=False,
            no_speech_threshold=NO_SPEECH_THRESHOLD,
            log_prob_threshold=LOG_PROB_THRESHOLD,
            max_new_tokens=_new_tokens(opts, min(len(samples) / SAMPLE_RATE, CHUNK_LENGTH)),
            # Without VAD, stretches of digital silence are skipped, not decoded: Whisper
            # writes its last sentence again and again over trailing silence.
            clip_timestamps=_sounding(samples) if long and not opts.vad else "0",
        )
        for piece in pieces:  # a generator: each window is decoded when asked for
            words = tuple(
                Word(start=w.start, end=w.end, text=w.word, probability=w.probability)
                for w in (piece.words or ())
            )
            yield Segment(start=piece.start, end=piece.end, text=piece.text.strip(), words=words)

    def _features(self, window: np.ndarray) -> np.ndarray:
        """Log-mel of ``window`` padded with silence to 30 s first, as OpenAI's Whisper does.

        faster-whisper computes the log-mel of the clip and pads that with zeros, which the
        model never saw in training: on 40 sv-words clips greedy WER went 97.5 -> 80.0 with
        the audio padded instead (docs/benchmarks.md).
        """
        padded = np.pad(window, (0, max(0, N_SAMPLES - len(window))))
        return self.model.feature_extractor(padded)[:, : N_SAMPLES // 160]

    def decode_windows(
        self, windows: list[np.ndarray], opts: TranscribeOptions
    ) -> list[list[Segment]]:
        """Batched ``generate`` on the CTranslate2 model, a window re-decoded only when bad.

        faster-whisper's BatchedInferencePipeline batches the windows of one file only; here
        the windows of many files share one encoder and one decoder call. Prompt, suppressed
        tokens, the no-speech rule and the fallback rule are those of
        ``WhisperModel.transcribe``; the audio is padded before the log-mel (``_features``).
        """
        from faster_whisper.tokenizer import Tokenizer

        if not windows:
            return []
        tokenizer = Tokenizer(
            self.model.hf_tokenizer,
            self.model.model.is_multilingual,
            task=opts.task,
            language=opts.language,
        )
        prompt = self.model.get_prompt(tokenizer, [], without_timestamps=False)
        features = np.stack([self._features(w) for w in windows]).astype(np.float32)
        longest = max(len(w) for w in windows) / SAMPLE_RATE
        max_length = _max_length(len(prompt), opts, self.model.max_length, longest)
        temps = opts.temperatures()
        encoded = self._encode(features)
        first = self._generate(
            encoded, len(windows), prompt, tokenizer, max_length, temps[0], opts.beam_size
        )
        out = []
        for i, (window, attempt) in enumerate(zip(windows, first, strict=True)):
            tried = [attempt]
            # The encoder runs once per window: a bad window of a batch is encoded alone
            # once, then decoded at each temperature from that output.
            alone = encoded if len(windows) == 1 else None
            for step, (temperature, beam, no_repeat) in enumerate(_ladder(opts, temps)):
                last = tried[-1]
                # Past the first beam search, only to escape a loop: sampling a window that
                # is merely unsure cost 3x the time for less than beam search gives
                # (docs/benchmarks.md).
                if not last.needs_fallback or (step > 0 and not last.loops):
                    break
                if alone is None:
                    alone = self._encode(features[i : i + 1])
                tried += self._generate(
                    alone, 1, prompt, tokenizer, max_length, temperature, beam, no_repeat
                )
            chosen = tried[-1] if not tried[-1].needs_fallback else _best(tried)
            if chosen.is_silence:
                out.append([])
                continue
            segments, _ = _tokens_to_segments(
                chosen.tokens,
                timestamp_begin=tokenizer.timestamp_begin,
                eot=tokenizer.eot,
                decode=tokenizer.decode,
                duration=len(window) / SAMPLE_RATE,
            )
            out.append(segments)
        return out

    def _encode(self, features: np.ndarray):
        """The encoder output of a batch of log-mels (kept on the device)."""
        import ctranslate2

        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
        return self.model.model.encode(view, to_cpu=False)

    def _generate(
        self,
        encoded,
        n: int,
        prompt: list[int],
        tokenizer,
        max_length: int,
        temperature: float,
        beam_size: int,
        no_repeat_ngram_size: int = 0,
    ) -> list[_Attempt]:
        """One decoding of each window at ``temperature`` (> 0: best of BEST_OF samples)."""
        import ctranslate2
        from faster_whisper.transcribe import get_suppressed_tokens

        model = self.model
        if temperature > 0:
            # Seeded, though CTranslate2 keeps a generator per worker thread, so sampled text
            # may still differ between runs (the loop guard alone never samples here).
            ctranslate2.set_random_seed(SAMPLING_SEED)
            sampling = {
                "beam_size": 1,
                "num_hypotheses": BEST_OF,
                "sampling_topk": 0,
                "sampling_temperature": temperature,
            }
        else:
            sampling = {"beam_size": beam_size}
        results = model.model.generate(
            encoded,
            [prompt] * n,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            max_initial_timestamp_index=int(round(1.0 / TIME_PRECISION_S)),
            no_repeat_ngram_size=no_repeat_ngram_size,
            **sampling,
        )
        attempts = []
        for result in results:
            tokens = result.sequences_ids[0]
            # faster-whisper's average log-prob: cumulative score over (length + 1) tokens.
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            text = tokenizer.decode([t for t in tokens if t < tokenizer.eot])
            attempts.append(
                _Attempt(tokens, avg_logprob, result.no_speech_prob, compression_ratio(text))
            )
        return attempts


@dataclass(frozen=True)
class _Attempt:
    """One decoding of one window and OpenAI's judgement of it."""

    tokens: list[int]  # generated ids, timestamps included
    avg_logprob: float  # mean log-probability of the tokens and <|endoftext|>
    no_speech_prob: float  # P(<|nospeech|>) after <|startoftranscript|>
    compression: float  # compression_ratio of the text

    @property
    def is_silence(self) -> bool:
        return self.no_speech_prob > NO_SPEECH_THRESHOLD and self.avg_logprob < LOG_PROB_THRESHOLD

    @property
    def loops(self) -> bool:
        return self.compression > COMPRESSION_RATIO_THRESHOLD

    @property
    def needs_fallback(self) -> bool:
        if self.is_silence:
            return False
        return (
            self.compression > COMPRESSION_RATIO_THRESHOLD or self.avg_logprob < LOG_PROB_THRESHOLD
        )


def _ladder(opts: TranscribeOptions, temps: tuple[float, ...]) -> list[tuple[float, int, int]]:
    """The re-decodings of a bad window in order, as (temperature, beam size, n-gram size no
    n-gram of which may repeat; 0: no limit): beam search when decoding was greedy; against
    a loop, beam search that cannot repeat itself; hotter temperatures only when
    ``temperature_fallback`` asks for them. All but the last are deterministic."""
    steps: list[tuple[float, int, int]] = []
    if len(temps) > 1 and opts.beam_size < FALLBACK_BEAM:
        steps.append((temps[0], FALLBACK_BEAM, 0))
    if opts.loop_guard:
        steps.append((temps[0], max(opts.beam_size, FALLBACK_BEAM), NO_REPEAT_NGRAM_SIZE))
    if opts.temperature_fallback:
        steps += [(t, 1, 0) for t in temps[1:]]
    return steps


def _best(tried: list[_Attempt]) -> _Attempt:
    """faster-whisper's pick when every temperature failed: the likeliest non-loop."""
    below = [a for a in tried if a.compression <= COMPRESSION_RATIO_THRESHOLD]
    return max(below or tried, key=lambda a: a.avg_logprob)


def _new_tokens(opts: TranscribeOptions, duration_s: float) -> int | None:
    """Tokens allowed per window: the option, else the loop guard's bound, else the model's."""
    if opts.max_new_tokens is not None:
        return opts.max_new_tokens
    return max_new_tokens_for(duration_s) if opts.loop_guard else None


class _HfBackend(_Backend):
    _DTYPES = ("float32", "float16", "bfloat16")

    def __init__(self, ref: str, device: str, compute_type: str | None) -> None:
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if compute_type is None:
            compute_type = "float16" if device == "cuda" else "float32"
        if compute_type not in self._DTYPES:
            raise ValueError(
                f"compute_type {compute_type!r} is not available with the transformers backend; "
                f"use one of: {', '.join(self._DTYPES)} (int8 needs backend='ct2')"
            )
        self.dtype = getattr(torch, compute_type)
        self.model, self.processor = models.load_model(ref, device=device, dtype=self.dtype)
        tok = self.processor.tokenizer
        self.timestamp_begin = tok.convert_tokens_to_ids("<|0.00|>")
        self.eot = tok.convert_tokens_to_ids("<|endoftext|>")
        self.device = device
        self.compute_type = compute_type

    def check(self, opts: TranscribeOptions) -> None:
        if (
            not getattr(self.model.generation_config, "is_multilingual", True)
            and opts.language != "en"
        ):
            raise ValueError("this model is English-only; use a multilingual Whisper model")

    def _decode(self, tokens: list[int]) -> str:
        return self.processor.tokenizer.decode(tokens, skip_special_tokens=True)

    def _generate(self, windows: list[np.ndarray], opts: TranscribeOptions) -> list[list[int]]:
        """Generated token ids (timestamps included) of windows of at most 30 s each.

        A window judged silence or noise (OpenAI's rule, as in the ct2 backend) comes back
        empty. transformers applies that rule itself when given the thresholds, but its
        no-speech detector runs the whole model (encoder included) a second time: it doubled
        the CPU time per clip here (4.6 -> 8.6 s for 3 sv-words clips). So the encoder runs
        once, the <|nospeech|> probability comes from one decoder step on that output, and
        the average log-probability is computed only for windows that look like no speech.
        """
        import torch

        features = self.processor.feature_extractor(
            windows, sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features.to(self.device, self.dtype)
        temps = opts.temperatures()
        kwargs: dict = {
            "language": opts.language,
            "task": opts.task,
            "return_timestamps": True,
            "num_beams": opts.beam_size,
            "do_sample": temps[0] > 0,
        }
        if temps[0] > 0:
            kwargs["temperature"] = temps[0]
        longest = max(len(w) for w in windows) / SAMPLE_RATE
        if opts.max_new_tokens is not None or opts.loop_guard:
            # As max_length (prompt included): max_new_tokens next to the config's max_length
            # makes transformers warn on every call.
            kwargs["max_length"] = _max_length(
                len(self._prompt(opts)), opts, self.model.generation_config.max_length, longest
            )
        with torch.inference_mode():
            encoded = self.model.get_encoder()(features)
            out = self.model.generate(encoder_outputs=encoded, **kwargs)
            sequences = out["sequences"] if isinstance(out, dict) else out
            rows = [row.tolist() for row in sequences]
            prompt = self._prompt(opts)
            hidden = encoded.last_hidden_state
            for i, p_no_speech in enumerate(self._no_speech_probs(hidden)):
                if p_no_speech <= NO_SPEECH_THRESHOLD and len(temps) == 1:
                    continue
                logprob = self._avg_logprob(hidden[i : i + 1], prompt, rows[i])
                if p_no_speech > NO_SPEECH_THRESHOLD and logprob < LOG_PROB_THRESHOLD:
                    rows[i] = []
                elif len(temps) > 1 and (
                    logprob < LOG_PROB_THRESHOLD
                    or compression_ratio(self._decode(rows[i])) > COMPRESSION_RATIO_THRESHOLD
                ):
                    rows[i] = self._fallback(features[i : i + 1], kwargs, temps[1:])
        return rows

    def _fallback(self, features, kwargs: dict, temps: tuple[float, ...]) -> list[int]:
        """One bad window decoded again by transformers' own fallback loop, hotter each time."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SAMPLING_SEED)  # the same text on every run
            out = self.model.generate(
                features,
                **{**kwargs, "do_sample": True, "num_beams": 1},
                temperature=temps,
                compression_ratio_threshold=HF_COMPRESSION_RATIO_THRESHOLD,
                logprob_threshold=LOG_PROB_THRESHOLD,
                no_speech_threshold=NO_SPEECH_THRESHOLD,
            )
        sequences = out["sequences"] if isinstance(out, dict) else out
        return sequences[0].tolist()

    def _prompt(self, opts: TranscribeOptions) -> list[int]:
        """<|startoftranscript|><|xx|><|task|>, what generate puts before the output."""
        gc = self.model.generation_config
        language = self.processor.tokenizer.convert_tokens_to_ids(f"<|{opts.language}|>")
        return [gc.decoder_start_token_id, language, gc.task_to_id[opts.task]]

    def _no_speech_probs(self, hidden) -> list[float]:
        """P(<|nospeech|>) after <|startoftranscript|>, per window (OpenAI's definition)."""
        import torch

        gc = self.model.generation_config
        start = torch.full((hidden.shape[0], 1), gc.decoder_start_token_id, device=hidden.device)
        out = self.model.model.decoder(input_ids=start, encoder_hidden_states=hidden)
        logits = self.model.proj_out(out.last_hidden_state[:, 0]).float()
        # <|nospeech|> (called <|nocaptions|> in older vocabularies) sits just before
        # <|notimestamps|>, which is how transformers finds it too.
        return logits.softmax(-1)[:, gc.no_timestamps_token_id - 1].tolist()

    def _avg_logprob(self, hidden, prompt: list[int], generated: list[int]) -> float:
        """Mean log-probability of the output tokens and <|endoftext|> (OpenAI's measure)."""
        import torch

        tokens = []
        for t in generated:
            tokens.append(t)
            if t == self.eot:
                break
        else:
            tokens.append(self.eot)
        inputs = torch.tensor([prompt + tokens[:-1]], device=hidden.device)
        logits = self.model(encoder_outputs=(hidden,), decoder_input_ids=inputs).logits[0]
        logprobs = logits[len(prompt) - 1 :].float().log_softmax(-1)
        picked = logprobs.gather(1, torch.tensor(tokens, device=hidden.device)[:, None])
        return float(picked.sum()) / len(tokens)

    def decode_windows(
        self, windows: list[np.ndarray], opts: TranscribeOptions
    ) -> list[list[Segment]]:
        out: list[list[Segment]] = []
        for first in range(0, len(windows), opts.batch_size):
            chunk = windows[first : first + opts.batch_size]
            for window, tokens in zip(chunk, self._generate(chunk, opts), strict=True):
                segments, _ = _tokens_to_segments(
                    tokens,
                    timestamp_begin=self.timestamp_begin,
                    eot=self.eot,
                    decode=self._decode,
                    duration=len(window) / SAMPLE_RATE,
                )
                out.append(segments)
        return out

    def segments(self, samples: np.ndarray, opts: TranscribeOptions) -> Iterator[Segment]:
        if len(samples) <= N_SAMPLES:
            yield from self.decode_windows([samples], opts)[0]
        elif opts.vad:
            yield from self._vad_segments(samples, opts)
        else:
            yield from self._sequential_segments(samples, opts)

    def _vad_segments(self, samples: np.ndarray, opts: TranscribeOptions) -> Iterator[Segment]:
        """Windows of <= 30 s cut at the pauses silero VAD finds, decoded in batches."""
        spans = speech_windows(samples)
        step = opts.batch_size if self.batched else 1
        for first in range(0, len(spans), step):
            group = spans[first : first + step]
            decoded = self.decode_windows([samples[a:b] for a, b in group], opts)
            for (a, _), segments in zip(group, decoded, strict=True):
                for s in segments:
                    yield dataclasses.replace(
                        s,
                        start=round(s.start + a / SAMPLE_RATE, 3),
                        end=round(s.end + a / SAMPLE_RATE, 3),
                    )

    def _sequential_segments(
        self, samples: np.ndarray, opts: TranscribeOptions
    ) -> Iterator[Segment]:
        """OpenAI's long-form loop: decode 30 s, go on from the last finished segment."""
        seek = 0
        # A window whose last segment ended before 1 s would not move on: always advance.
        min_advance = SAMPLE_RATE
        while len(samples) - seek >= N_FFT:
            window = samples[seek : seek + N_SAMPLES]
            offset = seek / SAMPLE_RATE
            if _is_silent(window):
                seek += len(window)
                continue
            tokens = self._generate([window], opts)[0]
            segments, resume = _tokens_to_segments(
                tokens,
                timestamp_begin=self.timestamp_begin,
                eot=self.eot,
                decode=self._decode,
                duration=len(window) / SAMPLE_RATE,
                offset=offset,
                keep_tail=seek + len(window) >= len(samples),
            )
            yield from segments
            if resume is None:
                seek += len(window)
            else:
                seek += max(int(resume * SAMPLE_RATE), min_advance)


def speech_windows(samples: np.ndarray, max_samples: int = N_SAMPLES) -> list[tuple[int, int]]:
    """(start, end) sample spans of at most ``max_samples`` that hold all detected speech.

    Silero VAD (shipped with faster-whisper) finds speech; neighbouring speech is joined into
    one window while the window stays within 30 s, so pauses inside a window are kept (Whisper
    expects them) and long silences between windows are skipped.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    # faster-whisper's batched pipeline uses these values: speech pieces of at most one
    # window, split at pauses of 160 ms or more.
    vad = VadOptions(max_speech_duration_s=CHUNK_LENGTH, min_silence_duration_ms=160)
    windows: list[tuple[int, int]] = []
    for chunk in get_speech_timestamps(samples, vad):
        start, end = int(chunk["start"]), int(chunk["end"])
        while end - start > max_samples:  # never expected, but a window must fit
            windows.append((start, start + max_samples))
            start += max_samples
        if windows and end - windows[-1][0] <= max_samples:
            windows[-1] = (windows[-1][0], end)
        else:
            windows.append((start, end))
    return windows


# --------------------------------------------------------------------------- output formats

FORMATS = ("txt", "srt", "vtt", "json")


def format_transcript(transcript: Transcript, fmt: str = "txt", subtitle_options=None) -> str:
    """``transcript`` as plain text (one segment a line), SubRip, WebVTT or JSON.

    ``subtitle_options``: a ``whisper_sv.subtitles.SubtitleOptions`` (cue and line limits).
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

    Subtitle cues follow ``whisper_sv.subtitles.cues``: at most ``options.max_cue_s`` (7 s)
    and two lines of 42 characters, no overlaps, none of zero length; ``spans`` (speech spans)
    time the cues inside a segment.
    """
    from whisper_sv import subtitles as subs

    if fmt == "txt":
        return "".join(f"{s.text.strip()}\n" for s in segments if s.text.strip())
    if fmt not in ("srt", "vtt"):
        raise ValueError(f"unknown subtitle format {fmt!r}; use txt, srt or vtt")
    return subs.render(subs.cues(segments, options, spans), fmt)
