"""What both feature engines share: options, results, the per-chunk worker and shard writing.

:mod:`whisper_sv.data.features` (the local engine, ``build_store``, ``report``) and
:mod:`whisper_sv.data.features_ray` (the Ray engine) both build on this module, so neither imports the
other's internals. The pipeline itself is described in :mod:`whisper_sv.data.features`.

Workers (spawned processes, Ray tasks) import this module: it imports neither torch nor
transformers (docs/facts.md).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from whisper_sv.core.audio import SAMPLE_RATE, AudioError
from whisper_sv.data.feature_config import FeatureConfig
from whisper_sv.data.logmel import log_mel_batch, n_audio_frames
from whisper_sv.data.store import shard_path, write_shard
from whisper_sv.models.references import DEFAULT_MODEL

if TYPE_CHECKING:
    from whisper_sv.data.sources import Item, Source

__all__ = [
    "REASONS",
    "BuildOptions",
    "ChunkWorker",
    "DroppedClip",
    "FeaturizedClip",
    "ShardJob",
    "SplitSummary",
    "StoreSummary",
    "WorkerSettings",
    "block_digest",
    "check_texts",
    "label_ids",
    "split_summaries",
    "splits_to_build",
    "summary_table",
    "worker_settings",
    "write_job",
]

REASONS = (
    "missing file",  # the path does not exist, or the row names no file
    "empty",  # a 0-byte file, or audio that decodes to no samples
    "not audio",  # not a media file, or a media file without an audio stream
    "corrupt",  # a media file whose audio does not decode (or holds NaN/inf)
    "decode error",  # any other failure of Source.load (the detail says which)
    "silent",  # peak below BuildOptions.silence_dbfs
    "too long",  # longer than FeatureConfig.max_duration_s (after augmentation)
    "empty sentence",  # no transcript, or nothing left after normalisation
    "non-UTF-8 sentence",  # the transcript's bytes were not UTF-8
    "bad row",  # the source marked the row malformed (Item.meta["error"])
    "labels too long",  # more than FeatureConfig.max_label_tokens label tokens
)


# --------------------------------------------------------------------------- config


def label_ids(tokenizer: Any, texts: Sequence[str], config: FeatureConfig) -> list[list[int]]:
    """Token ids ``<|startoftranscript|><|lang|><|task|><|notimestamps|> text <|endoftext|>``,
    the text after a space when ``config.prefix_space`` (as Whisper writes it)."""
    tokenizer.set_prefix_tokens(
        language=config.language, task=config.task, predict_timestamps=False
    )
    if not texts:
        return []
    lead = " " if config.prefix_space else ""
    return [list(ids) for ids in tokenizer([lead + t for t in texts]).input_ids]


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class BuildOptions:
    """How to run the feature pipeline (what the store holds is FeatureConfig)."""

    model: str = DEFAULT_MODEL  # model whose processor defines mel bins and tokenizer
    splits: tuple[str, ...] = ()  # splits to process; () = every split of the source
    limit: int | None = None  # first N inputs of each split (None = all)
    workers: int = 1  # processes decoding audio and computing log-mel (1 = in this process)
    shard: tuple[int, int] = (0, 1)  # (I, N): write only shards k with k % N == I
    shard_size: int = 256  # inputs per shard (rejected ones included)
    # Feature-config choices (see FeatureConfig).
    language: str = "sv"  # language token of the labels
    task: str = "transcribe"  # task token of the labels
    normalize_text: bool = False  # tokenize text.normalize(sentence) instead of the sentence
    # Label a lowercase transcript without punctuation as a sentence, as Whisper writes one
    # ("tvättar håret" -> "Tvättar håret."; FeatureConfig.sentence_case)
    sentence_case: bool = False
    max_duration_s: float = 30.0  # reject longer clips
    max_label_tokens: int = 448  # reject longer label sequences
    # Augmentation, applied to augment_splits only, recorded per row.
    noise_snr_db: float | None = None  # add white noise at this SNR in dB (None = off)
    speed: tuple[float, ...] = ()  # speed factors; each clip gets one, drawn by its id
    augment_splits: tuple[str, ...] = ("train",)  # splits that are augmented
    seed: int = 0  # seeds the per-clip draws of noise and speed
    silence_dbfs: float = -60.0  # reject clips whose peak is below this (dB full scale)
    chunk_size: int = 32  # inputs per worker task (and per log-mel batch)
    progress: bool = True  # show a tqdm progress bar on stderr
    engine: str = "local"  # "local": worker processes here; "ray": tasks on a Ray cluster
    # Ray cluster to join with engine "ray" ("auto", "ray://h:10001"); None: start one here
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.engine not in ("local", "ray"):
            raise ValueError(f"engine must be 'local' or 'ray', got {self.engine!r}")
        if self.ray_address and self.engine != "ray":
            raise ValueError("ray_address needs engine 'ray' (--engine ray)")
        index, count = self.shard
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.shard_size < 1 or self.chunk_size < 1:
            raise ValueError("shard_size and chunk_size must be >= 1")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0 (or None for all), got {self.limit}")
        if any(not 0.5 <= s <= 2.0 for s in self.speed):
            raise ValueError(f"speed factors must be in [0.5, 2.0], got {list(self.speed)}")
        if self.silence_dbfs >= 0:
            raise ValueError(f"silence_dbfs must be below 0 dBFS, got {self.silence_dbfs}")

    def feature_config(self, processor: Any) -> FeatureConfig:
        return FeatureConfig.from_processor(
            processor,
            language=self.language,
            task=self.task,
            normalize_text=self.normalize_text,
            sentence_case=self.sentence_case,
            max_duration_s=self.max_duration_s,
            max_label_tokens=self.max_label_tokens,
        )

    def pipeline(self) -> dict[str, Any]:
        """Settings that change what a shard holds beyond the FeatureConfig: a re-run into the
        same store must use the same, or shards made two ways would mix."""
        return {
            "shard_size": self.shard_size,
            "noise_snr_db": self.noise_snr_db,
            "speed": list(self.speed),
            "augment_splits": list(self.augment_splits) if self.augmenting else [],
            "seed": self.seed if self.augmenting else None,
            "silence_dbfs": self.silence_dbfs,
        }

    @property
    def augmenting(self) -> bool:
        return self.noise_snr_db is not None or any(s != 1.0 for s in self.speed)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SplitSummary:
    split: str
    n_in: int  # inputs seen (in the shards present)
    kept: int  # rows stored
    rejected: int  # inputs left out (rejects.tsv)
    hours: float  # audio stored
    speakers: int  # distinct speakers stored
    reasons: dict[str, int] = field(default_factory=dict)  # rejects per reason
    complete: bool | None = None  # all of the split's shards present (None: unknown)


@dataclass(frozen=True)
class StoreSummary:
    """What a build_store run did, and what the store now holds."""

    path: Path
    config: FeatureConfig
    splits: tuple[SplitSummary, ...]
    shards_written: int  # by this run
    shards_skipped: int  # finished before this run
    processed: int  # inputs processed by this run
    seconds: float  # wall time of this run
    options: BuildOptions

    @property
    def clips_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def table(self) -> str:
        return summary_table(self.splits)


def summary_table(splits: Iterable[SplitSummary]) -> str:
    """Plain-text table: split, in, kept, rejected, hours, speakers, reject reasons."""
    head = ("split", "in", "kept", "rejected", "hours", "speakers", "rejected because")
    rows = [head]
    for s in splits:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.reasons.items(), key=lambda kv: -kv[1]))
        split = s.split if s.complete is not False else f"{s.split} (partial)"
        rows.append(
            (
                split,
                str(s.n_in),
                str(s.kept),
                str(s.rejected),
                f"{s.hours:.3f}",
                str(s.speakers),
                reasons,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i in (0, 6) else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    )


def split_summaries(manifest: Mapping[str, Any]) -> tuple[SplitSummary, ...]:
    """The per-split summaries of a store manifest."""
    return tuple(
        SplitSummary(
            split=name,
            n_in=int(e["in"]),
            kept=int(e["kept"]),
            rejected=int(e["rejected"]),
            hours=float(e["hours"]),
            speakers=int(e["speakers"]),
            reasons=dict(e["reasons"]),
            complete=e.get("complete"),
        )
        for name, e in manifest["splits"].items()
    )


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class WorkerSettings:
    """What workers need besides the source; small and picklable."""

    mel_filters: np.ndarray  # (201, n_mels) float32, the processor's filter bank
    max_duration_s: float
    silence_peak: float  # linear peak below which a clip is "silent"
    noise_snr_db: float | None
    speed: tuple[float, ...]
    augment_splits: tuple[str, ...]
    seed: int


@dataclass(frozen=True)
class FeaturizedClip:
    """A clip that passed the audio checks: its log-mel features and how it was augmented."""

    features: bytes  # float16 (n_mels, n_frames)
    n_frames: int  # columns of the features
    pad_value: float  # log-mel value of silence, for padding a batch
    duration: float  # seconds of audio after augmentation
    augmentation: str  # JSON, "" when none


@dataclass(frozen=True)
class DroppedClip:
    """A clip rejected before it got features, and why."""

    reason: str  # one of REASONS
    detail: str  # what exactly was wrong, for the rejects table


# AudioError.reason keywords -> category, first match wins ("corrupt" before "not audio": a
# damaged wav says "corrupt or truncated wav file"; text named .wav says "not audio").
_AUDIO_REASONS = (
    (("not found", "names no audio"), "missing file"),
    (("empty", "0 bytes"), "empty"),
    (("corrupt", "truncated"), "corrupt"),
    (("not audio", "not an audio", "no audio stream", "directory"), "not audio"),
)

# Largest batch of log-mel work at once: clips x frames of the longest (~80 MB of FFT input).
_FRAME_BUDGET = 48_000


class ChunkWorker:
    """Decode, check, augment and featurize a list of items (in a worker or in-process)."""

    def __init__(self, source: Source, settings: WorkerSettings) -> None:
        self.source = source
        self.settings = settings

    def __call__(self, items: Sequence[Item]) -> list[FeaturizedClip | DroppedClip]:
        results: list[FeaturizedClip | DroppedClip | None] = [None] * len(items)
        ready: list[tuple[int, np.ndarray, str]] = []
        for i, item in enumerate(items):
            outcome = self._audio(item)
            if isinstance(outcome, DroppedClip):
                results[i] = outcome
            else:
                ready.append((i, *outcome))
        # Similar lengths together: a batch is padded to its longest clip.
        ready.sort(key=lambda r: len(r[1]))
        start = 0
        while start < len(ready):
            stop = start + 1  # grow the batch while (clips x frames of the longest) fits
            while (
                stop < len(ready)
                and (stop - start + 1) * n_audio_frames(len(ready[stop][1])) <= _FRAME_BUDGET
            ):
                stop += 1
            batch = ready[start:stop]
            mels = log_mel_batch([a for _, a, _ in batch], self.settings.mel_filters)
            for (i, audio, aug), mel in zip(batch, mels, strict=True):
                results[i] = FeaturizedClip(
                    features=mel.features.astype(np.float16).tobytes(),
                    n_frames=mel.features.shape[1],
                    pad_value=mel.pad_value,
                    duration=len(audio) / SAMPLE_RATE,
                    augmentation=aug,
                )
            start = stop
        return results  # type: ignore[return-value]

    def _audio(self, item: Item) -> tuple[np.ndarray, str] | DroppedClip:
        s = self.settings
        try:
            audio = self.source.load(item)
        except AudioError as err:
            return DroppedClip(_audio_reason(err.reason), str(err))
        except Exception as err:  # a bad input must not stop the batch: report it, go on
            return DroppedClip("decode error", f"{type(err).__name__}: {err}")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            return DroppedClip("empty", "decodes to no samples")
        if not np.isfinite(audio).all():
            return DroppedClip("corrupt", "audio holds NaN or infinite samples")
        peak = float(np.abs(audio).max())
        if peak < s.silence_peak:
            dbfs = 20 * math.log10(peak) if peak > 0 else -math.inf
            return DroppedClip(
                "silent", f"peak {dbfs:.1f} dBFS below {20 * math.log10(s.silence_peak):.0f} dBFS"
            )
        aug = ""
        if item.split in s.augment_splits and (s.noise_snr_db is not None or s.speed):
            audio, applied = _augment(audio, item.id, s)
            aug = json.dumps(applied, sort_keys=True) if applied else ""
        duration = len(audio) / SAMPLE_RATE
        if duration > s.max_duration_s:
            return DroppedClip("too long", f"{duration:.1f} s > {s.max_duration_s:g} s")
        return audio, aug


def _audio_reason(reason: str) -> str:
    lowered = reason.lower()
    for keywords, category in _AUDIO_REASONS:
        if any(k in lowered for k in keywords):
            return category
    return "decode error"


def _augment(
    audio: np.ndarray, item_id: str, s: WorkerSettings
) -> tuple[np.ndarray, dict[str, Any]]:
    """Speed perturbation, then white noise at an SNR; draws depend on (seed, id) only."""
    digest = hashlib.sha256(f"{s.seed}:{item_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    applied: dict[str, Any] = {}
    if s.speed:
        factor = float(s.speed[int(rng.integers(len(s.speed)))])
        if factor != 1.0:
            from scipy.signal import resample_poly

            # Kaldi-style speed perturbation: play the samples at rate * factor, i.e. resample
            # by 1/factor; pitch and tempo change together.
            ratio = Fraction(factor).limit_denominator(100)
            audio = resample_poly(audio, ratio.denominator, ratio.numerator).astype(np.float32)
            applied["speed"] = factor
    if s.noise_snr_db is not None:
        power = float(np.mean(audio.astype(np.float64) ** 2))
        sigma = math.sqrt(power / 10 ** (s.noise_snr_db / 10))
        noise = rng.standard_normal(len(audio)).astype(np.float32) * np.float32(sigma)
        audio = np.clip(audio + noise, -1.0, 1.0)
        applied["noise_snr_db"] = float(s.noise_snr_db)
    return audio.astype(np.float32, copy=False), applied


# --------------------------------------------------------------------------- main side


@dataclass
class ShardJob:
    """One shard to make: its inputs, and what the main process already decided."""

    split: str
    index: int
    items: list[Item]
    block: str  # digest of the inputs' ids: a finished shard with another is stale
    texts: dict[int, tuple[str, list[int]]] = field(default_factory=dict)  # pos -> (text, labels)
    early: dict[int, DroppedClip] = field(default_factory=dict)  # pos -> reject before decoding
    chunks: list[list[int]] = field(default_factory=list)  # positions sent to workers


def block_digest(items: Sequence[Item]) -> str:
    """Digest of the items' ids: a finished shard whose block differs is stale."""
    h = hashlib.sha256()
    for item in items:
        h.update(item.id.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:16]


