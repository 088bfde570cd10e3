"""What the two decoding backends of ``Transcriber`` share: OpenAI's thresholds, the base
class, tokens -> segments, and the fallback ladder that re-decodes a bad window.

The backends themselves live in ``ct2_backend`` (CTranslate2 / faster-whisper) and
``transformers_backend``. Both turn 16 kHz samples into ``Segment``s with window-relative or
absolute times; the ``Transcriber`` cleans, guards and fits them to speech.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from whisper_sv.core.audio import CHUNK_LENGTH, N_FFT, N_SAMPLES, SAMPLE_RATE
from whisper_sv.data.feature_config import MAX_DECODER_POSITIONS, MAX_PREVIOUS_TOKENS
from whisper_sv.infer.repetition import (
    COMPRESSION_RATIO_THRESHOLD,
    max_new_tokens_for,
)
from whisper_sv.infer.types import Segment, TranscribeOptions, Word

log = logging.getLogger(__name__)

# OpenAI's thresholds (also faster-whisper's and transformers' recommended values): a window
# whose <|nospeech|> probability is above 0.6 while its tokens average below -1.0 log-prob is
# silence or noise, and its text is dropped.
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0
# Seed of fallback sampling (temperature_fallback; long audio through faster-whisper).
SAMPLING_SEED = 0
# Beam of the first re-decoding of a bad greedy window (OpenAI's and faster-whisper's beam).
FALLBACK_BEAM = 5
# Against a loop that beam search repeated too: beam search with no repeated 4-gram of tokens
# (deterministic, unlike sampling, whose CTranslate2 generator cannot be re-seeded per call).
NO_REPEAT_NGRAM_SIZE = 4
# Samples drawn per fallback temperature (faster-whisper's and OpenAI's best_of).
BEST_OF = 5
# transformers measures the compression ratio on token ids (zlib over the id bytes), where
# OpenAI's 2.4 on text corresponds to about 1.35 (transformers' documented value).
HF_COMPRESSION_RATIO_THRESHOLD = 1.35
# Below this peak (-80 dBFS, under one 16-bit step) a clip is digital silence. Whisper base
# does not stop on it: 5 s of zeros decoded to a 251-token loop that took minutes on CPU.
SILENCE_PEAK = 1e-4
TIME_PRECISION_S = 0.02  # seconds per timestamp token


def is_silent(samples: np.ndarray) -> bool:
    return len(samples) == 0 or float(np.max(np.abs(samples))) < SILENCE_PEAK


def padded_for_stft(samples: np.ndarray) -> np.ndarray:
    # The STFT's reflect padding needs more than half a window of samples.
    if len(samples) >= N_FFT:
        return samples
    return np.pad(samples, (0, N_FFT - len(samples)))


def sounding_spans(samples: np.ndarray, min_gap_s: int = 3) -> list[float] | str:
    """[start, end, start, end ...] seconds around digital silences of ``min_gap_s`` or more.

    faster-whisper's ``clip_timestamps``; "0" (everything) when there is no such silence.
    """
    seconds = math.ceil(len(samples) / SAMPLE_RATE)
    loud = [not is_silent(samples[i * SAMPLE_RATE : (i + 1) * SAMPLE_RATE]) for i in range(seconds)]
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


SENTENCE_END_MARKS = ".。!！?？"


def sentence_edges_clamped(alignment: list[dict]) -> list[dict]:
    """faster-whisper's word alignment with its sentence-edge rule applied, as its own word
    timestamps do: a sentence's end mark, or the first word after one, is cut to twice the
    median word duration (at most 1.4 s). Cross-attention stretches them over the pause
    between sentences, which showed a sentence's last word for seconds after it was said.
    """
    durations = np.array([w["end"] - w["start"] for w in alignment])
    durations = durations[durations.nonzero()]
    if not len(durations):
        return alignment
    longest = 2 * min(0.7, float(np.median(durations)))
    out = [dict(w) for w in alignment]
    for i in range(1, len(out)):
        if out[i]["end"] - out[i]["start"] > longest:
            if out[i]["word"] in SENTENCE_END_MARKS:
                out[i]["end"] = out[i]["start"] + longest
            elif out[i - 1]["word"] in SENTENCE_END_MARKS:
                out[i]["start"] = out[i]["end"] - longest
    return out


def aligned_words(
    alignment: list[dict], place: Callable[[float, float], tuple[float, float]]
) -> list[Word]:
    """The Words of faster-whisper's alignment of one window: its sentence-edge rule applied
    (``sentence_edges_clamped``), each (start, end) put on the audio's time by ``place``,
    punctuation joined to the word before (``punctuation_joined``)."""
    words = []
    for w in sentence_edges_clamped(alignment):
        start, end = place(float(w["start"]), float(w["end"]))
        words.append(
            Word(
                start=round(start, 3),
                end=round(end, 3),
                text=w["word"],
                probability=round(float(w["probability"]), 4),
            )
        )
    return punctuation_joined(words)


def punctuation_joined(words: list[Word]) -> list[Word]:
    """Punctuation the alignment gives as words of its own ("!") joined to the word before,
    as faster-whisper's own word timestamps do."""
    out: list[Word] = []
    for w in words:
        if out and not any(c.isalnum() for c in w.text):
            out[-1] = dataclasses.replace(out[-1], end=w.end, text=out[-1].text + w.text.strip())
        else:
            out.append(w)
    return out


