"""Rank estimators: how a trial ranks among others, from the curve it records each epoch.

  last      the last epoch's val_acc (a trial's objective value)
  best      the best epoch's val_acc
  tse       minus the sum of the per-epoch training losses over the epochs run: a net that
            trains faster ranks higher (Ru et al. 2021, "Speedy performance estimation for
            neural architecture search", TSE)
  tse_ema   the same sum with the recent epochs weighing most: minus sum gamma^(T-t) L_t,
            gamma = 0.9 (their TSE-EMA)
  powerlaw  val_acc extrapolated to the study's epochs (`horizon`) by a power law fitted to
            the error curve, 1 - acc(t) = b t^-c, least squares in log-log; with one epoch,
            or an error that does not fall, no gain is predicted (its last val_acc)

Every score is "higher is better", and each needs nothing but the `val_acc` and `train_loss`
every trial records per epoch. TSE sums are comparable between curves of the same length
only: MO-ASHA compares trials at one rung, and `search fidelity` cuts every curve to the
shortest one it compares.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

Curve = Sequence[dict[str, float]]
EMA_GAMMA = 0.9
_ERROR_FLOOR = 1e-4  # log(0) guard: an epoch at 100% accuracy


def last(curve: Curve, horizon: int) -> float:
    return float(curve[-1]["val_acc"])


def best(curve: Curve, horizon: int) -> float:
    return max(float(c["val_acc"]) for c in curve)


def tse(curve: Curve, horizon: int) -> float:
    return -sum(float(c["train_loss"]) for c in curve)


def tse_ema(curve: Curve, horizon: int) -> float:
    n = len(curve)
    return -sum(EMA_GAMMA ** (n - 1 - i) * float(c["train_loss"]) for i, c in enumerate(curve))


def powerlaw(curve: Curve, horizon: int) -> float:
    acc = np.array([float(c["val_acc"]) for c in curve])
    if len(acc) < 2 or horizon <= len(acc):
        return float(acc[-1])
    epochs = np.arange(1, len(acc) + 1, dtype=float)
    error = np.clip(1.0 - acc, _ERROR_FLOOR, 1.0)
    slope, intercept = np.polyfit(np.log(epochs), np.log(error), 1)  # log e = log b - c log t
    if not math.isfinite(slope) or slope >= 0:
        return float(acc[-1])
    return float(1.0 - math.exp(intercept + slope * math.log(horizon)))


ESTIMATORS: dict[str, Callable[[Curve, int], float]] = {
    "last": last, "best": best, "tse": tse, "tse_ema": tse_ema, "powerlaw": powerlaw}
# the best of them in bench/proxy_fidelity.py (bench/RESULTS.md): Kendall 0.78 vs 0.72 for last
DEFAULT = "tse"


def score(name: str, curve: Curve, horizon: int) -> float | None:
    """The estimator's score of `curve` (None for a curve without epochs or the metric, and
    for a NaN or infinite one: nothing would dominate it at a rung)."""
    estimate = ESTIMATORS[name]
    try:
        value = estimate(curve, horizon) if curve else None
    except KeyError:  # an epoch without the metric (a reused or hand-written record)
        return None
    return value if value is not None and math.isfinite(value) else None


def scores(curve: Curve, horizon: int) -> dict[str, float]:
    """Every estimator's score of `curve` (those it can give)."""
    out = {name: score(name, curve, horizon) for name in ESTIMATORS}
    return {name: value for name, value in out.items() if value is not None}
