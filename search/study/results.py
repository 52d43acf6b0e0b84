"""Reading a study: the state of each trial, the budget, the Pareto front, hypervolume and
status. One definition of "finished" serves the workers' budget and `status`'s ETA."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.study import record
from search.study.objectives import normalized_hypervolume
from search.study.pareto import nondominated_ranks
from search.study.record import StudyKey, TrialRecord
from search.study.spec import StudySpec
from search.study.storage import missing_file, open_storage
from search.study.studies import load_spec
from spaces import PROXY_SIZE

STATES = ("COMPLETE", "RUNNING", "PRUNED", "FAIL", "INFEASIBLE", "REUSED", "WAITING",
          "RETRIED", "DISCARDED")
# trials that take no slot of the budget: a result reused from a twin, a trial lost with its
# worker or interrupted (failed, and queued again), one asked but never run
FREE = ("REUSED", "RETRIED", "DISCARDED")


def state_of(t: FrozenTrial) -> str:
    """The patchnas state: Optuna's, refined by what the worker recorded."""
    if t.state in (TrialState.RUNNING, TrialState.WAITING):
        return t.state.name
    state, counted = record.state_marks(t)
    if state in ("INFEASIBLE", "REUSED", "DISCARDED"):
        return state
    if t.state == TrialState.FAIL and not counted:
        return "RETRIED"
    return t.state.name


def holds_budget_slot(t: FrozenTrial) -> bool:
    """Whether a trial holds a slot of `--trials`: trained architectures (COMPLETE, PRUNED),
    infeasible ones (sampled and refused, so an all-infeasible space still ends), failures
    of their own (diverged, out of memory, error), and trials running or queued."""
    return state_of(t) not in FREE


@dataclass
class Budget:
    total: int
    finished: int  # trials that hold a slot and are finished
    running: int
    waiting: int
    claimed: int = 0  # architectures claimed for training
    space_size: float = math.inf  # architectures in the space
    trials: int = 0  # all trials of the study (numbered 0 to trials - 1)

    @property
    def reserved(self) -> int:
        return self.finished + self.running + self.waiting

    @property
    def remaining(self) -> int:
        return 0 if self.exhausted else max(0, self.total - self.finished)

    @property
    def space_full(self) -> bool:
        """Every architecture of the space is claimed: nothing new is left to train."""
        return self.claimed >= self.space_size

    @property
    def exhausted(self) -> bool:
        """The space is full and nothing runs or waits: it has been searched to the end."""
        return self.space_full and not self.running and not self.waiting

    @property
    def done(self) -> bool:
        return self.finished >= self.total or self.exhausted