def words_into(segments: list[Segment], words: list[Word]) -> list[Segment]:
    """``segments`` each given the next words whose letters add up to its text's."""
    out, k = [], 0
    for s in segments:
        need, have, start = len(s.text.replace(" ", "")), 0, k
        while k < len(words) and have < need:
            have += len(words[k].text.replace(" ", ""))
            k += 1
        out.append(dataclasses.replace(s, words=tuple(words[start:k])))
    return out


def max_length_for(
    prompt_length: int, opts: TranscribeOptions, model_max: int, duration_s: float
) -> int:
    """Decoder length (prompt included) for windows of at most ``duration_s`` seconds."""
    new_tokens = new_token_limit(opts, duration_s)
    if new_tokens is None:
        return model_max
    return min(model_max, prompt_length + new_tokens)


def tokens_to_segments(
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


def check_prompt_length(n_tokens: int) -> None:
    """Refuse an initial prompt longer than the decoder keeps (faster-whisper would cut it
    silently to its last 223 tokens)."""
    if n_tokens > MAX_PREVIOUS_TOKENS:
        raise ValueError(
            f"initial_prompt is {n_tokens} tokens; Whisper takes at most {MAX_PREVIOUS_TOKENS} "
            "(about 150 words): shorten it to the names and spellings that matter"
        )


class DecoderBackend:
    device: str
    compute_type: str
    batched: bool = False  # several windows per model call (Transcriber.batched)

    def check(self, opts: TranscribeOptions) -> None:
        """Raise ValueError when the model cannot do what ``opts`` asks."""

    def detect_language(self, samples: np.ndarray) -> tuple[str, float]:
        """(language code, probability) the model hears in the first 30 s of ``samples``."""
        raise ValueError("language='auto' needs backend='ct2'")

    def segments(self, samples: np.ndarray, opts: TranscribeOptions) -> Iterator[Segment]:
        raise NotImplementedError

    def decode_windows(
        self, windows: list[np.ndarray], opts: TranscribeOptions
    ) -> list[list[Segment]]:
        """Segments (window-relative times) of clips of at most 30 s each, batched."""
        raise NotImplementedError


@dataclass(frozen=True)
class Attempt:
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


def fallback_ladder(
    opts: TranscribeOptions, temps: tuple[float, ...]
) -> list[tuple[float, int, int]]:
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


def best_attempt(tried: list[Attempt]) -> Attempt:
    """faster-whisper's pick when every temperature failed: the likeliest non-loop."""
    below = [a for a in tried if a.compression <= COMPRESSION_RATIO_THRESHOLD]
    return max(below or tried, key=lambda a: a.avg_logprob)


# With condition_on_previous_text (or an initial_prompt) a window's prompt is <|startofprev|>,
# up to 223 tokens of the text before, SOT, language and task: 227 of the decoder's 448. faster-whisper
# refuses a window whose prompt and max_new_tokens do not fit (OpenAI's Whisper samples 224
# tokens a window at most, for the same reason).
PROMPTED_MAX_NEW_TOKENS = MAX_DECODER_POSITIONS - (1 + MAX_PREVIOUS_TOKENS + 3)


def new_token_limit(opts: TranscribeOptions, duration_s: float) -> int | None:
    """Tokens allowed per window: the option, else the loop guard's bound, else the model's;
    with previous-text or initial prompts at most what fits beside the longest prompt."""
    if opts.max_new_tokens is not None:
        n = opts.max_new_tokens
    else:
        n = max_new_tokens_for(duration_s) if opts.loop_guard else None
    if opts.condition_on_previous_text or opts.initial_prompt:
        return min(n or PROMPTED_MAX_NEW_TOKENS, PROMPTED_MAX_NEW_TOKENS)
    return n


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
