"""Pruners: one small interface, `Pruner.should_stop`, asked after each epoch of a trial by
either backend. `make_pruner(spec)` picks the study's:

  moasha     MOASHA below (any number of objectives)
  moasha-front  the same, also keeping every trial on a rung's own front
  hyperband  Optuna's HyperbandPruner, median: Optuna's MedianPruner (one objective: Optuna
             refuses `trial.report` with several), through `OptunaPruner`
  none       never stops a trial (also what a trial runs under when Ray's ASHA prunes it)

MO-ASHA, multi-fidelity pruning that works with several objectives:

Optuna 5 refuses `trial.report` in multi-objective studies and Ray's schedulers take one
metric. MO-ASHA (Schmucker et al., 2021) does asynchronous successive halving with a
multi-objective ranking: at each rung (epochs min_epochs * eta^k), a trial continues only if
it is in the best 1/eta of the trials that reached the rung, ordered by non-dominated rank
and then crowding distance (NSGA-II's order); `moasha-front` also lets on every trial that
nothing at the rung dominates (when accuracy grows with cost most trials are on that front,
and it pruned too little: bench/RESULTS.md, pruning_real.py). Costs are fixed
per architecture, so what changes between rungs is the accuracy, as the study's `--rank-by`
estimate from the curve up to the rung (search.study.estimators: the training-loss sum by
default, the rung's val_acc, a power-law extrapolation to the study's epochs, ...).

Intermediate metrics live in each trial's record (`curve`: one dict per epoch), so pruned
trials keep them and samplers never see a half-told trial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
from optuna.trial import TrialState

from search.study import estimators
from search.study.estimators import Curve
from search.study.objectives import Objective, log_cost
from search.study.pareto import nondominated_ranks, nsga2_order
from search.study.record import TrialRecord
from search.study.spec import StudySpec


class Pruner:
    """Asked after each epoch whether a trial stops there."""

    def should_stop(self, study: optuna.Study, trial: optuna.Trial, curve: Curve,
                    costs: dict[str, float]) -> bool:
        """`curve`: the trial's epochs so far, the last one just trained."""
        return False


class NoPruner(Pruner):
    """Every trial trains to the end."""


class OptunaPruner(Pruner):
    """One of Optuna's pruners (the study's, set by `optuna_pruner`): one objective only."""

    def should_stop(self, study, trial, curve, costs) -> bool:
        trial.report(curve[-1]["val_acc"], len(curve))
        return trial.should_prune()


def optuna_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The pruner the study object carries (what `OptunaPruner` asks)."""
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.min_epochs,
                                              max_resource=spec.epochs,
                                              reduction_factor=spec.eta)
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_warmup_steps=spec.min_epochs - 1)
    return optuna.pruners.NopPruner()


def make_pruner(spec: StudySpec, external: bool = False) -> Pruner:
    """The study's pruner; `external`: a scheduler outside the trial (Ray's ASHA) prunes
    one-objective studies."""
    if spec.pruner in ("moasha", "moasha-front"):
        return MOASHA(spec.objectives, spec.rungs, spec.eta, rank_by=spec.rank_by,
                      horizon=spec.epochs, keep_front=spec.pruner == "moasha-front")
    if spec.pruner in ("hyperband", "median") and not external:
        return OptunaPruner()
    return NoPruner()


def rung_keeps(points: Sequence[Sequence[float]], own: int, eta: int,
               keep_front: bool = False) -> bool:
    """Whether point `own` continues past a rung (`points` are minimization vectors).

    It does if it is in the best ceil(n/eta) by NSGA-II order, or, with `keep_front`, if
    nothing at the rung dominates it (in bench/pruning_sim.py pruning those cost 4-7% of
    the hypervolume for 2-3% of the epochs; on real studies the front holds most trials).
    Fewer than `eta` points at a rung: everyone continues (there is nothing to halve yet).
    """
    n = len(points)
    if n < eta or keep_front and nondominated_ranks(points)[own] == 0:
        return True
    return nsga2_order(points).index(own) < math.ceil(n / eta)


def rung_vector(objectives: Sequence[Objective], accuracy: float,
                costs: dict[str, float]) -> list[float]:
    """Minimization vector of a trial at a rung (`accuracy`: its score, higher is better).
    Costs are on the study hypervolume's log scale (objectives.log_cost): the
    crowding distance that orders a rung's front then spaces its points as the hypervolume
    weighs them (on raw costs it saw only the gaps between the largest nets)."""
    return [-accuracy if o.metric == "val_acc" else log_cost(costs[o.metric])
            for o in objectives]


class MOASHA(Pruner):
    def __init__(self, objectives: Sequence[Objective], rungs: Sequence[int], eta: int, *,
                 rank_by: str, horizon: int, keep_front: bool = False):
        """`rank_by`: the estimator a rung ranks by; `horizon`: the study's epochs (what the
        power law extrapolates to); `keep_front`: see `rung_keeps`."""
        self.objectives, self.rungs, self.eta = tuple(objectives), set(rungs), eta
        self.rank_by, self.horizon, self.keep_front = rank_by, horizon, keep_front

    def score(self, curve: Curve) -> float | None:
        return estimators.score(self.rank_by, curve, self.horizon)

    def should_stop(self, study: optuna.Study, trial: optuna.Trial, curve: Curve,
                    costs: dict[str, float]) -> bool:
        epoch = len(curve)
        own_score = self.score(curve)
        if epoch not in self.rungs or own_score is None:
            return False
        points = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,
                                                          TrialState.COMPLETE,
                                                          TrialState.PRUNED)):
            if t.number == trial.number:
                continue
            r = TrialRecord.from_trial(t)
            at_rung = self.score(r.curve[:epoch]) if len(r.curve) >= epoch else None
            if at_rung is not None and r.costs is not None:
                points.append(rung_vector(self.objectives, at_rung, r.costs))
        own = len(points)
        points.append(rung_vector(self.objectives, own_score, costs))
        return not rung_keeps(points, own, self.eta, self.keep_front)
