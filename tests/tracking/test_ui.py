"""`patchnas ui` serves the study's runs; headless Chromium renders them (and a screenshot)."""

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from mlflow import MlflowClient

from search.cli import main
from search.study.workspace import default_tracking_uri as default_uri
from tests.helpers import CHROMIUM_FLAGS, free_port, need, wait_http

PATCHNAS = str(Path(sys.executable).with_name("patchnas"))


def test_ui_shows_the_study_runs_in_chromium(tmp_path, tiny_data, capsys, monkeypatch):
    chromium = shutil.which("chromium")
    need(chromium is not None, "Debian's chromium is not installed (.ci/run installs it)")
    monkeypatch.setenv("PATCHNAS_THREADS", "1")
    ws = tmp_path / "ws"
    assert main(["search", "run", "--name", "uistudy", "--family", "convmixer", "--set",
                 "h=16..32:16", "d=1", "p=4", "k=3", "--trials", "3", "--epochs", "2",
                 "--val-size", "40", "--device", "cpu", "--data", str(tiny_data),
                 "--workspace", str(ws)]) == 0
    capsys.readouterr()
    experiment = MlflowClient(default_uri(ws)).get_experiment_by_name("uistudy")
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        ui = subprocess.Popen([PATCHNAS, "ui", "--port", str(port), "--workspace", str(ws)],
                              stdout=out, stderr=out)
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_http(f"{base}/health", 90), "the MLflow UI did not come up"
        # the REST API behind the page lists the study's runs
        body = json.dumps({"experiment_ids": [experiment.experiment_id]}).encode()
        req = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert len(json.load(r)["runs"]) == 4  # the parent and three trials
        page = f"{base}/#/experiments/{experiment.experiment_id}/runs"
        profile = tmp_path / "chromium-profile"
        dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                              "--dump-dom", page], capture_output=True, text=True,
                             timeout=120)
        assert "uistudy" in dom.stdout, dom.stderr[-2000:]
        assert "<strong>4</strong> matching runs" in dom.stdout
        shot = Path(os.environ.get("PATCHNAS_SCREENSHOT_DIR", tmp_path)) / "mlflow-ui.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                        f"--screenshot={shot}", page], capture_output=True, timeout=120)
        assert shot.exists() and shot.stat().st_size > 10_000
    finally:
        ui.terminate()
        ui.wait(timeout=60)
    assert f"http://127.0.0.1:{port}" in log.read_text()
    assert not wait_http(f"http://127.0.0.1:{port}/health", 3)  # the server went with it


def test_ui_without_runs_is_one_line(tmp_path, capsys):
    assert main(["ui", "--workspace", str(tmp_path)]) == 2
    assert "no MLflow runs" in capsys.readouterr().err




def test_ui_study_prints_the_url_of_that_studys_runs(tmp_path):
    ws = tmp_path / "ws"
    uri = default_uri(ws)
    from tracking.runs import StudyRuns

    runs = StudyRuns(uri, "mine")
    runs.parent()
    port = free_port()
    ui = subprocess.Popen([PATCHNAS, "ui", "mine", "--port", str(port), "--workspace",
                           str(ws)], stderr=subprocess.PIPE, text=True)
    try:
        first = ui.stderr.readline()
        assert f"http://127.0.0.1:{port}/#/experiments/{runs.experiment_id}/runs" in first
        # (the page itself is rendered by the Chromium test above)
        assert MlflowClient(uri).get_experiment(runs.experiment_id).tags[
            "mlflow.experimentKind"] == "custom_model_development"  # the runs view
    finally:
        ui.terminate()
        ui.wait(timeout=60)
    missing = subprocess.run([PATCHNAS, "ui", "other", "--workspace", str(ws)],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no MLflow experiment for study other" in missing.stderr
