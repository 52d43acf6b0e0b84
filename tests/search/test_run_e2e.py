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

from tests.helpers import CIFAR_ARCHIVE, pids_where, wait_for

PATCHNAS = str(Path(sys.executable).with_name("patchnas"))
SPACE = ["--family", "convmixer", "--set", "h=64..96", "d=2..3", "p=4", "k=3,5"]


def env_for(workspace):
    return {**os.environ, "PATCHNAS_WORKSPACE": str(workspace),
            "PATCHNAS_HEARTBEAT_SECONDS": "1", "PATCHNAS_GRACE_SECONDS": "4"}


def trials(workspace, name):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workspace}/optuna.db")
    return study.get_trials(deepcopy=False)


def worker_pids(name):
    return pids_where(lambda argv: b"worker" in argv and name.encode() in argv
                      and b"search" in argv)


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


def _started(workspace, name):
    return any(t.state == TrialState.RUNNING and t.user_attrs.get("curve")
               for t in trials(workspace, name))


def _start_long_study(workspace, name):
    """Start a study of 4 trials x 4 epochs and wait until a trial is training."""
    cmd = [PATCHNAS, "search", "run", "--name", name, *SPACE, "--trials", "4", "--epochs",
           "4", "--subset", "3000", "--val-size", "1000", "--workers", "2", "--device",
           "cpu", "--pruner", "none", "--data", str(CIFAR_ARCHIVE)]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env_for(workspace))
    assert wait_for(lambda: _started(workspace, name), 120, ignore=(KeyError,))
    return cmd, run


def _resume_and_check(cmd, workspace, name, completed_before):
    again = subprocess.run(cmd, capture_output=True, text=True, env=env_for(workspace),
                           timeout=300)
    assert again.returncode == 0, again.stderr
    ts = trials(workspace, name)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
               for t in ts), [t.state for t in ts]
    done = [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 4 and len(done) >= completed_before
    return ts


def test_kill_9_of_a_worker_mid_trial_then_resume(cifar, tmp_path):
    name = "killed"
    cmd, run = _start_long_study(tmp_path, name)
    victims = worker_pids(name)
    assert len(victims) == 2
    os.kill(victims[0], signal.SIGKILL)
    completed_then = sum(t.state == TrialState.COMPLETE for t in trials(tmp_path, name))
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    ts = trials(tmp_path, name)
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    lost = [t for t in ts if t.state == TrialState.FAIL]
    assert lost, "the killed worker's trial is failed by its stale heartbeat"
    retried = [t for t in ts if t.system_attrs.get("failed_trial") is not None]
    assert retried and all(t.state != TrialState.FAIL for t in retried)
    _resume_and_check(cmd, tmp_path, name, completed_then)


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(cifar, tmp_path):
    name = "interrupted"
    cmd, run = _start_long_study(tmp_path, name)
    completed_then = sum(t.state == TrialState.COMPLETE for t in trials(tmp_path, name))
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    ts = trials(tmp_path, name)
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    assert [t for t in ts if t.state == TrialState.WAITING]  # queued again
    _resume_and_check(cmd, tmp_path, name, completed_then)
