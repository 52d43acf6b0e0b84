"""Eight worker processes on one PostgreSQL study of zero-cost trials, one of them SIGKILLed
in the middle: the storage and the worker loop are all that is under load (issue 15)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from dataclasses import replace

import optuna
from optuna.trial import TrialState

from search.study.record import TrialRecord, original_number
from search.study.results import budget, state_of
from search.study.spec import build_spec
from search.study.storage import open_storage
from search.study.studies import create_or_resume
from tests.helpers import HEAVY, mlflow_test_db, postgres_url, wait_for
from tracking.runs import PARENT, ROLE, TRIAL

WORKERS, TRIALS = 8, 200


def zero_cost_worker(url: str, name: str, workspace: str, tracking_uri: str, index: int):
    """One `search worker`'s loop, with a trainer that sleeps 20 ms instead of training."""
    from search.backends.worker import install_signal_handlers, make_runner, run_trials
    from trainers.zero import ZeroCostTrainer, zero_data

    install_signal_handlers()
    run_trials(*make_runner(name, url, worker_index=index, workspace=workspace,
                            log=lambda message: None, tracking_uri=tracking_uri, spawned=True,
                            trainer=ZeroCostTrainer(0.02), device_data=zero_data()))


@HEAVY
def test_eight_workers_one_killed_spend_exactly_the_budget(tmp_path, monkeypatch):
    url, tracking_uri = postgres_url(), mlflow_test_db()
    name = f"many-{uuid.uuid4().hex[:8]}"
    spec = build_spec(name, {"epochs": 1, "pruner": "none", "sampler": "random"}, None, "zero")
    create_or_resume(replace(spec, data_hash="zero"), url, TRIALS)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) for a database URI
    monkeypatch.setenv("PATCHNAS_HEARTBEAT_SECONDS", "1")  # read by the spawned workers
    monkeypatch.setenv("PATCHNAS_GRACE_SECONDS", "3")
    monkeypatch.setenv("PATCHNAS_THREADS", "1")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    client.search_experiments()  # the tracking schema exists before eight processes use it
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=zero_cost_worker,
                           args=(url, name, str(tmp_path), tracking_uri, i))
               for i in range(WORKERS)]
    for w in workers:
        w.start()
    storage = open_storage(url, heartbeat=False)  # one pool for all the polling below
    study = optuna.load_study(study_name=name, storage=storage)
    victim = workers[3]

    def victims_trials() -> list[int]:
        return [t.number for t in study.get_trials(deepcopy=False)
                if t.state == TrialState.RUNNING
                and (TrialRecord.from_trial(t).worker or "").endswith(f":{victim.pid}")]

    def killed_inside_a_trial() -> bool:  # frozen first, so what it holds cannot change
        if sum(t.state.is_finished() for t in study.get_trials(deepcopy=False)) < TRIALS // 3:
            return False
        os.kill(victim.pid, signal.SIGSTOP)
        if victims_trials():
            os.kill(victim.pid, signal.SIGKILL)
            return True
        os.kill(victim.pid, signal.SIGCONT)
        return False

    wait_for(killed_inside_a_trial, 240, "the victim killed inside a trial, a third done")
    killed_at = time.monotonic()
    for w in workers:
        w.join(timeout=300)
    assert victim.exitcode == -signal.SIGKILL
    assert [w.exitcode for w in workers if w is not victim] == [0] * (WORKERS - 1)
    assert time.monotonic() - killed_at < 240

    trials = study.get_trials(deepcopy=False)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    state = budget(study, trials)
    assert state.finished == state.total == TRIALS  # exactly the budget counted
    trained = [t for t in trials if state_of(t) == "COMPLETE"]
    assert len(trained) == TRIALS
    hashes = [TrialRecord.from_trial(t).arch_hash for t in trained]
    assert len(set(hashes)) == len(hashes)  # no architecture trained twice at this fidelity
    # the killed trial was failed by the others' heartbeat check and run again
    lost = [t for t in trials if t.state == TrialState.FAIL
            and (TrialRecord.from_trial(t).worker or "").endswith(f":{victim.pid}")]
    assert lost and all(any(r.number > t.number and original_number(r) == original_number(t)
                            for r in trained) for t in lost)

    # every trial that started its MLflow run has exactly one, under the study's parent
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get(ROLE) == "study"]
    children = [r for r in runs if r.data.tags.get(ROLE) == "trial"]
    assert len(parents) == 1  # eight workers joining at once made one parent run
    assert all(r.data.tags[PARENT] == parents[0].info.run_id for r in children)
    by_trial = {}
    for r in children:
        by_trial.setdefault(int(r.data.tags[TRIAL]), []).append(r.info.run_id)
    assert all(len(ids) == 1 for ids in by_trial.values())
    for t in trained:
        assert by_trial[t.number] == [TrialRecord.from_trial(t).mlflow_run_id]
    finished = {r.info.run_id: r.info.status for r in children}
    assert all(finished[TrialRecord.from_trial(t).mlflow_run_id] == "FINISHED" for t in trained)
