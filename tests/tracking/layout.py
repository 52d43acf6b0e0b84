"""What every study's MLflow layout must hold, whichever backend ran it."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from search.study import load_study
from tracking.runs import default_uri

EXPECTED_STATUS = {"COMPLETE": "FINISHED", "REUSED": "FINISHED", "INFEASIBLE": "FINISHED",
                   "PRUNED": "KILLED", "FAIL": "FAILED"}


def check_study_runs(ws: Path, name: str, front: list[dict]) -> list:
    """One FINISHED parent; one child per tracked trial with faithful status, its curve
    step by step, params and provenance tags; Pareto tags equal `front`. Returns the
    children."""
    client = MlflowClient(tracking_uri=default_uri(ws))
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
    by_run = {t.user_attrs["mlflow_run_id"]: t for t in study.trials
              if "mlflow_run_id" in t.user_attrs}
    assert len(by_run) == len(children)  # one run per trial, retries included
    # a trial without a run is only one that lost the race for the budget to another worker
    untracked = [t for t in study.trials if "mlflow_run_id" not in t.user_attrs]
    assert all(t.user_attrs["reason"].startswith("surplus") for t in untracked)
    for child in children:
        trial = by_run[child.info.run_id]
        state = child.data.tags["state"]
        assert child.info.status == EXPECTED_STATUS[state]
        history = client.get_metric_history(child.info.run_id, "val_acc")
        curve = trial.user_attrs.get("curve", [])
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
    assert {"front.csv", "front.md", "pareto.png", "pareto.html",
            "hypervolume.png"} <= artifacts, artifacts
    return children
