"""Studies on shared storages: the URL forms, a journal file, and two processes sharing one study
on a real PostgreSQL server (a throw-away cluster), one of them killed with ``kill -9``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_tune import TINY_TRAIN

from whisper_sv.tune.storage import open_storage, parse_url, seed_salt

REPO = Path(__file__).resolve().parents[1]


def test_storage_urls_and_their_errors(tmp_path):
    assert parse_url("", tmp_path) == ("rdb", f"sqlite:///{(tmp_path / 'study.db').resolve()}")
    assert parse_url("sqlite:////x/s.db", tmp_path) == ("rdb", "sqlite:////x/s.db")
    assert parse_url("postgresql://u:p@h:5432/d", tmp_path) == (
        "rdb",
        "postgresql+psycopg://u:p@h:5432/d",
    )
    assert parse_url("postgresql+psycopg2://h/d", tmp_path)[1] == "postgresql+psycopg2://h/d"
    assert parse_url("journal:/x/study.log", tmp_path) == ("journal", "/x/study.log")
    assert parse_url("/x/study.journal", tmp_path) == ("journal", "/x/study.journal")
    with pytest.raises(ValueError, match="postgresql://USER:PASSWORD@HOST"):
        parse_url("redis://h:6379", tmp_path)
    assert seed_salt(False) == 0 and seed_salt(True) > 0


def test_journal_storage_is_recorded_in_the_study_folder(tmp_path):
    import optuna

    url = f"journal:{tmp_path / 'shared' / 'study.log'}"
    storage = open_storage(tmp_path / "study", url)
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    # Later opens (the report, a re-run) find the same trials from the folder alone.
    again = optuna.load_study(study_name="s", storage=open_storage(tmp_path / "study"))
    assert [t.state.name for t in again.trials] == ["COMPLETE", "COMPLETE"]
    assert (tmp_path / "study" / "storage.url").stat().st_mode & 0o777 == 0o600


def test_options_name_the_fix(tiny_store, tiny_model_dir, tmp_path):
    from whisper_sv.data.features import BuildOptions
    from whisper_sv.train.run import TrainConfig
    from whisper_sv.tune.study import SearchSpace, TuneOptions, tune

    with pytest.raises(ValueError, match="engine must be 'local' or 'ray'"):
        BuildOptions(engine="spark")
    with pytest.raises(ValueError, match="--engine ray"):
        BuildOptions(ray_address="auto")
    with pytest.raises(ValueError, match="heartbeat_s must be >= 1"):
        TuneOptions(heartbeat_s=0)
    # A worker joins a study; it does not start one.
    opts = TuneOptions(storage=f"sqlite:///{tmp_path / 's.db'}", worker=True, steps=2,
                       model=str(tiny_model_dir))  # fmt: skip
    space = SearchSpace.parse({"lr": {"type": "float", "values": [1e-4]}})
    with pytest.raises(ValueError, match="start the study first"):
        tune(
            tiny_store, tmp_path / "w", space, opts, base=TrainConfig(**TINY_TRAIN), progress=False
        )


# --------------------------------------------------------------------------- PostgreSQL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """URL of a throw-away PostgreSQL cluster (initdb + pg_ctl in a temporary folder)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not on PATH: apt install postgresql"
        )
    folder = Path(tempfile.mkdtemp(prefix="wsv-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        as_user = ["runuser", "-u", "nobody", "--"]
    data, port = folder / "data", _free_port()
    quiet = {"check": True, "capture_output": True, "timeout": 120, "cwd": folder}
    subprocess.run([*as_user, initdb, "-D", data, "-U", "postgres", "--auth=trust", "--no-sync"],
                   **quiet)  # fmt: skip
    opts = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [*as_user, pg_ctl, "-D", data, "-l", folder / "log", "-w", "-o", opts, "start"]
    subprocess.run(start, **quiet)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], **quiet)
        shutil.rmtree(folder, ignore_errors=True)


_TUNE = """
import json, logging, sys
from whisper_sv.train.run import TrainConfig
from whisper_sv.tune.study import SearchSpace, TuneOptions, tune
logging.basicConfig(level=logging.INFO)
a = json.loads(sys.argv[1])
tune(a["store"], a["out"], SearchSpace.parse(a["space"]), TuneOptions(**a["options"]),
     base=TrainConfig(**a["train"]), progress=False)
"""


