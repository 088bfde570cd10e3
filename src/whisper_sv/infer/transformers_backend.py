"""The transformers decoding backend of ``Transcriber``, with its own VAD and sequential
long-form loops."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import numpy as np

from whisper_sv.core.audio import N_FFT, N_SAMPLES, SAMPLE_RATE
from whisper_sv.infer.backends import (
    HF_COMPRESSION_RATIO_THRESHOLD,
    LOG_PROB_THRESHOLD,
    NO_SPEECH_THRESHOLD,
    SAMPLING_SEED,
    DecoderBackend,
    is_silent,
    max_length_for,
    speech_windows,
    tokens_to_segments,
)
from whisper_sv.infer.repetition import (
    COMPRESSION_RATIO_THRESHOLD,
    compression_ratio,
)
from whisper_sv.infer.types import AUTO, Segment, TranscribeOptions
from whisper_sv.models.references import load_model

log = logging.getLogger(__name__)


class TransformersBackend(DecoderBackend):
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
        self.model, self.processor = load_model(ref, device=device, dtype=self.dtype)
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
        if opts.initial_prompt:
            raise ValueError("initial_prompt needs backend='ct2' (faster-whisper)")
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
            kwargs["max_length"] = max_length_for(
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
                segments, _ = tokens_to_segments(
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
            if is_silent(window):
                seek += len(window)
                continue
            tokens = self._generate([window], opts)[0]
            segments, resume = tokens_to_segments(
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
