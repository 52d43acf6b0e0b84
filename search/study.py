"""A study is a stored object: everything that defines it lives in the Optuna storage, so a
resume, a joining worker, `status`, `pareto` and `export` need only its name and the URL."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import optuna

from search.objectives import Objective, parse_objectives
from search.space import SearchSpace
from search.storage import open_storage, redact
from spaces.errors import UserError
from trainers.proxy import Recipe

SAMPLERS = ("nsga2", "tpe", "gp", "random")
PRUNERS = ("moasha", "hyperband", "median", "none")
SPEC_ATTR = "patchnas.spec"
PROVENANCE_ATTR = "patchnas.provenance"
BUDGET_ATTR = "patchnas.n_trials"
BOUNDS_ATTR = "patchnas.bounds"

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass(frozen=True)
class StudySpec:
    """What defines a study. `definition()` must match for a resume to be accepted."""

    name: str
    space: SearchSpace
    objectives: tuple[Objective, ...]
    epochs: int = 2
    min_epochs: int = 1  # the first rung of multi-fidelity pruning
    eta: int = 3  # keep 1/eta at each rung
    sampler: str = "nsga2"
    pruner: str = "moasha"
    max_params: float | None = None
    max_macs: float | None = None
    max_latency_ms: float | None = None
    seed: int = 0
    data: str = ""
    data_hash: str = ""
    subset: int | None = None
    val_size: int = 5000
    recipe: dict[str, Any] = field(default_factory=dict)
    target_size: int = 224
    target_classes: int = 1000

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\ "):
            raise UserError(f"study name {self.name!r}: use letters, digits, - and _")
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise UserError(f"unknown pruner {self.pruner!r}; choose from {', '.join(PRUNERS)}")
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
        data["space"] = SearchSpace.from_dict(data["space"])
        data["objectives"] = parse_objectives(data["objectives"])
        return cls(**data)

    def definition(self) -> dict[str, Any]:
        """What a resume must not change (the sampler, pruner and paths may change)."""
        d = self.to_dict()
        for key in ("sampler", "pruner", "data", "data_hash", "name"):
            d.pop(key)
        return d


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


def load_spec(study: optuna.Study) -> StudySpec:
    raw = study.user_attrs.get(SPEC_ATTR)
    if raw is None:
        raise UserError(f"study {study.study_name} was not created by patchnas")
    return StudySpec.from_dict(json.loads(raw))


def _existing(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def load_study(name: str, storage_url: str, heartbeat: bool = False) -> optuna.Study:
    storage = open_storage(storage_url, heartbeat=heartbeat)
    study = _existing(name, storage)
    if study is None:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        known = f"; studies there: {', '.join(names)}" if names else " (it holds no studies)"
        raise UserError(f"no study {name!r} in {redact(storage_url)}{known}")
    return study


def find_spec(name: str, storage_url: str) -> StudySpec | None:
    """The stored spec of study `name`, or None when there is no such study."""
    study = _existing(name, open_storage(storage_url, heartbeat=False))
    return None if study is None else load_spec(study)


DEFAULT_TRIALS = 10


def create_or_resume(spec: StudySpec, storage_url: str, n_trials: int | None = None,
                     seed_presets: bool = False, log=print) -> optuna.Study:
    """Create the study, or check that `spec` matches the stored one and resume it.

    `n_trials` is the study's whole budget (None: keep the stored one); a larger number
    grows a finished study."""
    if n_trials is not None and n_trials < 1:
        raise UserError("--trials must be at least 1")
    storage = open_storage(storage_url, heartbeat=False)
    study = _existing(spec.name, storage)
    if study is not None:
        stored = load_spec(study)
        _check_same(stored, spec)
        if stored.data_hash != spec.data_hash:
            log(f"warning: study {spec.name} was searched on other data (content hash "
                f"{stored.data_hash[:12]}, now {spec.data_hash[:12]}); results may not compare")
        before = json.loads(study.user_attrs.get(PROVENANCE_ATTR, "{}"))
        now = provenance()
        if before and before != now:
            changed = [k for k in now if before.get(k) != now.get(k)]
            log(f"warning: study {spec.name} was created with a different "
                f"{' and '.join(changed)}; results may not compare")
        if n_trials is not None and n_trials != study.user_attrs.get(BUDGET_ATTR):
            study.set_user_attr(BUDGET_ATTR, n_trials)
        return study
    bounds = spec.space.cost_bounds(spec.target_size, spec.target_classes)
    _check_feasible(spec, bounds)
    study = optuna.create_study(study_name=spec.name, storage=storage,
                                directions=spec.directions)
    study.set_metric_names([o.metric for o in spec.objectives])
    study.set_user_attr(SPEC_ATTR, json.dumps(spec.to_dict(), sort_keys=True))
    study.set_user_attr(PROVENANCE_ATTR, json.dumps(provenance(), sort_keys=True))
    study.set_user_attr(BOUNDS_ATTR, json.dumps(bounds))
    study.set_user_attr(BUDGET_ATTR, n_trials or DEFAULT_TRIALS)
    if seed_presets:
        enqueue_presets(study, spec)
    return study


def enqueue_presets(study: optuna.Study, spec: StudySpec) -> int:
    """Warm start: the paper presets, mapped to their proxies, that lie in the space."""
    import spaces

    count = 0
    for name in spaces.preset_names():
        family, preset = spaces.preset(name)
        proxy = family.to_proxy(preset.config, preset.image_size)
        if spec.space.contains(family, proxy):
            study.enqueue_trial(spec.space.params_of(family, proxy),
                                user_attrs={"preset": name})
            count += 1
    return count


def _check_same(stored: StudySpec, new: StudySpec) -> None:
    a, b = stored.definition(), new.definition()
    for key in a:
        if a[key] != b.get(key):
            raise UserError(
                f"study {new.name} exists with a different {key} ({_short(a[key])} vs "
                f"{_short(b.get(key))}); resume it with the same settings or choose a new --name")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_feasible(spec: StudySpec, bounds: dict[str, tuple[int, int]]) -> None:
    for metric, limit in (("params", spec.max_params), ("macs", spec.max_macs)):
        if limit is not None and bounds[metric][0] > limit:
            raise UserError(
                f"impossible constraint: --max-{metric} {limit:g}, but the smallest model the "
                f"space allows has {bounds[metric][0]:,} {metric} at {spec.target_size} px; "
                f"raise the limit or widen the space")