def check_texts(job: ShardJob, tokenizer: Any, config: FeatureConfig) -> None:
    """Transcript checks and labels for a job's items (main process, before any decoding)."""
    from whisper_sv.core import text as textmod

    wanted: list[tuple[int, str]] = []
    for pos, item in enumerate(job.items):
        error = str(item.meta.get("error", "")) if item.meta else ""
        sentence = item.sentence if isinstance(item.sentence, str) else ""
        if error:
            reason = (
                "non-UTF-8 sentence" if "UTF-8" in error and "transcript" in error else "bad row"
            )
            job.early[pos] = DroppedClip(reason, error)
            continue
        if _not_utf8(sentence):
            job.early[pos] = DroppedClip("non-UTF-8 sentence", "transcript holds undecodable bytes")
            continue
        text = textmod.normalize(sentence) if config.normalize_text else sentence.strip()
        if config.sentence_case and not config.normalize_text:
            text = textmod.sentence_case(text)
        if not text:
            detail = "no transcript" if not sentence.strip() else "nothing left after normalisation"
            job.early[pos] = DroppedClip("empty sentence", detail)
            continue
        wanted.append((pos, text))
    labels = label_ids(tokenizer, [t for _, t in wanted], config)
    for (pos, text), ids in zip(wanted, labels, strict=True):
        if len(ids) > config.max_label_tokens:
            job.early[pos] = DroppedClip(
                "labels too long", f"{len(ids)} tokens > {config.max_label_tokens}"
            )
        else:
            job.texts[pos] = (text, ids)


