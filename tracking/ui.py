"""`patchnas ui`: the MLflow UI on 127.0.0.1, against a study workspace's tracking store."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys


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


def serve(uri: str, port: int, host: str = "127.0.0.1", log=print) -> int:
    """Run the UI until Ctrl-C; returns the server's exit code."""
    if not port_is_free(host, port):
        raise PortBusy(f"port {port} on {host} is in use (another MLflow UI?); give --port "
                       f"with a free one, or open the UI already there")
    log(f"MLflow UI: http://{host}:{port}  (Ctrl-C stops it)")
    server = subprocess.Popen(ui_command(uri, port, host))

    def stop(signum, frame):  # SIGTERM ends the server too, never orphans it
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
