"""`patchnas dashboard`: optuna-dashboard on the study storage renders the study's Pareto
front in headless Chromium (a patchnas study is a plain Optuna study)."""

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from search.backends.worker import run_worker
from search.study.spec import build_spec
from search.study.studies import create_or_resume
from tests.helpers import CHROMIUM_FLAGS, TINY, free_port, need, wait_http

PATCHNAS = str(Path(sys.executable).with_name("patchnas"))


def test_dashboard_shows_the_studys_pareto_front_in_chromium(tmp_path, tiny_data):
    chromium = shutil.which("chromium")
    need(chromium is not None, "Debian's chromium is not installed (.ci/run installs it)")
    url = f"sqlite:///{tmp_path}/optuna.db"
    create_or_resume(build_spec("dash", {**TINY, "epochs": 1}, None, str(tiny_data)), url, 3)
    run_worker("dash", url, device="cpu", workspace=tmp_path)
    port = free_port()
    server = subprocess.Popen([PATCHNAS, "dashboard", "--storage", url, "--port", str(port)],
                              stderr=subprocess.PIPE, text=True)
    try:
        first = server.stderr.readline()
        assert f"http://127.0.0.1:{port}/dashboard" in first and "sqlite" not in first
        base = f"http://127.0.0.1:{port}"
        assert wait_http(f"{base}/api/studies", 60), "optuna-dashboard did not come up"
        with urllib.request.urlopen(f"{base}/api/studies", timeout=10) as r:
            studies = json.load(r)["study_summaries"]
        study = next(s for s in studies if s["study_name"] == "dash")
        assert len(study["directions"]) == 2  # val_acc and params: a Pareto front
        dom = subprocess.run([chromium, *CHROMIUM_FLAGS,
                              f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                              f"{base}/dashboard/studies/{study['study_id']}"],
                             capture_output=True, text=True, timeout=120)
        assert "Pareto Front" in dom.stdout, dom.stdout[-3000:]
        assert "val_acc" in dom.stdout  # the objective names patchnas set
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_dashboard_on_a_storage_that_is_not_there_is_one_line(tmp_path):
    out = subprocess.run([PATCHNAS, "dashboard", "--storage", f"sqlite:///{tmp_path}/no.db"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no study storage at" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "no.db").exists()