def _not_utf8(sentence: str) -> bool:
    # Sources decode with errors="replace" (U+FFFD) or "surrogateescape" (lone surrogates).
    return "\ufffd" in sentence or any("\udc80" <= ch <= "\udcff" for ch in sentence)


def _row(item: Item, text: str, labels: list[int], done: FeaturizedClip, source_name: str) -> dict:
    meta = dict(item.meta or {})
    accent = str(meta.get("accent") or meta.get("accents") or "")
    extra = {
        k: v for k, v in meta.items() if k not in ("voice", "gender", "accent", "accents", "source")
    }
    return {
        "id": item.id,
        "sentence": item.sentence,
        "text": text,
        "labels": labels,
        "n_labels": len(labels),
        "features": done.features,
        "n_frames": done.n_frames,
        "pad_value": done.pad_value,
        "duration": done.duration,
        "speaker": item.speaker or "",
        "source": str(meta.get("source") or source_name),
        "augmentation": done.augmentation,
        "voice": str(meta.get("voice") or ""),
        "gender": str(meta.get("gender") or ""),
        "accent": accent,
        "meta": json.dumps(extra, ensure_ascii=False, sort_keys=True, default=str) if extra else "",
    }


def _audio_label(item: Item) -> str:
    if isinstance(item.audio, (bytes, bytearray)):
        return "<bytes>"
    return str(item.audio or "")


