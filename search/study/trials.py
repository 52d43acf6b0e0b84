"""One row per trial, and everything stored about one trial: what `search trials` and
`search show` print. Reads the study only."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial

from search.study.record import TrialRecord, original_number
from search.study.results import STATES, state_of
from search.study.spec import StudySpec
from search.study.studies import load_spec
from spaces.errors import UserError

SORTS = ("number", "val_acc", "params", "macs", "seconds", "state")


def row(t: FrozenTrial, spec: StudySpec) -> dict[str, Any]:
    r = TrialRecord.from_trial(t)
    costs = r.costs or {}
    return {"number": t.number, "state": state_of(t), "family": r.family, "label": r.label,
            "config": r.config, "val_acc": r.last_val_acc, "params": costs.get("params"),
            "macs": costs.get("macs"), "epochs_run": r.epochs_run, "max_epochs": spec.epochs,
            "seconds": r.seconds, "reason": r.reason}


def trial_rows(study: optuna.Study, states: list[str] | None = None,
               sort: str = "number") -> list[dict[str, Any]]:
    """The study's trials as rows, filtered to `states` (patchnas states), sorted by `sort`
    (numbers descending for val_acc, ascending otherwise; missing values last)."""
    wanted = {s.upper() for s in states or []}
    unknown = wanted - set(STATES)
    if unknown:
        raise UserError(f"--state {sorted(unknown)[0]}: choose from {', '.join(STATES)}")
    if sort not in SORTS:
        raise UserError(f"--sort {sort}: choose from {', '.join(SORTS)}")
    spec = load_spec(study)
    rows = [row(t, spec) for t in study.get_trials(deepcopy=False)]
    rows = [r for r in rows if not wanted or r["state"] in wanted]
    sign = -1 if sort == "val_acc" else 1

    def key(r: dict[str, Any]):
        value = r[sort]
        return (value is None, sign * value if isinstance(value, int | float) else value or "")
    return sorted(rows, key=key)


def trial_detail(study: optuna.Study, number: int) -> dict[str, Any]:
    """Everything stored about trial `number`: its row, its record, the config at 32 px and
    at the study's target size, its Optuna values and params, and its links (the trial it
    reused, the one it retries, its retries)."""
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise UserError(f"study {study.study_name} has no trial {number} (it has "
                        f"{len(trials)}: 0..{len(trials) - 1})")
    spec = load_spec(study)
    t = trials[number]
    r = TrialRecord.from_trial(t)
    original = original_number(t)
    detail = {**row(t, spec), "optuna_state": t.state.name, "optuna_params": t.params,
              "values": dict(zip((o.metric for o in spec.objectives), t.values or [],
                                 strict=False)),
              "record": r.to_attrs(), "config_32px": r.config,
              "config_target": _target_config(r, spec),
              "target": {"image_size": spec.target_size, "num_classes": spec.target_classes},
              "reused_from": r.reused_from, "retry_of": original if original != number else None,
              "retries": [u.number for u in trials if u.number != number
                          and original_number(u) == number],
              "mlflow_run_id": r.mlflow_run_id,
              "started": t.datetime_start.isoformat(timespec="seconds")
              if t.datetime_start else None,
              "finished": t.datetime_complete.isoformat(timespec="seconds")
              if t.datetime_complete else None}
    detail["costs"] = r.costs
    return detail


def _target_config(r: TrialRecord, spec: StudySpec) -> dict[str, Any] | None:
    if r.family is None or r.config is None:
        return None
    from dataclasses import asdict

    import spaces

    family = spaces.get(r.family)
    return asdict(family.to_target(family.config_of(r.config), spec.target_size))
