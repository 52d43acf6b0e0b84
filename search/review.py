"""What a person reviews in MLflow, refreshed from the study: the parent run's metrics and
front tables, and each child run's Pareto tags (and status, when its worker died)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import optuna
from optuna.trial import TrialState

from search.results import hypervolume, pareto, ranked_trials, state_of, status
from search.study import load_spec


def refresh(study: optuna.Study, runs: Any) -> None:
    """`runs` is a tracking.runs.StudyRuns."""
    spec = load_spec(study)
    ranked = ranked_trials(study, spec)  # one snapshot: trials finish while we look
    ranks = {t.number: rank for t, rank in ranked}
    trials = [{"run_id": t.user_attrs["mlflow_run_id"], "state": state_of(t),
               "pareto": ranks.get(t.number) == 0, "pareto_rank": ranks.get(t.number),
               "finished": t.state.is_finished()}
              for t in study.get_trials(deepcopy=False) if "mlflow_run_id" in t.user_attrs]
    s = status(study)
    front = pareto(study)
    metrics = {"trials_complete": s.counts["COMPLETE"] + s.counts["REUSED"],
               "front_size": s.front_size, "hypervolume": s.hypervolume}
    runs.review(metrics, {"front.csv": front_csv(front), "front.md": front_markdown(front),
                          **pictures(study, spec, ranked)}, trials)


def pictures(study: optuna.Study, spec, ranked) -> dict[str, str | bytes]:
    from tracking import plots

    points = [{"trial": t.number, "label": t.user_attrs.get("label", ""),
               "values": {o.metric: v for o, v in zip(spec.objectives, t.values, strict=True)},
               "pareto": rank == 0}
              for t, rank in ranked]
    title = f"{study.study_name}: {len(points)} trained, {sum(p['pareto'] for p in points)} " \
            f"on the front"
    by_trials, by_seconds = hypervolume_curves(study, spec, ranked)
    devices = {t.user_attrs.get("device", "cpu").split(":")[0] for t in study.trials}
    out: dict[str, str | bytes] = {
        "pareto.png": plots.pareto_png(points, title),
        "pareto.html": plots.pareto_html(points, title),
        "hypervolume.png": plots.hypervolume_png(by_trials, by_seconds,
                                                 "gpu" if "cuda" in devices else "cpu"),
    }
    importances = param_importances(study)
    if importances:
        out["importances.png"] = plots.importances_png(importances)
        out["importances.json"] = json.dumps(importances, indent=2)
    return out


def hypervolume_curves(study: optuna.Study, spec, ranked):
    """Hypervolume after each finished trial, against trials and against training time."""
    finished = sorted((t for t in study.get_trials(deepcopy=False) if t.state.is_finished()),
                      key=lambda t: t.datetime_complete)
    trained = {t.number for t, _ in ranked}
    seen, seconds, by_trials, by_seconds = [], 0.0, [], []
    for i, t in enumerate(finished, 1):
        seconds += t.user_attrs.get("seconds", 0.0)
        if t.number in trained:
            seen.append(t)
        hv = hypervolume(study, spec, seen) if seen else 0.0
        by_trials.append((i, hv))
        by_seconds.append((seconds, hv))
    return by_trials, by_seconds


def param_importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances of the searched parameters for val_acc (the first objective)."""
    trained = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
               if state_of(t) == "COMPLETE"]
    if len(trained) < 4 or not any(len(t.params) > 0 for t in trained):
        return {}
    # only trained trials: infeasible and reused ones would weigh in with made-up accuracies
    trained_only = optuna.create_study(directions=study.directions)
    trained_only.add_trials(trained)
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(
            trained_only, target=lambda t: t.values[0],
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)).items()}
    except (RuntimeError, ValueError):  # e.g. too few distinct values yet
        return {}


def _rows(front: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    metrics = list(front[0]["values"]) if front else []
    header = ["trial", "label", *metrics, "macs_224", "epochs"]
    rows = [[m["trial"], m["label"], *(m["values"][k] for k in metrics),
             (m["costs"] or {}).get("macs_224"), m["fidelity"]["epochs"]] for m in front]
    return header, rows


def front_csv(front: list[dict[str, Any]]) -> str:
    header, rows = _rows(front)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def front_markdown(front: list[dict[str, Any]]) -> str:
    header, rows = _rows(front)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) and v < 10 else str(v)
