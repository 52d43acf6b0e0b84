"""What a person watches while a study runs: one progress line when it changes, and what
they review in MLflow, refreshed from the study: the parent run's metrics and front tables,
and each child run's Pareto tags (and status, when its worker died). Both backends call
`Progress.tick` from their loop."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from search.study import record
from search.study.objectives import normalize
from search.study.pareto import dominates, hypervolume
from search.study.record import TrialRecord
from search.study.results import objective_bounds, pareto, ranked_trials, state_of, status
from search.study.studies import load_spec

REVIEW_SECONDS = 10.0  # MLflow refreshes read the whole study: not every second
# fANOVA's forest grows with its data (4 s at 300 trials with Optuna's 64 trees of depth 64,
# most of a refresh): the importances of a long study come from its latest trained trials
# (where the sampler searches now), with 16 trees of depth 6 (0.16-0.28 s at 200 trials;
# within 0.01 of Optuna's 64 trees of depth 64, 2.1 s, on a 5,000-trial study)
IMPORTANCE_TRIALS = 200
IMPORTANCE_EVERY = 10  # past that many, importances are redone after 10 more trained trials


class Progress:
    """The progress/review loop of a running study (`runs`: a tracking.runs.StudyRuns, or
    None without tracking; `log`: None for no progress lines).

    On a terminal it is one live tqdm bar (trials done of the budget, elapsed, ETA, and the
    counts, front and hypervolume beside it); elsewhere (CI logs, pipes) a plain line when
    the counts change, and every PLAIN_SECONDS regardless. stdout is never written."""

    def __init__(self, study: optuna.Study, runs: Any, log=None, live: bool | None = None):
        self.study, self.runs, self.log = study, runs, log
        self.line: str | None = None
        self.start = self.printed = self.reviewed = time.monotonic()
        live = sys.stderr.isatty() if live is None else live
        self.bar = None
        if live and log is not None:
            from tqdm import tqdm

            self.bar = tqdm(total=record.trial_budget(study), unit="trial", file=sys.stderr,
                            desc=study.study_name, dynamic_ncols=True)

    def tick(self) -> None:
        if self.runs is not None and time.monotonic() - self.reviewed > REVIEW_SECONDS:
            refresh(self.study, self.runs)  # Pareto tags and parent metrics follow the front
            self.reviewed = time.monotonic()
        if self.log is None:
            return
        s = status(self.study)
        if self.bar is not None:
            self.bar.total, self.bar.n = s.budget, s.finished
            self.bar.set_postfix_str(counts_line(s), refresh=False)
            self.bar.refresh()
            return
        line, now = progress_line(s), time.monotonic()
        if line != self.line or now - self.printed >= PLAIN_SECONDS:
            eta = "" if s.eta_seconds is None else f"  ETA {_clock(s.eta_seconds)}"
            self.log(f"{line}  elapsed {_clock(now - self.start)}{eta}")
            self.line, self.printed = line, now

    def write(self, message: str) -> None:
        """A log line that does not tear the live bar."""
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        elif self.log is not None:
            self.log(message)

    def finish(self, run_status: str) -> None:
        if self.log is not None:
            self.line = None
            self.tick()
            if self.bar is not None:
                self.bar.close()
        if self.runs is not None:
            refresh(self.study, self.runs)
            self.runs.end_study(run_status)


PLAIN_SECONDS = 30.0


def counts_line(s) -> str:
    c = s.counts
    extra = "".join(f" {k.lower()} {c[k]}" for k in ("REUSED", "RETRIED") if c[k])
    return (f"running {c['RUNNING']} pruned {c['PRUNED']} failed {c['FAIL']} "
            f"infeasible {c['INFEASIBLE']}{extra} front {s.front_size} "
            f"hv {s.hypervolume:.4f}")


def progress_line(s) -> str:
    """One plain line of a study's status (a search.study.results.Status)."""
    return (f"done {s.finished}/{s.budget}  {counts_line(s)}"
            + ("  (every architecture of the space is trained)" if s.exhausted else ""))


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return (f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600
            else f"{seconds // 60}m{seconds % 60:02d}s")


def refresh(study: optuna.Study, runs: Any) -> None:
    """`runs` is a tracking.runs.StudyRuns. Nothing is read or drawn again while no trial
    has started or finished since its last refresh."""
    everything = study.get_trials(deepcopy=False)
    mark = (len(everything), sum(t.state.is_finished() for t in everything))
    memo = runs.review_state
    if memo.get("mark") == mark:
        return
    spec = load_spec(study)
    ranked = ranked_trials(study, spec)  # one snapshot: trials finish while we look
    ranks = {t.number: rank for t, rank in ranked}
    records = {t.number: TrialRecord.from_trial(t) for t in everything}
    trials = [{"run_id": r.mlflow_run_id, "state": state_of(t),
               "pareto": ranks.get(t.number) == 0, "pareto_rank": ranks.get(t.number),
               "finished": t.state.is_finished()}
              for t in everything for r in (records[t.number],) if r.mlflow_run_id is not None]
    s = status(study, ranked)
    front = pareto(study, ranked)
    metrics = {"trials_complete": s.counts["COMPLETE"], "trials_done": s.finished,
               "front_size": s.front_size, "hypervolume": s.hypervolume}
    runs.review(metrics, {"front.csv": front_csv(front), "front.md": front_markdown(front),
                          "front_table.json": front_table(front),
                          **pictures(study, spec, ranked, everything, records, memo)}, trials)
    memo["mark"] = mark


