"""Training on N machines: the ``torchrun --nnodes`` line of docs/scale.md, run as written on
two "nodes" of one process each (gloo, a c10d rendezvous on this machine), tiny model."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_store

# Real processes (killed, or several ranks, or a Ray cluster): the slow suite (`make test-slow`).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = ["--no-progress", "--set", "lr=1e-3", "--set", "warmup_steps=1", "--set", "batch_size=2"]
TINY += ["--set", "max_steps=2", "--set", "eval_steps=2", "--set", "save_steps=2"]
TINY += ["--set", "eval_limit=2", "--set", "eval_max_new_tokens=3", "--set", "freeze_encoder=true"]
TINY += ["--set", "export_ct2=false"]


def documented_command() -> list[str]:
    """The multi-node ``torchrun`` line of docs/scale.md, split as a shell would."""
    text = (REPO / "docs" / "scale.md").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.startswith("torchrun --nnodes")]
    assert len(lines) == 1, "docs/scale.md must hold one `torchrun --nnodes` line"
    return shlex.split(lines[0])


@pytest.fixture(scope="module")
def store(tmp_path_factory, processor) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "store", processor)


def test_documented_multinode_command(tmp_path, store, tiny_model_dir):
    from whisper_sv.core.run_metrics import read_metrics_csv

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    values = {
        "HEAD:29400": f"127.0.0.1:{port}",
        "RUN_ID": f"test-{os.getpid()}",
        "STORE": str(store),
        "RUN": str(tmp_path / "run"),
        "bundled:base": str(tiny_model_dir),
    }
    cmd = [values.get(arg, arg) for arg in documented_command()]
    assert cmd[0] == "torchrun" and set(values.values()) <= set(cmd), cmd
    cmd[0] = str(Path(sys.executable).parent / "torchrun")  # this environment's torchrun
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    nodes = [
        subprocess.Popen(
            cmd + TINY,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )  # fmt: skip
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in nodes]
    for p, (_, err) in zip(nodes, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
    assert sum(len(re.findall(r"2/2 steps", out)) for out, _ in outs) == 1  # rank 0 reports

    run = tmp_path / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["world_size"] == 2
    assert [r.step for r in read_metrics_csv(run / "metrics.csv")] == [2]
    state = yaml.safe_load((run / "checkpoints" / "step-00000002" / "state.json").read_text())
    assert state["world_size"] == 2 and state["cursor"] == 8  # 2 steps x 2 clips x 2 ranks
