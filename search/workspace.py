"""The workspace folder: databases, data, caches and exports of the embedded defaults."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT = "patchnas-workspace"


def workspace_dir(given: str | Path | None = None) -> Path:
    """`--workspace`, else $PATCHNAS_WORKSPACE, else ./patchnas-workspace."""
    return Path(given or os.environ.get("PATCHNAS_WORKSPACE") or DEFAULT).expanduser()


def cache_dir(workspace: Path) -> Path:
    return workspace / "cache"
