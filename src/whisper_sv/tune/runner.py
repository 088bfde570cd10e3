"""Running one training of a study and keeping the study's storage sound.

Each trial is ``python -m whisper_sv train`` in a child process whose ``metrics.csv`` is
watched (see :mod:`whisper_sv.tune.study`); the study folder is locked to one tune process, and
trials a killed study left running are failed and queued again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_sv.core.fsutil import atomic_write_text
from whisper_sv.core.run_folder import MetricsRow, read_metrics_csv

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

__all__ = [
    "DB_FILE",
    "REPORT",
    "STUDY_FILE",
    "STUDY_NAME",
    "Outcome",
    "read_json",
    "recover",
    "run_training",
    "open_storage",
    "study_lock",
    "wer_rows",
    "write_json",
]

STUDY_NAME = "whisper-sv"
STUDY_FILE = "study.yaml"
DB_FILE = "study.db"
REPORT = "report.md"
MAX_RETRIES = 2  # times a trial cut off by a killed study is retried


@dataclass(frozen=True)
class Outcome:
    rows: tuple[MetricsRow, ...]  # evaluations with a WER (step > 0)
    returncode: int | None  # the process's exit status (None: we stopped it)
    stopped: str  # "" (ran to its end), "pruned", "time budget"
    seconds: float  # wall time

    @property
    def best(self) -> MetricsRow | None:
        rows = [r for r in self.rows if r.wer is not None]
        return min(rows, key=lambda r: (r.wer, r.step)) if rows else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Make the training process end when the study process dies (even by kill -9)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _stop(proc: subprocess.Popen) -> None:
    """End a training process: SIGTERM, then SIGKILL. Its run folder stays consistent (every
    checkpoint is written to a temporary folder and renamed into place)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wer_rows(run: Path) -> list[MetricsRow]:
    try:
        rows = read_metrics_csv(run / "metrics.csv")
    except (OSError, ValueError):  # not there yet
        return []
    return [r for r in rows if r.step > 0 and r.wer is not None]


def run_training(
    features: Path,
    run: Path,
    config_path: Path,
    model: str | None,
    log_path: Path,
    *,
    on_eval: Callable[[int, MetricsRow], bool] | None,
    time_budget_s: float,
    poll_s: float,
) -> Outcome:
    """``python -m whisper_sv train`` into ``run``, watched until it ends or is stopped.

    ``on_eval(k, row)`` is called for the k-th evaluation (1-based) as soon as it is in
    ``metrics.csv``; returning True stops the run (pruned).
    """
    cmd = [sys.executable, "-m", "whisper_sv", "train", "--features", str(features)]
    cmd += ["--out", str(run), "--config", str(config_path), "--no-progress"]
    if model:
        cmd += ["--model", model]
    t0 = time.perf_counter()
    reported: set[int] = set()
    stopped = ""
    with open(log_path, "ab") as logf:
        logf.write(f"$ {' '.join(cmd)}\n".encode())
        logf.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        try:
            while True:
                rc = proc.poll()
                rows = wer_rows(run)
                for k, row in enumerate(rows, 1):
                    if row.step in reported:
                        continue
                    reported.add(row.step)
                    if on_eval is not None and on_eval(k, row):
                        stopped = "pruned"
                        break
                if stopped:
                    break
                if rc is not None:
                    break
                if time_budget_s and time.perf_counter() - t0 > time_budget_s:
                    stopped = "time budget"
                    break
                time.sleep(poll_s)
        finally:
            _stop(proc)
    return Outcome(
        rows=tuple(wer_rows(run)),
        returncode=None if stopped else proc.returncode,
        stopped=stopped,
        seconds=time.perf_counter() - t0,
    )


def log_tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    keep = [ln for ln in text.splitlines() if ln.strip() and "it/s]" not in ln]
    return " | ".join(keep[-lines:])


@contextlib.contextmanager
def study_lock(root: Path) -> Iterator[None]:
    """One tune process per study: trials found RUNNING under the lock are from a dead one."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    path = root / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise ValueError(
                f"another `whisper-sv tune` is running on {root} (pid {f.read().strip() or '?'})"
                "; wait for it or stop it first"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_storage(root: Path) -> Any:
    """The study's storage: the one recorded in ``root`` (study_storage), else its SQLite file."""
    from whisper_sv.tune import storage as study_storage

    return study_storage.open_storage(root)


def recover(study: optuna.Study, storage: Any) -> int:
    """Fail the trials a killed study left RUNNING and queue a retry of each (same params).

    The retry takes the interrupted trial's run folder, so training continues from its last
    checkpoint. Returns the number of retries queued.
    """
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = 0
    for t in trials:
        interrupted = t.user_attrs.get("interrupted", False)
        if t.state == TrialState.RUNNING:
            tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(tid, "interrupted", True)
            storage.set_trial_state_values(tid, TrialState.FAIL)
            interrupted = True
            log.info("trial %d was cut off by a stopped study: marked failed", t.number)
        retries = int(t.user_attrs.get("retries", 0))
        if interrupted and t.number not in retried and retries < MAX_RETRIES:
            study.enqueue_trial(
                dict(t.params), user_attrs={"retry_of": t.number, "retries": retries + 1}
            )
            log.info("trial %d will be retried (continuing its run folder)", t.number)
            queued += 1
    return queued


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, default=str))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
