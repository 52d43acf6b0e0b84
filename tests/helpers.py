"""Helpers shared by the tests (test modules import from here, never from each other).

Tests that need something from outside (the shared data, a service) call `need(...)`: it skips
with a reason on a developer's machine, and fails in CI (`PATCHNAS_CI=1`, set by .ci/run),
where everything must be present.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PATCHNAS_SHARED_DATA", ROOT.parent / "shared" / "data"))
CIFAR_ARCHIVE = SHARED_DATA / "cifar10-jpeg.tar.gz"
IMAGENETTE = SHARED_DATA / "imagenette-128.tar.gz"
IN_CI = os.environ.get("PATCHNAS_CI") == "1"
RAY = str(Path(sys.executable).with_name("ray"))

# search settings for trials that train in a second on the CPU (the `tiny_data` fixture)
TINY = {"family": "convmixer", "overrides": {"h": "16..48:16", "d": "1..2", "p": "4",
                                             "k": "3"},
        "epochs": 2, "val_size": 40, "recipe": {"batch_size": 32}}
TINY_SETS = [f"{k}={v}" for k, v in TINY["overrides"].items()]

# the papers' parameter counts of the presets at 224 px, 1000 classes, and the tolerance
PUBLISHED_PARAMS = {
    "convmixer-1536-20": (51.63e6, 0.005),
    "convmixer-768-32": (21.11e6, 0.005),
    "convmixer-1024-20": (24.38e6, 0.005),
    "convmlp-s": (9.0e6, 0.02),
    "convmlp-m": (17.4e6, 0.02),
    "convmlp-l": (42.7e6, 0.02),
    "coatnet-0": (25e6, 0.05),
    "coatnet-1": (42e6, 0.05),
    "coatnet-2": (75e6, 0.05),
    "coatnet-3": (168e6, 0.05),
}


def need(condition: bool, reason: str) -> None:
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI requires it: {reason}")
    pytest.skip(reason)


def postgres_url() -> str:
    url = os.environ.get("PATCHNAS_TEST_POSTGRES", "")
    need(bool(url), "set PATCHNAS_TEST_POSTGRES to a PostgreSQL URL (.ci/run starts one)")
    return url


def mlflow_test_db() -> str:
    """The database URL an MLflow tracking store may use in tests (.ci/run makes one)."""
    url = os.environ.get("PATCHNAS_TEST_MLFLOW_DB", "")
    need(bool(url), "set PATCHNAS_TEST_MLFLOW_DB to a PostgreSQL URL (.ci/run does)")
    return url


def wait_for(predicate: Callable[[], bool], timeout: float, what: str = "",
             ignore: tuple[type[BaseException], ...] = ()) -> bool:
    """Poll `predicate` until it holds; False after `timeout` seconds, or, given `what`, an
    AssertionError naming it. Exceptions in `ignore` count as "not yet"."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if predicate():
                return True
        except ignore:
            pass
        time.sleep(0.3)
    if what:
        raise AssertionError(f"timed out waiting for {what}")
    return False


def pids_where(matches: Callable[[list[bytes]], bool]) -> list[int]:
    """The processes whose command line (argv as bytes) `matches`."""
    return [pid for pid, proc in _processes() if matches(_read(proc / "cmdline").split(b"\0"))]


def _processes() -> Iterator[tuple[int, Path]]:
    """(pid, /proc/PID) of every process."""
    return ((int(p.name), p) for p in Path("/proc").iterdir() if p.name.isdigit())


def _read(path: Path) -> bytes:
    """A /proc file's bytes; empty once its process is gone."""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def session_members(sid: int) -> list[int]:
    """The live (not zombie) processes of session `sid`."""
    pids = []
    for pid, proc in _processes():
        # after "(comm)": state, ppid, pgrp, session
        fields = _read(proc / "stat").rpartition(b")")[2].split()
        if len(fields) > 3 and fields[0] != b"Z" and int(fields[3]) == sid:
            pids.append(pid)
    return pids


def lrs_of_each_update(run) -> list[list[float]]:
    """The learning rate of each param group at every optimizer step that `run()` takes."""
    seen = []
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append([g["lr"] for g in opt.param_groups]))
    try:
        run()
    finally:
        hook.remove()
    return seen


# headless Chromium that renders a single-page app and then dumps its DOM or a screenshot
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--window-size=1600,1000", "--virtual-time-budget=20000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> bool:
    def up() -> bool:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    return wait_for(up, timeout, ignore=(OSError,))


