"""MLflow layout of a study run with four workers at once on SQLite (real MLflow)."""

import json
import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from search.cli import main
from search.study.record import TrialRecord
from search.study.results import state_of
from search.study.studies import load_study
from search.study.workspace import default_tracking_uri as default_uri
from tests.helpers import check_study_runs


def test_one_parent_and_a_child_per_trial_with_curves_and_pareto_tags(tmp_path, tiny_data,
                                                                      capsys, monkeypatch):
    monkeypatch.setenv("PATCHNAS_THREADS", "1")
    ws = tmp_path / "ws"
    n = 12
    code = main(["search", "run", "--name", "tracked", "--family", "convmixer", "--set",
                 "h=16..64:16", "d=1..2", "p=2,4", "k=3", "--trials", str(n), "--epochs", "3",
                 "--val-size", "40", "--workers", "4", "--device", "cpu", "--pruner", "none",
                 "--data",
                 str(tiny_data), "--workspace", str(ws), "--json"])
    assert code == 0
    front = json.loads(capsys.readouterr().out)

    children = check_study_runs(ws, "tracked", front)
    trials = load_study("tracked", f"sqlite:///{ws.resolve()}/optuna.db").trials
    # four workers logging at once lost nothing: a run for each trial that ran (n trained,
    # and the twins that reused their results)
    ran = [t for t in trials if state_of(t) != "DISCARDED"]
    assert len(children) == len(ran)
    assert sum(state_of(t) in ("COMPLETE", "PRUNED") for t in ran) == n
    client = MlflowClient(tracking_uri=default_uri(ws))
    parent = client.get_run(children[0].data.tags["mlflow.parentRunId"])
    # (no pruner: twelve trained trials, enough for fANOVA whatever the workers' race)
    assert "importances.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    table = client.download_artifacts(parent.info.run_id, "front.csv", str(tmp_path))
    rows = open(table).read().strip().splitlines()
    assert rows[0].startswith("trial,label,val_acc,params") and len(rows) == len(front) + 1
    assert rows[0].endswith(",rank_tse") and parent.data.tags["rank_by"] == "tse"
    # each trained trial's rank estimates, as metrics of its run
    r = TrialRecord.from_trial(next(t for t in ran if state_of(t) == "COMPLETE"))
    metrics = client.get_run(r.mlflow_run_id).data.metrics
    assert metrics["rank.tse"] == pytest.approx(-sum(c["train_loss"] for c in r.curve))
    assert metrics["rank.last"] == pytest.approx(r.curve[-1]["val_acc"])


def test_no_tracking_works_the_same_without_importing_mlflow(tmp_path, tiny_data):
    ws = tmp_path / "ws"
    code = f"""
import sys
from search.cli import main
code = main(["search", "run", "--name", "quiet", "--family", "convmixer", "--set", "h=16,32",
             "d=1", "p=4", "k=3", "--trials", "2", "--epochs", "1", "--val-size", "40",
             "--device", "cpu", "--data", {str(tiny_data)!r}, "--workspace", {str(ws)!r},
             "--no-tracking"])
assert code == 0, code
# and a worker in this very process, on the grown study, without tracking
from search.study.record import set_trial_budget
from search.study.studies import load_study
from search.backends.worker import run_worker
url = "sqlite:///{ws.resolve()}/optuna.db"
set_trial_budget(load_study("quiet", url), 3)
assert run_worker("quiet", url, device="cpu", workspace={str(ws)!r}, tracking_uri=None) >= 1
from search.study.results import status
assert status(load_study("quiet", url)).finished == 3
assert "mlflow" not in sys.modules
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PATCHNAS_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert not (ws / "mlflow.db").exists()
