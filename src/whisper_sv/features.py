"""The feature pipeline: a source's (audio, transcript) pairs -> a feature store.

For every input: decode to 16 kHz mono (``Source.load``), reject what cannot train (see
:data:`REASONS`), optionally augment (noise at an SNR, speed perturbation), compute Whisper's
log-mel for the model's mel bins (``whisper_sv.logmel``: only the frames that carry audio, in
batches) and tokenize the transcript with the ``<|startoftranscript|><|sv|><|transcribe|>
<|notimestamps|> ... <|endoftext|>`` prefix; then write shards (``whisper_sv.store``).

Work is cut into shards of ``shard_size`` consecutive inputs of each split (shard ``k`` holds
inputs ``k*size .. (k+1)*size-1``), so a shard's content does not depend on how many workers or
machines made it: ``--shard I/N`` lets machine ``I`` of ``N`` write shards ``k % N == I`` of one
store, a re-run skips finished shards, and a killed run loses at most the shards in flight.

Transcripts are checked and tokenized in the main process (cheap, and it rejects an input before
its audio is decoded); decoding, augmentation and log-mel run in ``workers`` spawned processes,
which import neither torch nor transformers (docs/facts.md: a fork after torch ran its thread pool
can hang; spawned workers also start faster without them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from whisper_sv.audio import SAMPLE_RATE, AudioError
from whisper_sv.feature_config import FeatureConfig, tokenizer_identity
from whisper_sv.logmel import log_mel_batch, n_audio_frames
from whisper_sv.store import (
    MANIFEST,
    FeatureStore,
    Reject,
    ShardSampler,
    StoreError,
    collate,
    read_manifest,
    read_shard_info,
    remove_stale_tmp,
    shard_files,
    shard_path,
    write_manifest,
    write_shard,
)

if TYPE_CHECKING:
    from whisper_sv.sources import Item, Source

log = logging.getLogger(__name__)

__all__ = [
    "REASONS",
    "BuildOptions",
    "FeatureConfig",
    "FeatureStore",
    "Reject",
    "ShardSampler",
    "SplitSummary",
    "StoreError",
    "StoreSummary",
    "build_store",
    "collate",
    "label_ids",
    "report",
    "tokenizer_identity",
]

# Why an input is left out (the ``reason`` column of rejects.tsv; ``detail`` has specifics).
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
    """Token ids ``<|startoftranscript|><|lang|><|task|><|notimestamps|> text <|endoftext|>``."""
    tokenizer.set_prefix_tokens(
        language=config.language, task=config.task, predict_timestamps=False
    )
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts)).input_ids]


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class BuildOptions:
    """How to run the feature pipeline (what the store holds is FeatureConfig)."""

    model: str = "bundled:base"  # model whose processor defines mel bins and tokenizer
    splits: tuple[str, ...] = ()  # splits to process; () = every split of the source
    limit: int | None = None  # first N inputs of each split (None = all)
    workers: int = 1  # processes decoding audio and computing log-mel (1 = in this process)
    shard: tuple[int, int] = (0, 1)  # (I, N): write only shards k with k % N == I
    shard_size: int = 256  # inputs per shard (rejected ones included)
    # Feature-config choices (see FeatureConfig).
    language: str = "sv"  # language token of the labels
    task: str = "transcribe"  # task token of the labels
    normalize_text: bool = False  # tokenize text.normalize(sentence) instead of the sentence
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
    ray_address: str | None = None  # Ray cluster to join ("auto", "ray://h:10001"); None: start one

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


def _split_summaries(manifest: Mapping[str, Any]) -> tuple[SplitSummary, ...]:
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
class _Settings:
    """What workers need besides the source; small and picklable."""

    mel_filters: np.ndarray  # (201, n_mels) float32, the processor's filter bank
    max_duration_s: float
    silence_peak: float  # linear peak below which a clip is "silent"
    noise_snr_db: float | None
    speed: tuple[float, ...]
    augment_splits: tuple[str, ...]
    seed: int


@dataclass(frozen=True)
class _Done:
    features: bytes  # float16 (n_mels, n_frames)
    n_frames: int
    pad_value: float
    duration: float
    augmentation: str  # JSON, "" when none


@dataclass(frozen=True)
class _Dropped:
    reason: str
    detail: str


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


class _ChunkWorker:
    """Decode, check, augment and featurize a list of items (in a worker or in-process)."""

    def __init__(self, source: Source, settings: _Settings) -> None:
        self.source = source
        self.settings = settings

    def __call__(self, items: Sequence[Item]) -> list[_Done | _Dropped]:
        results: list[_Done | _Dropped | None] = [None] * len(items)
        ready: list[tuple[int, np.ndarray, str]] = []
        for i, item in enumerate(items):
            outcome = self._audio(item)
            if isinstance(outcome, _Dropped):
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
                results[i] = _Done(
                    features=mel.features.astype(np.float16).tobytes(),
                    n_frames=mel.features.shape[1],
                    pad_value=mel.pad_value,
                    duration=len(audio) / SAMPLE_RATE,
                    augmentation=aug,
                )
            start = stop
        return results  # type: ignore[return-value]

    def _audio(self, item: Item) -> tuple[np.ndarray, str] | _Dropped:
        s = self.settings
        try:
            audio = self.source.load(item)
        except AudioError as err:
            return _Dropped(_audio_reason(err.reason), str(err))
        except Exception as err:  # a bad input must not stop the batch: report it, go on
            return _Dropped("decode error", f"{type(err).__name__}: {err}")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            return _Dropped("empty", "decodes to no samples")
        if not np.isfinite(audio).all():
            return _Dropped("corrupt", "audio holds NaN or infinite samples")
        peak = float(np.abs(audio).max())
        if peak < s.silence_peak:
            dbfs = 20 * math.log10(peak) if peak > 0 else -math.inf
            return _Dropped(
                "silent", f"peak {dbfs:.1f} dBFS below {20 * math.log10(s.silence_peak):.0f} dBFS"
            )
        aug = ""
        if item.split in s.augment_splits and (s.noise_snr_db is not None or s.speed):
            audio, applied = _augment(audio, item.id, s)
            aug = json.dumps(applied, sort_keys=True) if applied else ""
        duration = len(audio) / SAMPLE_RATE
        if duration > s.max_duration_s:
            return _Dropped("too long", f"{duration:.1f} s > {s.max_duration_s:g} s")
        return audio, aug


def _audio_reason(reason: str) -> str:
    lowered = reason.lower()
    for keywords, category in _AUDIO_REASONS:
        if any(k in lowered for k in keywords):
            return category
    return "decode error"


def _augment(audio: np.ndarray, item_id: str, s: _Settings) -> tuple[np.ndarray, dict[str, Any]]:
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


_WORKER: _ChunkWorker | None = None


def _init_worker(source: Source, settings: _Settings) -> None:
    global _WORKER
    import sys

    if "torch" in sys.modules:  # a source that uses torch: one thread per worker process
        sys.modules["torch"].set_num_threads(1)
    _WORKER = _ChunkWorker(source, settings)


def _run_chunk(items: Sequence[Item]) -> list[_Done | _Dropped]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER(items)


# --------------------------------------------------------------------------- main side


@dataclass
class _Job:
    """One shard to make: its inputs, and what the main process already decided."""

    split: str
    index: int
    items: list[Item]
    block: str  # digest of the inputs' ids: a finished shard with another is stale
    texts: dict[int, tuple[str, list[int]]] = field(default_factory=dict)  # pos -> (text, labels)
    early: dict[int, _Dropped] = field(default_factory=dict)  # pos -> reject before decoding
    chunks: list[list[int]] = field(default_factory=list)  # positions sent to workers


def _block_digest(items: Sequence[Item]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(item.id.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:16]


def _check_texts(job: _Job, tokenizer: Any, config: FeatureConfig) -> None:
    """Transcript checks and labels for a job's items (main process, before any decoding)."""
    from whisper_sv import text as textmod

    wanted: list[tuple[int, str]] = []
    for pos, item in enumerate(job.items):
        error = str(item.meta.get("error", "")) if item.meta else ""
        sentence = item.sentence if isinstance(item.sentence, str) else ""
        if error:
            reason = (
                "non-UTF-8 sentence" if "UTF-8" in error and "transcript" in error else "bad row"
            )
            job.early[pos] = _Dropped(reason, error)
            continue
        if _not_utf8(sentence):
            job.early[pos] = _Dropped("non-UTF-8 sentence", "transcript holds undecodable bytes")
            continue
        text = textmod.normalize(sentence) if config.normalize_text else sentence.strip()
        if not text:
            detail = "no transcript" if not sentence.strip() else "nothing left after normalisation"
            job.early[pos] = _Dropped("empty sentence", detail)
            continue
        wanted.append((pos, text))
    labels = label_ids(tokenizer, [t for _, t in wanted], config)
    for (pos, text), ids in zip(wanted, labels, strict=True):
        if len(ids) > config.max_label_tokens:
            job.early[pos] = _Dropped(
                "labels too long", f"{len(ids)} tokens > {config.max_label_tokens}"
            )
        else:
            job.texts[pos] = (text, ids)


