"""`patchnas export`: the selected configs of a study (search.promote.select) as YAML the
full trainer runs, each with its provenance."""

from __future__ import annotations

import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

import spaces
from search.promote.select import Selection, proxy_accuracy, select, select_confirmed
from search.study import record
from search.study.record import StudyKey, TrialRecord, confirmations
from search.study.spec import StudySpec, provenance
from search.study.storage import redact
from search.study.studies import load_spec, load_study
from spaces.cost import target_and_proxy_costs
from spaces.errors import UserError
from trainers.full_config import FullConfig
from trainers.recipes import published

FULL_DATA_PLACEHOLDER = "$IMAGENET_DIR"


def config_path(out: Path, study: str, trial: int, target_size: int) -> Path:
    return Path(out) / f"{study}-t{trial:04d}-{target_size}px.yaml"


def export_config(study: optuna.Study, spec: StudySpec, trial: FrozenTrial, out: Path,
                  target_size: int, storage_url: str, full_data: str | None) -> Path:
    """Write one trial's YAML into `out`; returns its path."""
    r = TrialRecord.from_trial(trial)
    family = spaces.get(r.family)
    proxy = family.config_of(r.config)
    target = family.to_target(proxy, target_size)
    costs = target_and_proxy_costs(family, proxy, target_size, spec.target_classes)
    confirmed = confirmations(study).get(trial.number)
    path = config_path(out, study.study_name, trial.number, target_size)
    data = full_data or FULL_DATA_PLACEHOLDER
    stored = record.read_json(study, StudyKey.PROVENANCE, {})
    provenance_doc = {
        "study": study.study_name, "trial": trial.number, "storage": redact(storage_url),
        "mlflow_run_id": r.mlflow_run_id,
        "proxy": {"val_acc": r.last_val_acc, "confirmed": confirmed,
                  "objectives": {o.metric: v for o, v in zip(spec.objectives, trial.values,
                                                             strict=True)},
                  "epochs": r.epochs_run if r.epochs_run is not None else spec.epochs,
                  "max_epochs": spec.epochs, "subset": spec.subset, "val_size": spec.val_size,
                  "image_size": spaces.PROXY_SIZE, "data_hash": spec.data_hash},
        "costs": {"proxy": {"image_size": spaces.PROXY_SIZE, "params": costs["proxy_params"],
                            "macs": costs["macs_32"]},
                  "target": {"image_size": target_size, "num_classes": spec.target_classes,
                             "params": costs["params"], "macs": costs["macs"]}},
        "seed": r.seed,
        "search": {"git_commit": stored.get("git_commit"), "packages": stored.get("packages")},
        "export": {**provenance(), "at": datetime.now(timezone.utc).isoformat(
            timespec="seconds")},
    }
    command = shlex.join(["patchnas", "train", "full", str(path.resolve()), "--data", data])
    if data == FULL_DATA_PLACEHOLDER:
        command = command.replace(f"'{data}'", data)  # leave the variable to the shell
    config = FullConfig(family.name, target, target_size, published(family.name),
                        proxy_config=r.config,
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
        written.append({"trial": t.number, "label": TrialRecord.from_trial(t).label,
                        "path": str(path), "val_acc": proxy_accuracy(t, spec, {}),
                        "confirmed": confirmed.get(t.number)})
    return written
