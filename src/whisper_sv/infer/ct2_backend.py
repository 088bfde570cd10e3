"""The CTranslate2 (faster-whisper) decoding backend of ``Transcriber``."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from whisper_sv.core.audio import CHUNK_LENGTH, HOP_LENGTH, N_SAMPLES, SAMPLE_RATE
from whisper_sv.infer.backends import (
    BEST_OF,
    LOG_PROB_THRESHOLD,
    SAMPLING_SEED,
    TIME_PRECISION_S,
    Attempt,
    DecoderBackend,
    aligned_words,
    best_attempt,
    check_prompt_length,
    fallback_ladder,
    max_length_for,
    new_token_limit,
    sounding_spans,
    tokens_to_segments,
    words_into,
)
from whisper_sv.infer.encoder_reuse import ENCODER_CACHE_WINDOWS, EncoderCache
from whisper_sv.infer.repetition import (
    COMPRESSION_RATIO_THRESHOLD,
    compression_ratio,
)
from whisper_sv.infer.types import Segment, TranscribeOptions
from whisper_sv.models.references import ct2_dir

log = logging.getLogger(__name__)


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


def _encoder_of(whisper: Any) -> Callable[[np.ndarray], Any]:
    """The encoder of a ``ctranslate2.models.Whisper`` on a (batch, mels, frames) log-mel."""

    def encode(features: np.ndarray):
        import ctranslate2

        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
        return whisper.encode(view, to_cpu=False)

    return encode


def _window_encoder(cache: EncoderCache) -> Callable[[np.ndarray], Any]:
    """``WhisperModel.encode`` through ``cache``: one (mels, frames) window or a batch."""
    return lambda features: cache(features[None] if features.ndim == 2 else features)


class Ct2Backend(DecoderBackend):
    """faster-whisper's model decoded window by window, its encoder outputs reused.

    ``encoder_cache``: encoder outputs kept for reuse (``EncoderCache``), on CPU only; 0:
    every pass encodes again. On CUDA the encoder is a small share of the time and rows
    would have to go through host memory to be stitched, so nothing is kept there.
    """

    def __init__(
        self,
        ref: str,
        device: str,
        compute_type: str | None,
        cpu_threads: int,
        encoder_cache: int = ENCODER_CACHE_WINDOWS,
    ) -> None:
        import ctranslate2
        from faster_whisper import WhisperModel

        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        if compute_type is None:
            compute_type = "float16" if device == "cuda" else "int8"
        folder = ct2_dir(ref)
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
        # Closures over the CTranslate2 model and the cache only, not over self: the backend
        # and its WhisperModel stay free of reference cycles and are freed as soon as the app
        # or a test lets go of them (a cycle holds a CTranslate2 model until a collection).
        self.encoder = EncoderCache(
            _encoder_of(self.model.model), encoder_cache if device == "cpu" else 0
        )
        if self.encoder.windows:
            # faster-whisper's long-form loop calls self.encode(features) once per window:
            # this instance attribute takes the method's place, so those windows are shared.
            self.model.encode = _window_encoder(self.encoder)

    def check(self, opts: TranscribeOptions) -> None:
        if not self.model.model.is_multilingual and opts.language != "en":
            raise ValueError("this model is English-only; use a multilingual Whisper model")
        if opts.initial_prompt:
            check_prompt_length(len(self._prompt_tokens(opts.initial_prompt)))

    def _prompt_tokens(self, text: str | None) -> list[int]:
        """The tokens of an initial prompt, encoded as faster-whisper's transcribe does."""
        if not text:
            return []
        return self.model.hf_tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids

    def detect_language(self, samples: np.ndarray) -> tuple[str, float]:
        # The same silence-padded log-mel as decoding (decode_windows), one encoder pass.
        features = self.log_mel(samples[:N_SAMPLES])[None].astype(np.float32)
        token, probability = self.model.model.detect_language(self._encode(features))[0][0]
        return token[2:-2], float(probability)  # "<|sv|>" -> "sv"

    def segments(self, samples: np.ndarray, opts: TranscribeOptions) -> Iterator[Segment]:
        if len(samples) <= N_SAMPLES:
            # One window, its audio padded with silence (decode_windows' doc).
            yield from self.decode_windows([samples], opts)[0]
            return
        import ctranslate2

        long = len(samples) > N_SAMPLES
        # Without VAD, stretches of digital silence are skipped, not decoded: Whisper
        # writes its last sentence again and again over trailing silence.
        # ("0": the whole audio; only then does faster-whisper apply its VAD.)
        clips = sounding_spans(samples) if long and not opts.vad else "0"
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
            initial_prompt=opts.initial_prompt,
            # Word times are aligned after decoding (_aligned): faster-whisper's own word
            # timestamps also move its windows (they seek to the last word), which changed
            # 29-86 words of 3-minute files (bench/bench_subtitles.py).
            word_timestamps=False,
            vad_filter=opts.vad and long,
            without_timestamps=False,
            no_speech_threshold=opts.no_speech_threshold,
            # Also the fallback's threshold: the guard's own value applies after decoding.
            log_prob_threshold=LOG_PROB_THRESHOLD,
            max_new_tokens=new_token_limit(opts, min(len(samples) / SAMPLE_RATE, CHUNK_LENGTH)),
            clip_timestamps=clips,
        )
        if opts.word_timestamps:
            yield from self._aligned(samples, opts, pieces, clips, vad=opts.vad and long)
            return
        for piece in pieces:  # a generator: each window is decoded when asked for
            yield _segment_of(piece)

    def _aligned(
        self, samples: np.ndarray, opts: TranscribeOptions, pieces, clips, *, vad: bool
    ) -> Iterator[Segment]:
        """The segments of faster-whisper's long-form ``pieces``, each window's given their
        words' times by aligning its decoded tokens on the same window's encoder output.

        The windows are rebuilt as faster-whisper cut them: its log-mel of the whole audio
        (with VAD, of the speech it kept, joined) sliced at each window's ``seek``; the
        encoder output is then usually the one decoding left in the window cache. A window
        ends where faster-whisper's ended: at the end of its clip (``clips``: start, end,
        ... seconds, as passed as clip_timestamps) or of the audio, whichever comes first.
        """
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.vad import SpeechTimestampsMap, VadOptions, collect_chunks
        from faster_whisper.vad import get_speech_timestamps as speech_timestamps

        tokenizer = Tokenizer(
            self.model.hf_tokenizer,
            self.model.model.is_multilingual,
            task=opts.task,
            language=opts.language,
        )
        audio, timeline = samples, None
        if vad:
            chunks = speech_timestamps(samples, VadOptions())
            if chunks:
                audio = np.concatenate(collect_chunks(samples, chunks)[0])
                timeline = SpeechTimestampsMap(chunks, SAMPLE_RATE)
        features = self.model.feature_extractor(audio)
        window = N_SAMPLES // HOP_LENGTH
        content = features.shape[-1] - 1  # faster-whisper drops the last frame too
        starts_ends = [0.0] if clips == "0" else clips
        points = [round(t * 100) for t in starts_ends]
        points += [content] if len(points) % 2 else []
        ends = sorted(min(end, content) for end in points[1::2])

        def aligned(group: list) -> list[Segment]:
            seek = group[0].seek
            clip_end = next((end for end in ends if end > seek), content)
            size = min(window, content - seek, clip_end - seek)
            frames = features[:, seek : seek + size]
            frames = np.pad(frames, ((0, 0), (0, window - frames.shape[-1])))
            segments = [_segment_of(p) for p in group]
            tokens = [t for p in group for t in p.tokens if t < tokenizer.eot]
            if not tokens:
                return segments
            encoded = self._encode(frames[None].astype(np.float32))
            (found,) = self.model.find_alignment(tokenizer, [tokens], encoded, [size])

            def place(start: float, end: float) -> tuple[float, float]:
                start, end = seek / 100 + start, seek / 100 + end
                if timeline is None:
                    return start, end
                # Back from the joined speech to the file's time, both ends in one chunk.
                chunk = timeline.get_chunk_index((start + end) / 2)
                return timeline.get_original_time(start, chunk), timeline.get_original_time(
                    end, chunk
                )

            return words_into(segments, aligned_words(found, place))

        group: list = []
        for piece in pieces:  # each window is decoded when asked for
            if group and piece.seek != group[0].seek:
                yield from aligned(group)
                group = []
            group.append(piece)
        if group:
            yield from aligned(group)

    def log_mel(self, window: np.ndarray) -> np.ndarray:
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
        ``WhisperModel.transcribe``; the audio is padded before the log-mel (``log_mel``).
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
        prompt = self.model.get_prompt(
            tokenizer, self._prompt_tokens(opts.initial_prompt), without_timestamps=False
        )
        features = np.stack([self.log_mel(w) for w in windows]).astype(np.float32)
        longest = max(len(w) for w in windows) / SAMPLE_RATE
        max_length = max_length_for(len(prompt), opts, self.model.max_length, longest)
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
            for step, (temperature, beam, no_repeat) in enumerate(fallback_ladder(opts, temps)):
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
            chosen = tried[-1] if not tried[-1].needs_fallback else best_attempt(tried)
            segments, _ = tokens_to_segments(
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
            found = aligned_words(words, lambda a, b, d=duration: (min(a, d), min(b, d)))
            out[i] = words_into(out[i], found)
        return out

    def _encode(self, features: np.ndarray):
        """The encoder output of a batch of log-mels (kept on the device), reused when the
        same windows were encoded lately (``self.encoder``)."""
        return self.encoder(features)

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
    ) -> list[Attempt]:
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
                Attempt(tokens, avg_logprob, result.no_speech_prob, compression_ratio(text))
            )
        return attempts


def _segment_of(piece) -> Segment:
    """A faster-whisper segment as ours (no words: they are aligned apart)."""
    return Segment(
        start=piece.start,
        end=piece.end,
        text=piece.text.strip(),
        avg_logprob=piece.avg_logprob,
        no_speech_prob=piece.no_speech_prob,
    )
