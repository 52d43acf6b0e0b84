"""Results about finished trials: seed confirmations and full trainings.

Optuna refuses to update a finished trial's attributes, so these live on the study, one
user attribute per trial: `patchnas.confirm.t0012` and `patchnas.full.t0012`.
"""

from __future__ import annotations

from typing import Any

import optuna

from search.study import load_study
from spaces.errors import UserError

CONFIRM, FULL = "patchnas.confirm", "patchnas.full"


def _key(kind: str, trial: int) -> str:
    return f"{kind}.t{trial:04d}"


def _by_trial(study: optuna.Study, kind: str) -> dict[int, dict[str, Any]]:
    prefix = kind + ".t"
    return {int(k[len(prefix):]): v for k, v in study.user_attrs.items()
            if k.startswith(prefix)}


def confirmations(study: optuna.Study) -> dict[int, dict[str, Any]]:
    return _by_trial(study, CONFIRM)


def full_results(study: optuna.Study) -> dict[int, dict[str, Any]]:
    return _by_trial(study, FULL)


def record_confirmation(study: optuna.Study, trial: int, data: dict[str, Any]) -> None:
    study.set_user_attr(_key(CONFIRM, trial), data)


def record_full(storage_url: str, study_name: str, trial: int, data: dict[str, Any]) -> bool:
    """Write a full training's result beside trial `trial`; False if the study is not there."""
    try:
        study = load_study(study_name, storage_url)
    except UserError:  # not in this storage
        return False
    study.set_user_attr(_key(FULL, trial), data)
    return True
