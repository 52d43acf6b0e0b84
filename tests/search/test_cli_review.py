"""`search trials`, `search show` and `search delete` on a real (tiny) study holding a
pruned, a reused and an infeasible trial."""

import json
from dataclasses import replace

import optuna
import pytest
from mlflow import MlflowClient

from search.backends.worker import run_worker
from search.cli import main
from search.study.results import state_of
from search.study.spec import build_spec
from search.study.studies import create_or_resume, load_study
from search.study.workspace import default_tracking_uri, load_splits
from tests.helpers import TINY


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory, tiny_data):
    """A study of every kind of trial, in a workspace with an MLflow store."""
    ws = tmp_path_factory.mktemp("review")
    url = f"sqlite:///{ws}/optuna.db"
    # p=4 -> p=28 at 224 px; h=16 ~0.05M params, h=48 ~0.17M: the limit lies between
    spec = build_spec("r", {**TINY, "overrides": {"h": "16..48:16", "d": "1..2", "p": "4",
                                                  "k": "3", "act": "gelu"},
                            "epochs": 3, "max_params": 100_000, "sampler": "random"},
                      None, str(tiny_data))
    splits = load_splits(str(tiny_data), ws, val_size=spec.val_size, seed=spec.seed)
    study = create_or_resume(replace(spec, data_hash=splits.content_hash), url, 9)
    for h, d in ((16, 1), (16, 1), (48, 1)):  # trained, its twin (reused), infeasible
        study.enqueue_trial({"h": h, "d": d})
    run_worker("r", url, device="cpu", workspace=ws, tracking_uri=default_tracking_uri(ws))
    states = {state_of(t) for t in load_study("r", url).trials}
    assert {"COMPLETE", "REUSED", "INFEASIBLE", "PRUNED"} <= states, states
    return ws, url


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_trials_lists_every_trial_with_its_state_and_filters_and_sorts(reviewed, capsys):
    ws, url = reviewed
    rows = _json(capsys, ["search", "trials", "r", "--workspace", str(ws), "--json"])
    study = load_study("r", url)
    assert [r["number"] for r in rows] == [t.number for t in study.trials]
    assert [r["state"] for r in rows] == [state_of(t) for t in study.trials]
    assert all(r["label"].startswith("convmixer h") and r["params"] > 0 for r in rows)
    pruned = _json(capsys, ["search", "trials", "r", "--workspace", str(ws), "--state",
                            "pruned", "--json"])
    assert pruned and {r["state"] for r in pruned} == {"PRUNED"}
    best = _json(capsys, ["search", "trials", "r", "--workspace", str(ws), "--state",
                          "complete,pruned", "--sort", "val_acc", "--json"])
    accs = [r["val_acc"] for r in best]
    assert accs == sorted(accs, reverse=True)
    assert main(["search", "trials", "r", "--workspace", str(ws)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["#", "state", "architecture"] and len(table) == len(rows) + 1
    assert main(["search", "trials", "r", "--workspace", str(ws), "--state", "lost"]) == 2
    assert "--state LOST: choose from" in capsys.readouterr().err


@pytest.mark.parametrize("kind, why", [("PRUNED", "pruned at epoch"),
                                       ("REUSED", "reused trial 0"),
                                       ("INFEASIBLE", "infeasible: params")])
def test_show_says_why_a_trial_ended_as_it_did(reviewed, capsys, kind, why):
    ws, url = reviewed
    number = next(t.number for t in load_study("r", url).trials if state_of(t) == kind)
    d = _json(capsys, ["search", "show", "r", str(number), "--workspace", str(ws), "--json"])
    assert d["state"] == kind and d["number"] == number
    assert d["config_32px"]["p"] == 4 and d["config_target"]["p"] == 28  # 224 px target
    assert d["mlflow_run_id"] and d["costs"]["params"] > 0
    assert why in d["reason"]
    if kind == "INFEASIBLE":
        assert "over --max-params 100,000" in d["reason"] and d["values"]["params"] > 100_000
    if kind == "REUSED":
        assert d["reused_from"] == 0
    assert main(["search", "show", "r", str(number), "--workspace", str(ws)]) == 0
    assert capsys.readouterr().out.startswith(f"trial {number} of r: {kind}")


def test_show_of_a_trial_that_is_not_there_is_one_line(reviewed, capsys):
    ws, _ = reviewed
    assert main(["search", "show", "r", "99", "--workspace", str(ws)]) == 2
    assert "has no trial 99" in capsys.readouterr().err


def test_delete_asks_and_removes_only_that_study(tmp_path, tiny_data, capsys, monkeypatch):
    ws = tmp_path / "ws"
    url = f"sqlite:///{ws.resolve()}/optuna.db"
    for name in ("keep", "drop"):
        spec = build_spec(name, {**TINY, "epochs": 1}, None, str(tiny_data))
        create_or_resume(spec, url, 1)
    uri = default_tracking_uri(ws)
    from tracking.runs import StudyRuns

    for name in ("keep", "drop"):
        StudyRuns(uri, name).parent()
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["search", "delete", "drop", "--workspace", str(ws)]) == 1
    assert {s.study_name for s in optuna.get_all_study_summaries(url)} == {"keep", "drop"}
    assert main(["search", "delete", "drop", "--workspace", str(ws), "--yes"]) == 0
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["keep"]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_experiment_by_name("drop").lifecycle_stage == "deleted"
    assert client.get_experiment_by_name("keep").lifecycle_stage == "active"
    assert main(["search", "delete", "drop", "--workspace", str(ws), "--yes"]) == 2
    assert "no study 'drop'" in capsys.readouterr().err