def _start(
    store: Path, out: Path, url: str, model: Path, worker: bool, trials: int = 6
) -> subprocess.Popen:
    options = {"sampler": "random", "trials": trials, "steps": 2, "evals_per_trial": 1}
    options |= {"model": str(model), "prune": False, "storage": url, "worker": worker}
    options["heartbeat_s"] = 1
    space = {"lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}
    args = {"store": str(store), "out": str(out), "space": space, "options": options}
    args["train"] = {k: v for k, v in TINY_TRAIN.items() if k != "max_steps"}
    log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 (closed with the process)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-c", _TUNE, json.dumps(args)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def _trials(url: str) -> list:
    """The study's trials; one storage (one connection pool) for every poll of the test."""
    import optuna

    if url not in _POLLERS:
        _POLLERS[url] = open_storage(Path(tempfile.mkdtemp(prefix="wsv-poll-")), url)
    try:
        return optuna.load_study(study_name="whisper-sv", storage=_POLLERS[url]).trials
    except KeyError:  # not created yet
        return []


_POLLERS: dict[str, object] = {}


def _runs(root: Path) -> set[int]:
    return {int(p.name) for p in (root / "trials").glob("[0-9]*") if p.is_dir()}


def _wait(what, proc: subprocess.Popen, log: Path, limit: float = 600) -> None:
    deadline = time.monotonic() + limit
    while not what():
        assert proc.poll() is None, f"tune exited early: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out: {log.read_text()[-2000:]}"
        time.sleep(0.3)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses kill -9")
@pytest.mark.slow  # two real processes, one killed
def test_two_processes_share_a_postgresql_study_and_a_killed_one_is_retried(
    postgres,
    tiny_store,
    tiny_model_dir,
    tmp_path,
):
    from optuna.trial import TrialState

    lead_dir, worker_dir = tmp_path / "lead", tmp_path / "worker"
    # The lead creates the study (one trial); then it and a worker start together, so that
    # neither finishes the study before the other is under way, however loaded the machine.
    first = _start(tiny_store, lead_dir, postgres, tiny_model_dir, worker=False, trials=1)
    assert first.wait(timeout=600) == 0, lead_dir.with_suffix(".log").read_text()[-3000:]
    worker = _start(tiny_store, worker_dir, postgres, tiny_model_dir, worker=True)
    lead = _start(tiny_store, lead_dir, postgres, tiny_model_dir, worker=False)
    try:

        def worker_mid_trial() -> bool:  # one trial done by the worker, another running
            states = {t.number: t.state for t in _trials(postgres)}
            mine = _runs(worker_dir)
            done = [n for n in mine if states.get(n) == TrialState.COMPLETE]
            return bool(done) and any(states.get(n) == TrialState.RUNNING for n in mine)

        _wait(worker_mid_trial, worker, worker_dir.with_suffix(".log"))
        cut = [t.number for t in _trials(postgres) if t.state == TrialState.RUNNING]
        cut = [n for n in cut if n in _runs(worker_dir)]
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        assert lead.wait(timeout=900) == 0, lead_dir.with_suffix(".log").read_text()[-3000:]
    finally:
        for p in (lead, worker):
            if p is not None and p.poll() is None:
                p.kill()

    trials = {t.number: t for t in _trials(postgres)}
    assert not [n for n, t in trials.items() if t.state == TrialState.RUNNING]
    # Every trial ran in exactly one of the two processes (a retry queued after the lead's last
    # trial waits for the next run).
    ran = {n for n, t in trials.items() if t.state != TrialState.WAITING}
    by_lead, by_worker = _runs(lead_dir), _runs(worker_dir)
    assert not by_lead & by_worker and by_lead | by_worker == ran
    assert by_worker - set(cut), "the worker completed no trial of its own"
    # No two trials drew the same values, except a retry (same values as the trial it repeats).
    fresh = [t.params["lr"] for t in trials.values() if "retry_of" not in t.user_attrs]
    assert len(fresh) == len(set(fresh))
    (killed,) = cut
    assert trials[killed].state == TrialState.FAIL
    retry = [t for t in trials.values() if t.user_attrs.get("retry_of") == killed]
    assert len(retry) == 1 and retry[0].state in (TrialState.COMPLETE, TrialState.WAITING)
    # (a queued retry holds its values as fixed_params until it runs)
    assert (retry[0].params or retry[0].system_attrs["fixed_params"]) == trials[killed].params
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) >= 6
    report = (lead_dir / "report.md").read_text()
    for number in ran:
        assert f"| {number} |" in report
    assert (lead_dir / "storage.url").read_text().strip() == postgres