def write_job(
    root: Path,
    job: ShardJob,
    results: Mapping[int, FeaturizedClip | DroppedClip],
    config: FeatureConfig,
    source_name: str,
) -> None:
    """Write one shard: kept rows with their features, and the rejects in its info."""
    rows: list[dict] = []
    rejects: list[list[str]] = []
    seconds = 0.0
    speakers: dict[str, int] = {}
    for pos, item in enumerate(job.items):
        outcome = job.early.get(pos) or results[pos]
        if isinstance(outcome, DroppedClip):
            rejects.append([item.id, _audio_label(item), outcome.reason, outcome.detail])
            continue
        text, labels = job.texts[pos]
        rows.append(_row(item, text, labels, outcome, source_name))
        seconds += outcome.duration
        speakers[item.speaker or ""] = speakers.get(item.speaker or "", 0) + 1
    info = {
        "config_hash": config.hash(),
        "split": job.split,
        "index": job.index,
        "block": job.block,
        "n_in": len(job.items),
        "rejects": rejects,
        "seconds": round(seconds, 3),
        "speakers": speakers,
    }
    write_shard(shard_path(root, job.split, job.index), rows, info)


def splits_to_build(source: Source, options: BuildOptions) -> list[str]:
    """The splits ``options`` asks for (all of the source's when none), checked to exist."""
    splits = list(options.splits) or source.splits()
    known = source.splits()
    unknown = [s for s in splits if s not in known]
    if unknown:
        raise ValueError(f"source {source.name} has no split(s) {unknown}; it has {known}")
    return splits


def worker_settings(processor: Any, config: FeatureConfig, options: BuildOptions) -> WorkerSettings:
    """What workers need from the processor, config and options (small and picklable)."""
    return WorkerSettings(
        mel_filters=np.ascontiguousarray(processor.feature_extractor.mel_filters, dtype=np.float32),
        max_duration_s=config.max_duration_s,
        silence_peak=10 ** (options.silence_dbfs / 20),
        noise_snr_db=options.noise_snr_db,
        speed=tuple(options.speed) if options.augmenting else (),
        augment_splits=tuple(options.augment_splits),
        seed=options.seed,
    )
