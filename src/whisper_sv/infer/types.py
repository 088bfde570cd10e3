"""Transcription options and typed results: ``TranscribeOptions``, ``Word``, ``Segment``,
``Transcript``, ``Dropped`` (shared by ``infer``, its backends in ``infer_backends`` and the
speech guard)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from whisper_sv.infer.repetition import MAX_NEW_TOKENS

__all__ = [
    "TASKS",
    "Dropped",
    "LoadOptions",
    "Segment",
    "TranscribeOptions",
    "Transcript",
    "Word",
]

TASKS = ("transcribe", "translate")
AUTO = "auto"  # TranscribeOptions.language: detect the spoken language
# The fallback ladder when asked for: up from the given temperature in OpenAI's 0.2 steps.
FALLBACK_STEP = 0.2


# `whisper-sv transcribe`'s beam (files): on two real 3-minute files beam 5 was 3.7 and 5.9
# WER points better than greedy for 9-20 % more time, equal on short clips
# (docs/benchmarks.md, "Beam 1 or beam 5 for files"); OpenAI's and faster-whisper's CLIs use 5.
FILE_BEAM_SIZE = 5


@dataclass(frozen=True)
class TranscribeOptions:
    """How to decode; every field has a safe default for Swedish."""

    # Whisper language code; "auto": detected by the model from the first 30 s of speech
    # (ct2 backend), else always passed (detection guesses wrong on short Swedish clips)
    language: str = "sv"
    task: Literal["transcribe", "translate"] = "transcribe"  # or translate: to English text
    beam_size: int = 1  # 1 = greedy; 5 is OpenAI's beam (about 1.6x slower on CPU)
    temperature: float = 0.0  # between 0 and 1; 0 = deterministic, > 0 samples
    temperature_fallback: bool = False  # re-decode bad windows hotter even with loop_guard off
    loop_guard: bool = True  # greedy first, looping windows re-decoded hotter, output bounded
    fit_to_speech: bool = True  # segment times cut to the speech silero VAD finds in them
    vad: bool = True  # long audio (> 30 s): skip non-speech found by silero VAD
    word_timestamps: bool = False  # per-word times in Segment.words (ct2 backend only)
    condition_on_previous_text: bool = False  # prompt each 30 s window with the previous text;
    # off because without the fallback a window that loops would pass the loop on
    batch_size: int = 16  # windows (short files) decoded together when batching
    max_new_tokens: int | None = None  # tokens per 30 s window, 1-445 (None: the model's limit)
    # Text the first 30 s window is conditioned on, as Whisper's --initial_prompt: names,
    # spellings, the style to follow; at most 223 tokens, about 150 words (None: no prompt)
    initial_prompt: str | None = None
    # The speech guard (speech_guard.py): what it drops is listed in Transcript.dropped.
    # Measured with bench/bench_hallucination.py (docs/benchmarks.md): on 23 non-speech clips
    # the defaults leave 0 of 46 outputs with text (before: 15), on 368 real phrases 0
    # known outros in the English (before: 13), real-speech WER unchanged.

    # No text where silero VAD finds no speech (short clips too): alone it silenced all 46
    # non-speech outputs and dropped no word of 532 real clips.
    speech_gate: bool = True
    # A window whose <|nospeech|> probability (between 0 and 1) is above this while its tokens
    # average below log_prob_threshold is silence: its text is dropped (OpenAI's rule and
    # values; 0.4 or -0.6 dropped real words of sv-words and left most invented English).
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0  # mean token log-probability (<= 0); see no_speech_threshold
    # Drop text holding a phrase of hallucinations.txt (re-decoding with beam 5 gave the same
    # outro on 6 of 6 lexin phrases, sampling other invented text: it is dropped, not redone)
    drop_known_hallucinations: bool = True
    # task translate: transcribe first; English only over kept transcript text and at most
    # max_translation_ratio times its length plus translation_slack_chars (a second decoding)
    check_translation: bool = True
    max_translation_ratio: float = 2.0  # English at most this x the transcript's length
    translation_slack_chars: int = 10  # ... plus this many characters (check_translation)

    def __post_init__(self) -> None:
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        if self.language != AUTO and self.language not in _LANGUAGE_CODES:
            raise ValueError(
                f"unknown language {self.language!r}; use a Whisper language code such as "
                f"'sv' (Swedish) or 'en', or 'auto' to detect it; valid: "
                f"{', '.join(sorted(_LANGUAGE_CODES))}"
            )
        if self.initial_prompt is not None and (
            not isinstance(self.initial_prompt, str) or not self.initial_prompt.strip()
        ):
            raise ValueError(
                f"initial_prompt must be text (names, spellings), not {self.initial_prompt!r}; "
                "leave it out (None) for no prompt"
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
        if not 0.0 <= self.no_speech_threshold <= 1.0:
            raise ValueError(
                f"no_speech_threshold is a probability between 0 and 1 (1: never drop), "
                f"not {self.no_speech_threshold!r}"
            )
        if self.log_prob_threshold > 0:
            raise ValueError(
                f"log_prob_threshold is a log-probability, <= 0 (-1.0 is OpenAI's), "
                f"not {self.log_prob_threshold!r}"
            )
        if self.max_translation_ratio <= 0 or self.translation_slack_chars < 0:
            raise ValueError(
                "max_translation_ratio must be > 0 and translation_slack_chars >= 0, not "
                f"{self.max_translation_ratio!r} and {self.translation_slack_chars!r}"
            )
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
class LoadOptions:
    """How the model is loaded: number type and CPU threads (``Transcriber``'s arguments)."""

    # ct2: "int8", "int8_float16", "float16" or "float32"; transformers: "float32", "float16"
    # or "bfloat16"; None: int8 (ct2) or float32 (transformers) on CPU, float16 on CUDA
    compute_type: str | None = None
    cpu_threads: int = 0  # CPU threads for ct2 (0: all cores this process may use, at most 16)

    def __post_init__(self) -> None:
        if not isinstance(self.cpu_threads, int) or self.cpu_threads < 0:
            raise ValueError(
                f"cpu_threads must be an integer >= 0 (0: all cores), not {self.cpu_threads!r}"
            )


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
    # Scores of the decoded window that wrote the segment (ct2 backend; None: not known).
    avg_logprob: float | None = None  # mean log-probability of its tokens (< -1: unsure)
    no_speech_prob: float | None = None  # P(<|nospeech|>) of its window (> 0.6: silence?)


@dataclass(frozen=True)
class Dropped:
    """A decoded segment the speech guard left out, and why (speech_guard.REASONS)."""

    segment: Segment  # the text as decoded, with its times
    reason: str  # "silence", "known_hallucination", "no_speech_detected", ...
    detail: str = ""  # the evidence in words (the phrase matched, the scores)


@dataclass(frozen=True)
class Transcript:
    """The result of one audio input."""

    text: str  # the segments' text joined by spaces
    segments: tuple[Segment, ...]  # in time order, start times never decreasing
    duration: float  # seconds of audio decoded
    language: str  # the language passed to Whisper (the detected one with language="auto")
    task: str  # "transcribe" or "translate"
    source: str  # the file name, or "<bytes>"/"<array>"
    options: TranscribeOptions  # the options used
    speech: tuple[tuple[float, float], ...] = ()  # VAD speech spans, s (fit_to_speech only)
    dropped: tuple[Dropped, ...] = ()  # segments the speech guard left out, in time order
    language_probability: float | None = None  # the model's, with language="auto" (else None)
