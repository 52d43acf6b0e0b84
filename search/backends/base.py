"""What a backend is: who schedules a study's trials. Each backend runs the same
TrialRunner on trials of the same stored study; the Optuna storage stays the source of truth.

To add one: subclass `Backend`, implement `check` and `run`, and name it in
search/backends/__init__.py's registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from search.study.spec import StudySpec


@dataclass
class RunOptions:
    """How to run (not part of the study's definition)."""

    trials: int | None = None
    timeout: float | None = None
    workers: int | None = None
    gpus: list[int] | None = None
    trials_per_gpu: int = 1
    device: str | None = None
    storage: str | None = None  # default: search.study.settings.storage_url
    workspace: str | None = None
    data: str | None = None
    seed_presets: bool = False
    tracking: bool = True
    tracking_uri: str | None = None  # default: search.study.settings.tracking_uri
    progress: bool = True
    env: dict[str, str] = field(default_factory=dict)
    backend: str = "optuna"  # a name in search.backends.BACKENDS
    ray_address: str | None = None  # default: a local Ray instance sized to this machine
    ray_storage: str | None = None  # default: <workspace>/ray


@dataclass
class SearchJob:
    """A study to run to the end of its budget, with everything a backend needs."""

    spec: StudySpec
    study: optuna.Study
    storage_url: str
    workspace: Path
    data: str
    options: RunOptions
    log: Callable[[str], None]
    tick: Callable[[], None]  # progress lines and the MLflow review; call it often
    tracking_uri: str | None


class Backend(ABC):
    name = ""

    @abstractmethod
    def check(self, name: str, options: RunOptions) -> str:
        """Refuse bad flags (or a study `name` already running here) before anything is
        stored; say where the trials will run."""

    @abstractmethod
    def run(self, job: SearchJob) -> int:
        """Run the study's remaining budget; 0, or 130 when interrupted."""
