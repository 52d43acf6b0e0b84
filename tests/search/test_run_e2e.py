"""`patchnas search run` end to end on real CIFAR-10: the issue's check, kill -9, Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.study.results import state_of
from tests.helpers import CIFAR_ARCHIVE, HEAVY, pids_where, wait_for

PATCHNAS = str(Path(sys.executable).with_name("patchnas"))
SPACE = ["--family", "convmixer", "--set", "h=64..96", "d=2..3", "p=4", "k=3,5"]
# trials of a few seconds an epoch, to be killed or interrupted in the middle
LONG_SPACE = ["--family", "convmixer", "--set", "h=48..64:16", "d=2", "p=4", "k=3,5"]


def env_for(workspace):
    return {**os.environ, "PATCHNAS_WORKSPACE": str(workspace),
            "PATCHNAS_HEARTBEAT_SECONDS": "1", "PATCHNAS_GRACE_SECONDS": "4"}


def trials(workspace, name):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workspace}/optuna.db")
    return study.get_trials(deepcopy=False)


def worker_pids(name):
    return pids_where(lambda argv: b"worker" in argv and name.encode() in argv
                      and b"search" in argv)


@HEAVY  # whole studies of worker processes: in the second lane, for balance
def test_issue_check_two_workers_on_real_data(cifar, tmp_path):
    start = time.monotonic()
    cmd = [PATCHNAS, "search", "run", "--name", "s1", *SPACE, "--trials", "6", "--epochs",
           "2", "--subset", "5000", "--workers", "2", "--device", "cpu", "--data",
           str(CIFAR_ARCHIVE)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env_for(tmp_path))
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - start < 300
    assert "Pareto front" in out.stdout and "done" in out.stderr
    pareto = subprocess.run([PATCHNAS, "search", "pareto", "s1", "--json"],
                            capture_output=True, text=True, env=env_for(tmp_path))
    assert pareto.returncode == 0, pareto.stderr
    front = json.loads(pareto.stdout)
    assert front and {"trial", "config", "values", "fidelity"} <= set(front[0])
    ts = trials(tmp_path, "s1")
    finished = [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6 and not [t for t in ts if t.state == TrialState.RUNNING]
    assert {t.user_attrs["device"] for t in ts if "device" in t.user_attrs} == {"cpu"}
    status = subprocess.run([PATCHNAS, "search", "status", "s1", "--json"],
                            capture_output=True, text=True, env=env_for(tmp_path))
    assert json.loads(status.stdout)["front_size"] == len(front)


def test_twins_are_never_trained_twice_and_a_small_space_ends_when_searched(cifar,
                                                                             tmp_path):
    # 4 architectures (h x act) for a budget of 6: with 2 workers, twins are sampled often
    cmd = [PATCHNAS, "search", "run", "--name", "twins", "--family", "convmixer", "--set",
           "h=64..96:32", "d=2", "p=4", "k=3", "--trials", "6", "--epochs", "1",
           "--subset", "1000", "--val-size", "500", "--workers", "2", "--device", "cpu",
           "--sampler", "random", "--data", str(CIFAR_ARCHIVE)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env_for(tmp_path),
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "every architecture of the space" in out.stderr
    ts = trials(tmp_path, "twins")
    trained = [t for t in ts if t.user_attrs.get("seconds") is not None]
    hashes = [t.user_attrs["arch_hash"] for t in trained]
    assert len(hashes) == len(set(hashes)) == 4, hashes  # each trained exactly once
    study = optuna.load_study(study_name="twins", storage=f"sqlite:///{tmp_path}/optuna.db")
    best = {}  # Optuna's best trials, one per architecture (its best)
    for t in study.best_trials:
        h = t.user_attrs["arch_hash"]
        if h not in best or t.values[0] > best[h].values[0]:
            best[h] = t
    front = json.loads(subprocess.run([PATCHNAS, "search", "pareto", "twins", "--json"],
                                      capture_output=True, text=True,
                                      env=env_for(tmp_path)).stdout)
    assert {m["arch_hash"] for m in front} == set(best)
    assert {m["trial"] for m in front} <= {t.number for t in trained}
    status = json.loads(subprocess.run([PATCHNAS, "search", "status", "twins", "--json"],
                                       capture_output=True, text=True,
                                       env=env_for(tmp_path)).stdout)
    assert status["finished"] == 4 and status["exhausted"] and status["eta_seconds"] == 0


def _started(workspace, name):
    return any(t.state == TrialState.RUNNING and t.user_attrs.get("curve")
               for t in trials(workspace, name))


def _start_long_study(workspace, name, stderr=subprocess.PIPE, while_starting=None):
    """Start a study of 4 trials x 3 epochs and wait until a trial is training;
    `while_starting(cmd)` runs once both workers live, before their trials train."""
    cmd = [PATCHNAS, "search", "run", "--name", name, *LONG_SPACE, "--trials", "4",
           "--epochs", "3", "--subset", "1000", "--val-size", "250", "--workers", "2", "--device",
           "cpu", "--pruner", "none", "--data", str(CIFAR_ARCHIVE)]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True,
                           env=env_for(workspace))
    wait_for(lambda: len(worker_pids(name)) == 2, 60, "two workers")
    if while_starting is not None:
        while_starting(cmd)
    assert wait_for(lambda: _started(workspace, name), 120, ignore=(KeyError,))
    return cmd, run


def _resume_and_check(cmd, workspace, name, completed_before):
    again = subprocess.run(cmd, capture_output=True, text=True, env=env_for(workspace),
                           timeout=300)
    assert again.returncode == 0, again.stderr
    ts = trials(workspace, name)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
               for t in ts), [t.state for t in ts]
    done = [t for t in ts if state_of(t) in ("COMPLETE", "PRUNED")]  # trained, not reused
    assert len(done) == 4 and len(done) >= completed_before
    return ts


@HEAVY  # whole studies of worker processes: in the second lane, for balance
def test_a_worker_killed_by_the_os_is_reported_requeued_and_replaced(cifar, tmp_path):
    name = "killed"
    log = tmp_path / "driver.log"
    with open(log, "w") as err:
        _, run = _start_long_study(tmp_path, name, stderr=err)
        assert len(worker_pids(name)) == 2
        # the worker of a trial that has trained an epoch (so its checkpoint is on disk)
        victim_trial = next(t for t in trials(tmp_path, name) if t.state == TrialState.RUNNING
                            and t.user_attrs.get("curve"))
        victim = int(victim_trial.user_attrs["worker"].rpartition(":")[2])
        assert victim in worker_pids(name)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: "killed by signal 9" in log.read_text(), 5,
                 "the driver's report of the killed worker")
        assert time.monotonic() - killed < 5
        report = log.read_text()
        assert "likely out of memory" in report
        assert f"trial {victim_trial.number} is queued again" in report
        wait_for(lambda: "started a new worker" in log.read_text(), 5, "a replacement")
        # the replacement (or the other worker) picks the retry up at once, no heartbeat wait
        wait_for(lambda: len(worker_pids(name)) == 2, 10, "two workers again")
        run.communicate(timeout=300)
    assert run.returncode == 0, log.read_text()
    ts = trials(tmp_path, name)
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    assert ts[victim_trial.number].user_attrs["reason"].startswith("its worker died")
    retry = next(t for t in ts if t.user_attrs.get("retry_of") == victim_trial.number)
    assert retry.state == TrialState.COMPLETE
    # the retry resumed from the checkpoint, and its curve still holds every epoch
    assert [c["epoch"] for c in retry.user_attrs["curve"]] == [1, 2, 3]
    assert sum(state_of(t) == "COMPLETE" for t in ts) == 4  # trained; reused twins are free
    from mlflow import MlflowClient

    from search.study.workspace import default_tracking_uri

    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    run_of_retry = client.get_run(retry.user_attrs["mlflow_run_id"])
    assert run_of_retry.info.run_id != victim_trial.user_attrs["mlflow_run_id"]
    assert run_of_retry.info.run_name.startswith(f"t{retry.number:04d} ")
    assert run_of_retry.data.tags["retry_of"] == str(victim_trial.number)
    steps = client.get_metric_history(run_of_retry.info.run_id, "val_acc")
    assert sorted(m.step for m in steps) == [1, 2, 3]
    listing = subprocess.run([PATCHNAS, "search", "list", "--json"], capture_output=True,
                             text=True, env=env_for(tmp_path))
    assert json.loads(listing.stdout)[0]["trials"] == 4  # retries are not counted twice


@HEAVY  # whole studies of worker processes: in the second lane, for balance
def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(cifar, tmp_path):
    name = "interrupted"

    def refused_twice(cmd):  # a second driver is refused while the first one's workers live
        twice = subprocess.run(cmd, capture_output=True, text=True, env=env_for(tmp_path),
                               timeout=120)
        assert twice.returncode == 2 and "already has 2 worker(s) running" in twice.stderr
        assert len(twice.stderr.strip().splitlines()) == 1

    cmd, run = _start_long_study(tmp_path, name, while_starting=refused_twice)
    completed_then = sum(state_of(t) == "COMPLETE" for t in trials(tmp_path, name))
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    ts = trials(tmp_path, name)
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    assert [t for t in ts if t.state == TrialState.WAITING]  # queued again
    _resume_and_check(cmd, tmp_path, name, completed_then)


@HEAVY  # whole studies of worker processes: in the second lane, for balance
def test_sigterm_of_the_driver_stops_it_like_ctrl_c(cifar, tmp_path):
    name = "terminated"
    _, run = _start_long_study(tmp_path, name)
    run.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    _, err = run.communicate(timeout=30)
    assert run.returncode == 130 and "interrupted" in err, err
    assert time.monotonic() - stopped < 30
    wait_for(lambda: not worker_pids(name), 5, "no worker left")  # it waited for them
    ts = trials(tmp_path, name)
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    assert [t for t in ts if t.state == TrialState.WAITING]  # queued again
    from mlflow import MlflowClient

    from search.study.workspace import default_tracking_uri

    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    experiment = client.get_experiment_by_name(name)
    parent = client.search_runs([experiment.experiment_id],
                                filter_string="tags.`patchnas.role` = 'study'")[0]
    assert parent.info.status == "KILLED"


@HEAVY  # whole studies of worker processes: in the second lane, for balance
def test_workers_die_with_a_killed_driver(cifar, tmp_path):
    name = "orphaned"
    _, run = _start_long_study(tmp_path, name)
    assert len(worker_pids(name)) == 2
    run.kill()  # SIGKILL: the driver cannot stop anything itself
    run.communicate(timeout=30)
    wait_for(lambda: not worker_pids(name), 10, "the workers to die with their driver")
    # they stopped cleanly: their trials are queued again, none left RUNNING
    wait_for(lambda: not [t for t in trials(tmp_path, name) if t.state == TrialState.RUNNING],
             10, "no RUNNING trial")
    assert [t for t in trials(tmp_path, name) if t.state == TrialState.WAITING]
