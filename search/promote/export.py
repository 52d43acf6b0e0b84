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


def target_of(spec: StudySpec, full_data: str | None, size: int | None,
              classes: int | None) -> tuple[int, int]:
    """The size and classes to export at: as given, else those of the full data's images
    (a sample of them), else the study's target (224 px, 1000 classes by default)."""
    if full_data and (size is None or classes is None):
        from trainers.full_input import folder_shape

        try:
            shape = folder_shape(Path(full_data))
        except UserError as err:
            raise UserError(f"{err} (the target's size and classes follow the full data; "
                            f"where it lives on another host, give --target-size and "
                            f"--target-classes)") from None
        size, classes = size or shape.image_size, classes or len(shape.classes)
    size, classes = size or spec.target_size, classes or spec.target_classes
    if size < 1 or classes < 2:
        raise UserError(f"the target must be at least 1 px and 2 classes, not {size} px and "
                        f"{classes}; check --target-size / --target-classes")
    return size, classes


def export_config(study: optuna.Study, spec: StudySpec, trial: FrozenTrial, out: Path,
                  target_size: int, storage_url: str, full_data: str | None,
                  num_classes: int | None = None) -> Path:
    """Write one trial's YAML into `out`; returns its path."""
    num_classes = num_classes or spec.target_classes
    r = TrialRecord.from_trial(trial)
    family = spaces.get(r.family)
    proxy = family.config_of(r.config)
    target = family.to_target(proxy, target_size)
    proxy_size = r.image_size or spaces.PROXY_SIZE  # older records trained at 32 px only
    costs = target_and_proxy_costs(family, proxy, target_size, num_classes, proxy_size,
                                   r.num_classes or 10)
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
                  "image_size": proxy_size, "num_classes": r.num_classes,
                  "train_images": r.train_images, "val_images": r.val_images,
                  "images_per_s": r.images_per_s, "data_hash": spec.data_hash},
        "costs": {"proxy": {"image_size": proxy_size, "num_classes": r.num_classes or 10,
                            "params": costs["proxy_params"], "macs": costs["proxy_macs"]},
                  "target": {"image_size": target_size, "num_classes": num_classes,
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
                              "val/<class>/*", "image_size": target_size,
                              "num_classes": num_classes, "path": full_data},
                        provenance=provenance_doc, command=command)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(config.dump())
    return path


def export(name: str, storage_url: str, selection: str, out: str | Path, *,
           target_size: int | None = None, target_classes: int | None = None,
           full_data: str | None = None, confirm_seeds: int = 0,
           confirm=None) -> list[dict[str, Any]]:
    """Select and write; returns one summary per written file."""
    chosen_by = Selection.parse(selection)
    study = load_study(name, storage_url)
    spec = load_spec(study)
    size, classes = target_of(spec, full_data, target_size, target_classes)
    if confirm_seeds < 0:
        raise UserError("--confirm-seeds must be >= 0")
    if confirm_seeds:
        trials = select_confirmed(study, spec, chosen_by, confirm_seeds,
                                  lambda missing: confirm(study, spec, missing, confirm_seeds))
    else:
        trials = select(study, spec, chosen_by)
    out = Path(out)
    confirmed = confirmations(study)
    record.write_json(study, StudyKey.TARGET, {"image_size": size, "num_classes": classes})
    written = []
    for t in trials:
        path = export_config(study, spec, t, out, size, storage_url, full_data, classes)
        written.append({"trial": t.number, "label": TrialRecord.from_trial(t).label,
                        "path": str(path), "val_acc": proxy_accuracy(t, spec, {}),
                        "confirmed": confirmed.get(t.number)})
    return written
