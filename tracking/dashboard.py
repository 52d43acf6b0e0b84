"""`patchnas dashboard`: optuna-dashboard (an optional extra) on a study storage.

A patchnas study is a plain Optuna study (objective names set with `set_metric_names`), so
Optuna's own dashboard shows its trials, history and Pareto front without any adapter."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tracking.ui import PortBusy, port_is_free, run_server

MISSING = "optuna-dashboard is not installed: pip install 'patchnas[dashboard]'"


def dashboard_command(config: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    return [_executable(), "--from-config", str(config), "--host", host, "--port", str(port),
            "--quiet"]


def _executable() -> str:
    """optuna-dashboard beside this Python (the extra installs it there)."""
    exe = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    if exe is None:
        raise FileNotFoundError(MISSING)
    return exe


def _config_file(storage_url: str) -> Path:
    """The storage URL in a file only this user can read: never on a command line, where
    any user of the host could read its password."""
    fd, name = tempfile.mkstemp(prefix="patchnas-dashboard-", suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(f"[optuna_dashboard]\nstorage = {json.dumps(storage_url)}\n")
    return Path(name)


def serve_dashboard(storage_url: str, port: int, host: str = "127.0.0.1", log=print) -> int:
    """Run optuna-dashboard until Ctrl-C; returns its exit code."""
    _executable()  # missing: refused before anything starts
    if not port_is_free(host, port):
        raise PortBusy(f"port {port} on {host} is in use; give --port with a free one")
    config = _config_file(storage_url)
    try:
        return run_server(dashboard_command(config, port, host), announce=lambda: log(
            f"optuna-dashboard: http://{host}:{port}/dashboard  (Ctrl-C stops it)"))
    finally:
        config.unlink(missing_ok=True)
