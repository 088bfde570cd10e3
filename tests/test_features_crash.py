"""Crash safety: ``kill -9`` a running ``whisper-sv features``, re-run, every input once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import soundfile as sf
from conftest import speechlike

from whisper_sv.core.audio import SAMPLE_RATE
from whisper_sv.data.store import FeatureStore, read_rejects

# Real processes (killed, or several ranks, or a Ray cluster): the slow suite (`make test-slow`).
pytestmark = pytest.mark.slow

N_CLIPS = 120  # 30 shards of 4: seconds of work after the first, so the kill lands mid-run
SHARD_SIZE = 4
MISSING = {7, 60, 101}  # rows whose file does not exist: their rejects must not double


def _make_source(folder: Path) -> tuple[Path, list[str]]:
    lines = ["path\tsentence\tsplit"]
    ids = []
    for i in range(N_CLIPS):
        name = f"wav/c{i:04d}.wav"
        if i not in MISSING:
            (folder / "wav").mkdir(parents=True, exist_ok=True)
            audio = speechlike(0.5 + (i % 4) * 0.25, i)
            sf.write(folder / name, audio, SAMPLE_RATE, subtype="PCM_16")
        lines.append(f"{name}\tMening nummer {i}.\ttrain")
        ids.append(name)
    tsv = folder / "manifest.tsv"
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tsv, ids


def test_kill_9_then_rerun_stores_each_input_exactly_once(tmp_path, tiny_model_dir):
    tsv, ids = _make_source(tmp_path / "data")
    out = tmp_path / "store"
    cmd = [
        sys.executable,
        "-m",
        "whisper_sv",
        "features",
        "--source",
        f"manifest:{tsv}",
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--shard-size",
        str(SHARD_SIZE),
        "--no-progress",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shards = out / "train"
    deadline = time.monotonic() + 180
    while not list(shards.glob("shard-*.parquet")):
        assert run.poll() is None, f"features exited early: {run.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "no shard appeared within 180 s"
        time.sleep(0.01)
    os.kill(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    run.stderr.close()
    assert run.returncode == -signal.SIGKILL
    at_kill = sorted(shards.glob("shard-*.parquet"))
    assert 0 < len(at_kill) < N_CLIPS // SHARD_SIZE, "the run finished before the kill"
    for path in at_kill:  # every shard on disk is whole
        assert pq.read_metadata(path).num_rows > 0

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"skipped (done before) {len(at_kill)}" in again.stdout

    store = FeatureStore(out)
    stored = [m["id"] for m in store.metadata("train", columns=("id",))]
    rejected = [r.id for r in read_rejects(out)]
    assert len(stored) == len(set(stored)) == N_CLIPS - len(MISSING)
    assert sorted(rejected) == sorted(ids[i] for i in MISSING)
    assert sorted(stored + rejected) == sorted(ids)
    entry = store.manifest["splits"]["train"]
    assert (entry["in"], entry["kept"], entry["rejected"]) == (N_CLIPS, N_CLIPS - 3, 3)
    assert entry["complete"] is True
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no temporary files left
