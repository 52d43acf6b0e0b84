"""Export, seed confirmation, promotion and proxy fidelity on a real (tiny) study."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml
from mlflow import MlflowClient

from search.cli import main
from search.promote.fidelity import kendall_tau_b, spearman
from search.promote.select import Selection, select
from search.study.record import confirmations, full_results
from search.study.storage import redact
from search.study.studies import load_spec, load_study
from search.study.workspace import default_tracking_uri as default_uri
from spaces.errors import UserError
from tests.helpers import RAY, RAY_GROUP, TINY, free_port, ray_head
from trainers.full_config import FullConfig


@pytest.fixture(scope="module")
def study_ws(tmp_path_factory, tiny_data):
    ws = tmp_path_factory.mktemp("export") / "ws"
    sets = [f"{k}={v}" for k, v in TINY["overrides"].items()]
    code = main(["search", "run", "--name", "ex", "--family", "convmixer", "--set", *sets,
                 "--trials", "8", "--epochs", "1", "--val-size", "40", "--pruner", "none",
                 "--workers", "1", "--device", "cpu", "--data", str(tiny_data),
                 "--workspace", str(ws)])
    assert code == 0
    return ws


def url(ws) -> str:
    return f"sqlite:///{ws.resolve()}/optuna.db"


def params(t) -> float:
    return t.user_attrs["costs"]["params"]


def test_selections(study_ws, capsys):
    study = load_study("ex", url(study_ws))
    spec = load_spec(study)
    assert main(["search", "pareto", "ex", "--workspace", str(study_ws), "--json"]) == 0
    front = {m["trial"] for m in json.loads(capsys.readouterr().out)}
    assert {t.number for t in select(study, spec, Selection.parse("pareto"))} == front
    [knee] = select(study, spec, Selection.parse("knee"))
    assert knee.number in front
    top = select(study, spec, Selection.parse("top-k:3"))
    assert len(top) == min(3, len({t.user_attrs["arch_hash"] for t in study.trials}))
    assert {t.number for t in top[:len(front)]} == front or len(top) < len(front)

    sizes = sorted({params(t) for t in study.trials if t.values})
    limit = (sizes[0] + sizes[-1]) / 2
    [best] = select(study, spec, Selection.parse(f"best-under:params={limit}"))
    fitting = [t for t in study.trials if t.values and params(t) <= limit
               and t.user_attrs.get("state") == "COMPLETE"]
    assert params(best) <= limit and best.values[0] == max(t.values[0] for t in fitting)
    with pytest.raises(UserError, match="no trained config has params <= 1"):
        select(study, spec, Selection.parse("best-under:params=1"))
    for bad in ("front", "top-k:0", "best-under:flops=3", "best-under:params=lots"):
        with pytest.raises(UserError):
            Selection.parse(bad)
    code = main(["export", "ex", "--select", "nope", "--workspace", str(study_ws)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--select 'nope'" in err[0]


@pytest.mark.parametrize("size", [128, None])
def test_export_writes_loadable_yaml_with_provenance(study_ws, tmp_path, capsys, size):
    out = tmp_path / "out"
    flags = ["--target-size", str(size)] if size else []
    assert main(["export", "ex", "--select", "pareto", "--out", str(out), "--workspace",
                 str(study_ws), "--json", *flags]) == 0
    written = json.loads(capsys.readouterr().out)
    study = load_study("ex", url(study_ws))
    assert written and len(written) == len(select(study, load_spec(study),
                                                  Selection.parse("pareto")))
    for item in written:
        text = open(item["path"]).read()
        doc = yaml.safe_load(text)
        config = FullConfig.from_dict(doc)
        assert config.dump() == text  # round-trips
        trial = study.trials[item["trial"]]
        assert config.image_size == (size or 224)
        assert config.config.p == trial.user_attrs["config"]["p"] * (size or 224) // 32
        assert doc["model"]["proxy_config"] == trial.user_attrs["config"]
        assert doc["recipe"]["lr"] == 0.01 and doc["recipe"]["ref_batch"] == 640
        prov = doc["provenance"]
        assert prov["trial"] == trial.number and prov["study"] == "ex"
        assert prov["mlflow_run_id"] == trial.user_attrs["mlflow_run_id"]
        assert prov["storage"] == redact(url(study_ws))
        assert prov["costs"]["proxy"]["params"] == trial.user_attrs["costs"]["proxy_params"]
        assert prov["costs"]["target"]["image_size"] == (size or 224)
        assert prov["seed"] == trial.user_attrs["seed"] and prov["search"]["git_commit"]
        assert doc["command"].startswith(f"patchnas train full {item['path']} --data ")


def test_confirm_seeds_rerun_and_select_on_means(study_ws, tmp_path, tiny_data, capsys):
    out = tmp_path / "out"
    assert main(["export", "ex", "--select", "knee", "--confirm-seeds", "2", "--device",
                 "cpu", "--out", str(out), "--workspace", str(study_ws), "--json"]) == 0
    [item] = json.loads(capsys.readouterr().out)
    study = load_study("ex", url(study_ws))
    confirmed = confirmations(study)
    assert item["trial"] in confirmed
    for c in confirmed.values():  # everything the knee ever was is confirmed
        accs = [r["val_acc"] for r in c["runs"]]
        assert c["seeds_run"] == 2 and len(accs) == 3 and c["runs"][0]["original"]
        assert len({r["seed"] for r in c["runs"]}) == 3
        assert c["mean"] == pytest.approx(sum(accs) / 3)
    means = {n: c["mean"] for n, c in confirmed.items()}
    [knee] = select(study, load_spec(study), Selection.parse("knee"), means)
    assert knee.number == item["trial"]
    doc = yaml.safe_load(open(item["path"]).read())
    assert doc["provenance"]["proxy"]["confirmed"]["mean"] == confirmed[item["trial"]]["mean"]


def test_promote_trains_writes_back_registers_and_scores_fidelity(study_ws, tmp_path,
                                                                  imagenette_small, capsys):
    args = ["promote", "ex", "--select", "top-k:3", "--full-data", str(imagenette_small),
            "--target-size", "64", "--out", str(tmp_path / "exports"), "--workspace",
            str(study_ws)]
    assert main([*args, "--dry-run"]) == 0
    shown = capsys.readouterr().err.strip().splitlines()
    assert len(shown) == 3 and all(" train full " in line for line in shown)
    assert not (tmp_path / "exports").exists()  # a dry run writes nothing

    code = main([*args, "--launch", "local", "--epochs", "1", "--max-steps", "2",
                 "--batch-size", "8", "--device", "cpu", "--json"])
    launched = json.loads(capsys.readouterr().out)
    assert code == 0 and [item["exit_code"] for item in launched] == [0, 0, 0]

    study = load_study("ex", url(study_ws))
    full = full_results(study)
    assert set(full) == {item["trial"] for item in launched}
    client = MlflowClient(tracking_uri=default_uri(study_ws))
    experiment = client.get_experiment_by_name("ex")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("patchnas.role") == "study")
    fulls = [r for r in runs if r.data.tags.get("patchnas.role") == "full"]
    assert len(fulls) == 3 and all(r.info.status == "FINISHED" for r in fulls)
    for r in fulls:
        trial = study.trials[int(r.data.tags["trial"])]
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags["source_run_id"] == trial.user_attrs["mlflow_run_id"]
        assert r.data.metrics["top1"] == full[trial.number]["top1"]
        assert {a.path for a in client.list_artifacts(r.info.run_id)} >= {"config.yaml",
                                                                           "weights"}
    parent = client.get_run(parent.info.run_id)
    assert {f"full_top1.t{n:04d}" for n in full} <= set(parent.data.metrics)
    best = client.get_model_version_by_alias("patchnas-ex", "best")
    assert float(best.tags["top1"]) == max(f["top1"] for f in full.values())

    assert main(["search", "fidelity", "ex", "--workspace", str(study_ws), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 3 and report["partial"] == 3
    # the report's pairs are the written-back results, and its statistics are theirs
    assert {p["trial"]: p["full_top1"] for p in report["pairs"]} == \
        {n: f["top1"] for n, f in full.items()}
    x = [p["proxy_val_acc"] for p in report["pairs"]]
    y = [p["full_top1"] for p in report["pairs"]]
    for name, stat in (("kendall_tau", kendall_tau_b), ("spearman", spearman)):
        assert report[name]["value"] == pytest.approx(stat(x, y), nan_ok=True)


def test_fidelity_needs_three_full_results(tmp_path, tiny_data, capsys):
    ws = tmp_path / "ws"
    sets = [f"{k}={v}" for k, v in TINY["overrides"].items()]
    assert main(["search", "run", "--name", "few", "--family", "convmixer", "--set", *sets,
                 "--trials", "2", "--epochs", "1", "--val-size", "40", "--device", "cpu",
                 "--data", str(tiny_data), "--workspace", str(ws), "--no-tracking"]) == 0
    capsys.readouterr()
    assert main(["search", "fidelity", "few", "--workspace", str(ws)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs at least 3" in err[0]


@pytest.fixture
def ray_jobs():
    """A Ray head with its dashboard (the job server) and `patchnas` on its PATH."""
    port = free_port()
    with ray_head("--include-dashboard=true", f"--dashboard-port={port}",
                  num_cpus=2) as (_, env):
        yield f"http://127.0.0.1:{port}", env


@RAY_GROUP
def test_promote_submits_ray_jobs(study_ws, tmp_path, imagenette_small, ray_jobs):
    address, env = ray_jobs
    out = subprocess.run([sys.executable, "-m", "search", "promote", "ex", "--select",
                          "knee", "--launch", "ray", "--ray-address", address, "--full-data",
                          str(imagenette_small), "--target-size", "96", "--out",
                          str(tmp_path / "jobs"), "--epochs", "1", "--max-steps", "1",
                          "--batch-size", "8", "--device", "cpu", "--workspace",
                          str(study_ws), "--json"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    [item] = json.loads(out.stdout)
    deadline = time.monotonic() + 300
    while True:
        shown = subprocess.run([RAY, "job", "status", item["ray_job"], "--address", address],
                               capture_output=True, text=True, env=env, timeout=60)
        status = (shown.stdout + shown.stderr).lower()  # "job '...' succeeded"
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        assert time.monotonic() < deadline, "the Ray job did not finish"
        time.sleep(1)
    logs = subprocess.run([RAY, "job", "logs", item["ray_job"], "--address", address],
                          capture_output=True, text=True, env=env, timeout=60).stdout
    assert "succeeded" in status, logs[-2000:]
    full = full_results(load_study("ex", url(study_ws)))
    assert item["trial"] in full and full[item["trial"]]["image_size"] == 96
