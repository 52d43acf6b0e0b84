"""One resolver for every setting of a study or a run, with one precedence:

    command-line flags  >  the `--config` YAML file  >  environment variables
    >  the settings stored with the study  >  the defaults

A setting that is None at one level is taken from the next. Environment variables exist for
the settings that name where things live and are the same for every command of a session
(`ENV`); the data and the workspace folder have theirs in their own defaults
(search.study.workspace: $PATCHNAS_DATA, $PATCHNAS_WORKSPACE).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV = {"storage": "PATCHNAS_STORAGE", "tracking_uri": "PATCHNAS_TRACKING_URI"}
TRACKING_OFF = "off"  # $PATCHNAS_TRACKING_URI=off: log nothing


def resolve(flags: Mapping[str, Any], config: Mapping[str, Any] | None = None, *,
            stored: Mapping[str, Any] | None = None, defaults: Mapping[str, Any] | None = None,
            env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every key of any level, each from the first level (in the precedence above) that
    gives it a value other than None."""
    env = os.environ if env is None else env
    from_env = {key: env.get(var) or None for key, var in ENV.items()}
    out: dict[str, Any] = {}
    for level in (flags, config or {}, from_env, stored or {}, defaults or {}):
        for key, value in level.items():
            if out.get(key) is None and value is not None:
                out[key] = value
            else:
                out.setdefault(key, None)
    return out


def storage_url(storage: str | None, workspace: str | Path | None,
                env: Mapping[str, str] | None = None) -> str:
    """The Optuna storage URL: `--storage`, else $PATCHNAS_STORAGE, else the workspace's
    SQLite file (what every command that takes `--storage` uses)."""
    from search.study.workspace import default_storage_url, workspace_dir

    given = resolve({"storage": storage}, env=env)["storage"]
    return given or default_storage_url(workspace_dir(workspace))


def tracking_uri(uri: str | None, workspace: str | Path | None, off: bool = False,
                 env: Mapping[str, str] | None = None) -> str | None:
    """The MLflow tracking URI, or None when tracking is off (`--no-tracking`, or
    $PATCHNAS_TRACKING_URI=off): `--tracking-uri`, else $PATCHNAS_TRACKING_URI, else the
    workspace's MLflow database."""
    given = resolve({"tracking_uri": uri}, env=env)["tracking_uri"]
    if off or given == TRACKING_OFF:
        return None
    if given:
        return given
    from search.study.workspace import default_tracking_uri, workspace_dir

    return default_tracking_uri(workspace_dir(workspace))
