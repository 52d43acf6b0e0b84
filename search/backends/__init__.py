"""Who runs a study's trials: the trial runner, the worker loop, and the backends that
schedule them (worker processes on this host, or Ray Tune), behind search.backends.base.

The registry maps each `--backend` name to its class, imported only when chosen (ray is
imported for the Ray backend only).
"""

from __future__ import annotations

from importlib import import_module

from spaces.errors import UserError

BACKENDS = {"optuna": "search.backends.local:LocalBackend",
            "ray": "search.backends.ray_tune:RayBackend"}


def get_backend(name: str):
    """The backend called `name` (a search.backends.base.Backend)."""
    if name not in BACKENDS:
        raise UserError(f"--backend {name}: choose {' or '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    try:
        return getattr(import_module(module), cls)()
    except ModuleNotFoundError as err:
        raise UserError(f"--backend {name} needs {err.name}: pip install "
                        f"'patchnas[{name}]'") from None
