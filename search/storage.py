"""Optuna storage: the default SQLite file, heartbeats, and URLs that never leak passwords."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from spaces.errors import UserError

# a trial whose worker missed heartbeats for GRACE seconds is failed and queued again
HEARTBEAT_SECONDS = int(os.environ.get("PATCHNAS_HEARTBEAT_SECONDS", 10))
GRACE_SECONDS = int(os.environ.get("PATCHNAS_GRACE_SECONDS", 30))
MAX_RETRY = 3


def default_url(workspace: Path) -> str:
    return f"sqlite:///{(workspace / 'optuna.db').resolve()}"


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


def set_user_attrs(trial: optuna.Trial, attrs: dict) -> None:
    """Several user attributes of a running trial in one statement and one transaction.

    Optuna commits each `set_user_attr` alone, and even within one transaction its writer
    reloads the trial for every row (about 1.5 ms each on SQLite); a trial writes a dozen:
    most of the search's own overhead. On SQLite and PostgreSQL they go in as one upsert
    (the same statement Optuna's writer issues, for all rows at once); elsewhere, or if
    Optuna's internals move, one by one through the public API."""
    if not attrs:
        return
    backend = getattr(trial.study._storage, "_backend", trial.study._storage)
    cached = getattr(trial, "_cached_frozen_trial", None)
    upsert = _upsert(backend) if isinstance(backend, optuna.storages.RDBStorage) else None
    if upsert is None or cached is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    table = models.TrialUserAttributeModel.__table__
    rows = [{"trial_id": trial._trial_id, "key": key, "value_json": json.dumps(value)}
            for key, value in attrs.items()]
    with _create_scoped_session(backend.scoped_session, True) as session:
        state = session.execute(sqlalchemy.select(models.TrialModel.state).where(
            models.TrialModel.trial_id == trial._trial_id)).scalar_one()
        backend.check_trial_is_updatable(trial._trial_id, state)
        statement = upsert(table).values(rows)
        session.execute(statement.on_conflict_do_update(
            index_elements=[table.c.trial_id, table.c.key],
            set_={"value_json": statement.excluded.value_json}))
    cached.user_attrs.update(attrs)  # what trial.user_attrs shows, as set_user_attr does


def _upsert(backend: optuna.storages.RDBStorage):
    """The dialect's INSERT with ON CONFLICT (SQLite and PostgreSQL), else None."""
    engine = getattr(backend, "engine", None)
    name = engine.dialect.name if engine is not None else None
    if name == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
        from sqlalchemy.dialects.sqlite import insert
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        return None
    return insert
