"""Export, seed confirmation, promotion and proxy fidelity on a real (tiny) study."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import yaml
from mlflow import MlflowClient

from search.cli import main
from search.promote.fidelity import kendall_tau_b, spearman
from search.promote.select import Selection, select
from search.study import estimators
from search.study.record import TrialRecord, confirmations, full_results
from search.study.storage import redact
from search.study.studies import load_spec, load_study
from search.study.workspace import default_tracking_uri as default_uri
from spaces.errors import UserError
from tests.helpers import HEAVY, RAY, TINY, free_port, ray_head
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
    full = {n: runs[-1] for n, runs in full_results(study).items()}  # one run each
    assert set(full) == {item["trial"] for item in launched}
    assert all(len(runs) == 1 for runs in full_results(study).values())
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

    # the runs were cut at 2 steps: left out, unless asked for
    assert main(["search", "fidelity", "ex", "--workspace", str(study_ws)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 run(s) left out: partial: 2 of" in err[0]
    assert main(["search", "fidelity", "ex", "--workspace", str(study_ws), "--json",
                 "--include-partial"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 3 and report["partial"] == 3 and report["left_out"] == []
    # the report's pairs are the written-back results, and its statistics are theirs
    assert {p["trial"]: p["full_top1"] for p in report["pairs"]} == \
        {n: f["top1"] for n, f in full.items()}
    x = [p["proxy_val_acc"] for p in report["pairs"]]
    y = [p["full_top1"] for p in report["pairs"]]
    for name, stat in (("kendall_tau", kendall_tau_b), ("spearman", spearman)):
        assert report[name]["value"] == pytest.approx(stat(x, y), nan_ok=True)
    # and per rank estimator, from the scores each trial stores with its curve
    by = report["estimators"]
    assert by["epochs"] == 1 and set(by) == {"epochs", *estimators.ESTIMATORS}
    study = load_study("ex", url(study_ws))
    records = [TrialRecord.from_trial(study.trials[p["trial"]]) for p in report["pairs"]]
    assert all(r.estimates == estimators.scores(r.curve, 1) for r in records)
    tse = [-r.curve[0]["train_loss"] for r in records]
    assert by["tse"]["kendall_tau"]["value"] == pytest.approx(kendall_tau_b(tse, y),
                                                              nan_ok=True)
    assert by["tse"]["n"] == 3
    assert main(["search", "fidelity", "ex", "--workspace", str(study_ws),
                 "--include-partial"]) == 0
    shown = capsys.readouterr().out
    assert "rank estimators of the proxy's curve (its first 1 epoch(s)):" in shown
    assert f"tse       Kendall {by['tse']['kendall_tau']['value']:+.3f}" in shown


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
    assert re.search(r"only [12] distinct trained architecture\(s\): grow it", err[0]), err


@pytest.fixture
def ray_jobs():
    """A Ray head with its dashboard (the job server) and `patchnas` on its PATH."""
    port = free_port()
    with ray_head("--include-dashboard=true", f"--dashboard-port={port}",
                  num_cpus=2) as (_, env):
        yield f"http://127.0.0.1:{port}", env


@HEAVY
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
    assert item["trial"] in full and full[item["trial"]][-1]["image_size"] == 96


@pytest.fixture(scope="module")
def folder_64px_20_classes(tmp_path_factory):
    """A user's own ImageFolder: 20 classes of 64x64 images, 3 train and 1 val each."""
    from PIL import Image

    root = tmp_path_factory.mktemp("own") / "data"
    for split, n in (("train", 3), ("val", 1)):
        for c in range(20):
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (64, 64), (c * 12, i * 60, 100)).save(folder / f"{i}.png")
    return root


def test_the_target_follows_the_full_data(study_ws, tmp_path, folder_64px_20_classes, capsys):
    import spaces
    from spaces.cost import target_and_proxy_costs

    out = tmp_path / "exports"
    assert main(["promote", "ex", "--select", "knee", "--full-data",
                 str(folder_64px_20_classes), "--launch", "print", "--out", str(out),
                 "--workspace", str(study_ws)]) == 0
    [command] = capsys.readouterr().err.strip().splitlines()
    path = next(p for p in command.split() if p.endswith(".yaml"))
    assert path.endswith("-64px.yaml")
    doc = yaml.safe_load(open(path).read())
    assert doc["model"]["image_size"] == 64 and doc["data"]["num_classes"] == 20
    target = doc["provenance"]["costs"]["target"]
    assert target["image_size"] == 64 and target["num_classes"] == 20
    family = spaces.get(doc["model"]["family"])
    proxy = family.config_of(doc["model"]["proxy_config"])
    expected = target_and_proxy_costs(family, proxy, 64, 20)
    assert target["params"] == expected["params"] and target["macs"] == expected["macs"]
    # given explicitly, the flags win over the data
    assert main(["export", "ex", "--select", "knee", "--full-data",
                 str(folder_64px_20_classes), "--target-size", "96", "--target-classes", "7",
                 "--out", str(out), "--workspace", str(study_ws), "--json"]) == 0
    [item] = json.loads(capsys.readouterr().out)
    doc = yaml.safe_load(open(item["path"]).read())
    assert doc["model"]["image_size"] == 96 and doc["data"]["num_classes"] == 7


