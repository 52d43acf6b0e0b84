"""`--backend ray`: the same study, scheduled by a real Ray (local instance or a two-node
cluster on loopback): layout parity, schedulers, a killed Ray worker, a killed driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.cli import main
from search.study.record import TrialRecord
from search.study.results import state_of
from search.study.storage import open_storage
from search.study.studies import load_study
from spaces.errors import UserError
from tests.helpers import (
    HEAVY,
    RAY,
    TINY_SETS,
    check_study_runs,
    pids_where,
    postgres_url,
    ray_head,
    wait_for,
)

pytestmark = [pytest.mark.slow, HEAVY]
SETS = TINY_SETS


def study_trials(ws: Path, name: str):
    return load_study(name, f"sqlite:///{ws.resolve()}/optuna.db").trials


def no_stopped_trial_is_complete(trials, epochs: int) -> list:
    """Trained COMPLETE trials ran every epoch, PRUNED ones fewer; returns the pruned."""
    records = {t.number: TrialRecord.from_trial(t) for t in trials}
    complete = [t for t in trials if t.state == TrialState.COMPLETE
                and records[t.number].state == "COMPLETE"]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert complete, [state_of(t) for t in trials]
    assert all(len(records[t.number].curve) == epochs for t in complete)
    for t in pruned:  # by the rule, or the reuse of a pruned trial
        assert records[t.number].state in ("PRUNED", "REUSED"), t.number
        assert 0 < len(records[t.number].curve) < epochs, t.number
    return pruned


def test_several_objectives_give_the_optuna_backends_layout(tiny_data, tmp_path, capsys):
    ws = tmp_path / "ws"
    before = os.environ.get("PATCHNAS_STORAGE")
    assert main(["search", "run", "--name", "rs", "--family", "convmixer", "--set", *SETS,
                 "--trials", "6", "--epochs", "3", "--val-size", "40", "--workers", "2",
                 "--device", "cpu", "--data", str(tiny_data), "--workspace", str(ws),
                 "--backend", "ray", "--json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front
    assert os.environ.get("PATCHNAS_STORAGE") == before  # the driver's env is left as it was
    trials = study_trials(ws, "rs")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert sum(t.state.is_finished() for t in trials) >= 6
    no_stopped_trial_is_complete(trials, 3)
    assert main(["search", "pareto", "rs", "--workspace", str(ws), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == front
    check_study_runs(ws, "rs", front)


def test_one_objective_is_pruned_by_ashas_rungs_as_pruned(tiny_data, tmp_path, capsys):
    ws = tmp_path / "ws"
    assert main(["search", "run", "--name", "asha", "--family", "convmixer", "--set", *SETS,
                 "--objectives", "val_acc:max", "--trials", "8", "--epochs", "4", "--eta", "2",
                 "--val-size", "40", "--workers", "2", "--device", "cpu", "--data",
                 str(tiny_data), "--workspace", str(ws), "--backend", "ray",
                 "--no-tracking", "--json"]) == 0
    trials = study_trials(ws, "asha")
    pruned = no_stopped_trial_is_complete(trials, 4)
    by_asha = [TrialRecord.from_trial(t) for t in pruned
               if "ASHA" in (TrialRecord.from_trial(t).reason or "")]
    assert by_asha, [TrialRecord.from_trial(t).reason for t in trials]
    for r in by_asha:  # stopped at a rung: its curve ends there
        assert len(r.curve) == int(r.reason.rsplit(" ", 1)[1]) in (1, 2)


def _slow_study(name: str, ws: Path, data: Path, extra: list[str], epochs: int = 4
                ) -> list[str]:
    """A study whose trials take seconds each, so something can be killed mid-trial."""
    return [sys.executable, "-m", "search", "search", "run", "--name", name, "--family",
            "convmixer", "--set", "h=96", "d=3", "p=2", "k=3,5,7", "--trials", "4",
            "--epochs", str(epochs), "--pruner", "none", "--val-size", "40", "--device", "cpu",
            "--data", str(data), "--workspace", str(ws), "--backend", "ray", "--no-tracking",
            *extra]


def _ray_trial_pids() -> list[int]:
    return pids_where(lambda argv: argv[0].startswith(b"ray::ImplicitFunc"))


def _finished_once(trials, budget: int) -> None:
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # trained (REUSED twins are COMPLETE in Optuna but free): the budget, each architecture once
    trained = [TrialRecord.from_trial(t) for t in trials if state_of(t) == "COMPLETE"]
    assert len(trained) == budget, [state_of(t) for t in trials]  # none lost, none repeated
    assert len({r.arch_hash for r in trained}) == budget
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert all(TrialRecord.from_trial(t).reason for t in failed)


def test_killing_the_driver_then_rerunning_keeps_finished_trials(tiny_data, tmp_path):
    ws = tmp_path / "ws"
    cmd = _slow_study("kd", ws, tiny_data, ["--workers", "1"], epochs=2)
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    wait_for(lambda: any(t.state == TrialState.COMPLETE for t in study_trials(ws, "kd")),
             240, "a finished trial", ignore=(UserError,))  # UserError: no study yet
    before = {t.number: t.values for t in study_trials(ws, "kd")
              if t.state == TrialState.COMPLETE}
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    # Ray leaves the killed driver's agent processes behind: not ours to keep
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    trials = study_trials(ws, "kd")
    _finished_once(trials, 4)
    for number, values in before.items():  # kept as they were
        assert trials[number].state == TrialState.COMPLETE and trials[number].values == values


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and a second node process on loopback."""
    with ray_head("--include-dashboard=false", nodes=2) as cluster:
        yield cluster


