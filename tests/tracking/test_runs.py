"""MLflow layout of a study run with four workers at once on SQLite (real MLflow)."""

import json
import os
import subprocess
import sys

from mlflow import MlflowClient

from search.cli import main
from search.study import load_study
from tracking.runs import default_uri


def test_one_parent_and_a_child_per_trial_with_curves_and_pareto_tags(tmp_path, tiny_data,
                                                                      capsys, monkeypatch):
    monkeypatch.setenv("PATCHNAS_THREADS", "1")
    ws = tmp_path / "ws"
    n = 12
    code = main(["search", "run", "--name", "tracked", "--family", "convmixer", "--set",
                 "h=16..64:16", "d=1..2", "p=2,4", "k=3", "--trials", str(n), "--epochs", "3",
                 "--val-size", "40", "--workers", "4", "--device", "cpu", "--data",
                 str(tiny_data), "--workspace", str(ws), "--json"])
    assert code == 0
    front = json.loads(capsys.readouterr().out)

    client = MlflowClient(tracking_uri=default_uri(ws))
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("patchnas.role") == "study"]
    children = [r for r in runs if r.data.tags.get("patchnas.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.metrics["front_size"] == len(front)
    assert len(children) == n  # four workers logging at once lost nothing
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert not [c for c in children if c.info.status == "RUNNING"]

    study = load_study("tracked", f"sqlite:///{ws.resolve()}/optuna.db")
    by_run = {t.user_attrs["mlflow_run_id"]: t for t in study.trials
              if "mlflow_run_id" in t.user_attrs}
    # a trial without a run is only one that lost the race for the budget to another worker
    untracked = [t for t in study.trials if "mlflow_run_id" not in t.user_attrs]
    assert all(t.user_attrs["reason"].startswith("surplus") for t in untracked)
    expected = {"COMPLETE": "FINISHED", "REUSED": "FINISHED", "PRUNED": "KILLED",
                "FAIL": "FAILED"}
    for child in children:
        trial = by_run[child.info.run_id]
        state = child.data.tags["state"]
        assert child.info.status == expected[state]
        history = client.get_metric_history(child.info.run_id, "val_acc")
        curve = trial.user_attrs.get("curve", [])
        assert [m.step for m in history] == list(range(1, len(curve) + 1))
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
    assert {"front.csv", "front.md", "pareto.png", "pareto.html", "hypervolume.png",
            "importances.png"} <= artifacts
    table = client.download_artifacts(parent.info.run_id, "front.csv", str(tmp_path))
    rows = open(table).read().strip().splitlines()
    assert rows[0].startswith("trial,label,val_acc,params") and len(rows) == len(front) + 1


def test_no_tracking_works_the_same_without_importing_mlflow(tmp_path, tiny_data):
    ws = tmp_path / "ws"
    code = f"""
import sys
from search.cli import main
code = main(["search", "run", "--name", "quiet", "--family", "convmixer", "--set", "h=16",
             "d=1", "p=4", "k=3", "--trials", "2", "--epochs", "1", "--val-size", "40",
             "--device", "cpu", "--data", {str(tiny_data)!r}, "--workspace", {str(ws)!r},
             "--no-tracking"])
assert code == 0, code
# and a worker in this very process, on the grown study, without tracking
from search.study import BUDGET_ATTR, load_study
from search.worker import run_worker
url = "sqlite:///{ws.resolve()}/optuna.db"
load_study("quiet", url).set_user_attr(BUDGET_ATTR, 3)
assert run_worker("quiet", url, device="cpu", workspace={str(ws)!r}, tracking_uri=None) == 1
assert "mlflow" not in sys.modules
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PATCHNAS_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert not (ws / "mlflow.db").exists()
