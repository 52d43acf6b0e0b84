"""The trial record is the one place that spells attribute keys and touches Optuna's
private API; these tests fail when Optuna moves what it relies on."""

import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from search.study import record
from search.study.record import TrialRecord

ROOT = Path(__file__).resolve().parents[2]


def _study():
    storage = optuna.storages.RDBStorage("sqlite:///:memory:")
    return optuna.create_study(storage=storage, directions=["maximize"])


def test_optuna_private_api_is_where_the_record_expects_it():
    study = _study()
    trial = study.ask()
    upsert, backend, cached = record.fast_path(trial)
    assert upsert is not None, "Optuna moved its storage internals: the one-statement write"
    assert isinstance(backend, optuna.storages.RDBStorage)
    assert isinstance(cached, optuna.trial.FrozenTrial) and cached.number == trial.number
    from optuna.storages._rdb import models

    assert hasattr(models, "TrialUserAttributeModel") and hasattr(models, "TrialModel")
    assert callable(backend.check_trial_is_updatable)
    frozen = study.get_trials(deepcopy=False)[0]
    assert record.trial_id(frozen) == record.trial_id(trial)
    again = record.live_trial(study, frozen)
    assert isinstance(again, optuna.Trial) and again.number == trial.number
    assert record.system_attrs(trial) == {}


def test_record_round_trips_and_refuses_unknown_fields():
    study = _study()
    trial = study.ask()
    record.write(trial, state="COMPLETE", curve=[{"epoch": 1, "val_acc": 0.5}], seed=7)
    got = TrialRecord.from_trial(study.get_trials(deepcopy=False)[0])
    assert (got.state, got.seed, got.last_val_acc, got.counted) == ("COMPLETE", 7, 0.5, False)
    assert got.to_attrs() == {"state": "COMPLETE", "seed": 7,
                              "curve": [{"epoch": 1, "val_acc": 0.5}]}
    with pytest.raises(TypeError, match="no field 'stat'"):
        record.write(trial, stat="COMPLETE")


def test_a_retry_knows_its_original_number():
    study = _study()
    first = study.ask()
    record.enqueue(study, {}, retry_of=first.number)
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    retry = study.ask()
    assert retry.number == 1 and record.original_number(retry) == 0


def test_no_attribute_key_or_private_api_outside_the_record_module():
    pattern = re.compile(r"user_attrs|set_user_attr\(|_trial_id|\._storage\b|"
                         r"_cached_frozen_trial|optuna\.Trial\(|_rdb")
    offenders = []
    for path in (ROOT / "search").rglob("*.py"):
        if path.name == "record.py" and path.parent.name == "study":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


CLAIMANT = """
import sys, time, optuna
from pathlib import Path
from search.study import record
url, me, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
study = optuna.load_study(study_name="race", storage=url)
while not go.exists():
    time.sleep(0.005)
print(record.claim_architecture(study, "abc123", 2, me))
"""


def test_racing_processes_agree_on_one_claimant(tmp_path):
    url = f"sqlite:///{tmp_path}/race.db"
    optuna.create_study(study_name="race", storage=url)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMANT, url, str(i), str(go)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT) for i in range(6)]
    time.sleep(3)  # every claimant is waiting at the line
    go.touch()
    owners = {int(p.communicate(timeout=60)[0]) for p in procs}
    assert len(owners) == 1 and owners <= set(range(6))
    study = optuna.load_study(study_name="race", storage=url)
    assert record.claims(study) == {"abc123.e2": owners.pop()}


def test_a_claim_is_taken_over_only_from_the_claimant_named():
    study = _study()
    assert record.claim_architecture(study, "h", 2, 3) == 3
    assert record.claim_architecture(study, "h", 2, 5) == 3  # held
    assert record.claim_architecture(study, "h", 2, 5, replacing=4) == 3  # not 4's to give
    assert record.claim_architecture(study, "h", 2, 5, replacing=3) == 5
    assert record.claim_architecture(study, "h", 3, 7) == 7  # another fidelity, another claim


