"""Proxy fidelity: does the proxy rank configs as full training does?

Kendall's tau-b and Spearman's rho between the proxy's validation accuracy (the mean over
confirmation seeds when there are some) and the full training's top-1, over the configs that
were promoted, each with a 95% percentile bootstrap interval (resampling configs).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from scipy import stats

from search.study.record import TrialRecord, confirmations, full_results
from spaces.errors import UserError

BOOTSTRAP = 2000


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    return float(stats.kendalltau(x, y, variant="b").statistic)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return float(stats.spearmanr(x, y).statistic)


def bootstrap(stat, x: Sequence[float], y: Sequence[float], seed: int = 0,
              n: int = BOOTSTRAP) -> tuple[float, float]:
    """95% percentile interval of `stat` over paired resamples of the configs; degenerate
    resamples (all ranks tied: the statistic is undefined) are left out, not counted."""
    with warnings.catch_warnings():  # scipy warns about the degenerate resamples
        warnings.simplefilter("ignore")
        result = stats.bootstrap((list(x), list(y)), stat, paired=True, vectorized=False,
                                 n_resamples=n, method="percentile", rng=seed)
        values = np.asarray(result.bootstrap_distribution, dtype=float)
    if np.isnan(values).all():
        return math.nan, math.nan
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def fidelity(study: optuna.Study) -> dict[str, Any]:
    full, confirmed = full_results(study), confirmations(study)
    pairs = []
    for number, result in sorted(full.items()):
        trial = study.trials[number]
        proxy = confirmed.get(number, {}).get("mean")
        if proxy is None:
            proxy = TrialRecord.from_trial(trial).last_val_acc
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
