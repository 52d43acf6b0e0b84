"""Objectives of a study and the one definition of its normalized hypervolume.

`--objectives val_acc:max,params:min` (the default). Costs (params, macs, latency_ms) are
those of the target model a config would be promoted to. For the hypervolume every objective
is mapped to [0, 1], 0 best: accuracy as 1 - val_acc; each cost as log10 scaled between the
smallest and largest model the space allows. The reference point is the worst corner
(1, ..., 1), so a study's hypervolume is a number in [0, 1] that compares across studies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from search.study.pareto import hypervolume
from spaces.errors import UserError

METRICS = {"val_acc": "max", "params": "min", "macs": "min", "latency_ms": "min"}
COSTS = ("params", "macs", "latency_ms")


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # "max" | "min"

    @property
    def optuna_direction(self) -> str:
        return "maximize" if self.direction == "max" else "minimize"

    def __str__(self) -> str:
        return f"{self.metric}:{self.direction}"


def parse_objectives(text: str | Sequence[str]) -> tuple[Objective, ...]:
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in (i.strip() for i in items if i.strip()):
        metric, _, direction = item.partition(":")
        if metric not in METRICS:
            raise UserError(f"unknown objective {metric!r}; choose from "
                            f"{', '.join(METRICS)} (e.g. val_acc:max,params:min)")
        direction = direction or METRICS[metric]
        if direction != METRICS[metric]:
            raise UserError(f"objective {metric} can only be {METRICS[metric]}imized "
                            f"({metric}:{METRICS[metric]})")
        out.append(Objective(metric, direction))
    if not out:
        raise UserError("give at least one objective, e.g. --objectives val_acc:max")
    if len({o.metric for o in out}) != len(out):
        raise UserError("each objective may appear once")
    if "val_acc" not in {o.metric for o in out}:
        raise UserError("val_acc must be one of the objectives: the search trains to score it")
    return tuple(out)


def log_cost(value: float) -> float:
    """A cost on the scale the hypervolume weighs it (log10; 0 kept finite)."""
    return math.log10(max(float(value), 1e-12))


def normalize(objectives: Sequence[Objective], values: Sequence[float],
              bounds: Mapping[str, tuple[float, float]]) -> list[float]:
    """Objective values -> [0, 1] each, 0 best (see the module docstring)."""
    out = []
    for objective, value in zip(objectives, values, strict=True):
        if objective.metric == "val_acc":
            out.append(min(1.0, max(0.0, 1.0 - value)))
            continue
        lo, hi = bounds[objective.metric]
        lo, hi, value = (log_cost(v) for v in (lo, hi, value))
        out.append(0.0 if hi <= lo else min(1.0, max(0.0, (value - lo) / (hi - lo))))
    return out


def normalized_hypervolume(objectives: Sequence[Objective], rows: Sequence[Sequence[float]],
                           bounds: Mapping[str, tuple[float, float]]) -> float:
    points = [normalize(objectives, row, bounds) for row in rows]
    return hypervolume(points, [1.0] * len(objectives))