@pytest.mark.parametrize("storage", ["rdb", "memory"])
def test_budget_attrs_reads_what_the_public_api_holds(storage):
    study = _study() if storage == "rdb" else optuna.create_study(directions=["maximize"])

    def attrs():
        got = record.budget_attrs(study)
        return got["total"], got["space_size"], got["claimed"]
    assert attrs() == (0, float("inf"), 0)  # a study without patchnas's
    record.set_trial_budget(study, 12)
    record.set_space_size(study, 40)
    for n, digest in enumerate(["a", "b", "c_d"]):
        record.claim_architecture(study, digest, 2, n)
    study.set_user_attr("patchnas.claimant", 1)  # shares the prefix but not the dot
    record.write_json(study, record.StudyKey.BOUNDS, {"params": [0, 1]})
    assert attrs() == (12, 40, 3)
    assert attrs() == (record.trial_budget(study), record.space_size(study),
                       len(record.claims(study)))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_storage_counts_the_budget_as_the_trials_state_says(backend, tmp_path):
    """The one-statement budget (SQL) and the budget counted from the trials read (Python's
    state_of) agree for every state a trial can end in."""
    from optuna.trial import TrialState as S

    from search.study.results import budget, state_of

    if backend == "postgresql":
        from tests.helpers import postgres_url
        url = postgres_url()
    else:
        url = f"sqlite:///{tmp_path / 'b.db'}"
    study = optuna.create_study(storage=url, study_name=f"b-{time.time_ns()}",
                                directions=["maximize"])
    record.set_trial_budget(study, 20)
    ends = [(S.COMPLETE, {}), (S.PRUNED, {}), (S.FAIL, {"counted": True}), (S.FAIL, {}),
            (S.FAIL, {"state": "INFEASIBLE"}), (S.COMPLETE, {"state": "INFEASIBLE"}),
            (S.COMPLETE, {"state": "REUSED"}), (S.FAIL, {"state": "DISCARDED"}),
            (S.PRUNED, {"state": "DISCARDED"}), (S.FAIL, {"state": "REUSED", "counted": True}),
            (S.COMPLETE, {"state": "COMPLETE", "counted": False}), (S.RUNNING, {}),
            (S.RUNNING, {"state": "DISCARDED"})]
    for state, attrs in ends:
        trial = study.ask()
        record.write(trial, **attrs)
        if state != S.RUNNING:
            study.tell(trial, 0.5 if state == S.COMPLETE else None, state=state)
    record.enqueue(study, {}, retry_of=3)
    trials = study.get_trials(deepcopy=False)
    assert {state_of(t) for t in trials} == {"COMPLETE", "PRUNED", "FAIL", "RETRIED",
                                            "INFEASIBLE", "REUSED", "DISCARDED", "RUNNING",
                                            "WAITING"}
    stored, counted = budget(study), budget(study, trials)
    assert "finished" in record.budget_attrs(study)  # the storage counted: one statement
    assert stored == counted
    assert (stored.finished, stored.running, stored.waiting, stored.trials) == (6, 2, 1, 14)


