"""`patchnas ui` serves the study's runs; headless Chromium renders them (and a screenshot)."""

import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from search.cli import main
from search.study.workspace import default_tracking_uri as default_uri
from tests.helpers import free_port, need, pids_where, session_members, wait_for, wait_http
from tracking.browser import Browser, chromium
from tracking.ui import EXPAND_PARENTS, artifact_page, runs_page

PATCHNAS = str(Path(sys.executable).with_name("patchnas"))


def test_ui_opens_the_study_as_a_reviewer_sees_it_in_chromium(tmp_path, tiny_data, capsys,
                                                                monkeypatch):
    need(chromium() is not None, "Debian's chromium is not installed (.ci/run installs it)")
    monkeypatch.setenv("PATCHNAS_THREADS", "1")
    ws = tmp_path / "ws"
    assert main(["search", "run", "--name", "uistudy", "--family", "convmixer", "--set",
                 "h=16..32:16", "d=1", "p=4", "k=3", "--trials", "3", "--epochs", "2",
                 "--val-size", "40", "--device", "cpu", "--data", str(tiny_data),
                 "--workspace", str(ws)]) == 0
    capsys.readouterr()
    client = MlflowClient(default_uri(ws))
    experiment = client.get_experiment_by_name("uistudy")
    eid = experiment.experiment_id
    parent = client.search_runs([eid], "tags.`patchnas.role` = 'study'")[0].info.run_id
    children = [r.info.run_name for r in client.search_runs([eid], "tags.`patchnas.role` = "
                                                                   "'trial'")]
    assert len(children) == 3
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        ui = subprocess.Popen([PATCHNAS, "ui", "uistudy", "--port", str(port), "--workspace",
                               str(ws)], stdout=out, stderr=out)
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_http(f"{base}/health", 90), "the MLflow UI did not come up"
        printed = log.read_text().split()[2]  # "MLflow UI: URL  (Ctrl-C stops it)"
        assert printed == base + runs_page(eid)
        with Browser(tmp_path / "bare-profile") as browser:  # what a bare link shows:
            browser.open(f"{base}/#/experiments/{eid}")  # the GenAI overview, not the runs
            # (3.17 shows an empty chart there, 3.18 a "send your first trace" guide)
            wait_for(lambda: "/overview" in browser.evaluate("location.href"), 60,
                     "the bare link's overview page")
            assert "matching runs" not in browser.wait_for_text("Overview", "Evaluation runs")
        with Browser(tmp_path / "profile") as browser:
            browser.open(printed)
            # the Model training runs view: its sidebar (Runs, Models, Model registry), the
            # runs table with the parent; none of the GenAI pages
            shown = browser.wait_for_text("Model registry", "4 matching runs", "uistudy")
            assert "Evaluation runs" not in shown and "No data available" not in shown
            assert "/runs" in browser.evaluate("location.href")
            assert not any(name in shown for name in children)  # collapsed under the parent
            wait_for(lambda: browser.click(EXPAND_PARENTS) == 1, 30, "the parent's expander")
            browser.wait_for_text(*children, timeout=30)
            shot = Path(os.environ.get("PATCHNAS_SCREENSHOT_DIR", tmp_path)) / "runs.png"
            assert browser.screenshot(shot).stat().st_size > 10_000
            # the parent's Pareto picture opens in the artifact view
            browser.open(base + artifact_page(eid, parent, "pareto.png"))
            browser.wait_for_text("pareto.png", "pareto.html", "front_table.json")
            wait_for(lambda: browser.evaluate(
                "Array.from(document.images).some(i => i.src.startsWith('blob:') && "
                "i.naturalWidth > 300)"), 30, "the Pareto picture")
    finally:
        ui.terminate()
        ui.wait(timeout=60)
    assert not wait_http(f"http://127.0.0.1:{port}/health", 3)  # the server went with it


def test_ui_without_runs_is_one_line(tmp_path, capsys):
    assert main(["ui", "--workspace", str(tmp_path)]) == 2
    assert "no MLflow runs" in capsys.readouterr().err




def servers(port: int) -> list[int]:
    """The MLflow server process listening on `port` (its command line names the port)."""
    return pids_where(lambda argv: argv[1:4] == [b"-m", b"mlflow", b"server"]
                      and str(port).encode() in argv)


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
        assert f"http://127.0.0.1:{port}{runs_page(runs.experiment_id)}" in first
        # (the page itself is rendered by the Chromium test above)
        assert MlflowClient(uri).get_experiment(runs.experiment_id).tags[
            "mlflow.experimentKind"] == "custom_model_development"  # the runs view
        # the server and what it starts (uvicorn, MLflow's job runner, huey consumers)
        assert wait_for(lambda: len(servers(port)) == 1, 60, "the MLflow server")
        session = os.getsid(servers(port)[0])
        assert session == servers(port)[0]  # its own session: one signal reaches all of it
        assert wait_for(lambda: len(session_members(session)) > 2, 60, "its workers")
    finally:
        ui.terminate()
        ui.wait(timeout=60)
    assert wait_for(lambda: not session_members(session), 30), \
        f"processes of the MLflow server outlived the UI: {session_members(session)}"
    missing = subprocess.run([PATCHNAS, "ui", "other", "--workspace", str(ws)],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no MLflow experiment for study other" in missing.stderr