def test_a_killed_ray_worker_on_a_two_node_cluster_is_retried(tiny_data, tmp_path,
                                                                ray_cluster):
    url = postgres_url()
    address, env = ray_cluster
    name = f"rk{uuid.uuid4().hex[:8]}"
    ws = tmp_path / "ws"
    cmd = _slow_study(name, ws, tiny_data, ["--workers", "2", "--ray-address", address,
                                            "--ray-storage", str(tmp_path / "shared"),
                                            "--storage", url])
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env=env)
    storage = open_storage(url, heartbeat=False)  # one pool for all the polling below
    victims: list[int] = []

    def training() -> bool:  # each running trial has started (so a restart shows) and one
        running = [TrialRecord.from_trial(t) for t in optuna.load_study(  # is in its epochs
            study_name=name, storage=storage).trials if t.state == TrialState.RUNNING]
        victims[:] = [int(r.worker.rpartition(":")[2]) for r in running if r.curve]
        return bool(victims) and all(r.ray_attempt >= 1 for r in running)

    wait_for(training, 240, "a Ray trial in its epochs", ignore=(KeyError,))  # no study yet
    assert victims[0] in _ray_trial_pids()  # the Ray worker process that trains that trial
    os.kill(victims[0], signal.SIGKILL)
    _, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err
    trials = optuna.load_study(study_name=name, storage=storage).trials
    _finished_once(trials, 4)
    assert max(TrialRecord.from_trial(t).ray_attempt for t in trials) >= 2  # Ray retried


def test_several_nodes_need_shared_storage(tiny_data, tmp_path, ray_cluster):
    address, env = ray_cluster
    out = subprocess.run([sys.executable, "-m", "search", "search", "run", "--name",
                          "refused", "--family", "convmixer", "--set", *SETS, "--trials", "2",
                          "--epochs", "1", "--val-size", "40", "--device", "cpu", "--data",
                          str(tiny_data), "--workspace", str(tmp_path / "ws"), "--backend",
                          "ray", "--ray-address", address, "--no-tracking"],
                         capture_output=True, text=True, env=env, timeout=300)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 2 and "2 nodes: give --ray-storage" in last, out.stderr