def _not_utf8(sentence: str) -> bool:
    # Sources decode with errors="replace" (U+FFFD) or "surrogateescape" (lone surrogates).
    return "\ufffd" in sentence or any("\udc80" <= ch <= "\udcff" for ch in sentence)


def _row(item: Item, text: str, labels: list[int], done: _Done, source_name: str) -> dict:
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


def _write_job(
    root: Path,
    job: _Job,
    results: Mapping[int, _Done | _Dropped],
    config: FeatureConfig,
    source_name: str,
) -> None:
    rows: list[dict] = []
    rejects: list[list[str]] = []
    seconds = 0.0
    speakers: dict[str, int] = {}
    for pos, item in enumerate(job.items):
        outcome = job.early.get(pos) or results[pos]
        if isinstance(outcome, _Dropped):
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


def _check_out(root: Path) -> None:
    """Refuse to write into a folder that holds something other than a feature store."""
    if not root.exists() or (root / MANIFEST).is_file() or shard_files(root):
        return
    if not root.is_dir():
        raise StoreError(f"{root} is a file, not a feature store folder: choose another --out")
    if any(not p.name.startswith(".") and p.name != "rejects.tsv" for p in root.iterdir()):
        raise StoreError(
            f"{root} exists, is not empty and is not a feature store (no {MANIFEST}): "
            "choose another --out"
        )


