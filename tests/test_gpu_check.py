"""``bench/gpu_check.sh --dry-run``: the GPU check's code paths on the CPU at a tiny size, so the
script that records the GPU figures cannot rot where no GPU is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_the_gpu_section(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        "# Benchmarks\n\n## GPU\n\n<!-- gpu-check:start -->\nold\n<!-- gpu-check:end -->\n\n## After\n"
    )
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    cmd = [str(REPO / "bench" / "gpu_check.sh"), "--dry-run", "--write", str(doc)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = doc.read_text()
    assert "old" not in text and text.endswith("## After\n")  # the section replaced in place
    section = text.split("<!-- gpu-check:start -->")[1].split("<!-- gpu-check:end -->")[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    names = [r.split(" | ")[0] for r in rows]
    assert len(rows) == 6, section
    assert "Seq2SeqTrainer" in names[0] and "full fine-tuning" in names[1]
    assert "frozen encoder" in names[2] and "batched" in names[4] and "fine-tune" in names[5]
    for row in rows[1:3] + rows[4:5]:  # ratios against the baseline are numbers
        assert float(row.split(" | ")[2].rstrip("x |")) > 0
    assert "WER" in rows[5]


def test_gpu_check_refuses_a_machine_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: bench/gpu_check.sh runs for real there")
    env = {**os.environ, "PYTHON": sys.executable}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([str(REPO / "bench" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
