"""Proxy fidelity: does the proxy rank configs as full training does?

Kendall's tau-b and Spearman's rho between the proxy's validation accuracy (the mean over
confirmation seeds when there are some) and the full training's top-1, over the configs that
were promoted, each with a 95% percentile bootstrap interval (resampling configs).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import optuna

from search.feedback import confirmations, full_results
from spaces.errors import UserError

BOOTSTRAP = 2000


def average_ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else math.nan


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx * dy > 0:
                concordant += 1
            else:
                discordant += 1
    n = concordant + discordant
    denom = math.sqrt((n + ties_x) * (n + ties_y))
    return (concordant - discordant) / denom if denom else math.nan


def bootstrap(stat, x: Sequence[float], y: Sequence[float], seed: int = 0,
              n: int = BOOTSTRAP) -> tuple[float, float]:
    """95% percentile interval of `stat` over resamples (degenerate resamples skipped)."""
    rng = random.Random(seed)
    values = []
    for _ in range(n):
        idx = [rng.randrange(len(x)) for _ in x]
        v = stat([x[i] for i in idx], [y[i] for i in idx])
        if not math.isnan(v):
            values.append(v)
    if not values:
        return math.nan, math.nan
    values.sort()
    return values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]


def fidelity(study: optuna.Study) -> dict[str, Any]:
    full, confirmed = full_results(study), confirmations(study)
    pairs = []
    for number, result in sorted(full.items()):
        trial = study.trials[number]
        proxy = confirmed.get(number, {}).get("mean")
        if proxy is None:
            proxy = trial.user_attrs.get("curve", [{}])[-1].get("val_acc")
        if proxy is not None:
            pairs.append({"trial": number, "proxy_val_acc": proxy, "full_top1": result["top1"],
                          "completed": result.get("completed", False),
                          "image_size": result.get("image_size")})
    if len(pairs) < 3:
        raise UserError(f"study {study.study_name!r} has {len(pairs)} promoted config(s) with a "
                        f"full result; rank correlation needs at least 3 (patchnas promote "
                        f"{study.study_name} --select top-k:5 ...)")
    x = [p["proxy_val_acc"] for p in pairs]
    y = [p["full_top1"] for p in pairs]
    out = {"study": study.study_name, "n": len(pairs), "pairs": pairs}
    for name, stat in (("kendall_tau", kendall_tau_b), ("spearman", spearman)):
        lo, hi = bootstrap(stat, x, y)
        out[name] = {"value": stat(x, y), "ci95": [lo, hi]}
    out["partial"] = sum(not p["completed"] for p in pairs)
    return out