def test_train_full_refuses_a_config_for_other_classes(study_ws, tmp_path, imagenette_small,
                                                       folder_64px_20_classes, capsys):
    assert main(["export", "ex", "--select", "knee", "--full-data",
                 str(folder_64px_20_classes), "--out", str(tmp_path), "--workspace",
                 str(study_ws), "--json"]) == 0
    [item] = json.loads(capsys.readouterr().out)
    args = ["train", "full", item["path"], "--data", str(imagenette_small), "--device", "cpu",
            "--no-tracking", "--no-progress", "--workers", "0", "--out", str(tmp_path / "o"),
            "--workspace", str(study_ws)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is for 20 classes but" in err[0] and "has 4" in err[0]
    assert "--num-classes-from-data" in err[0]
    assert main([*args, "--num-classes-from-data", "--max-steps", "1", "--epochs", "1",
                 "--batch-size", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_classes"] == 4


def test_a_search_on_64px_data_says_what_it_trained_at(tmp_path, folder_64px_20_classes,
                                                       capsys):
    """Trials train at the data's size and classes: the record, pareto, the MLflow run and
    the proxy costs say 64 px and 20 classes, not 32 and 10."""
    import spaces
    from spaces.cost import target_and_proxy_costs

    ws = tmp_path / "ws"
    assert main(["search", "run", "--name", "own", "--family", "convmixer", "--set", "h=16",
                 "d=1", "p=4", "k=3", "--trials", "1", "--epochs", "1", "--val-size", "20",
                 "--device", "cpu", "--data", str(folder_64px_20_classes),
                 "--workspace", str(ws)]) == 0
    capsys.readouterr()
    assert main(["search", "pareto", "own", "--workspace", str(ws), "--json"]) == 0
    [member] = json.loads(capsys.readouterr().out)
    assert member["fidelity"]["image_size"] == 64 and member["fidelity"]["num_classes"] == 20
    assert member["fidelity"]["train_images"] == 40 and member["fidelity"]["val_images"] == 20
    family = spaces.get("convmixer")
    proxy = family.config_of(member["config"])
    expected = target_and_proxy_costs(family, proxy, 224, 1000, 64, 20)
    assert member["costs"]["proxy_params"] == expected["proxy_params"]
    assert member["costs"]["proxy_macs"] == expected["proxy_macs"]
    trial = load_study("own", url(ws)).trials[0]
    assert trial.user_attrs["images_per_s"] > 0
    client = MlflowClient(tracking_uri=default_uri(ws))
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.data.params["image_size"] == "64" and run.data.params["num_classes"] == "20"
    assert run.data.metrics["images_per_s"] > 0


def test_the_proxy_size_is_a_choice_checked_against_the_space(tmp_path, folder_64px_20_classes,
                                                               capsys):
    """--proxy-size trains at a smaller size than the data's (downsampled on the device);
    --set values stay in 32 px terms, and one with no whole counterpart is refused."""
    data = str(folder_64px_20_classes)
    assert main(["train", "proxy", "--family", "convmixer", "--set", "h=16", "d=1", "p=2",
                 "k=3", "--epochs", "1", "--val-size", "20", "--device", "cpu", "--data", data,
                 "--proxy-size", "32", "--workspace", str(tmp_path / "ws"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["data"]["image_size"] == 32 and result["config"]["p"] == 2  # 32 px: as given
    run = ["search", "run", "--family", "convmixer", "--trials", "1", "--epochs", "1",
           "--val-size", "20", "--device", "cpu", "--data", data, "--no-tracking",
           "--workspace", str(tmp_path / "ws")]
    assert main([*run, "--name", "small", "--set", "h=16", "d=1", "p=2", "k=3",
                 "--proxy-size", "32"]) == 0
    capsys.readouterr()
    assert main(["search", "pareto", "small", "--workspace", str(tmp_path / "ws"),
                 "--json"]) == 0
    [member] = json.loads(capsys.readouterr().out)
    assert member["fidelity"]["image_size"] == 32
    for size, words in (("16", "p=1 (in 32 px terms) is p=0.5 at 16 px, not a whole patch"),
                        ("128", "the data's images are 64 px")):
        assert main([*run, "--name", f"bad{size}", "--set", "h=16", "d=1", "p=1,2", "k=3",
                     "--proxy-size", size]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
