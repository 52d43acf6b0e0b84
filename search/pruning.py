"""Multi-fidelity pruning that works with several objectives.

Optuna 5 refuses `trial.report` in multi-objective studies and Ray's schedulers take one
metric. MO-ASHA (Schmucker et al., 2021) does asynchronous successive halving with a
multi-objective ranking: at each rung (epochs min_epochs * eta^k), a trial continues only if
nothing that reached the rung dominates it, or if it is in the best 1/eta of those trials,
ordered by non-dominated rank and then crowding distance (NSGA-II's order). Costs are fixed
per architecture, so what
changes between rungs is the accuracy.

Intermediate metrics live in each trial's user attributes (`curve`: one dict per epoch), so
pruned trials keep them and samplers never see a half-told trial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
from optuna.trial import TrialState

from search.objectives import Objective
from search.pareto import nondominated_ranks, nsga2_order

CURVE_ATTR = "curve"


def rung_keeps(points: Sequence[Sequence[float]], own: int, eta: int) -> bool:
    """Whether point `own` continues past a rung (`points` are minimization vectors).

    It does if it is in the best ceil(n/eta) by NSGA-II order, or if nothing at the rung
    dominates it: a point on the rung's front may end on the final front, and pruning it
    cost 4-7% of the hypervolume in bench/pruning_sim.py for 2-3% of the epochs. Fewer than
    `eta` points at a rung: everyone continues (there is nothing to halve yet).
    """
    n = len(points)
    if n < eta or nondominated_ranks(points)[own] == 0:
        return True
    return nsga2_order(points).index(own) < math.ceil(n / eta)


def rung_vector(objectives: Sequence[Objective], val_acc: float,
                costs: dict[str, float]) -> list[float]:
    """Minimization vector of a trial at a rung."""
    return [-val_acc if o.metric == "val_acc" else float(costs[o.metric]) for o in objectives]


class MOASHA:
    def __init__(self, objectives: Sequence[Objective], rungs: Sequence[int], eta: int):
        self.objectives, self.rungs, self.eta = tuple(objectives), set(rungs), eta

    def should_stop(self, study: optuna.Study, trial_number: int, epoch: int, val_acc: float,
                    costs: dict[str, float]) -> bool:
        if epoch not in self.rungs:
            return False
        points, own = [], None
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,
                                                          TrialState.COMPLETE,
                                                          TrialState.PRUNED)):
            if t.number == trial_number:
                continue
            curve = t.user_attrs.get(CURVE_ATTR) or []
            if len(curve) >= epoch and "costs" in t.user_attrs:
                points.append(rung_vector(self.objectives, curve[epoch - 1]["val_acc"],
                                          t.user_attrs["costs"]))
        own = len(points)
        points.append(rung_vector(self.objectives, val_acc, costs))
        return not rung_keeps(points, own, self.eta)