@pytest.fixture
def zone_not_utc(monkeypatch):
    """Local time 5:30 ahead of UTC (Optuna 5 stores UTC and shows local time)."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_trial_reader_builds_the_trials_optunas_reader_builds(tmp_path, zone_not_utc):
    """Every kind of row Optuna stores (each distribution kind, infinite values and
    intermediate values, user and system attributes, each state, times in a zone that is not
    UTC) reads back identically, whole and through Optuna's trial cache (the reads since its
    last one)."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    study = optuna.create_study(storage=url, study_name="s",
                                directions=["maximize", "minimize"])
    for i in range(8):
        t = study.ask()
        t.suggest_int("d", 1, 8)
        t.suggest_float("lr", 1e-4, 1e-1, log=True)
        t.suggest_categorical("k", [3, None, "x", True])
        t.set_user_attr("curve", [{"val_acc": 0.1 * i}])
        study._storage.set_trial_system_attr(record.trial_id(t), "mark", {"n": i})
        study._storage.set_trial_intermediate_value(
            record.trial_id(t), 1, float("inf") if i == 2 else i / 10)
        if i % 4 == 0:
            study.tell(t, [i / 10, float("-inf") if i == 4 else float(i)])
        elif i % 4 == 1:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        elif i % 4 == 2:
            study.tell(t, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial({"d": 3})

    def both(*args):
        ours = record.TrialReadingRDBStorage(url)._get_trials(study._study_id, *args)
        theirs = optuna.storages.RDBStorage(url)._get_trials(study._study_id, *args)
        return ours, theirs

    ours, theirs = both(None, set(), -1)
    assert len(ours) == 9 and [t.__dict__ for t in ours] == [t.__dict__ for t in theirs]
    assert {t.state for t in ours} == set(optuna.trial.TrialState)
    done = (optuna.trial.TrialState.COMPLETE,)
    ours, theirs = both(done, set(), -1)
    assert len(ours) == 2 and [t.__dict__ for t in ours] == [t.__dict__ for t in theirs]
    ids = [record.trial_id(t) for t in study.get_trials()]
    for tid in ids:  # one trial at a time (read when asked and when told), the same
        assert (record.TrialReadingRDBStorage(url).get_trial(tid).__dict__
                == optuna.storages.RDBStorage(url).get_trial(tid).__dict__)
    with pytest.raises(KeyError, match="No trial with trial_id 999"):
        record.TrialReadingRDBStorage(url).get_trial(999)
    ours, theirs = both(None, {ids[3], ids[7]}, ids[5])
    assert [t.number for t in ours] == [3, 6, 7, 8]
    assert [t.__dict__ for t in ours] == [t.__dict__ for t in theirs]

    cached = optuna.load_study(study_name="s", storage=record.TrialReadingRDBStorage(url))
    assert [t.__dict__ for t in cached.get_trials()] == [t.__dict__ for t in study.get_trials()]
    t = study.ask()  # the enqueued trial, then one more finished: the cache reads the change
    study.tell(t, [0.9, 1.0])
    assert [t.__dict__ for t in cached.get_trials()] == [t.__dict__ for t in study.get_trials()]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_parameters_are_written_in_one_statement_only_to_unfinished_trials(backend, tmp_path):
    """The one-statement parameter write (a distribution already seen in the study) stores
    what Optuna's writer stores, refuses a finished trial with Optuna's error, and leaves
    an incompatible distribution to Optuna's check."""
    import sqlalchemy

    if backend == "postgresql":
        from tests.helpers import postgres_url
        url = postgres_url()
    else:
        url = f"sqlite:///{tmp_path / 'p.db'}"
    storage = record.TrialReadingRDBStorage(url)
    study = optuna.create_study(storage=storage, study_name=f"p-{time.time_ns()}",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    statements = []
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute",
                            lambda *args: statements.append(args[2]))
    first = study.ask()
    first.suggest_int("d", 1, 8)  # the first of its name: Optuna's own write and check
    second = study.ask()
    statements.clear()
    assert second.suggest_int("d", 1, 8) in range(1, 9)
    writes = [s for s in statements if not s.lstrip().startswith("SELECT")]
    assert [s.split()[:3] for s in writes] == [["INSERT", "INTO", "trial_params"]]
    assert "SELECT" in writes[0]  # ... SELECT FROM trials WHERE the trial is unfinished
    study.tell(second, 1.0)
    theirs = optuna.storages.RDBStorage(url).get_trial(record.trial_id(second))
    assert theirs.params == second.params
    assert theirs.distributions == {"d": optuna.distributions.IntDistribution(1, 8)}
    statements.clear()
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # through the cache,
        study._storage.set_trial_param(  # which knows "d": the one-statement write refuses
            record.trial_id(second), "d", 2, optuna.distributions.IntDistribution(1, 8))
    assert any("INSERT INTO trial_params" in s and "SELECT" in s for s in statements)
    with pytest.raises(ValueError, match="Cannot set different distribution kind"):
        study.ask().suggest_float("d", 1, 8)


def test_trial_reader_leaves_out_rows_of_a_trial_that_arrives_while_it_reads():
    """On PostgreSQL each SELECT sees what is committed by then: a trial that another worker
    adds between the reader's first SELECT and the next is left for the next read, never
    half-built (it failed a worker with a KeyError once)."""
    import uuid

    from sqlalchemy import event

    from tests.helpers import postgres_url

    url, name = postgres_url(), f"race-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(storage=url, study_name=name)
    for _ in range(3):
        study.ask().set_user_attr("curve", [])
    ours = record.TrialReadingRDBStorage(url)
    arrived = []

    def another_worker_asks(conn, cursor, statement, *args):
        if "FROM trials" in statement and not arrived:
            late = study.ask()  # committed on its own connection, between our statements
            late.set_user_attr("late", True)
            arrived.append(late.number)

    event.listen(ours.engine, "after_cursor_execute", another_worker_asks)
    got = ours._get_trials(study._study_id, None, set(), -1)
    assert arrived == [3] and [t.number for t in got] == [0, 1, 2]
    assert all(t.user_attrs == {"curve": []} for t in got)
    event.remove(ours.engine, "after_cursor_execute", another_worker_asks)
    assert [t.number for t in ours._get_trials(study._study_id, None, set(), -1)] == [0, 1, 2, 3]
