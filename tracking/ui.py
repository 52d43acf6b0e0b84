"""`patchnas ui`: the MLflow UI on 127.0.0.1, against a study workspace's tracking store."""

from __future__ import annotations

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
    log(f"MLflow UI: {url}  (Ctrl-C stops it)")
    server = subprocess.Popen(ui_command(uri, port, host))
    if open_browser:
        _open_when_up(f"http://{host}:{port}/health", url, server)
    return run_until_stopped(server)


def run_until_stopped(server: subprocess.Popen) -> int:
    """Wait for a server process until Ctrl-C or SIGTERM, which stop it too (never orphaned);
    returns its exit code, 0 when stopped so."""

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        return 0