# Tests that start Ray or share the MLflow test database (and, for balance, the end-to-end
# studies): `make test` runs them in a pytest process of their own, one after another,
# beside the rest. One at a time because `ray stop --force` (ray_head's teardown) ends every
# Ray process on the machine, in-process Ray included, and MLflow makes its schema on first
# use.
HEAVY = pytest.mark.heavy


@contextlib.contextmanager
def ray_head(*extra: str, nodes: int = 1, num_cpus: int = 1):
    """A Ray head (and `nodes - 1` more node processes) on loopback, started by `ray start`,
    with a token that lives only in the env of the processes that talk to it: Ray caches a
    token per process, and in-process Ray (the Ray backend's tests) must not inherit it.
    Yields (address, env)."""
    port = 6379 + os.getpid() % 1000
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex,
           "RAY_USAGE_STATS_ENABLED": "0"}
    for _attempt in range(2):  # on two busy cores Ray's GCS can miss its start-up deadline
        head = subprocess.run([RAY, "start", "--head", f"--port={port}",
                               f"--num-cpus={num_cpus}", "--disable-usage-stats", *extra],
                              capture_output=True, text=True, timeout=180, env=env)
        if head.returncode == 0:
            break
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120, env=env)
    assert head.returncode == 0, head.stderr
    try:
        for _ in range(nodes - 1):
            node = subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}",
                                   "--num-cpus=1"],
                                  capture_output=True, text=True, timeout=180, env=env)
            assert node.returncode == 0, node.stderr
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120, env=env)


# --- what every study's MLflow layout must hold, whichever backend ran it ---------------
EXPECTED_STATUS = {"COMPLETE": "FINISHED", "REUSED": "FINISHED", "INFEASIBLE": "FINISHED",
                   "PRUNED": "KILLED", "FAIL": "FAILED", "RETRIED": "KILLED"}


def check_study_runs(ws: Path, name: str, front: list[dict]) -> list:
    """One FINISHED parent; one child per tracked trial with faithful status, its curve
    step by step, params and provenance tags; Pareto tags equal `front`. Returns the
    children."""
    from mlflow import MlflowClient

    from search.study.record import TrialRecord
    from search.study.studies import load_study
    from search.study.workspace import default_tracking_uri

    client = MlflowClient(tracking_uri=default_tracking_uri(ws))
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("patchnas.role") == "study"]
    children = [r for r in runs if r.data.tags.get("patchnas.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.metrics["front_size"] == len(front)
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert not [c for c in children if c.info.status == "RUNNING"]

    study = load_study(name, f"sqlite:///{ws.resolve()}/optuna.db")
    records = {t.number: TrialRecord.from_trial(t) for t in study.trials}
    by_run = {r.mlflow_run_id: study.trials[n] for n, r in records.items() if r.mlflow_run_id}
    assert len(by_run) == len(children)  # one run per trial, retries included
    # a trial without a run is only one asked but never run (surplus, or a twin in flight)
    untracked = [r for r in records.values() if r.mlflow_run_id is None]
    assert all(r.state == "DISCARDED" for r in untracked), [r.reason for r in untracked]
    for child in children:
        trial = by_run[child.info.run_id]
        state = child.data.tags["state"]
        assert child.info.status == EXPECTED_STATUS[state]
        history = client.get_metric_history(child.info.run_id, "val_acc")
        curve = records[trial.number].curve
        assert sorted({m.step for m in history}) == list(range(1, len(curve) + 1))
        if curve:
            assert child.data.metrics["val_acc"] == curve[-1]["val_acc"]
        assert child.info.run_name.startswith(f"t{trial.number:04d} convmixer h")
        assert child.data.params["family"] == "convmixer"
        assert "arch.h" in child.data.params and "recipe.lr" in child.data.params
        assert child.data.tags["git_commit"] and child.data.tags["version.torch"]
    tagged = {int(c.data.tags["patchnas.trial"]) for c in children
              if c.data.tags.get("pareto") == "true"}
    assert tagged == {m["trial"] for m in front}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    # (importances.png too, once fANOVA has enough trained trials)
    assert {"front.csv", "front.md", "front_table.json", "pareto.png", "pareto.html",
            "hypervolume.png"} <= artifacts, artifacts
    # the front as an MLflow table: the layout log_table writes, marked for the UI
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "front_table.json",
                                                      tempfile.mkdtemp())).read_text())
    assert table["columns"][:3] == ["trial", "label", "val_acc"]
    assert sorted(row[0] for row in table["data"]) == sorted(m["trial"] for m in front)
    assert {"path": "front_table.json", "type": "table"} in json.loads(
        client.get_run(parent.info.run_id).data.tags["mlflow.loggedArtifacts"])
    return children
