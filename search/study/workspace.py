"""The workspace folder of the embedded defaults: where the Optuna and MLflow databases, the
data, its decoded cache, checkpoints and exports live; and the study's data in it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT = "patchnas-workspace"


def workspace_dir(given: str | Path | None = None) -> Path:
    """`--workspace`, else $PATCHNAS_WORKSPACE, else ./patchnas-workspace."""
    return Path(given or os.environ.get("PATCHNAS_WORKSPACE") or DEFAULT).expanduser()


def cache_dir(workspace: Path) -> Path:
    """$PATCHNAS_CACHE (one decoded copy shared by several workspaces), else
    <workspace>/cache. Entries are keyed by the data's content hash, so sharing is safe."""
    return Path(os.environ.get("PATCHNAS_CACHE") or workspace / "cache").expanduser()


def default_storage_url(workspace: Path) -> str:
    return f"sqlite:///{(workspace / 'optuna.db').resolve()}"


def default_tracking_uri(workspace: Path) -> str:
    # a busy SQLite file waits rather than failing when several workers log at once
    return f"sqlite:///{(workspace / 'mlflow.db').resolve()}?timeout=60"


def resolve_data(data: str | None, workspace: Path, download: bool) -> Path:
    """`--data`, else $PATCHNAS_DATA, else <workspace>/data/cifar10 (downloaded if missing)."""
    from trainers import data as datasets

    if data or os.environ.get("PATCHNAS_DATA"):
        path = Path(data or os.environ["PATCHNAS_DATA"]).expanduser()
        if download and not path.exists():
            datasets.download_cifar(path)
        return path
    path = workspace / "data" / "cifar10"
    if not path.exists() or not any(path.iterdir()):
        print(f"no data at {path}: downloading CIFAR-10 there", file=sys.stderr)
        datasets.download_cifar(path)
    return path


def load_splits(data: str | None, workspace: Path, *, download: bool = False,
                val_size: int = 5000, subset: int | None = None, seed: int = 0,
                image_size: int | None = None):
    """The train/val split (a trainers.data.Splits) of the data, decoded once into the
    workspace's cache."""
    from trainers import data as datasets

    path = resolve_data(data, workspace, download)
    dataset = datasets.load(path, image_size=image_size, cache_dir=cache_dir(workspace))
    return dataset.split(val_size=val_size, seed=seed, subset=subset)
