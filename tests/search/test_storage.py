"""Trial attributes written together: the same result as Optuna's own writer, on each storage."""

import uuid

import optuna
import pytest

from search.study.record import set_user_attrs
from search.study.storage import open_storage
from tests.helpers import postgres_url

VALUES = {"a": 2, "nested": {"curve": [{"epoch": 1, "val_acc": 0.5}], "label": "h64 d2"},
          "none": None, "text": "pruned at epoch 1"}


def _storage(kind: str, tmp_path):
    if kind == "memory":
        return optuna.storages.InMemoryStorage()
    if kind == "sqlite":
        return open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat=False,
                            create=True)
    url = postgres_url()
    return open_storage(url, heartbeat=False)


def _refuse(*_):
    raise AssertionError("wrote through the per-attribute fallback")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "memory"])
def test_attributes_land_together_and_overwrite_like_set_user_attr(kind, tmp_path,
                                                                    monkeypatch):
    storage = _storage(kind, tmp_path)
    name = f"attrs-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=storage)
    trial = study.ask()
    trial.set_user_attr("a", 1)
    trial.set_user_attr("kept", "yes")
    if kind != "memory":  # databases take the one-statement path, not the fallback
        monkeypatch.setattr(optuna.Trial, "set_user_attr", _refuse)
    set_user_attrs(trial, VALUES)
    set_user_attrs(trial, {})
    assert trial.user_attrs == {"kept": "yes", **VALUES}  # the live trial sees them at once
    study.tell(trial, 1.0)
    stored = optuna.load_study(study_name=name, storage=storage).trials[0]
    assert stored.user_attrs == {"kept": "yes", **VALUES}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "memory"])
def test_a_finished_trial_refuses_them_and_keeps_its_own(kind, tmp_path):
    storage = _storage(kind, tmp_path)
    name = f"finished-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=storage)
    trial = study.ask()
    trial.set_user_attr("a", 1)
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_user_attrs(trial, {"a": 5, "b": 2})
    assert optuna.load_study(study_name=name, storage=storage).trials[0].user_attrs == {"a": 1}


def test_sqlite_connections_log_ahead_and_commit_without_waiting_for_the_disk(tmp_path):
    storage = _storage("sqlite", tmp_path)
    storage.engine.dispose()
    for _ in range(2):  # the first connection and a later one from the pool
        with storage.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    study = optuna.create_study(storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    reopened = optuna.load_study(study_name=study.study_name,
                                 storage=_storage("sqlite", tmp_path))
    assert len(reopened.trials) == 3


def test_postgresql_connections_commit_without_waiting_for_the_disk(tmp_path):
    storage = _storage("postgresql", tmp_path)
    for _ in range(2):  # the first connection and a later one from the pool
        with storage.engine.connect() as connection:
            assert connection.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
            connection.rollback()
    study = optuna.create_study(storage=storage, study_name=f"sync-{uuid.uuid4().hex[:8]}")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    reopened = optuna.load_study(study_name=study.study_name,
                                 storage=_storage("postgresql", tmp_path))
    assert len(reopened.trials) == 3


def test_postgresql_renews_a_dropped_idle_connection_and_pings_only_idle_ones(tmp_path,
                                                                            monkeypatch):
    import sqlalchemy

    from search.study import storage as storage_module

    storage = _storage("postgresql", tmp_path)
    study = optuna.create_study(storage=storage, study_name=f"ping-{uuid.uuid4().hex[:8]}")
    storage.engine.dispose()  # from here on the pool holds one connection
    pings = []
    ping = storage_module._ping
    monkeypatch.setattr(storage_module, "_ping", lambda *args: (pings.append(1), ping(*args)))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert pings == []  # connections in use every few ms are not tested before each use
    with storage.engine.connect() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        connection.rollback()
    # the server drops the pooled connection while it sits idle (a restart, a proxy's
    # idle timeout); its next use finds it dead and opens a new one instead of failing
    with sqlalchemy.create_engine(postgres_url()).connect() as admin:
        assert admin.exec_driver_sql(f"SELECT pg_terminate_backend({pid})").scalar()
    monkeypatch.setattr(storage_module, "IDLE_PING_SECONDS", 0.0)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert pings
    with storage.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid
        connection.rollback()
    assert len(optuna.load_study(study_name=study.study_name, storage=storage).trials) == 3


def test_a_storage_let_go_is_not_kept_by_its_one_statement_writes(tmp_path):
    """The autocommitting engine the writes use lives only as long as its storage: a
    process that opens many storages (the suite, a dashboard) keeps no pools of theirs."""
    import gc
    import weakref

    from search.study import record

    storage = _storage("sqlite", tmp_path)
    study = optuna.create_study(storage=storage, study_name="let-go")
    trial = study.ask()
    set_user_attrs(trial, VALUES)
    assert record._AUTOCOMMIT.get(storage) is not None
    gone = weakref.ref(storage)
    del storage, study, trial
    gc.collect()
    assert gone() is None
