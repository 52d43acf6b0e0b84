"""Tracking over HTTP: an `mlflow server` on PostgreSQL, and refusing host-local URIs."""

import subprocess
import sys

import pytest
from mlflow import MlflowClient

from search.backends.worker import open_runs
from search.cli import main
from spaces.errors import UserError
from tests.helpers import HEAVY, free_port, mlflow_test_db, wait_http


def test_a_joining_worker_with_a_local_tracking_uri_is_refused():
    with pytest.raises(UserError, match="needs an HTTP tracking URI"):
        open_runs("sqlite:////tmp/x/mlflow.db", "s", "postgresql+psycopg://u:p@h/db",
                  spawned=False)
    assert open_runs(None, "s", "postgresql+psycopg://u:p@h/db", spawned=False) is None


@HEAVY
def test_study_logs_to_an_mlflow_server_backed_by_postgres(tmp_path, tiny_data, capsys,
                                                           monkeypatch):
    backend = mlflow_test_db()
    monkeypatch.setenv("PATCHNAS_THREADS", "1")
    port = free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--artifacts-destination", str(tmp_path / "artifacts")], stdout=log, stderr=log)
    try:
        uri = f"http://127.0.0.1:{port}"
        assert wait_http(f"{uri}/health", 120), (tmp_path / "server.log").read_text()[-2000:]
        name = f"remote-{port}"
        assert main(["search", "run", "--name", name, "--family", "convmixer", "--set",
                     "h=16..48:16", "d=1..2", "p=4", "k=3", "--trials", "6", "--epochs", "2",
                     "--val-size", "40", "--workers", "3", "--device", "cpu", "--data",
                     str(tiny_data), "--workspace", str(tmp_path / "ws"), "--tracking-uri",
                     uri]) == 0
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(name)
        runs = client.search_runs([experiment.experiment_id])
        children = [r for r in runs if r.data.tags.get("patchnas.role") == "trial"]
        assert len(runs) == 7 and len(children) == 6  # none lost
        assert not [r for r in runs if r.info.status == "RUNNING"]
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
