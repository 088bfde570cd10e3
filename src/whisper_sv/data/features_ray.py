"""The feature pipeline on a Ray cluster (``BuildOptions(engine="ray")``, ``--engine ray``).

Same store as the local engine (``whisper_sv.data.features``): the same shards of ``shard_size``
consecutive inputs, the same rows, ``manifest.json`` and ``rejects.tsv``; a re-run skips
finished shards, and ``--shard I/N`` still splits a store between separate runs.

How the work is cut:

* the driver walks each split's inputs lazily, one shard's block at a time (a large source is
  never listed whole), checks and tokenizes the transcripts (cheap, and the tokenizer need not
  exist on the workers) and submits one *shard task* per block, at most ``2 x cluster CPUs``
  blocks in flight;
* a shard task sends its inputs as *chunk tasks* of ``chunk_size`` inputs (decode, augment,
  log-mel: ``feature_work.ChunkWorker``, one CPU each), gathers their results and writes its shard
  atomically (``store.write_shard``: a temporary file renamed into place).

A shard file is named by (split, index) and holds the same bytes whoever writes it, so Ray's
retry of a task whose worker died (``max_retries``) cannot duplicate or drop an input: each input
ends in exactly one shard, or the run fails and a re-run makes the shards still missing.
With a cluster of several machines, ``--out`` must be a folder every node sees (NFS, a shared
disk): the shard tasks write there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_sv.data import feature_work as W
from whisper_sv.data.feature_config import FeatureConfig
from whisper_sv.data.store import StoreError, read_shard_info, shard_path, write_manifest

if TYPE_CHECKING:
    from whisper_sv.data.sources import Source

log = logging.getLogger(__name__)

__all__ = ["build_with_ray"]

# Times Ray re-runs a task whose worker process died (a crash, a kill, a lost node).
TASK_RETRIES = 4


def _featurize(source: Source, settings: W.WorkerSettings, items: list) -> list:
    """Chunk task: decode, check and featurize ``items`` (runs in a Ray worker)."""
    return W.ChunkWorker(source, settings)(items)


def _make_shard(
    source: Source,
    settings: W.WorkerSettings,
    root: str,
    job: W.ShardJob,
    config: FeatureConfig,
    chunk_size: int,
) -> tuple[str, int, int]:
    """Shard task: featurize the job's decodable inputs in chunk tasks, write the shard."""
    import ray

    featurize = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(_featurize)
    todo = [pos for pos in range(len(job.items)) if pos not in job.early]
    chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
    refs = [featurize.remote(source, settings, [job.items[p] for p in c]) for c in chunks]
    results: dict[int, Any] = {}
    for chunk, outcomes in zip(chunks, ray.get(refs), strict=True):
        results.update(zip(chunk, outcomes, strict=True))
    W.write_job(Path(root), job, results, config, source.name)
    return job.split, job.index, len(job.items)


def _jobs(
    source: Source, root: Path, options: W.BuildOptions, config: FeatureConfig, listed: dict
) -> Iterator[W.ShardJob | None]:
    """Each shard of this run (``--shard I/N``) in order, streamed from the source: a job to
    make, or None for a shard already finished. ``listed`` fills with the inputs per split."""
    index, count = options.shard
    for split in W.splits_to_build(source, options):
        it = islice(iter(source.items(split)), options.limit)
        listed[split] = 0
        k = 0
        while block := list(islice(it, options.shard_size)):
            listed[split] += len(block)
            if k % count == index:
                job = W.ShardJob(split, k, block, W.block_digest(block))
                yield None if _finished(shard_path(root, split, k), job, config) else job
            k += 1


def _finished(path: Path, job: W.ShardJob, config: FeatureConfig) -> bool:
    if not path.is_file():
        return False
    info = read_shard_info(path)
    if info.get("config_hash") != config.hash():
        raise StoreError(f"{path} was made for another feature config")
    if info.get("block") != job.block:
        log.warning("%s holds other inputs than the source lists now: redoing it", path)
        return False
    return True


def _connect(options: W.BuildOptions) -> bool:
    """Join ``ray_address``, or the Ray already running in this process, or start a local one
    (``workers`` CPUs when > 1). True when this call started Ray (and must stop it)."""
    try:
        import ray
    except ImportError as err:
        raise RuntimeError(
            "--engine ray needs Ray: pip install 'whisper-sv[ray]' (or 'ray[data]')"
        ) from err
    if ray.is_initialized():
        return False
    if options.ray_address:
        ray.init(address=options.ray_address, log_to_driver=False)
        return False
    ray.init(
        num_cpus=options.workers if options.workers > 1 else None,
        include_dashboard=False,
        log_to_driver=False,
    )
    return True


def build_with_ray(
    source: Source,
    root: Path,
    options: W.BuildOptions,
    config: FeatureConfig,
    processor: Any,
    base: Mapping[str, Any],
    started: float,
) -> W.StoreSummary:
    """``features.build_store`` after the store is claimed: make this run's shards on Ray."""
    import ray
    from tqdm.auto import tqdm

    started_ray = _connect(options)
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        shard = ray.remote(num_cpus=0, max_retries=TASK_RETRIES)(_make_shard)
        source_ref = ray.put(source)
        settings_ref = ray.put(W.worker_settings(processor, config, options))
        listed: dict[str, int] = {}
        pending: list = []
        written = skipped = processed = 0
        bar = tqdm(unit="clip", desc="features (ray)", disable=not options.progress)
        log.info("Ray cluster with %d CPU(s): making shards in %s", cpus, root)
        try:
            for job in _jobs(source, root, options, config, listed):
                if job is None:
                    skipped += 1
                    continue
                W.check_texts(job, processor.tokenizer, config)
                pending.append(
                    shard.remote(
                        source_ref, settings_ref, str(root), job, config, options.chunk_size
                    )
                )
                while len(pending) >= 2 * cpus:
                    processed, written = _collect(pending, bar, processed, written, 1)
            processed, written = _collect(pending, bar, processed, written, len(pending))
        finally:
            bar.close()
    finally:
        if started_ray:
            ray.shutdown()
    manifest = write_manifest(root, base, listed)
    return W.StoreSummary(
        path=root,
        config=config,
        splits=W.split_summaries(manifest),
        shards_written=written,
        shards_skipped=skipped,
        processed=processed,
        seconds=time.perf_counter() - started,
        options=options,
    )


def _collect(pending: list, bar: Any, processed: int, written: int, n: int) -> tuple[int, int]:
    """Wait for ``n`` of the ``pending`` shard tasks (removing them); count their inputs."""
    import ray

    if not pending:
        return processed, written
    done, rest = ray.wait(pending, num_returns=n)
    pending[:] = rest
    for split, index, n_in in ray.get(done):
        log.debug("shard %d of %s written", index, split)
        bar.update(n_in)
        processed += n_in
        written += 1
    return processed, written
