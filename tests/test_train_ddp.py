"""Data-parallel training: the same command under ``torchrun`` with 2 CPU processes (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_store

# Real processes (killed, or several ranks): the slow suite (`make test-slow`).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def store(tmp_path_factory, processor) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "store", processor)


def test_two_process_ddp_run(tmp_path, store, tiny_model_dir):
    import torch

    from whisper_sv.core.run_metrics import read_metrics_csv

    run = tmp_path / "run"
    settings = {
        "lr": "1e-3",
        "warmup_steps": "1",
        "batch_size": "2",
        "max_steps": "4",
        "eval_steps": "2",
        "save_steps": "2",
        "eval_limit": "4",
        "eval_max_new_tokens": "4",
        "freeze_encoder": "true",
        "export_ct2": "false",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",  # a free local port: parallel test runs do not collide
        "-m",
        "whisper_sv",
        "train",
        "--features",
        str(store),
        "--out",
        str(run),
        "--model",
        str(tiny_model_dir),
        "--no-progress",
    ]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("4/4 steps") == 1  # one report, from rank 0

    info = yaml.safe_load((run / "config.yaml").read_text())
    assert info["world_size"] == 2
    rows = read_metrics_csv(run / "metrics.csv")
    assert [r.step for r in rows] == [2, 4]
    assert rows[-1].train_loss < rows[0].train_loss
    ckpt = run / "checkpoints" / "step-00000004"
    rng = torch.load(ckpt / "rng.pt", weights_only=False)
    assert len(rng) == 2  # each process's RNG state, for an exact resume
    state = yaml.safe_load((ckpt / "state.json").read_text())
    # 4 steps x 2 clips x 2 processes consumed from the shared data stream
    assert state["cursor"] == 16 and state["world_size"] == 2
    assert (run / "best" / "model.safetensors").is_file()
