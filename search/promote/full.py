"""`patchnas train full`: train an exported config, track it, and close the loop.

The trainer itself (trainers/full.py) knows nothing of Optuna or MLflow. Here, on the main
process only: an MLflow run nested under the study's parent and linked to the source trial's
run, per-epoch metrics, the weights (a state_dict) and config as artifacts, a registered
model version (alias `best` on the study's best); and the result written back to the study
beside the proxy result (search.study.record), so `search fidelity` can score the proxy.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from search.study.record import record_full_result
from search.study.storage import redact
from search.study.studies import load_study
from spaces.errors import UserError
from trainers.full import FullOptions, FullTrainer, TrainingFailed, join_processes
from trainers.full_config import FullConfig
from trainers.full_input import folder_shape

RUN_FILE = "mlflow_run.json"  # the run a resumed training continues


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """This very command, run by torchrun on `nproc` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m", "search", *argv]


def relaunch(nproc: int, argv: list[str]) -> int:
    if nproc < 1:
        raise UserError("--nproc-per-node must be at least 1")
    return subprocess.call(torchrun_command(nproc, argv))


UPSAMPLING_WARNED = 1.5  # a config this many times the images' size trains on blur


def train_full(config_path: str, options: FullOptions, *, tracking_uri: str | None,
               storage_url: str | None, log=None,
               classes_from_data: bool = False) -> dict[str, Any] | None:
    """Train; the main process returns what `--json` prints, the others None."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    config = FullConfig.load(config_path)
    shape = folder_shape(options.data)
    declared = config.data.get("num_classes")
    if declared is not None and declared != len(shape.classes) and not classes_from_data:
        raise UserError(f"{config_path} is for {declared} classes but {options.data} has "
                        f"{len(shape.classes)}; export it for this data (--full-data, or "
                        f"--target-classes {len(shape.classes)}), or add "
                        f"--num-classes-from-data to train a {len(shape.classes)}-class model")
    procs = join_processes(options.device)
    if procs.main and config.image_size > UPSAMPLING_WARNED * shape.image_size:
        log(f"warning: {options.data}'s images are about {shape.image_size} px and this config "
            f"trains at {config.image_size} px: they are upsampled "
            f"{config.image_size / shape.image_size:.1f}x (export with --target-size "
            f"{shape.image_size} to train at their size)")
    trainer = FullTrainer(config, options, procs)
    if procs.main:
        log(f"training {config.family} {config.config} at {config.image_size} px on "
            f"{len(trainer.train_set)} images of {len(trainer.classes)} classes, "
            f"{trainer.total_steps} steps, {procs.world} process(es) on {procs.device}")
    tracker = _Tracker(tracking_uri, config, trainer) if procs.main and tracking_uri else None
    try:
        result = trainer.fit(report=tracker.epoch if tracker else None, log=log)
    except (TrainingFailed, UserError) as err:
        if tracker:
            tracker.end("FAILED")
        if isinstance(err, TrainingFailed):
            raise UserError(f"{err}; the last checkpoint is kept in {options.out}") from None
        raise
    except KeyboardInterrupt:
        if tracker:
            tracker.end("KILLED")
        raise
    if not procs.main:
        return None
    out = {**result.as_dict(), "config": str(config_path), "out": str(options.out)}
    out.pop("history")
    if tracker:
        out.update(tracker.finish(result))
    source = config.provenance
    if storage_url and source.get("study") is not None and source.get("trial") is not None:
        written = _write_back(storage_url, source["study"], int(source["trial"]), {
            "top1": result.top1, "top5": result.top5, "epochs_completed": result.epochs_completed,
            "epochs": trainer.epochs, "steps": result.steps,
            "steps_planned": trainer.sampler.steps_per_epoch * trainer.epochs,
            "completed": result.completed,
            "image_size": config.image_size, "num_classes": result.num_classes,
            "train_images": len(trainer.train_set), "val_images": len(trainer.val_set),
            "config_hash": hashlib.sha256(config.dump().encode()).hexdigest()[:12],
            "run_id": out.get("run_id"), "weights": result.weights,
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        out["written_back"] = written
        if not written:
            log(f"study {source['study']!r} is not in {redact(storage_url)}: the result was not "
                f"written back (give --storage with the study's URL)")
    (Path(options.out) / "result.json").write_text(json.dumps(out, indent=2))
    return out


class _Tracker:
    """The MLflow side of one full training (main process only)."""

    def __init__(self, uri: str, config: FullConfig, trainer: FullTrainer):
        from tracking.runs import StudyRuns

        source = config.provenance
        self.config, self.trainer = config, trainer
        self.runs = StudyRuns(uri, source.get("study") or "patchnas-full")
        self.trial = source.get("trial")
        marker = Path(trainer.opt.out) / RUN_FILE
        self.run_id = self._resumable(marker)
        if self.run_id is None:
            label = f"t{int(self.trial):04d} " if self.trial is not None else ""
            self.run_id = self.runs.start_full(
                f"full {label}{config.family} {config.image_size}px",
                {"family": config.family, "arch": config.config.__dict__,
                 "image_size": config.image_size, "recipe": config.recipe.as_dict(),
                 "epochs": trainer.epochs, "batch_size": trainer.batch,
                 "total_steps": trainer.total_steps, "world_size": trainer.procs.world,
                 "seed": trainer.opt.seed},
                {"device": str(trainer.device), "trial": str(self.trial)},
                source.get("mlflow_run_id"))
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"run_id": self.run_id}))

    def _resumable(self, marker: Path) -> str | None:
        if not (self.trainer.opt.resume and marker.exists()):
            return None
        return self.runs.resume_run(json.loads(marker.read_text()).get("run_id"))

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.runs.log_epochs(self.run_id, [{**metrics, "epoch": epoch}])

    def end(self, status: str) -> None:
        self.runs.client.set_terminated(self.run_id, status)

    def finish(self, result) -> dict[str, Any]:
        self.runs.end_full(self.run_id, "FINISHED",
                           {"top1_final": result.top1, "top5_final": result.top5,
                            "seconds": result.seconds, "steps": result.steps},
                           {"config.yaml": self.config.dump()}, Path(result.weights))
        model, version, best = self.runs.register(self.run_id, result.top1)
        if self.trial is not None:
            self.runs.note_full_result(int(self.trial), result.top1, result.top5)
        return {"run_id": self.run_id, "registered_model": model, "model_version": version,
                "best_of_study": best}


def default_out(workspace: Path, config_path: str) -> Path:
    return workspace / "full" / Path(config_path).stem


def in_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def _write_back(storage_url: str, study_name: str, trial: int, data: dict[str, Any]) -> bool:
    """Write a full training's result beside trial `trial`; False if the study is not there."""
    try:
        study = load_study(study_name, storage_url)
    except UserError:  # not in this storage
        return False
    record_full_result(study, trial, data)
    return True
