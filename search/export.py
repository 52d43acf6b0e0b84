"""`patchnas export`: the selected configs of a study as YAML the full trainer runs.

Selections (over trained, feasible configs, each architecture once):
  pareto                  the Pareto front
  knee                    the front member nearest the ideal point, objectives normalized
                          as for the hypervolume (accuracy as is, costs log10-scaled to the
                          space's range)
  top-k:N                 the N best in NSGA-II order (Pareto rank, then crowding distance)
  best-under:M=V[,M=V]    the most accurate config whose target costs are within the limits
                          (M: params, macs, latency_ms)

With confirmation seeds the proxy accuracy of each selected config is the mean over its
original run and N more seeds; selection is repeated on the means until every selected
config is confirmed.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

import spaces
from search.feedback import confirmations
from search.objectives import normalize
from search.pareto import nondominated_ranks, nsga2_order
from search.results import objective_bounds, ranked_trials
from search.storage import redact
from search.study import PROVENANCE_ATTR, StudySpec, load_spec, load_study, provenance
from spaces.cost import target_and_proxy_costs
from spaces.errors import UserError
from trainers.full_config import FullConfig
from trainers.recipes import published

COST_LIMITS = ("params", "macs", "latency_ms")
FULL_DATA_PLACEHOLDER = "$IMAGENET_DIR"


@dataclass(frozen=True)
class Selection:
    kind: str  # pareto | knee | top-k | best-under
    k: int = 0
    limits: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Selection:
        text = text.strip()
        if text in ("pareto", "knee"):
            return cls(text)
        if m := re.fullmatch(r"top-k:(\d+)", text):
            if int(m[1]) < 1:
                raise UserError("--select top-k:N needs N >= 1")
            return cls("top-k", k=int(m[1]))
        if text.startswith("best-under:"):
            limits = []
            for item in text.removeprefix("best-under:").split(","):
                metric, _, value = item.partition("=")
                if metric not in COST_LIMITS:
                    raise UserError(f"--select best-under: unknown cost {metric!r}; use "
                                    f"{', '.join(COST_LIMITS)}, e.g. best-under:params=5e6")
                try:
                    limits.append((metric, float(value)))
                except ValueError:
                    raise UserError(f"--select best-under: {item!r} needs a number, e.g. "
                                    f"params=5e6") from None
            return cls("best-under", limits=tuple(limits))
        raise UserError(f"--select {text!r}: use pareto, knee, top-k:N or "
                        f"best-under:params=5e6")


def select(study: optuna.Study, spec: StudySpec, selection: Selection,
           means: dict[int, float] | None = None) -> list[FrozenTrial]:
    """The selected trials; `means` replaces a trial's proxy accuracy (confirmed means)."""
    means = means or {}
    trials = [t for t, _ in ranked_trials(study, spec)]
    if not trials:
        raise UserError(f"study {study.study_name!r} has no trained, feasible config yet")
    rows = [_values(t, spec, means) for t in trials]
    minimized = [[-v if o.direction == "max" else v for o, v in zip(spec.objectives, row,
                                                                    strict=True)]
                 for row in rows]
    if selection.kind == "top-k":
        return [trials[i] for i in nsga2_order(minimized)[:selection.k]]
    if selection.kind == "best-under":
        return [_best_under(trials, rows, spec, selection.limits)]
    front = [i for i, r in enumerate(nondominated_ranks(minimized)) if r == 0]
    if selection.kind == "pareto":
        return sorted((trials[i] for i in front), key=lambda t: -_acc(t, spec, means))
    bounds = objective_bounds(study, spec, rows)
    normalized = {i: normalize(spec.objectives, rows[i], bounds) for i in front}
    knee = min(front, key=lambda i: (math.hypot(*normalized[i]), trials[i].number))
    return [trials[knee]]


def _values(t: FrozenTrial, spec: StudySpec, means: dict[int, float]) -> list[float]:
    return [means.get(t.number, v) if o.metric == "val_acc" else v
            for o, v in zip(spec.objectives, t.values, strict=True)]


def _acc(t: FrozenTrial, spec: StudySpec, means: dict[int, float]) -> float:
    return _values(t, spec, means)[[o.metric for o in spec.objectives].index("val_acc")]


def _best_under(trials, rows, spec, limits) -> FrozenTrial:
    acc = [o.metric for o in spec.objectives].index("val_acc")
    fits = [i for i, t in enumerate(trials)
            if all((t.user_attrs.get("costs") or {}).get(m, math.inf) <= v for m, v in limits)]
    if not fits:
        wanted = ", ".join(f"{m} <= {v:g}" for m, v in limits)
        smallest = min((t.user_attrs.get("costs") or {}).get(limits[0][0], math.inf)
                       for t in trials)
        raise UserError(f"no trained config has {wanted} (the smallest has {limits[0][0]} "
                        f"{smallest:g}); raise the limit or search smaller models")
    return trials[max(fits, key=lambda i: (rows[i][acc], -trials[i].number))]


