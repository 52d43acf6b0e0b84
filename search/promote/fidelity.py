"""Proxy fidelity: does the proxy rank configs as full training does?

Kendall's tau-b and Spearman's rho between the proxy's validation accuracy (the mean over
confirmation seeds when there are some) and the full training's top-1, over the configs that
were promoted, each with a 95% percentile bootstrap interval (resampling configs); and the
same for every rank estimator (search.study.estimators) of the proxy's curve, all curves cut
to the shortest one compared (a training-loss sum over more epochs is not comparable).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from scipy import stats

from search.study import estimators
from search.study.record import StudyKey, TrialRecord, confirmations, full_results, read_json
from search.study.results import state_of
from search.study.studies import load_spec
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


def fidelity(study: optuna.Study, include_partial: bool = False) -> dict[str, Any]:
    """The proxy against full training, over the trials with a usable full run: per trial
    its best completed run at the study's target (the size and classes it was promoted at);
    with `include_partial`, runs cut short count too. The runs left out are listed, with why."""
    target = promotion_target(study)
    full, confirmed = full_results(study), confirmations(study)
    pairs, curves, left_out = [], [], []
    for number, runs in sorted(full.items()):
        usable = []
        for run in runs:
            why = _unusable(run, target, include_partial)
            if why:
                left_out.append({"trial": number, "run_id": run.get("run_id"), "why": why})
            else:
                usable.append(run)
        proxy_record = TrialRecord.from_trial(study.trials[number])
        proxy = confirmed.get(number, {}).get("mean")
        if proxy is None:
            proxy = proxy_record.last_val_acc
        if usable and proxy is not None:
            best = max(usable, key=lambda r: r["top1"])
            curves.append(proxy_record.curve)
            pairs.append({"trial": number, "proxy_val_acc": proxy, "full_top1": best["top1"],
                          "completed": best.get("completed", False),
                          "image_size": best.get("image_size"),
                          "num_classes": best.get("num_classes"), "run_id": best.get("run_id")})
    if len(pairs) < 3:
        raise UserError(_too_few(study, pairs, left_out, target, include_partial))
    x = [p["proxy_val_acc"] for p in pairs]
    y = [p["full_top1"] for p in pairs]
    return {"study": study.study_name, "target": target, "n": len(pairs),
            **correlations(x, y), "estimators": by_estimator(curves, y, load_spec(study).epochs),
            "partial": sum(not p["completed"] for p in pairs), "left_out": left_out,
            "pairs": pairs}


def correlations(x: Sequence[float], y: Sequence[float]) -> dict[str, dict[str, Any]]:
    """Kendall's tau-b and Spearman's rho of x against y, each with its 95% interval."""
    out = {}
    for name, stat in (("kendall_tau", kendall_tau_b), ("spearman", spearman)):
        lo, hi = bootstrap(stat, x, y)
        out[name] = {"value": stat(x, y), "ci95": [lo, hi]}
    return out


def describe(r: dict[str, dict[str, Any]]) -> str:
    """One line of a `correlations` result: tau and rho, each with its interval."""
    tau, rho = r["kendall_tau"], r["spearman"]
    return (f"Kendall {tau['value']:+.3f} [{tau['ci95'][0]:+.2f}, {tau['ci95'][1]:+.2f}]  "
            f"Spearman {rho['value']:+.3f} [{rho['ci95'][0]:+.2f}, {rho['ci95'][1]:+.2f}]")


def by_estimator(curves: list[list[dict[str, float]]], truth: Sequence[float],
                 horizon: int) -> dict[str, Any]:
    """Every estimator's correlations with `truth` (the full top-1 of each curve's config),
    over the curves it can score, each cut to the shortest of them."""
    kept = [(c, y) for c, y in zip(curves, truth, strict=True) if c]  # no curve: no score
    epochs = min((len(c) for c, _ in kept), default=0)
    out: dict[str, Any] = {"epochs": epochs}
    if epochs == 0:
        return out
    for name in estimators.ESTIMATORS:
        scored = [(estimators.score(name, c[:epochs], horizon), y) for c, y in kept]
        scored = [(s, y) for s, y in scored if s is not None]
        if len(scored) >= 3:
            out[name] = {"n": len(scored), **correlations(*zip(*scored, strict=True))}
    return out


def promotion_target(study: optuna.Study) -> dict[str, int]:
    """The size and classes the study was promoted at (else its spec's target)."""
    stored = read_json(study, StudyKey.TARGET)
    if stored:
        return stored
    spec = load_spec(study)
    return {"image_size": spec.target_size, "num_classes": spec.target_classes}


def _unusable(run: dict[str, Any], target: dict[str, int], include_partial: bool) -> str:
    if not run.get("completed") and not include_partial:
        return (f"partial: {run.get('steps')} of {run.get('steps_planned', '?')} steps "
                f"(--include-partial counts it)")
    if run.get("image_size") != target["image_size"]:
        return f"trained at {run.get('image_size')} px, the target is {target['image_size']}"
    if run.get("num_classes") != target["num_classes"]:
        return (f"trained on {run.get('num_classes')} classes, the target has "
                f"{target['num_classes']}")
    return ""


def _too_few(study: optuna.Study, pairs, left_out, target, include_partial) -> str:
    """Why there is no ranking yet, and what would give one, in one line."""
    name = study.study_name
    trained = {TrialRecord.from_trial(t).arch_hash for t in study.get_trials(deepcopy=False)
               if state_of(t) == "COMPLETE"}
    size = f"{target['image_size']} px, {target['num_classes']} classes"
    line = (f"study {name!r} has {len(pairs)} trial(s) with a completed full run at {size}"
            if not include_partial else
            f"study {name!r} has {len(pairs)} trial(s) with a full run at {size}")
    if left_out:
        line += f" ({len(left_out)} run(s) left out: {left_out[0]['why']}"
        line += ", ...)" if len(left_out) > 1 else ")"
    line += "; rank correlation needs at least 3. "
    if len(trained) < 3:
        return line + (f"It has only {len(trained)} distinct trained architecture(s): grow "
                       f"it first (patchnas search run --name {name} --trials N, N larger "
                       f"than its budget)")
    return line + (f"It has {len(trained)} distinct trained architectures: promote more of "
                   f"them to complete runs (patchnas promote {name} --select "
                   f"top-k:{min(len(trained), 5)} --full-data DIR)")
