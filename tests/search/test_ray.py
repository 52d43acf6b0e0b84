"""`--backend ray`: the same study, scheduled by a real Ray (local instance or a two-node
cluster on loopback): layout parity, schedulers, a killed Ray worker, a killed driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.cli import main
from search.study import load_study
from spaces.errors import UserError
from tests.conftest import need
from tests.search.conftest import TINY
from tests.tracking.layout import check_study_runs

pytestmark = pytest.mark.slow
SETS = [f"{k}={v}" for k, v in TINY["overrides"].items()]
RAY = str(Path(sys.executable).with_name("ray"))


def study_trials(ws: Path, name: str):
    return load_study(name, f"sqlite:///{ws.resolve()}/optuna.db").trials


def no_stopped_trial_is_complete(trials, epochs: int) -> None:
    for t in trials:
        curve = t.user_attrs.get("curve", [])
        if t.state == TrialState.COMPLETE and t.user_attrs["state"] == "COMPLETE":
            assert len(curve) == epochs, t.number
        if t.state == TrialState.PRUNED:  # by the rule, or the reuse of a pruned trial
            assert t.user_attrs["state"] in ("PRUNED", "REUSED"), t.number
            assert 0 < len(curve) < epochs, t.number


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
    no_stopped_trial_is_complete(trials, 4)
    for t in trials:
        if t.state == TrialState.PRUNED and "ASHA" in (t.user_attrs.get("reason") or ""):
            epoch = int(t.user_attrs["reason"].rsplit(" ", 1)[1])
            assert len(t.user_attrs["curve"]) == epoch


def _slow_study(name: str, ws: Path, data: Path, extra: list[str]) -> list[str]:
    """A study whose trials take seconds each, so something can be killed mid-trial."""
    return [sys.executable, "-m", "search.cli", "search", "run", "--name", name, "--family",
            "convmixer", "--set", "h=96", "d=3", "p=2", "k=3,5,7", "--trials", "4",
            "--epochs", "6", "--pruner", "none", "--val-size", "40", "--device", "cpu",
            "--data", str(data), "--workspace", str(ws), "--backend", "ray", "--no-tracking",
            *extra]


def _wait(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _ray_trial_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"ray::ImplicitFunc"):
            pids.append(int(proc.name))
    return pids


def _finished_once(trials, budget: int) -> None:
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == budget  # none lost, none repeated
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get("reason") for t in failed)


def test_killing_the_driver_then_rerunning_keeps_finished_trials(tiny_data, tmp_path):
    ws = tmp_path / "ws"
    cmd = _slow_study("kd", ws, tiny_data, ["--workers", "1"])
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def one_complete():
        try:
            return any(t.state == TrialState.COMPLETE for t in study_trials(ws, "kd"))
        except UserError:  # the study is not created yet
            return False

    _wait(one_complete, 240, "a finished trial")
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


@pytest.fixture
def ray_cluster():
    """A head node and a second node process on loopback (`ray start`), with a token that
    lives only in the env of the processes that talk to it (Ray caches one per process)."""
    port = 6379 + os.getpid() % 1000
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex,
           "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=1",
                           "--include-dashboard=false", "--disable-usage-stats"],
                          capture_output=True, text=True, timeout=180, env=env)
    assert head.returncode == 0, head.stderr
    try:
        node = subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1"],
                              capture_output=True, text=True, timeout=180, env=env)
        assert node.returncode == 0, node.stderr
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120, env=env)


def test_a_killed_ray_worker_on_a_two_node_cluster_is_retried(tiny_data, tmp_path,
                                                                ray_cluster):
    url = os.environ.get("PATCHNAS_TEST_POSTGRES")
    need(bool(url), "set PATCHNAS_TEST_POSTGRES to a PostgreSQL URL (.ci/run starts one)")
    address, env = ray_cluster
    name = f"rk{uuid.uuid4().hex[:8]}"
    ws = tmp_path / "ws"
    cmd = _slow_study(name, ws, tiny_data, ["--workers", "2", "--ray-address", address,
                                            "--ray-storage", str(tmp_path / "shared"),
                                            "--storage", url])
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env=env)
    _wait(lambda: bool(_ray_trial_pids()), 240, "a running Ray trial")
    time.sleep(3)  # into its epochs
    victim = _ray_trial_pids()[0]
    os.kill(victim, signal.SIGKILL)
    _, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err
    trials = optuna.load_study(study_name=name, storage=url).trials
    _finished_once(trials, 4)
    assert max(t.user_attrs.get("ray_attempt", 0) for t in trials) >= 2  # retried by Ray


def test_several_nodes_need_shared_storage(tiny_data, tmp_path, ray_cluster):
    address, env = ray_cluster
    out = subprocess.run([sys.executable, "-m", "search.cli", "search", "run", "--name",
                          "refused", "--family", "convmixer", "--set", *SETS, "--trials", "2",
                          "--epochs", "1", "--val-size", "40", "--device", "cpu", "--data",
                          str(tiny_data), "--workspace", str(tmp_path / "ws"), "--backend",
                          "ray", "--ray-address", address, "--no-tracking"],
                         capture_output=True, text=True, env=env, timeout=300)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 2 and "2 nodes: give --ray-storage" in last, out.stderr
