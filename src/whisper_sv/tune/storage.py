"""Where a study's trials live: an Optuna storage from a URL (``whisper-sv tune --storage``).

* ``""`` (default): ``STUDY/study.db``, a SQLite file in the study folder (one machine);
* ``sqlite:///path.db``: another SQLite file;
* ``postgresql://user:password@host:5432/db`` (or ``mysql://...``): a database server that
  workers on many machines share; ``postgresql://`` uses the psycopg 3 driver;
* ``journal:PATH`` or a path ending ``.log``/``.journal``: Optuna's journal file (one file on a
  shared disk, no server; appends under a file lock).

A database storage (any URL given with ``--storage``, or ``--worker``) records a heartbeat of
each running trial every ``heartbeat_s`` seconds. A trial whose heartbeat stops (its worker was
killed, its machine lost) is failed by the next worker that starts a trial, after a grace of 3
heartbeats, and queued again with the same parameters (``retry_of``: the retry continues the run
folder when it can see it) at most ``max_retries`` times: it never stays RUNNING.
The journal has no heartbeat: a killed worker's trial is failed and retried when the study is
next started without ``--worker`` (as with the default SQLite file).

The URL given is kept in ``STUDY/storage.url`` (mode 600: it may hold a password) so that
the report (``tune.write_report(STUDY)``) and later runs find the trials.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "STORAGE_FILE",
    "create_or_join",
    "open_storage",
    "parse_url",
    "retry_stale_trial",
    "seed_salt",
]

DB_FILE = "study.db"  # the default storage in the study folder (tune.DB_FILE)
STORAGE_FILE = "storage.url"  # the storage URL of a study, kept in its folder
GRACE_HEARTBEATS = 3  # heartbeats missed before a running trial counts as dead

_RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql")
_OPEN: dict[tuple, Any] = {}  # database storages opened by this process (not SQLite files)


def parse_url(url: str, root: Path) -> tuple[str, str]:
    """``(kind, target)``: ``("rdb", sqlalchemy_url)`` or ``("journal", path)``; raises
    ValueError with the accepted forms for anything else."""
    url = url.strip()
    if not url:
        return "rdb", f"sqlite:///{(root / DB_FILE).resolve()}"
    if url.startswith("journal:"):
        return "journal", str(Path(url[len("journal:") :]).expanduser().resolve())
    scheme = url.split("://", 1)[0] if "://" in url else ""
    base = scheme.split("+", 1)[0]
    if base in _RDB_SCHEMES:
        if base in ("postgresql", "postgres") and "+" not in scheme:
            # SQLAlchemy's plain postgresql:// means psycopg2; the tune extra installs psycopg 3.
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return "rdb", url
    if not scheme and url.endswith((".log", ".journal")):
        return "journal", str(Path(url).expanduser().resolve())
    raise ValueError(
        f"--storage {url!r} is not a storage this knows: give sqlite:///FILE.db, "
        "postgresql://USER:PASSWORD@HOST:PORT/DB, mysql://..., or journal:FILE (an Optuna "
        "journal file)"
    )


def open_storage(
    root: Path,
    url: str | None = None,
    *,
    heartbeat_s: int | None = None,
    max_retries: int = 2,
    shared: bool = False,
) -> Any:
    """The Optuna storage of the study in ``root``.

    ``url`` None: the one recorded in ``root`` (or the default SQLite file); a non-empty
    ``url`` is recorded there. ``heartbeat_s`` turns on the heartbeat of a database storage
    other than the default file, or of any when ``shared`` (a worker's).
    """
    import optuna

    recorded = root / STORAGE_FILE
    if url is None:
        url = recorded.read_text("utf-8").strip() if recorded.is_file() else ""
    elif url:
        _record(recorded, url)
    kind, target = parse_url(url, root)
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        Path(target).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(
            JournalFileBackend(target, lock_obj=JournalFileOpenLock(target))
        )
    kwargs: dict[str, Any] = {}
    if target.startswith("sqlite"):
        # A long timeout: the report reader (or a test) may hold the file for a moment.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    else:
        # Connections of a pool die with a server restart or a network hiccup: test first.
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    if heartbeat_s and (url or shared):
        kwargs |= {
            "heartbeat_interval": int(heartbeat_s),
            "grace_period": GRACE_HEARTBEATS * int(heartbeat_s),
            "heartbeat_stale_trial_callback": _Retry(max_retries),
        }
    # One storage per server and settings in a process: each holds a pool of connections, and
    # the report re-opens the storage after every trial (a server allows ~100 connections).
    key = (target, heartbeat_s if "heartbeat_interval" in kwargs else None, max_retries)
    if not target.startswith("sqlite") and key in _OPEN:
        return _OPEN[key]
    try:
        storage = _rdb(target, kwargs)
    except ModuleNotFoundError as err:
        raise RuntimeError(
            f"the storage {_redact(url)} needs a database driver ({err.name}): "
            "pip install 'whisper-sv[tune]' (psycopg for postgresql://)"
        ) from err
    if not target.startswith("sqlite"):
        _OPEN[key] = storage
    return storage


def _rdb(target: str, kwargs: dict[str, Any], attempts: int = 5) -> Any:
    """RDBStorage, tried again when another process creates the same tables at the same moment
    (workers starting together on an empty database: PostgreSQL reports a duplicate type)."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(target, **kwargs)
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _record(path: Path, url: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(url.strip() + "\n")


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}" if ":" in cred else url


# Study settings every worker must share (paths to the store and model may differ per machine;
# the number of trials, the seed and the like may differ as they may for a re-run).
_SHARED_SETTINGS = ("space", "train", "tune")
_SHARED_TUNE = ("steps", "equal_epochs", "evals_per_trial", "time_budget_s", "prune")


def create_or_join(storage: Any, name: str, settings: Mapping[str, Any], worker: bool) -> Any:
    """The study ``name`` in ``storage``: created (or continued) by a lead process, joined by a
    worker, which refuses a study that does not exist or searches something else."""
    import optuna

    tune = {k: v for k, v in settings.get("tune", {}).items() if k in _SHARED_TUNE}
    mine = json.loads(json.dumps({**settings, "tune": tune}, default=str))
    if not worker:
        study = optuna.create_study(
            study_name=name, storage=storage, direction="minimize", load_if_exists=True
        )
        if "settings" not in study.user_attrs:
            study.set_user_attr("settings", mine)
        return study
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ValueError(
            "--worker joins an existing study, and this storage holds none: start the study "
            "first with `whisper-sv tune ... --storage URL` (without --worker)"
        ) from None
    theirs = study.user_attrs.get("settings") or {}
    differ = [k for k in _SHARED_SETTINGS if k in theirs and theirs[k] != mine[k]]
    if differ:
        raise ValueError(
            f"the study in this storage was started with other settings ({', '.join(differ)} "
            "differ): give a worker the same search space, --config/--set and tune options"
        )
    return study


def settle(study: Any, poll_s: float = 1.0) -> None:
    """Wait until no trial of ``study`` is RUNNING: each ends, or its worker's heartbeat goes
    stale and the trial is failed (and queued again). For the study's lead before its report."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    said = False
    while running := study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not said:
            log.info("waiting for %d running trial(s) of other workers", len(running))
            said = True
        fail_stale_trials(study)
        time.sleep(poll_s)


def heartbeat_enabled(storage: Any) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


class _Retry:
    """Heartbeat-stale trial callback: queue the trial again (same params), marked so that
    ``tune`` continues its run folder, up to ``max_retries`` times per original trial."""

    def __init__(self, max_retries: int) -> None:
        self.max_retries = max_retries

    def __call__(self, study: Any, trial: Any) -> None:
        retry_stale_trial(study, trial, self.max_retries)


def retry_stale_trial(study: Any, trial: Any, max_retries: int) -> bool:
    """Queue ``trial`` (failed: its worker stopped beating) again; True when queued."""
    retries = int(trial.user_attrs.get("retries", 0))
    log.warning("trial %d lost its worker (no heartbeat): marked failed", trial.number)
    if retries >= max_retries:
        log.warning("trial %d was retried %d times already: not again", trial.number, retries)
        return False
    study.enqueue_trial(
        dict(trial.params), user_attrs={"retry_of": trial.number, "retries": retries + 1}
    )
    log.info("trial %d will be retried", trial.number)
    return True


def seed_salt(worker: bool) -> int:
    """Added to a worker's sampler seed: two workers starting together must not draw the same
    values (a study's own seed keeps the first, non-worker process reproducible)."""
    if not worker:
        return 0
    who = f"{socket.gethostname()}:{os.getpid()}".encode()
    return 1 + int.from_bytes(hashlib.sha256(who).digest()[:3], "little")
