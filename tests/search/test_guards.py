"""What a command does with an address that does not answer, a path with no study, a port
that is taken, a zero or a negative: one line, a non-zero exit, soon, and nothing created.
Real processes (the installed `patchnas`), real sockets."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.helpers import free_port

PATCHNAS = str(Path(sys.executable).with_name("patchnas"))
RUN = ["search", "run", "--name", "g", "--family", "convmixer", "--set", "h=16", "d=1",
       "p=4", "k=3", "--trials", "1", "--epochs", "1", "--val-size", "40", "--device", "cpu"]


def patchnas(*argv, workspace, timeout=60):
    start = time.monotonic()
    out = subprocess.run([PATCHNAS, *argv], capture_output=True, text=True, timeout=timeout,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(workspace),
                              "PATCHNAS_WORKSPACE": str(workspace)})
    return out, time.monotonic() - start


def one_line(out) -> str:
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.fixture
def closed_port():
    """A port nothing listens on: refused at once (MLflow used to retry it for minutes)."""
    return free_port()


def test_an_unreachable_tracking_server_is_one_line_before_any_study_is_made(
        tmp_path, tiny_data, closed_port):
    out, seconds = patchnas(*RUN, "--data", str(tiny_data), "--tracking-uri",
                            f"http://127.0.0.1:{closed_port}", workspace=tmp_path)
    line = one_line(out)
    assert "cannot reach the MLflow tracking server" in line and "--no-tracking" in line
    assert seconds < 30
    assert not (tmp_path / "optuna.db").exists()  # checked before anything was created


def test_a_tracking_server_that_accepts_but_never_answers_is_one_line_within_30_s(
        tmp_path, tiny_data):
    with socket.socket() as silent:  # the kernel completes the handshake; nobody replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        out, seconds = patchnas(*RUN, "--data", str(tiny_data), "--tracking-uri",
                                f"http://127.0.0.1:{silent.getsockname()[1]}",
                                workspace=tmp_path)
    assert "does not answer over HTTP" in one_line(out)
    assert seconds < 30 and not (tmp_path / "optuna.db").exists()


def test_an_unreachable_ray_cluster_is_one_line_within_seconds(tmp_path, tiny_data,
                                                               closed_port):
    out, seconds = patchnas(*RUN, "--data", str(tiny_data), "--backend", "ray",
                            "--ray-address", f"127.0.0.1:{closed_port}", "--no-tracking",
                            workspace=tmp_path)
    line = one_line(out)
    assert "cannot reach the Ray cluster" in line and "ray start --head" in line
    assert seconds < 30 and not (tmp_path / "optuna.db").exists()


def test_a_tracking_uri_mlflow_cannot_use_is_refused_before_anything_is_made(tmp_path,
                                                                            tiny_data):
    out, _ = patchnas(*RUN, "--data", str(tiny_data), "--tracking-uri", "bogus://x",
                      workspace=tmp_path)
    assert "MLflow cannot use a bogus:// store" in one_line(out)
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.parametrize("command", [["search", "status", "s"], ["search", "pareto", "s"],
                                     ["search", "worker", "s", "--no-tracking"],
                                     ["export", "s"]])
def test_read_only_commands_never_create_a_database(tmp_path, command):
    db = tmp_path / "elsewhere" / "optuna.db"
    out, _ = patchnas(*command, "--storage", f"sqlite:///{db}", workspace=tmp_path)
    assert f"no study storage at {db}" in one_line(out)
    assert not db.exists() and not db.parent.exists()


def test_search_list_of_an_empty_workspace_lists_nothing_and_creates_nothing(tmp_path):
    out, _ = patchnas("search", "list", "--json", workspace=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "[]"
    assert not (tmp_path / "optuna.db").exists()


OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
from search.study.storage import open_storage
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.002)
open_storage(sys.argv[1], create=True)
"""


def test_many_processes_starting_on_a_fresh_storage_at_once_all_succeed(tmp_path):
    url, go = f"sqlite:///{tmp_path}/fresh.db", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, url, str(go)],
                              stderr=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2]) for _ in range(4)]
    time.sleep(3)  # all four wait at the line
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert optuna.get_all_study_summaries(url) == []


def test_ui_on_a_taken_port_fails_in_one_line(tmp_path):
    (tmp_path / "mlflow.db").touch()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out, seconds = patchnas("ui", "--port", str(port), workspace=tmp_path)
    line = one_line(out)
    assert out.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in line
    assert seconds < 30


@pytest.mark.parametrize("argv, message", [
    (["search", "run", "--name", "z", "--workers", "0"], "--workers: 0 is not allowed"),
    (["search", "run", "--name", "z", "--trials", "0"], "--trials: 0 is not allowed"),
    (["search", "run", "--name", "z", "--timeout", "-5"], "--timeout: -5 is not allowed"),
    (["search", "run", "--name", "z", "--timeout", "0"], "give more than 0"),
    (["search", "run", "--name", "z", "--epochs", "two"], "'two' is not an integer"),
    (["train", "full", "c.yaml", "--data", "d", "--batch-size", "0"], "--batch-size: 0"),
    (["train", "proxy", "--epochs", "0"], "--epochs: 0 is not allowed"),
    (["ui", "--port", "0"], "--port: 0 is not allowed"),
])
def test_zero_and_negative_values_are_refused_not_taken_for_unset(tmp_path, argv, message):
    out, _ = patchnas(*argv, workspace=tmp_path)
    assert out.returncode == 2 and message in one_line(out)
    assert not list(tmp_path.iterdir())  # nothing written