def pictures(study: optuna.Study, spec, ranked, trials, records,
             memo: dict[str, Any]) -> dict[str, str | bytes]:
    """The parent run's pictures; `memo` keeps the importances between refreshes."""
    from tracking import plots

    points = [{"trial": t.number, "label": records[t.number].label or "",
               "values": {o.metric: v for o, v in zip(spec.objectives, t.values, strict=True)},
               "pareto": rank == 0}
              for t, rank in ranked]
    title = f"{study.study_name}: {len(points)} trained, {sum(p['pareto'] for p in points)} " \
            f"on the front"
    by_trials, by_seconds = hypervolume_curves(study, spec, ranked, trials, records)
    devices = {(r.device or "cpu").split(":")[0] for r in records.values()}
    out: dict[str, str | bytes] = {
        "pareto.png": plots.pareto_png(points, title),
        "pareto.html": plots.pareto_html(points, title),
        "hypervolume.png": plots.hypervolume_png(by_trials, by_seconds,
                                                 "gpu" if "cuda" in devices else "cpu"),
    }
    trained = [t for t in trials if t.state == TrialState.COMPLETE
               and state_of(t) == "COMPLETE"]
    known = memo.get("importances")
    if known is None or len(trained) - known[0] >= IMPORTANCE_EVERY or (
            len(trained) < IMPORTANCE_TRIALS and len(trained) != known[0]):
        importances = param_importances(study, trained)
        drawn = ({"importances.png": plots.importances_png(importances),
                  "importances.json": json.dumps(importances, indent=2)}
                 if importances else {})
        known = memo["importances"] = (len(trained), drawn)  # drawn once, sent each time
    return {**out, **known[1]}


def hypervolume_curves(study: optuna.Study, spec, ranked, trials, records):
    """Hypervolume after each finished trial, against trials and against training time:
    the front is kept as trials arrive, its volume measured only when it changes (in the
    final front's bounds, so the last point is the hypervolume `status` shows)."""
    finished = sorted((t for t in trials if t.state.is_finished()),
                      key=lambda t: t.datetime_complete)
    trained = {t.number for t, _ in ranked}
    bounds = (objective_bounds(study, spec, [t.values for t, rank in ranked if rank == 0])
              if ranked else {})
    signs = [-1.0 if o.direction == "max" else 1.0 for o in spec.objectives]

    def minimized(t):
        return [s * v for s, v in zip(signs, t.values, strict=True)]
    # (minimized, normalized) of each member: each point normalized once, as it arrives
    # (normalizing the whole front at each change was a third of this at 5,000 trials)
    front: list[tuple[list[float], list[float]]] = []
    reference = [1.0] * len(spec.objectives)
    seconds, hv, by_trials, by_seconds = 0.0, 0.0, [], []
    for i, t in enumerate(finished, 1):
        seconds += records[t.number].seconds or 0.0
        point = minimized(t) if t.number in trained else None
        if point is not None and not any(dominates(m, point) for m, _ in front):
            front = [(m, n) for m, n in front if not dominates(point, m)] + [
                (point, normalize(spec.objectives, t.values, bounds))]
            hv = hypervolume([n for _, n in front], reference)
        by_trials.append((i, hv))
        by_seconds.append((seconds, hv))
    return by_trials, by_seconds


def param_importances(study: optuna.Study, trained: list) -> dict[str, float]:
    """fANOVA importances of the searched parameters for val_acc (the first objective), over
    the latest IMPORTANCE_TRIALS of the `trained` trials."""
    trained = trained[-IMPORTANCE_TRIALS:]
    if len(trained) < 4 or not any(len(t.params) > 0 for t in trained):
        return {}
    # only trained trials: infeasible and reused ones would weigh in with made-up accuracies
    trained_only = optuna.create_study(directions=study.directions)
    trained_only.add_trials(trained)
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(
            trained_only, target=lambda t: t.values[0],
            evaluator=optuna.importance.FanovaImportanceEvaluator(
                seed=0, n_trees=16, max_depth=6)).items()}
    except (RuntimeError, ValueError):  # e.g. too few distinct values yet
        return {}


def _rows(front: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    metrics = list(front[0]["values"]) if front else []
    rank_by = f"rank_{front[0]['rank']['by']}" if front else "rank"
    header = ["trial", "label", *metrics, "macs_224", "epochs", rank_by]
    rows = [[m["trial"], m["label"], *(m["values"][k] for k in metrics),
             (m["costs"] or {}).get("macs_224"), m["fidelity"]["epochs"], m["rank"]["score"]]
            for m in front]
    return header, rows


def front_csv(front: list[dict[str, Any]]) -> str:
    header, rows = _rows(front)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def front_table(front: list[dict[str, Any]]) -> str:
    """The front in the JSON layout of MLflow's `log_table` (pandas' split orient), written
    whole on each refresh: `log_table` itself appends to an existing table."""
    header, rows = _rows(front)
    return json.dumps({"columns": header, "data": rows})


def front_markdown(front: list[dict[str, Any]]) -> str:
    header, rows = _rows(front)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) and v < 10 else str(v)
