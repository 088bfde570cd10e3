"""The two decoding backends of ``infer.Transcriber``: CTranslate2 (faster-whisper) and
transformers, with the loop guard's fallback ladder (``infer``'s module doc tells the rules).

Both turn 16 kHz samples into ``Segment``s with window-relative or absolute times; the
``Transcriber`` in ``infer`` cleans, guards and fits them to speech.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from whisper_sv.core.audio import CHUNK_LENGTH, HOP_LENGTH, N_FFT, N_SAMPLES, SAMPLE_RATE
from whisper_sv.data.feature_config import MAX_DECODER_POSITIONS, MAX_PREVIOUS_TOKENS
from whisper_sv.infer.repetition import (
    COMPRESSION_RATIO_THRESHOLD,
    compression_ratio,
    max_new_tokens_for,
)
from whisper_sv.infer.types import AUTO, Segment, TranscribeOptions, Word
from whisper_sv.models import loading as models

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


def _is_silent(samples: np.ndarray) -> bool:
    return len(samples) == 0 or float(np.max(np.abs(samples))) < SILENCE_PEAK


def _min_length(samples: np.ndarray) -> np.ndarray:
    # The STFT's reflect padding needs more than half a window of samples.
    if len(samples) >= N_FFT:
        return samples
    return np.pad(samples, (0, N_FFT - len(samples)))


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


def _punctuation_joined(words: list[Word]) -> list[Word]:
    """Punctuation the alignment gives as words of its own ("!") joined to the word before,
    as faster-whisper's own word timestamps do."""
    out: list[Word] = []
    for w in words:
        if out and not any(c.isalnum() for c in w.text):
            out[-1] = dataclasses.replace(out[-1], end=w.end, text=out[-1].text + w.text.strip())
        else:
            out.append(w)
    return out


def _words_into(segments: list[Segment], words: list[Word]) -> list[Segment]:
    """``segments`` each given the next words whose letters add up to its text's."""
    out, k = [], 0
    for s in segments:
        need, have, start = len(s.text.replace(" ", "")), 0, k
        while k < len(words) and have < need:
            have += len(words[k].text.replace(" ", ""))
            k += 1
        out.append(dataclasses.replace(s, words=tuple(words[start:k])))
    return out


def _max_length(
    prompt_length: int, opts: TranscribeOptions, model_max: int, duration_s: float
) -> int:
    """Decoder length (prompt included) for windows of at most ``duration_s`` seconds."""
    new_tokens = _new_tokens(opts, duration_s)
    if new_tokens is None:
        return model_max
    return min(model_max, prompt_length + new_tokens)


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


class _Backend:
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

    def detect_language(self, samples: np.ndarray) -> tuple[str, float]:
        # The same silence-padded log-mel as decoding (decode_windows), one encoder pass.
        features = self._features(samples[:N_SAMPLES])[None].astype(np.float32)
        token, probability = self.model.model.detect_language(self._encode(features))[0][0]
        return token[2:-2], float(probability)  # "<|sv|>" -> "sv"

    def segments(self, samples: np.ndarray, opts: TranscribeOptions) -> Iterator[Segment]:
        if len(samples) <= N_SAMPLES:
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
            no_speech_threshold=opts.no_speech_threshold,
            # Also the fallback's threshold: the guard's own value applies after decoding.
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
            yield Segment(
                start=piece.start,
                end=piece.end,
                text=piece.text.strip(),
                words=words,
                avg_logprob=piece.avg_logprob,
                no_speech_prob=piece.no_speech_prob,
            )

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
        texts: list[list[int]] = []  # text tokens of each window's chosen decoding
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
            segments, _ = _tokens_to_segments(
                chosen.tokens,
                timestamp_begin=tokenizer.timestamp_begin,
                eot=tokenizer.eot,
                decode=tokenizer.decode,
                duration=len(window) / SAMPLE_RATE,
            )
            # A window judged silence keeps its text here: the speech guard drops it and
            # says so (Transcript.dropped).
            scores = {"avg_logprob": chosen.avg_logprob, "no_speech_prob": chosen.no_speech_prob}
            out.append([dataclasses.replace(s, **scores) for s in segments])
            texts.append([t for t in chosen.tokens if t < tokenizer.eot])
        if opts.word_timestamps:
            out = self._with_words(out, texts, windows, features, encoded, tokenizer)
        return out

    def _with_words(self, out, texts, windows, features, encoded, tokenizer):
        """Segments with their words' times and probabilities (faster-whisper's alignment of
        the chosen tokens on the same encoder output: the audio stays silence-padded)."""
        todo = [i for i, tokens in enumerate(texts) if tokens]
        if not todo:
            return out
        if len(todo) < len(windows):
            encoded = self._encode(features[todo])
        aligned = self.model.find_alignment(
            tokenizer,
            [texts[i] for i in todo],
            encoded,
            [min(len(windows[i]), N_SAMPLES) // HOP_LENGTH for i in todo],
        )
        for i, words in zip(todo, aligned, strict=True):
            duration = len(windows[i]) / SAMPLE_RATE
            found = [
                Word(
                    start=round(min(float(w["start"]), duration), 3),
                    end=round(min(float(w["end"]), duration), 3),
                    text=w["word"],
                    probability=round(float(w["probability"]), 4),
                )
                for w in words
            ]
            out[i] = _words_into(out[i], _punctuation_joined(found))
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


# With condition_on_previous_text a window's prompt is <|startofprev|>, up to 223 tokens of
# the text before, SOT, language and task: 227 of the decoder's 448 positions. faster-whisper
# refuses a window whose prompt and max_new_tokens do not fit (OpenAI's Whisper samples 224
# tokens a window at most, for the same reason).
PROMPTED_MAX_NEW_TOKENS = MAX_DECODER_POSITIONS - (1 + MAX_PREVIOUS_TOKENS + 3)


def _new_tokens(opts: TranscribeOptions, duration_s: float) -> int | None:
    """Tokens allowed per window: the option, else the loop guard's bound, else the model's;
    with previous-text prompts at most what fits beside the longest prompt."""
    if opts.max_new_tokens is not None:
        n = opts.max_new_tokens
    else:
        n = max_new_tokens_for(duration_s) if opts.loop_guard else None
    if opts.condition_on_previous_text:
        return min(n or PROMPTED_MAX_NEW_TOKENS, PROMPTED_MAX_NEW_TOKENS)
    return n


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
        # What only faster-whisper's loop does (the ct2 backend).
        if opts.language == AUTO:
            raise ValueError("language='auto' needs backend='ct2' (or pass the language)")
        if opts.word_timestamps:
            raise ValueError("word_timestamps needs backend='ct2' (faster-whisper)")
        if opts.condition_on_previous_text:
            raise ValueError(
                "condition_on_previous_text needs backend='ct2' (faster-whisper's long-form "
                "loop); the transformers backend decodes each window on its own"
            )

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
