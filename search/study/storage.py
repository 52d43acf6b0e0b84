"""Optuna storage: the default SQLite file, heartbeats, and URLs that never leak passwords."""

from __future__ import annotations

import contextlib
import math
import os
import re
import sqlite3
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from search.study.reach import CONNECT_SECONDS, check_sqlite_file, sqlite_path
from search.study.record import TrialReadingRDBStorage
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


def open_storage(url: str, heartbeat: bool = True,
                 create: bool = False) -> optuna.storages.RDBStorage:
    """Open the storage at `url`; one clear error if it fails. Only with `create` (the
    command that makes studies) may a missing SQLite file be created: a read-only command
    given a wrong path says so instead of leaving an empty database there.

    Several processes making the schema of a fresh database at once race ("table ...
    already exists"): the loser tries again and finds the tables made.
    """
    quiet_optuna()
    path = sqlite_path(url)
    if url.startswith("sqlite"):
        if path is not None:
            if not create and missing_file(url):
                raise UserError(f"no study storage at {path}: the file does not exist; check "
                                f"--storage / $PATCHNAS_STORAGE / --workspace, or create a "
                                f"study there with `patchnas search run`")
            check_sqlite_file(path, "the study storage", "--storage")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            _write_ahead_log(path)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:  # a server that does not answer is an error after seconds, not a hang
        engine_kwargs = {}
        if url.startswith(("postgresql", "mysql")):
            engine_kwargs["connect_args"] = {"connect_timeout": int(CONNECT_SECONDS)}
        if url.startswith("postgresql"):
            # commits return before the WAL is flushed: PostgreSQL's documented trade-off
            # (a crash of the server, not of a worker, may lose the last ~0.6 s of commits,
            # never consistency); a trial makes ~20 commits, each a disk flush without it
            engine_kwargs["connect_args"]["options"] = "-c synchronous_commit=off"
    kwargs = {}
    if heartbeat:
        kwargs = dict(heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                      heartbeat_stale_trial_callback=optuna.storages
                      .RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            storage = TrialReadingRDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            if url.startswith("sqlite"):
                _sync_normally(storage.engine)
            else:
                _ping_when_idle(storage.engine)
            return storage
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, OSError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if _schema_race(reason) and attempt + 1 < SCHEMA_ATTEMPTS:
                time.sleep(0.2 * (attempt + 1))  # another process made the schema first
                continue
            raise UserError(f"cannot open the study storage {redact(url)}: {redact(reason)}; "
                            f"check that the database is running and the URL is right") from None
    raise AssertionError("unreachable")


SCHEMA_ATTEMPTS = 5


def _schema_race(reason: str) -> bool:
    """An error of two processes creating the same fresh schema at once (a table, or
    alembic's version row, made by the other one first)."""
    return any(words in reason for words in ("already exists", "UNIQUE constraint failed",
                                             "duplicate key value"))


def missing_file(url: str) -> str | None:
    """The path of a SQLite storage whose file does not exist, else None."""
    path = sqlite_path(url)
    return path if path is not None and not Path(path).exists() else None


def _write_ahead_log(path: str) -> None:
    """Put the SQLite file in WAL mode (a setting of the file, kept for every later
    connection): readers no longer block the writer, so several workers wait less, and a
    commit costs one sync instead of several."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
            db.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass  # not a database (yet): RDBStorage reports it in its own words


def _sync_normally(engine: sqlalchemy.engine.Engine) -> None:
    """Every connection of `engine` commits with synchronous=NORMAL: in WAL mode a commit
    then writes the log without waiting for the disk (SQLite's documented pairing: the file
    stays consistent; a power cut, not a killed process, may lose the last commits). A trial
    makes ~20 commits; with a sync each they were a third of a zero-cost trial's time."""
    def on_connect(connection, _record):
        connection.execute("PRAGMA synchronous=NORMAL")
    sqlalchemy.event.listen(engine, "connect", on_connect)
    engine.dispose()  # the connections made while Optuna built the schema: without it


# a pooled server connection unused this long is tested before use
IDLE_PING_SECONDS = 5.0


def _ping_when_idle(engine: sqlalchemy.engine.Engine) -> None:
    """Test a pooled connection before use only when it sat idle for IDLE_PING_SECONDS: a
    restarted server or a dropped idle connection is then noticed (the pool opens a new one)
    instead of failing the next statement. SQLAlchemy's `pool_pre_ping` tests it at every
    use: a trial opens ~18 sessions, and the pings were a third of a zero-cost trial's time
    on PostgreSQL (82 ms against 55 ms without). A worker's busy loop reuses its connections
    within milliseconds; a server that fails under it fails one statement, and SQLAlchemy
    then renews the whole pool."""
    def on_checkin(_connection, record):
        record.info["idle_since"] = time.monotonic()

    def on_checkout(connection, record, _proxy):
        if time.monotonic() - record.info.get("idle_since", math.inf) > IDLE_PING_SECONDS:
            _ping(engine.dialect, connection)
    sqlalchemy.event.listen(engine, "checkin", on_checkin)
    sqlalchemy.event.listen(engine, "checkout", on_checkout)


def _ping(dialect, connection) -> None:
    """Raise DisconnectionError (the pool then retries with a new connection) unless the
    DBAPI `connection` answers the dialect's own ping (the one `pool_pre_ping` sends)."""
    try:
        dialect.do_ping(connection)
    except Exception as err:
        raise sqlalchemy.exc.DisconnectionError(str(err)) from err


def quiet_optuna() -> None:
    """Optuna's per-trial INFO lines and experimental-feature warnings stay out of the
    output (set when a storage is opened, not at import: importing has no side effects)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
