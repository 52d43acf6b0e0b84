"""Optuna storage: the default SQLite file, heartbeats, and URLs that never leak passwords."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from spaces.errors import UserError

# a trial whose worker missed heartbeats for GRACE seconds is failed and queued again
HEARTBEAT_SECONDS = int(os.environ.get("PATCHNAS_HEARTBEAT_SECONDS", 10))
GRACE_SECONDS = int(os.environ.get("PATCHNAS_GRACE_SECONDS", 30))
MAX_RETRY = 3


def redact(url: str) -> str:
    """The URL with any password replaced by ***."""
    try:
        parsed = make_url(url)
    except Exception:
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
    return parsed.render_as_string(hide_password=True) if parsed.password else url


def open_storage(url: str, heartbeat: bool = True) -> optuna.storages.RDBStorage:
    """Open (creating tables if needed) the storage at `url`; one clear error if it fails.

    Call it once in the parent before any worker starts: several processes creating a fresh
    SQLite database at the same moment fail.
    """
    quiet_optuna()
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            _write_ahead_log(path)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    kwargs = {}
    if heartbeat:
        kwargs = dict(heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                      heartbeat_stale_trial_callback=optuna.storages
                      .RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot open the study storage {redact(url)}: {redact(reason)}; "
                        f"check that the database is running and the URL is right") from None


def _write_ahead_log(path: str) -> None:
    """Put the SQLite file in WAL mode (a setting of the file, kept for every later
    connection): readers no longer block the writer, so several workers wait less, and a
    commit costs one sync instead of several."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
            db.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass  # not a database (yet): RDBStorage reports it in its own words


def quiet_optuna() -> None:
    """Optuna's per-trial INFO lines and experimental-feature warnings stay out of the
    output (set when a storage is opened, not at import: importing has no side effects)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
