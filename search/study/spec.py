"""What defines a study, and how its settings are merged into one spec.

Everything here is plain data (no Optuna, no torch): the CLI builds its flags from it and
read-only commands load a stored spec without importing an engine.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from search.study.estimators import DEFAULT as DEFAULT_ESTIMATOR
from search.study.estimators import ESTIMATORS
from search.study.objectives import Objective, parse_objectives
from search.study.space import SearchSpace
from spaces.errors import UserError
from trainers.recipes import Recipe

SAMPLERS = ("nsga2", "tpe", "gp", "random")
PRUNERS = ("moasha", "moasha-front", "hyperband", "median", "none")
DEFAULT_TRIALS = 10
# how the search goes on, not what it searches: a resume may change them (stored anew)
RESUME_MAY_CHANGE = ("sampler", "pruner", "rank_by")

@dataclass(frozen=True)
class StudySpec:
    """What defines a study. `definition()` must match for a resume to be accepted."""

    name: str
    space: SearchSpace
    objectives: tuple[Objective, ...]
    epochs: int = 2
    min_epochs: int = 1  # the first rung of multi-fidelity pruning
    eta: int = 3  # keep 1/eta at each rung
    sampler: str | None = None  # None: nsga2 with several objectives, else tpe
    pruner: str | None = None  # None: moasha with several objectives, else hyperband
    rank_by: str = DEFAULT_ESTIMATOR  # what MO-ASHA's rungs rank by (search.study.estimators)
    max_params: float | None = None
    max_macs: float | None = None
    max_latency_ms: float | None = None
    seed: int = 0
    data: str = ""
    data_hash: str = ""
    subset: int | None = None
    val_size: int = 5000
    proxy_size: int | None = None  # the proxy's resolution; None: the data's own
    recipe: dict[str, Any] = field(default_factory=dict)
    target_size: int = 224
    target_classes: int = 1000

    def __post_init__(self) -> None:
        several = len(self.objectives) > 1
        if self.sampler is None:
            object.__setattr__(self, "sampler", "nsga2" if several else "tpe")
        if self.pruner is None:
            object.__setattr__(self, "pruner", "moasha" if several else "hyperband")
        if not self.name or any(c in self.name for c in "/\\ "):
            raise UserError(f"study name {self.name!r}: use letters, digits, - and _")
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise UserError(f"unknown pruner {self.pruner!r}; choose from {', '.join(PRUNERS)}")
        if self.rank_by not in ESTIMATORS:
            raise UserError(f"unknown --rank-by {self.rank_by!r}; choose from "
                            f"{', '.join(ESTIMATORS)}")
        if len(self.objectives) > 1 and self.pruner in ("hyperband", "median"):
            raise UserError(f"--pruner {self.pruner} works with one objective only; with "
                            f"several use --pruner moasha (or none)")
        if self.epochs < 1 or self.min_epochs < 1 or self.eta < 2:
            raise UserError("--epochs and --min-epochs must be >= 1 and --eta >= 2")
        for name in ("max_params", "max_macs", "max_latency_ms"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive")
        if self.target_size < 1 or self.target_classes < 1:
            raise UserError("the target image size and class count must be positive")
        Recipe.from_dict({**self.recipe, "epochs": self.epochs})

    @property
    def recipe_obj(self) -> Recipe:
        return Recipe.from_dict({**self.recipe, "epochs": self.epochs})

    @property
    def directions(self) -> list[str]:
        return [o.optuna_direction for o in self.objectives]

    @property
    def rungs(self) -> list[int]:
        out, epoch = [], self.min_epochs
        while epoch < self.epochs:
            out.append(epoch)
            epoch *= self.eta
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["space"] = self.space.to_dict()
        data["objectives"] = [str(o) for o in self.objectives]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudySpec:
        data = dict(data)
        data.setdefault("rank_by", "last")  # studies stored before there was a choice
        data["space"] = SearchSpace.from_dict(data["space"])
        data["objectives"] = parse_objectives(data["objectives"])
        return cls(**data)

    def definition(self) -> dict[str, Any]:
        """What a resume must not change (RESUME_MAY_CHANGE and the paths may)."""
        d = self.to_dict()
        for key in (*RESUME_MAY_CHANGE, "data", "data_hash", "name"):
            d.pop(key)
        return d


# settings a study is built from that are not StudySpec fields of the same name
SPACE_SETTINGS: dict[str, Any] = {"family": "convmixer", "overrides": {},
                                  "objectives": "val_acc:max,params:min"}
SPEC_SETTINGS = tuple(f.name for f in fields(StudySpec)
                      if f.name not in ("name", "space", "objectives", "data", "data_hash"))


def defaults() -> dict[str, Any]:
    """The default of every study setting: StudySpec's field defaults, the one place."""
    out = dict(SPACE_SETTINGS)
    for f in fields(StudySpec):
        if f.name in SPEC_SETTINGS:
            out[f.name] = f.default_factory() if f.default_factory is not MISSING else f.default
    return out


def settings_of(spec: StudySpec) -> dict[str, Any]:
    """A stored spec as settings (the inverse of `build_spec`)."""
    families = spec.space.families
    return {"family": ",".join(families),
            "overrides": {(f"{fam}.{k}" if len(families) > 1 else k): v
                          for fam, o in spec.space.overrides.items() for k, v in o.items()},
            "objectives": ",".join(str(o) for o in spec.objectives),
            **{k: getattr(spec, k) for k in SPEC_SETTINGS}}


def build_spec(name: str, given: dict[str, Any], stored: StudySpec | None,
               data: str) -> StudySpec:
    """Settings given now win over those stored with the study, which win over defaults
    (search.study.settings.resolve)."""
    from search.study.settings import resolve

    s = resolve(given, stored=settings_of(stored) if stored else None, defaults=defaults())
    return StudySpec(name=name, space=SearchSpace.build(s["family"], s["overrides"]),
                     objectives=parse_objectives(s["objectives"]), data=data,
                     **{k: s[k] for k in SPEC_SETTINGS})


def provenance() -> dict[str, Any]:
    return {"git_commit": git_commit(), "python": sys.version.split()[0],
            "packages": {p: _version(p) for p in ("patchnas", "torch", "torchvision",
                                                  "optuna", "mlflow", "ray")}}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None