def _claim(root: Path, base: Mapping[str, Any], config: FeatureConfig) -> None:
    """Refuse a store made differently; create the manifest of a new one."""
    manifest = read_manifest(root)
    if manifest is None:
        present = shard_files(root)
        if (
            not present
            and root.is_dir()
            and any(
                p for p in root.iterdir() if not p.name.startswith(".") and p.name != "rejects.tsv"
            )
        ):
            raise StoreError(
                f"{root} exists, is not empty and is not a feature store (no {MANIFEST}): "
                "choose another --out"
            )
        for files in present.values():
            info = read_shard_info(files[0])
            if info.get("config_hash") != config.hash():
                raise StoreError(
                    f"{root} holds shards for feature config {info.get('config_hash')}, this "
                    f"run makes {config.describe()}: write to another --out"
                )
    else:
        old = FeatureConfig.from_dict(manifest["config"])
        if old.hash() != config.hash():
            raise StoreError(
                f"{root} was made for another feature config: store {old.describe()} vs this "
                f"run {config.describe()} (differs in {', '.join(old.differences(config))}); "
                "write to another --out"
            )
        for key in ("pipeline", "source_name"):
            if key in manifest and manifest[key] != base[key]:
                raise StoreError(
                    f"{root} was made with {key} {manifest[key]}, this run uses {base[key]}: "
                    "re-run with the same options or write to another --out"
                )
    root.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        write_manifest(root, base)


def _splits(source: Source, options: BuildOptions) -> list[str]:
    splits = list(options.splits) or source.splits()
    known = source.splits()
    unknown = [s for s in splits if s not in known]
    if unknown:
        raise ValueError(f"source {source.name} has no split(s) {unknown}; it has {known}")
    return splits


def _plan(
    source: Source, root: Path, options: BuildOptions, config: FeatureConfig
) -> tuple[list[_Job], int, dict[str, int]]:
    """Shards this run must make, how many are already done, and inputs listed per split."""
    from itertools import islice

    splits = _splits(source, options)
    index, count = options.shard
    jobs: list[_Job] = []
    skipped = 0
    listed: dict[str, int] = {}
    for split in splits:
        items = list(source.items(split))
        if options.limit is not None:
            items = items[: options.limit]
        listed[split] = len(items)
        it = iter(items)
        k = 0
        while block := list(islice(it, options.shard_size)):
            if k % count == index:
                job = _Job(split, k, block, _block_digest(block))
                path = shard_path(root, split, k)
                if path.is_file():
                    info = read_shard_info(path)
                    if info.get("config_hash") != config.hash():
                        raise StoreError(f"{path} was made for another feature config")
                    if info.get("block") == job.block:
                        skipped += 1
                        k += 1
                        continue
                    log.warning("%s holds other inputs than the source lists now: redoing it", path)
                jobs.append(job)
            k += 1
    return jobs, skipped, listed


