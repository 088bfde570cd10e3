"""The feature pipeline on a local Ray cluster (2 CPUs): the same store as the local engine,
resume, and a Ray worker killed with ``kill -9`` mid-run."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_features import write_manifest, write_wav
from test_store import speechlike

from whisper_sv.data.features import BuildOptions, build_store
from whisper_sv.data.sources import open_source
from whisper_sv.data.store import FeatureStore, read_rejects

# Real processes (killed, or several ranks, or a Ray cluster): the slow suite (`make test-slow`).
pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray", reason="the Ray engine needs the 'ray' extra")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs in this process; the pipeline joins it."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=100 * 1024 * 1024,
    )
    yield
    ray.shutdown()


def _clips(folder: Path, n: int, missing: set[int]) -> Path:
    rows = []
    for i in range(n):
        name = f"c{i:03d}.wav"
        if i not in missing:
            write_wav(folder / name, speechlike(0.5 + (i % 4) * 0.25, i))
        rows.append((name, f"Mening nummer {i}."))
    return write_manifest(folder, rows)


def _ids(store: Path) -> list[str]:
    fs = FeatureStore(store)
    return [m["id"] for s in fs.splits() for m in fs.metadata(s, columns=("id",))]


def test_ray_engine_makes_the_local_store_and_resumes(cluster, tmp_path, processor):
    source = open_source(f"manifest:{_clips(tmp_path / 'clips', 24, missing={5, 17})}")
    opts = {"shard_size": 5, "chunk_size": 2, "progress": False}
    local = build_store(source, tmp_path / "local", BuildOptions(**opts), processor=processor)
    on_ray = build_store(
        source, tmp_path / "ray", BuildOptions(engine="ray", **opts), processor=processor
    )
    assert on_ray.shards_written == local.shards_written == 6  # train 4, test 2
    assert on_ray.splits == local.splits
    a, b = FeatureStore(tmp_path / "local"), FeatureStore(tmp_path / "ray")
    # The same shards of the same rows. Not byte for byte: features computed in another
    # process may differ in a float's last bit, so sha256 (and the store id) may differ too.
    assert _shard_layout(a.manifest["splits"]) == _shard_layout(b.manifest["splits"])
    for split in a.splits():
        for ra, rb in zip(a.rows(split), b.rows(split), strict=True):
            assert (ra["id"], ra["labels"], ra["duration"]) == (
                rb["id"],
                rb["labels"],
                rb["duration"],
            )
            # Equal within float16: the log-mel matmul may round one value differently (one
            # float16 step) with another number of BLAS threads in the process computing it.
            np.testing.assert_allclose(
                ra["input_features"], rb["input_features"], rtol=0, atol=2e-3
            )
    assert read_rejects(tmp_path / "local") == read_rejects(tmp_path / "ray")
    assert {r.reason for r in read_rejects(tmp_path / "ray")} == {"missing file"}

    again = build_store(
        source, tmp_path / "ray", BuildOptions(engine="ray", **opts), processor=processor
    )
    assert (again.shards_written, again.shards_skipped, again.processed) == (0, 6, 0)


def _ray_workers(task: str) -> list[int]:
    """Pids of this process's Ray workers now running ``task`` (their title is ray::task)."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(f"ray::{task}".encode()) and me in _ancestors(int(entry.name)):
            found.append(int(entry.name))
    return found


def _ancestors(pid: int) -> set[int]:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return seen


def test_kill_9_of_a_ray_worker_still_stores_each_input_once(cluster, tmp_path, processor):
    n, missing = 40, {3, 22}
    tsv = _clips(tmp_path / "clips", n, missing)
    out = tmp_path / "store"
    opts = BuildOptions(engine="ray", shard_size=4, chunk_size=1, progress=False)
    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = build_store(
                open_source(f"manifest:{tsv}"), out, opts, processor=processor
            )
        except BaseException as err:  # reported by the assert below
            result["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        pids = _ray_workers("_featurize")
        if pids and list(out.glob("*/shard-*.parquet")):
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.005)
    thread.join(timeout=300)
    assert "error" not in result, result.get("error")
    assert killed is not None, "no Ray worker was seen running a chunk before the run finished"
    summary = result["summary"]
    assert summary.shards_written == 8 + 3  # train 30 inputs, test 10 (every 4th), by 4

    stored = _ids(out)
    rejected = [r.id for r in read_rejects(out)]
    assert len(stored) == len(set(stored)) == n - len(missing)
    assert sorted(stored + rejected) == sorted(f"c{i:03d}.wav" for i in range(n))
    splits = FeatureStore(out).manifest["splits"]
    assert [(e["in"], e["complete"]) for e in splits.values()] == [(30, True), (10, True)]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def _shard_layout(splits: dict) -> dict:
    """A manifest's splits with each shard's name and rows only (not its bytes or time)."""
    return {
        name: {
            **entry,
            "shards": [{k: shard[k] for k in ("file", "rows")} for shard in entry["shards"]],
        }
        for name, entry in splits.items()
    }
