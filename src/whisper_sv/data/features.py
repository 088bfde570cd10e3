"""The feature pipeline: a source's (audio, transcript) pairs -> a feature store.

For every input: decode to 16 kHz mono (``Source.load``), reject what cannot train (see
:data:`REASONS`), optionally augment (noise at an SNR, speed perturbation), compute Whisper's
log-mel for the model's mel bins (``whisper_sv.data.logmel``: only the frames that carry audio, in
batches) and tokenize the transcript with the ``<|startoftranscript|><|sv|><|transcribe|>
<|notimestamps|> ... <|endoftext|>`` prefix; then write shards (``whisper_sv.data.store``).

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
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from whisper_sv.data.feature_config import FeatureConfig, tokenizer_identity
from whisper_sv.data.feature_work import (
    REASONS,
    BuildOptions,
    ChunkWorker,
    DroppedClip,
    FeaturizedClip,
    ShardJob,
    SplitSummary,
    StoreSummary,
    WorkerSettings,
    block_digest,
    check_texts,
    label_ids,
    split_summaries,
    splits_to_build,
    summary_table,
    worker_settings,
    write_job,
)
from whisper_sv.data.store import (
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
)

if TYPE_CHECKING:
    from whisper_sv.data.sources import Item, Source

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


def _plan(
    source: Source, root: Path, options: BuildOptions, config: FeatureConfig
) -> tuple[list[ShardJob], int, dict[str, int]]:
    """Shards this run must make, how many are already done, and inputs listed per split."""
    from itertools import islice

    splits = splits_to_build(source, options)
    index, count = options.shard
    jobs: list[ShardJob] = []
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
                job = ShardJob(split, k, block, block_digest(block))
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
        from whisper_sv.models.references import load_processor

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
        from whisper_sv.data.features_ray import build_with_ray

        return build_with_ray(source, root, options, config, processor, base, started)
    jobs, skipped, listed = _plan(source, root, options, config)

    tokenizer = processor.tokenizer
    for job in jobs:
        check_texts(job, tokenizer, config)
        todo = [pos for pos in range(len(job.items)) if pos not in job.early]
        job.chunks = [
            todo[i : i + options.chunk_size] for i in range(0, len(todo), options.chunk_size)
        ]
    settings = worker_settings(processor, config, options)
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
        splits=split_summaries(manifest),
        shards_written=len(jobs),
        shards_skipped=skipped,
        processed=processed,
        seconds=time.perf_counter() - started,
        options=options,
    )


def _execute(
    source: Source,
    root: Path,
    jobs: list[ShardJob],
    tasks: list[list[Item]],
    settings: WorkerSettings,
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
            worker = ChunkWorker(source, settings)
            outputs = map(worker, tasks)
        done = 0
        for job in jobs:
            results: dict[int, FeaturizedClip | DroppedClip] = {}
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
            write_job(root, job, results, config, source.name)
            done += len(job.items)
        return done
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def _spawn_pool(workers: int, source: Source, settings: WorkerSettings) -> Any:
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


# --------------------------------------------------------------------------- worker processes


_WORKER: ChunkWorker | None = None


def _init_worker(source: Source, settings: WorkerSettings) -> None:
    global _WORKER
    import sys

    if "torch" in sys.modules:  # a source that uses torch: one thread per worker process
        sys.modules["torch"].set_num_threads(1)
    _WORKER = ChunkWorker(source, settings)


def _run_chunk(items: Sequence[Item]) -> list[FeaturizedClip | DroppedClip]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER(items)


# --------------------------------------------------------------------------- report


def report(path: str | os.PathLike, *, plot: bool = True) -> tuple[str, Path | None]:
    """Per-split summary table of the store at ``path``, and ``path/report.png`` with the
    duration and label-length histograms and rows per speaker (when ``plot``)."""
    store = FeatureStore(path)
    table = summary_table(split_summaries(store.manifest))
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
