"""`patchnas ui`: the MLflow UI on 127.0.0.1, against a study workspace's tracking store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time


def _open_when_up(health: str, url: str, server: subprocess.Popen, wait: float = 90) -> None:
    import urllib.request
    import webbrowser

    end = time.monotonic() + wait
    while time.monotonic() < end and server.poll() is None:
        try:
            with urllib.request.urlopen(health, timeout=2):
                webbrowser.open(url)
                return
        except OSError:
            time.sleep(0.5)


class PortBusy(Exception):
    """The UI's port is taken."""


def runs_page(experiment_id: str) -> str:
    """The page of an experiment's runs, in the Model training view. MLflow 3.17 lands an
    experiment on the GenAI overview unless the URL (or the browser's last choice) says
    `workflowType=machine_learning`; the experiment's `mlflow.experimentKind` tag alone does
    not choose the page."""
    return f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def chart_page(experiment_id: str) -> str:
    return runs_page(experiment_id) + "&compareRunsMode=CHART"


def artifact_page(experiment_id: str, run_id: str, path: str) -> str:
    return (f"/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}"
            "?workflowType=machine_learning")


# the expand button of each parent run in the runs table (MLflow 3.17's markup)
EXPAND_PARENTS = "[id^='cell-attributes.`Run Name`'] button"
# the browser state that keeps MLflow's assistant panel closed on a first visit
ASSISTANT_CLOSED = {"mlflow.assistant.panelOpen_v1": "false",
                    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true"}


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def ui_command(uri: str, port: int, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--host", host, "--port", str(port), "--workers", "1"]


def serve(uri: str, port: int, host: str = "127.0.0.1", log=print, path: str = "",
          open_browser: bool = False) -> int:
    """Run the UI until Ctrl-C; returns the server's exit code. `path`: the page to print
    (and open), e.g. a study's runs."""
    if not port_is_free(host, port):
        raise PortBusy(f"port {port} on {host} is in use (another MLflow UI?); give --port "
                       f"with a free one, or open the UI already there")
    url = f"http://{host}:{port}{path}"

    def when_up(server: subprocess.Popen) -> None:
        if open_browser:
            _open_when_up(f"http://{host}:{port}/health", url, server)
    return run_server(ui_command(uri, port, host),
                      announce=lambda: log(f"MLflow UI: {url}  (Ctrl-C stops it)"),
                      when_up=when_up)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}  # HUP: its terminal closed


def run_server(cmd: list[str], announce=None, when_up=None) -> int:
    """Run a server process until Ctrl-C or SIGTERM, which stop it and every process it
    started (MLflow's uvicorn, job runner and huey consumers); returns its exit code, 0 when
    stopped so. The stop signals are held from before the server starts until the `try` that
    stops it: one arriving between the two had killed this process and orphaned the server
    (seen after the suite, ten processes of it)."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        if announce is not None:
            announce()
        # its own session, so that one killpg reaches its children too; the child takes
        # the signals back before it runs the server
        server = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_unblock)
    except BaseException:
        _unblock()
        raise
    try:
        _unblock()  # a signal held since the block is delivered here, inside the try
        if when_up is not None:
            when_up(server)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:  # a second Ctrl-C must not cut the stop short
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        _stop_group(server)


def _unblock() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _stop_group(server: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after `grace` seconds."""
    def signal_group(sig: int) -> bool:
        try:
            os.killpg(server.pid, sig)
            return True
        except ProcessLookupError:  # nothing of it left
            return False
    if not signal_group(signal.SIGTERM):
        server.poll()
        return
    end = time.monotonic() + grace
    while time.monotonic() < end:
        if server.poll() is None:
            time.sleep(0.2)
            continue
        if not signal_group(0):  # the group is empty: all of it ended
            return
        time.sleep(0.2)  # its children are still stopping
    signal_group(signal.SIGKILL)
    server.poll()
