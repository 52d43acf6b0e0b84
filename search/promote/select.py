"""Which trained configs of a study go on to full training.

Selections (over trained, feasible configs, each architecture once):
  pareto                  the Pareto front
  knee                    the front member nearest the ideal point, objectives normalized
                          as for the hypervolume (accuracy as is, costs log10-scaled to the
                          space's range)
  top-k:N                 the N best in NSGA-II order (Pareto rank, then crowding distance)
  best-under:M=V[,M=V]    the most accurate config whose target costs are within the limits
                          (M: params, macs, latency_ms)

With confirmation seeds the proxy accuracy of each selected config is the mean over its
original run and N more seeds; selection is repeated on the means until every selected
config is confirmed. To add a selection rule: a `kind` in `Selection.parse` and its branch
in `select`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial

from search.study.objectives import COSTS, normalize
from search.study.pareto import nondominated_ranks, nsga2_order
from search.study.record import TrialRecord, confirmations
from search.study.results import objective_bounds, ranked_trials
from search.study.spec import StudySpec
from spaces.errors import UserError


@dataclass(frozen=True)
class Selection:
    kind: str  # pareto | knee | top-k | best-under
    k: int = 0
    limits: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Selection:
        text = text.strip()
        if text in ("pareto", "knee"):
            return cls(text)
        if m := re.fullmatch(r"top-k:(\d+)", text):
            if int(m[1]) < 1:
                raise UserError("--select top-k:N needs N >= 1")
            return cls("top-k", k=int(m[1]))
        if text.startswith("best-under:"):
            limits = []
            for item in text.removeprefix("best-under:").split(","):
                metric, _, value = item.partition("=")
                if metric not in COSTS:
                    raise UserError(f"--select best-under: unknown cost {metric!r}; use "
                                    f"{', '.join(COSTS)}, e.g. best-under:params=5e6")
                try:
                    limits.append((metric, float(value)))
                except ValueError:
                    raise UserError(f"--select best-under: {item!r} needs a number, e.g. "
                                    f"params=5e6") from None
            return cls("best-under", limits=tuple(limits))
        raise UserError(f"--select {text!r}: use pareto, knee, top-k:N or "
                        f"best-under:params=5e6")


def select(study: optuna.Study, spec: StudySpec, selection: Selection,
           means: dict[int, float] | None = None) -> list[FrozenTrial]:
    """The selected trials; `means` replaces a trial's proxy accuracy (confirmed means)."""
    means = means or {}
    trials = [t for t, _ in ranked_trials(study, spec)]
    if not trials:
        raise UserError(f"study {study.study_name!r} has no trained, feasible config yet")
    rows = [_values(t, spec, means) for t in trials]
    minimized = [[-v if o.direction == "max" else v for o, v in zip(spec.objectives, row,
                                                                    strict=True)]
                 for row in rows]
    if selection.kind == "top-k":
        return [trials[i] for i in nsga2_order(minimized)[:selection.k]]
    if selection.kind == "best-under":
        return [_best_under(trials, rows, spec, selection.limits)]
    front = [i for i, r in enumerate(nondominated_ranks(minimized)) if r == 0]
    if selection.kind == "pareto":
        return sorted((trials[i] for i in front), key=lambda t: -proxy_accuracy(t, spec, means))
    bounds = objective_bounds(study, spec, rows)
    normalized = {i: normalize(spec.objectives, rows[i], bounds) for i in front}
    knee = min(front, key=lambda i: (math.hypot(*normalized[i]), trials[i].number))
    return [trials[knee]]


def _values(t: FrozenTrial, spec: StudySpec, means: dict[int, float]) -> list[float]:
    return [means.get(t.number, v) if o.metric == "val_acc" else v
            for o, v in zip(spec.objectives, t.values, strict=True)]


def proxy_accuracy(t: FrozenTrial, spec: StudySpec, means: dict[int, float]) -> float:
    return _values(t, spec, means)[[o.metric for o in spec.objectives].index("val_acc")]


def _best_under(trials, rows, spec, limits) -> FrozenTrial:
    acc = [o.metric for o in spec.objectives].index("val_acc")
    fits = [i for i, t in enumerate(trials)
            if all((TrialRecord.from_trial(t).costs or {}).get(m, math.inf) <= v
                   for m, v in limits)]
    if not fits:
        wanted = ", ".join(f"{m} <= {v:g}" for m, v in limits)
        smallest = min((TrialRecord.from_trial(t).costs or {}).get(limits[0][0], math.inf)
                       for t in trials)
        raise UserError(f"no trained config has {wanted} (the smallest has {limits[0][0]} "
                        f"{smallest:g}); raise the limit or search smaller models")
    return trials[max(fits, key=lambda i: (rows[i][acc], -trials[i].number))]


def select_confirmed(study, spec, selection, seeds: int, confirm) -> list[FrozenTrial]:
    """Select, confirm what is selected with `seeds` more seeds, select again on the means,
    until every selected trial is confirmed. `confirm(trials)` runs the seeds."""
    while True:
        done = {n: c["mean"] for n, c in confirmations(study).items()
                if c.get("seeds_run", 0) >= seeds}
        chosen = select(study, spec, selection, done)
        missing = [t for t in chosen if t.number not in done]
        if not missing:
            return chosen
        confirm(missing)
