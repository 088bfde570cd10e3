"""Crash safety: ``kill -9`` a real ``python -m whisper_sv train`` mid-run, then resume it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_store

# Real processes (killed, or several ranks): the slow suite (`make test-slow`).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

CKPT_FILES = {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"}
SETTINGS = {
    "lr": "1e-3",
    "warmup_steps": "1",
    "batch_size": "4",
    "max_steps": "12",
    "eval_steps": "3",
    "save_steps": "3",
    "eval_limit": "1",
    "eval_max_new_tokens": "4",
    "freeze_encoder": "true",
    "keep_checkpoints": "0",
    "export_ct2": "false",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory, processor) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "store", processor)


def _command(store: Path, run: Path, model: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "whisper_sv", "train", "--features", str(store)]
    cmd += ["--out", str(run), "--model", str(model), "--no-progress", *extra]
    for key, value in SETTINGS.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def _env() -> dict[str, str]:
    # One thread per process, as in the in-process runs (see the one_torch_thread fixture).
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def _visible_checkpoints(run: Path) -> list[Path]:
    folder = run / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith("step-"))


def test_kill_9_then_resume_continues_the_same_run(tmp_path, store, tiny_model_dir):
    from whisper_sv.core.run_folder import RunFolder
    from whisper_sv.core.run_metrics import read_metrics_csv
    from whisper_sv.train.run import TrainConfig, train

    run = tmp_path / "run"
    log = open(tmp_path / "first.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        _command(store, run, tiny_model_dir), stdout=log, stderr=log, env=_env()
    )
    deadline = time.monotonic() + 300
    seen: list[Path] = []
    try:
        while not seen:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            # Whenever a checkpoint folder is visible it is complete (written, then renamed).
            for ckpt in _visible_checkpoints(run):
                assert {p.name for p in ckpt.iterdir()} >= CKPT_FILES, ckpt
            seen = _visible_checkpoints(run)
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert proc.returncode == -signal.SIGKILL

    folder = RunFolder(run)
    done = folder.checkpoints()
    assert done, "the checkpoint seen before the kill is still there"
    for ckpt in _visible_checkpoints(run):
        assert {p.name for p in ckpt.iterdir()} >= CKPT_FILES, ckpt
    killed_at = done[-1].step
    assert killed_at < 12, "the run finished before the kill: nothing was tested"
    before = {r.step: r for r in read_metrics_csv(run / "metrics.csv") if r.step <= killed_at}

    resumed = subprocess.run(
        _command(store, run, tiny_model_dir, "--resume"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "12/12 steps" in resumed.stdout
    rows = read_metrics_csv(run / "metrics.csv")
    steps = [r.step for r in rows]
    assert steps == list(range(3, 13, 3))  # no gap, no duplicate
    for step, row in before.items():  # rows of the part before the crash are kept as they were
        got = next(r for r in rows if r.step == step)
        assert got.train_loss == pytest.approx(row.train_loss, abs=1e-4)
        assert got.val_loss == pytest.approx(row.val_loss, abs=1e-4)
    assert folder.latest_checkpoint().step == 12
    assert (run / "best" / "model.safetensors").is_file()
    assert not list(run.glob(".*tmp-*")) and not list((run / "checkpoints").glob(".*tmp-*"))

    # The loss curve continues where it was: the same numbers as one uninterrupted run.
    cfg = TrainConfig(
        **{k: _typed(v) for k, v in SETTINGS.items()},
    )
    straight = train(
        store, tmp_path / "straight", model=str(tiny_model_dir), config=cfg, progress=False
    )
    for a, b in zip(straight.rows, rows, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, abs=1e-3)
        assert b.val_loss == pytest.approx(a.val_loss, abs=1e-3)


def _typed(value: str):
    from whisper_sv.core.config import parse_overrides

    return parse_overrides([f"x={value}"])["x"]
