"""What a person reviews in MLflow, refreshed from the study: the parent run's metrics and
front tables, and each child run's Pareto tags (and status, when its worker died)."""

from __future__ import annotations

import csv
import io
from typing import Any

import optuna

from search.results import pareto, ranked_trials, state_of, status
from search.study import load_spec


def refresh(study: optuna.Study, runs: Any) -> None:
    """`runs` is a tracking.runs.StudyRuns."""
    spec = load_spec(study)
    ranks = {t.number: rank for t, rank in ranked_trials(study, spec)}
    trials = [{"run_id": t.user_attrs["mlflow_run_id"], "state": state_of(t),
               "pareto": ranks.get(t.number) == 0, "pareto_rank": ranks.get(t.number),
               "finished": t.state.is_finished()}
              for t in study.get_trials(deepcopy=False) if "mlflow_run_id" in t.user_attrs]
    s = status(study)
    front = pareto(study)
    metrics = {"trials_complete": s.counts["COMPLETE"] + s.counts["REUSED"],
               "front_size": s.front_size, "hypervolume": s.hypervolume}
    runs.review(metrics, {"front.csv": front_csv(front), "front.md": front_markdown(front)},
                trials)


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
