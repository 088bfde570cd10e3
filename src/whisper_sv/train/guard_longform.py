"""A long-form guard: one file joined from a guard's real clips, transcribed window by window.

Short clips test what a model hears; they do not test what long-form transcription needs: the
decoder writing segment timestamps, the 30 s window moving to the last one, and no drift or
loop on long context. A fine-tune can keep every short clip and still lose those (measured in
docs/experiments.md, section 8). The guard joins its manifest's clips into about ``long_form``
seconds of audio (:func:`whisper_sv.data.longform.join_clips`, seeded) once, and at each evaluation
transcribes it with the training model through transformers' own sequential long-form
``generate`` (timestamps on, no previous-text prompt, the way ``transcribe`` runs), giving
WER, CER and the number of segments.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_sv.train.guards import CER_SUFFIX, SEGMENTS_SUFFIX, WER_SUFFIX, GuardSpec, manifest_key

log = logging.getLogger(__name__)

__all__ = ["LongFormGuard"]


@dataclass
class LongFormGuard:
    """One long-form guard: its joined file's log-mel and reference."""

    spec: GuardSpec
    features: Any  # torch float32 (1, n_mels, frames), the whole file (not cut to 30 s)
    attention_mask: Any  # torch int (1, frames)
    reference: str
    seconds: float
    language: str

    @classmethod
    def build(
        cls, spec: GuardSpec, *, processor: Any, model_ref: str, cache_root: Path, language: str
    ) -> LongFormGuard:
        """Join the guard's manifest clips (cached by content) and compute the log-mel."""
        from whisper_sv.core.audio import SAMPLE_RATE, load_audio
        from whisper_sv.data.longform import join_clips

        manifest = Path(spec.path).expanduser()
        if not manifest.is_file():
            raise ValueError(
                f"guard {spec.name!r}: long_form joins the clips of a manifest TSV; "
                f"{manifest} is not one"
            )
        key = manifest_key(manifest, model_ref)
        wav = cache_root / "guards" / f"{spec.name}-{key}-{spec.long_form:g}s.wav"
        joined = join_clips(manifest, wav, seconds=spec.long_form, seed=0)
        audio = load_audio(wav)
        feats = processor.feature_extractor(
            audio,
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
            truncation=False,
            padding="longest",
            return_attention_mask=True,
        )
        log.info(
            "guard %s: %.0f s long-form file of %d clips (%s)",
            spec.name,
            joined.duration,
            len(joined.spans),
            wav,
        )
        return cls(
            spec=spec,
            features=feats["input_features"],
            attention_mask=feats["attention_mask"],
            reference=joined.reference,
            seconds=joined.duration,
            language=language,
        )

    def score(self, model: Any, processor: Any) -> dict[str, float]:
        """WER, CER and segments of ``model``'s transcript (call under no_grad / autocast)."""
        from whisper_sv.core.text import error_rates

        param = next(model.parameters())
        out = model.generate(
            self.features.to(param.device, dtype=param.dtype),
            attention_mask=self.attention_mask.to(param.device),
            language=self.language,
            task="transcribe",
            return_timestamps=True,
            return_segments=True,
            condition_on_prev_tokens=False,
        )
        # Files over 30 s give a dict with the segments; a shorter one gives its tokens, whose
        # timestamp pairs are its segments.
        ids = out["sequences"] if isinstance(out, dict) else out
        text = processor.tokenizer.batch_decode(ids, skip_special_tokens=True)[0]
        if isinstance(out, dict) and "segments" in out:
            segments = len(out["segments"][0])
        else:
            first = int(processor.tokenizer.convert_tokens_to_ids("<|0.00|>"))
            segments = int((ids[0] >= first).sum().item()) // 2
        rates = error_rates([self.reference], [text])
        name = self.spec.name
        return {
            name + WER_SUFFIX: rates.wer,
            name + CER_SUFFIX: rates.cer,
            name + SEGMENTS_SUFFIX: float(segments),
        }