@contextlib.contextmanager
def _single_threaded_env() -> Iterator[None]:
    """BLAS/OpenMP thread pools of 1 in spawned workers (they inherit the environment):
    N workers on N cores, not N x N threads."""
    keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict.fromkeys(keys, "1"))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_store(
    source: Source,
    out: str | os.PathLike,
    options: BuildOptions | None = None,
    *,
    processor: Any = None,
) -> StoreSummary:
    """Run the feature pipeline from ``source`` into the store at ``out``; see the module doc.

    ``processor`` (a WhisperProcessor) defaults to ``models.load_processor(options.model)``.
    Raises StoreError when ``out`` holds a store made with another config or options.
    """
    from whisper_sv import __version__

    options = options or BuildOptions()
    started = time.perf_counter()
    root = Path(out)
    _check_out(root)
    if processor is None:
        from whisper_sv.models import load_processor

        processor = load_processor(options.model)
    config = options.feature_config(processor)
    base = {
        "config": config.to_dict(),
        "config_hash": config.hash(),
        "model": options.model,
        "tokenizer": config.tokenizer,
        "source_name": source.name,
        "source": source.describe(),
        "pipeline": options.pipeline(),
        "shard_size": options.shard_size,
        "whisper_sv_version": __version__,
    }
    _claim(root, base, config)
    removed = remove_stale_tmp(root)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)
    if options.engine == "ray":
        from whisper_sv.features_ray import build_with_ray

        return build_with_ray(source, root, options, config, processor, base, started)
    jobs, skipped, listed = _plan(source, root, options, config)

    tokenizer = processor.tokenizer
    for job in jobs:
        _check_texts(job, tokenizer, config)
        todo = [pos for pos in range(len(job.items)) if pos not in job.early]
        job.chunks = [
            todo[i : i + options.chunk_size] for i in range(0, len(todo), options.chunk_size)
        ]
    settings = _settings(processor, config, options)
    tasks = [[job.items[p] for p in chunk] for job in jobs for chunk in job.chunks]
    total = sum(len(job.items) for job in jobs)
    log.info(
        "%d shard(s) to make (%d inputs), %d already done, %d worker(s)",
        len(jobs), total, skipped, options.workers,
    )  # fmt: skip
    processed = _execute(source, root, jobs, tasks, settings, config, options, total)
    manifest = write_manifest(root, base, listed)
    return StoreSummary(
        path=root,
        config=config,
        splits=_split_summaries(manifest),
        shards_written=len(jobs),
        shards_skipped=skipped,
        processed=processed,
        seconds=time.perf_counter() - started,
        options=options,
    )


def _settings(processor: Any, config: FeatureConfig, options: BuildOptions) -> _Settings:
    return _Settings(
        mel_filters=np.ascontiguousarray(processor.feature_extractor.mel_filters, dtype=np.float32),
        max_duration_s=config.max_duration_s,
        silence_peak=10 ** (options.silence_dbfs / 20),
        noise_snr_db=options.noise_snr_db,
        speed=tuple(options.speed) if options.augmenting else (),
        augment_splits=tuple(options.augment_splits),
        seed=options.seed,
    )


