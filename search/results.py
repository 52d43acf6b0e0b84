"""Reading a study: its trials as plain rows, the Pareto front, hypervolume and status."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.objectives import normalized_hypervolume
from search.pareto import nondominated_ranks
from search.storage import open_storage
from search.study import BOUNDS_ATTR, BUDGET_ATTR, StudySpec, load_spec
from search.worker import STATE_ATTR

STATES = ("COMPLETE", "RUNNING", "PRUNED", "FAIL", "INFEASIBLE", "REUSED", "WAITING")


def state_of(t: FrozenTrial) -> str:
    """The patchnas state: Optuna's, refined by what the worker recorded."""
    if t.state in (TrialState.RUNNING, TrialState.WAITING):
        return t.state.name
    tag = t.user_attrs.get(STATE_ATTR)
    if tag in ("INFEASIBLE", "REUSED") or (tag and tag == t.state.name):
        return tag
    return t.state.name


def front_trials(study: optuna.Study, spec: StudySpec) -> list[FrozenTrial]:
    """Trained, feasible, complete trials on the Pareto front; each architecture once."""
    return [t for t, rank in ranked_trials(study, spec) if rank == 0]


def ranked_trials(study: optuna.Study, spec: StudySpec) -> list[tuple[FrozenTrial, int]]:
    """Trained, feasible, complete trials (each architecture once) with their Pareto rank."""
    seen, candidates = set(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if state_of(t) != "COMPLETE":  # infeasible or a reuse of another trial
            continue
        digest = t.user_attrs.get("arch_hash")
        if digest in seen:
            continue
        seen.add(digest)
        candidates.append(t)
    points = [[-v if o.direction == "max" else v for o, v in zip(spec.objectives, t.values,
                                                                   strict=True)]
              for t in candidates]
    return list(zip(candidates, nondominated_ranks(points), strict=True))


def hypervolume(study: optuna.Study, spec: StudySpec,
                trials: list[FrozenTrial] | None = None) -> float:
    trials = front_trials(study, spec) if trials is None else trials
    if not trials:
        return 0.0
    rows = [t.values for t in trials]
    return normalized_hypervolume(spec.objectives, rows, objective_bounds(study, spec, rows))


def objective_bounds(study: optuna.Study, spec: StudySpec,
                     rows: list[list[float]]) -> dict[str, tuple[float, float]]:
    """Each cost's smallest and largest value in the space (latency: among `rows`)."""
    bounds = json.loads(study.user_attrs.get(BOUNDS_ATTR, "{}"))
    metrics = [o.metric for o in spec.objectives]
    if "latency_ms" in metrics:
        seen = [row[metrics.index("latency_ms")] for row in rows]
        bounds["latency_ms"] = (min(seen), max(seen))  # measured: no a-priori bound
    return bounds


def member(t: FrozenTrial, spec: StudySpec) -> dict[str, Any]:
    return {
        "trial": t.number,
        "family": t.user_attrs.get("family"),
        "label": t.user_attrs.get("label"),
        "config": t.user_attrs.get("config"),
        "values": {o.metric: v for o, v in zip(spec.objectives, t.values, strict=True)},
        "costs": t.user_attrs.get("costs"),
        "fidelity": {"epochs": t.user_attrs.get("epochs_run", spec.epochs),
                     "max_epochs": spec.epochs, "subset": spec.subset,
                     "image_size": 32},
        "arch_hash": t.user_attrs.get("arch_hash"),
        "seed": t.user_attrs.get("seed"),
    }


def pareto(study: optuna.Study) -> list[dict[str, Any]]:
    spec = load_spec(study)
    members = [member(t, spec) for t in front_trials(study, spec)]
    return sorted(members, key=lambda m: -m["values"]["val_acc"])


@dataclass
class Status:
    name: str
    counts: dict[str, int]
    budget: int
    front_size: int
    hypervolume: float
    device_hours: dict[str, float]
    eta_seconds: float | None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def status(study: optuna.Study) -> Status:
    spec = load_spec(study)
    trials = study.get_trials(deepcopy=False)
    counts = {s: 0 for s in STATES}
    hours: dict[str, float] = {}
    durations = []
    for t in trials:
        counts[state_of(t)] += 1
        seconds = t.user_attrs.get("seconds")
        if seconds:
            device = t.user_attrs.get("device", "cpu").split(":")[0]
            hours[device] = hours.get(device, 0.0) + seconds / 3600
            durations.append(seconds)
    front = front_trials(study, spec)
    n = study.user_attrs.get(BUDGET_ATTR, 0)
    finished = sum(counts[s] for s in ("COMPLETE", "PRUNED", "INFEASIBLE", "REUSED"))
    remaining = max(0, n - finished)
    running = max(1, counts["RUNNING"])
    eta = (sum(durations) / len(durations) * remaining / running) if durations else None
    return Status(study.study_name, counts, n, len(front), hypervolume(study, spec, front),
                  {k: round(v, 4) for k, v in hours.items()}, eta if remaining else 0.0)


def list_studies(storage_url: str) -> list[dict[str, Any]]:
    storage = open_storage(storage_url, heartbeat=False)
    out = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        try:
            spec = load_spec(study)
        except Exception:
            continue
        s = status(study)
        out.append({"name": summary.study_name, "families": list(spec.space.families),
                    "objectives": [str(o) for o in spec.objectives], "trials": sum(
                        s.counts.values()), "budget": s.budget, "front_size": s.front_size,
                    "hypervolume": round(s.hypervolume, 4),
                    "created": summary.datetime_start.isoformat(timespec="seconds")
                    if summary.datetime_start else None})
    return out