def budget(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> Budget:
    """The study's budget; counted from `trials` when given, else by the storage (one
    statement on an RDB storage) or from all trials read."""
    attrs = record.budget_attrs(study, counts=trials is None)
    if "finished" in attrs:
        return Budget(**attrs)
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    return Budget(attrs["total"],
                  sum(1 for t in trials if holds_budget_slot(t) and t.state.is_finished()),
                  sum(1 for t in trials if t.state == TrialState.RUNNING),
                  sum(1 for t in trials if t.state == TrialState.WAITING),
                  attrs["claimed"], attrs["space_size"], len(trials))


def front_trials(study: optuna.Study, spec: StudySpec) -> list[FrozenTrial]:
    """Trained, feasible, complete trials on the Pareto front; each architecture once."""
    return [t for t, rank in ranked_trials(study, spec) if rank == 0]


def ranked_trials(study: optuna.Study, spec: StudySpec,
                  trials: list[FrozenTrial] | None = None) -> list[tuple[FrozenTrial, int]]:
    """Trained, feasible, complete trials with their Pareto rank, each architecture once: by
    its best measured accuracy at the study's fidelity (trials of one architecture share
    its costs; ties go to the earlier trial). The front is then Optuna's `best_trials`
    restricted to one trial per architecture. From `trials` when given (read already)."""
    acc = [o.metric for o in spec.objectives].index("val_acc")
    best: dict[str, FrozenTrial] = {}
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for t in trials:
        if t.state != TrialState.COMPLETE or state_of(t) != "COMPLETE":  # or infeasible,
            continue  # or a reuse of another trial
        digest = TrialRecord.from_trial(t).arch_hash
        if digest not in best or t.values[acc] > best[digest].values[acc]:
            best[digest] = t
    candidates = sorted(best.values(), key=lambda t: t.number)
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
    bounds = record.read_json(study, StudyKey.BOUNDS, {})
    metrics = [o.metric for o in spec.objectives]
    if "latency_ms" in metrics:
        seen = [row[metrics.index("latency_ms")] for row in rows]
        bounds["latency_ms"] = (min(seen), max(seen))  # measured: no a-priori bound
    return bounds


def member(t: FrozenTrial, spec: StudySpec) -> dict[str, Any]:
    r = TrialRecord.from_trial(t)
    return {
        "trial": t.number,
        "family": r.family,
        "label": r.label,
        "config": r.config,
        "values": {o.metric: v for o, v in zip(spec.objectives, t.values, strict=True)},
        "costs": r.costs,
        "fidelity": {"epochs": r.epochs_run if r.epochs_run is not None else spec.epochs,
                     "max_epochs": spec.epochs, "subset": spec.subset,
                     "image_size": r.image_size or PROXY_SIZE,  # older records: 32 px only
                     "num_classes": r.num_classes, "train_images": r.train_images,
                     "val_images": r.val_images},
        "arch_hash": r.arch_hash,
        "seed": r.seed,
        # what the rungs ranked it by (the values above stay the measured ones)
        "rank": {"by": spec.rank_by, "score": (r.estimates or {}).get(spec.rank_by)},
    }


def pareto(study: optuna.Study, ranked: list[tuple[FrozenTrial, int]] | None = None
           ) -> list[dict[str, Any]]:
    """The front's members, best accuracy first (`ranked`: ranked_trials, if read already)."""
    spec = load_spec(study)
    front = (front_trials(study, spec) if ranked is None
             else [t for t, rank in ranked if rank == 0])
    members = [member(t, spec) for t in front]
    return sorted(members, key=lambda m: -m["values"]["val_acc"])


@dataclass
class Status:
    name: str
    counts: dict[str, int]
    budget: int
    finished: int  # trials that took a slot of the budget and are done (<= budget)
    exhausted: bool  # every architecture of the space trained before the budget ran out
    front_size: int
    hypervolume: float
    device_hours: dict[str, float]
    eta_seconds: float | None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def status(study: optuna.Study, ranked: list[tuple[FrozenTrial, int]] | None = None,
           trials: list[FrozenTrial] | None = None) -> Status:
    """The study's status (`ranked`, `trials`: read already). A running driver's study
    reads only what changed since its last read (Optuna's trial cache)."""
    spec = load_spec(study)
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    if ranked is None:
        ranked = ranked_trials(study, spec, trials)
    counts = {s: 0 for s in STATES}
    hours: dict[str, float] = {}
    durations = []
    for t in trials:
        counts[state_of(t)] += 1
        r = TrialRecord.from_trial(t)
        if r.seconds:
            device = (r.device or "cpu").split(":")[0]
            hours[device] = hours.get(device, 0.0) + r.seconds / 3600
            durations.append(r.seconds)
    front = [t for t, rank in ranked if rank == 0]
    left = budget(study, trials)
    running = max(1, left.running)
    eta = (sum(durations) / len(durations) * left.remaining / running) if durations else None
    return Status(study.study_name, counts, left.total, min(left.finished, left.total),
                  left.exhausted, len(front),
                  hypervolume(study, spec, front), {k: round(v, 4) for k, v in hours.items()},
                  eta if left.remaining else 0.0)


# what status needs of each trial: a 5,000-trial study's curves alone are 2 MB of JSON
STATUS_FIELDS = ("state", "counted", "arch_hash", "seconds", "device")


def stored_status(study: optuna.Study) -> Status:
    """The status of a study this process reads once (`search status`, the study list):
    its trials read with only the fields status needs."""
    return status(study, trials=record.read_summaries(study, STATUS_FIELDS))


# what the front's members show (`member`), and what ranks them
MEMBER_FIELDS = ("state", "counted", "arch_hash", "family", "label", "config", "costs",
                 "epochs_run", "image_size", "num_classes", "train_images", "val_images",
                 "seed", "estimates")


def stored_pareto(study: optuna.Study) -> list[dict[str, Any]]:
    """The front of a study this process reads once (`search pareto`), its trials read
    with only the fields its members show."""
    spec = load_spec(study)
    return pareto(study, ranked_trials(study, spec, record.read_summaries(study,
                                                                          MEMBER_FIELDS)))


def list_studies(storage_url: str) -> list[dict[str, Any]]:
    if missing_file(storage_url):  # nothing stored there yet (and nothing created)
        return []
    storage = open_storage(storage_url, heartbeat=False)
    out = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        try:
            spec = load_spec(study)
        except Exception:
            continue
        s = stored_status(study)
        out.append({"name": summary.study_name, "families": list(spec.space.families),
                    "objectives": [str(o) for o in spec.objectives], "trials": s.finished,
                    "budget": s.budget, "front_size": s.front_size,
                    "hypervolume": round(s.hypervolume, 4),
                    "created": summary.datetime_start.isoformat(timespec="seconds")
                    if summary.datetime_start else None})
    return out