def select_confirmed(study, spec, selection, seeds: int, confirm) -> list[FrozenTrial]:
    """Select, confirm what is selected with `seeds` more seeds, select again on the means,
    until every selected trial is confirmed. `confirm(trials)` runs the seeds."""
    while True:
        done = {n: c["mean"] for n, c in confirmations(study).items()
                if c.get("seeds_run", 0) >= seeds}
        chosen = select(study, spec, selection, done)
        missing = [t for t in chosen if t.number not in done]
        if not missing:
            return chosen
        confirm(missing)


def config_path(out: Path, study: str, trial: int, target_size: int) -> Path:
    return Path(out) / f"{study}-t{trial:04d}-{target_size}px.yaml"


def export_config(study: optuna.Study, spec: StudySpec, trial: FrozenTrial, out: Path,
                  target_size: int, storage_url: str, full_data: str | None) -> Path:
    """Write one trial's YAML into `out`; returns its path."""
    family = spaces.get(trial.user_attrs["family"])
    proxy = family.config_of(trial.user_attrs["config"])
    target = family.to_target(proxy, target_size)
    costs = target_and_proxy_costs(family, proxy, target_size, spec.target_classes)
    confirmed = confirmations(study).get(trial.number)
    curve = trial.user_attrs.get("curve") or [{}]
    path = config_path(out, study.study_name, trial.number, target_size)
    data = full_data or FULL_DATA_PLACEHOLDER
    stored = json.loads(study.user_attrs.get(PROVENANCE_ATTR, "{}"))
    provenance_doc = {
        "study": study.study_name, "trial": trial.number, "storage": redact(storage_url),
        "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"),
        "proxy": {"val_acc": curve[-1].get("val_acc"), "confirmed": confirmed,
                  "objectives": {o.metric: v for o, v in zip(spec.objectives, trial.values,
                                                             strict=True)},
                  "epochs": trial.user_attrs.get("epochs_run", spec.epochs),
                  "max_epochs": spec.epochs, "subset": spec.subset, "val_size": spec.val_size,
                  "image_size": spaces.PROXY_SIZE, "data_hash": spec.data_hash},
        "costs": {"proxy": {"image_size": spaces.PROXY_SIZE, "params": costs["proxy_params"],
                            "macs": costs["macs_32"]},
                  "target": {"image_size": target_size, "num_classes": spec.target_classes,
                             "params": costs["params"], "macs": costs["macs"]}},
        "seed": trial.user_attrs.get("seed"),
        "search": {"git_commit": stored.get("git_commit"), "packages": stored.get("packages")},
        "export": {**provenance(), "at": datetime.now(timezone.utc).isoformat(
            timespec="seconds")},
    }
    command = shlex.join(["patchnas", "train", "full", str(path.resolve()), "--data", data])
    if data == FULL_DATA_PLACEHOLDER:
        command = command.replace(f"'{data}'", data)  # leave the variable to the shell
    config = FullConfig(family.name, target, target_size, published(family.name),
                        proxy_config=trial.user_attrs["config"],
                        data={"format": "imagefolder", "layout": "train/<class>/*, "
                              "val/<class>/*", "image_size": target_size, "path": full_data},
                        provenance=provenance_doc, command=command)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(config.dump())
    return path


def export(name: str, storage_url: str, selection: str, out: str | Path, *,
           target_size: int | None = None, full_data: str | None = None,
           confirm_seeds: int = 0, confirm=None) -> list[dict[str, Any]]:
    """Select and write; returns one summary per written file."""
    chosen_by = Selection.parse(selection)
    study = load_study(name, storage_url)
    spec = load_spec(study)
    size = target_size or spec.target_size
    if size < 1:
        raise UserError("--target-size must be positive")
    if confirm_seeds < 0:
        raise UserError("--confirm-seeds must be >= 0")
    if confirm_seeds:
        trials = select_confirmed(study, spec, chosen_by, confirm_seeds,
                                  lambda missing: confirm(study, spec, missing, confirm_seeds))
    else:
        trials = select(study, spec, chosen_by)
    out = Path(out)
    confirmed = confirmations(study)
    written = []
    for t in trials:
        path = export_config(study, spec, t, out, size, storage_url, full_data)
        written.append({"trial": t.number, "label": t.user_attrs.get("label"),
                        "path": str(path), "val_acc": _acc(t, spec, {}),
                        "confirmed": confirmed.get(t.number)})
    return written
