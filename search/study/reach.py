"""Whether a network service answers, within a bounded time: checked before anything is
created, so a wrong address is one line after seconds, not a hang of minutes in a library's
retries (MLflow retries HTTP for about two minutes; Ray waits for a head that never comes)."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

from spaces.errors import UserError

CONNECT_SECONDS = 10.0


def host_and_port(address: str, default_port: int | None = None) -> tuple[str, int] | None:
    """(host, port) of `scheme://[user@]host[:port]/...` or `host:port`; None when the
    address names no host (a file, a local database)."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        port = parts.port or default_port
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname, port


def check_reachable(address: str, what: str, fix: str, default_port: int | None = None,
                    shown: str | None = None) -> None:
    """One TCP connection to `address`, or a UserError naming `what`, where and `fix`."""
    target = host_and_port(address, default_port)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=CONNECT_SECONDS):
            return
    except OSError as err:
        reason = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise UserError(f"cannot reach {what} at {shown or address} ({target[0]}:{target[1]}: "
                        f"{reason}); {fix}") from None


def _check_answers(url: str, fix: str) -> None:
    """One HTTP request: any status (even 401 or 404) is an answer. A refused connection is
    "cannot reach"; a port that accepts but never replies "does not answer"."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url.rstrip("/") + "/health", timeout=CONNECT_SECONDS).close()
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, OSError) and not isinstance(reason, TimeoutError):
            raise UserError(f"cannot reach the MLflow tracking server at {url} "
                            f"({reason.strerror or reason}); {fix}") from None
        raise UserError(f"the MLflow tracking server at {url} does not answer over HTTP "
                        f"({reason}); {fix}") from None


def check_tracking(uri: str) -> None:
    """A tracking URI patchnas can use: an http(s) server that answers, or a local store."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        shown, fix = uri.split("?")[0], ("start it (mlflow server ...), fix --tracking-uri, or "
                                         "give --no-tracking")
        _check_answers(shown, fix)
    elif scheme == "sqlite":
        check_sqlite_file(sqlite_path(uri), "the MLflow database", "--tracking-uri")
    elif scheme not in ("", "file", "postgresql", "mysql", "mssql") and not (
            scheme.startswith(("postgresql+", "mysql+", "mssql+")) or len(scheme) == 1):
        raise UserError(f"--tracking-uri {uri.split('?')[0]}: MLflow cannot use a {scheme}:// "
                        f"store; give http(s)://HOST:PORT, sqlite:///FILE, a folder, or "
                        f"--no-tracking")


def sqlite_path(url: str) -> str | None:
    """The file of a sqlite:/// URL (None for other URLs and in-memory databases)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1].split("?", 1)[0]
    return path if path and path != ":memory:" else None


def check_sqlite_file(path: str | None, what: str, flag: str) -> None:
    """A SQLite file that exists must be a sound database. A corrupt one (a truncated copy,
    a disk that failed) is reported and never touched: nothing is written to it, and no new
    database is made over it. quick_check reads every page once (milliseconds per MB)."""
    if path is None or not Path(path).is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                timeout=60)) as db:
            verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.Error as err:
        verdict = str(err)
    if verdict != "ok":
        raise UserError(f"{what} {path} is damaged ({verdict}); it was left as it is: restore "
                        f"it from a backup, or give {flag} a new file")