def _execute(
    source: Source,
    root: Path,
    jobs: list[_Job],
    tasks: list[list[Item]],
    settings: _Settings,
    config: FeatureConfig,
    options: BuildOptions,
    total: int,
) -> int:
    """Run the chunk tasks (in order), writing each shard as soon as its chunks are back."""
    from concurrent.futures import BrokenExecutor

    from tqdm.auto import tqdm

    if not jobs:
        return 0
    bar = tqdm(
        total=total, unit="clip", desc="features", disable=not options.progress, smoothing=0.1
    )
    executor = None
    try:
        if options.workers > 1 and len(tasks) > 1:
            executor = _spawn_pool(min(options.workers, len(tasks)), source, settings)
            outputs = _in_order(executor, tasks, ahead=4 * options.workers)
        else:
            worker = _ChunkWorker(source, settings)
            outputs = map(worker, tasks)
        done = 0
        for job in jobs:
            results: dict[int, _Done | _Dropped] = {}
            bar.update(len(job.early))
            for chunk in job.chunks:
                try:
                    outcomes = next(outputs)
                except BrokenExecutor as err:
                    raise RuntimeError(
                        f"a worker process died in shard {job.index} of {job.split} (a crash in "
                        "a decoder?); finished shards are kept: re-run to go on, or run with "
                        "--workers 1 to see the failing input"
                    ) from err
                for pos, outcome in zip(chunk, outcomes, strict=True):
                    results[pos] = outcome
                bar.update(len(chunk))
            _write_job(root, job, results, config, source.name)
            done += len(job.items)
        return done
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def _spawn_pool(workers: int, source: Source, settings: _Settings) -> Any:
    """Spawned processes (not forked: docs/facts.md, a fork after torch ran can hang), each holding
    the source and settings. concurrent.futures rather than multiprocessing.Pool: a worker that
    dies (a codec crash) raises BrokenProcessPool instead of hanging the run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    executor = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(source, settings),
    )
    with _single_threaded_env():
        # Workers start on the first submissions; make them all now, under this environment.
        for f in [executor.submit(_noop) for _ in range(workers)]:
            f.result()
    return executor


def _noop() -> None:
    return None


def _in_order(executor: Any, tasks: Sequence[list[Item]], ahead: int) -> Iterator[Any]:
    """Results of ``tasks`` in order, with at most ``ahead`` tasks queued (bounded memory)."""
    from collections import deque

    pending: deque = deque()
    it = iter(tasks)
    for task in it:
        pending.append(executor.submit(_run_chunk, task))
        if len(pending) >= ahead:
            break
    while pending:
        result = pending.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(executor.submit(_run_chunk, nxt))
        yield result


# --------------------------------------------------------------------------- report


def report(path: str | os.PathLike, *, plot: bool = True) -> tuple[str, Path | None]:
    """Per-split summary table of the store at ``path``, and ``path/report.png`` with the
    duration and label-length histograms and rows per speaker (when ``plot``)."""
    store = FeatureStore(path)
    table = summary_table(_split_summaries(store.manifest))
    if not plot:
        return table, None
    meta = {
        s: store.metadata(s, columns=("speaker", "duration", "n_labels")) for s in store.splits()
    }
    return table, _plot(Path(path) / "report.png", meta)


def _plot(out: Path, meta: Mapping[str, list[dict]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, key in ((axes[0], "duration"), (axes[1], "n_labels")):
        values = {split: [r[key] for r in rows] for split, rows in meta.items() if rows}
        if not values:
            continue
        # Shared bins, so the splits' bars line up.
        edges = np.histogram_bin_edges(
            np.concatenate([np.asarray(v, float) for v in values.values()]), bins=30
        )
        for split, v in values.items():
            ax.hist(v, bins=edges, alpha=0.6, label=f"{split} ({len(v)})")
    axes[0].set(title="clip duration", xlabel="seconds", ylabel="clips")
    axes[1].set(
        title="label length",
        xlabel="tokens (with the 4-token prefix and <|endoftext|>)",
        ylabel="clips",
    )
    for ax in axes[:2]:
        if meta:
            ax.legend()
    counts: dict[str, dict[str, int]] = {}
    for split, rows in meta.items():
        for r in rows:
            counts.setdefault(r["speaker"] or "(unknown)", {}).setdefault(split, 0)
            counts[r["speaker"] or "(unknown)"][split] += 1
    top = sorted(counts, key=lambda s: -sum(counts[s].values()))[:40]
    bottom = np.zeros(len(top))
    for split in meta:
        values = np.array([counts[s].get(split, 0) for s in top], dtype=float)
        axes[2].bar(range(len(top)), values, bottom=bottom, label=split)
        bottom += values
    axes[2].set_xticks(range(len(top)), top, rotation=90, fontsize=6)
    title = "clips per speaker" + (f" (top 40 of {len(counts)})" if len(counts) > 40 else "")
    axes[2].set(title=title, ylabel="clips")
    if top:
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
