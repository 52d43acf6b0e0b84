"""Confirming selected configs with more seeds before they are exported.

A 5,000-image validation accuracy has a standard error near 0.7 points, so a front picked on
one seed per config partly picks noise. Each confirmed config is trained again, at the
study's fidelity and on its data, with N new seeds derived from the trial's; the mean and
spread over the original run and the new ones are stored with the study.
"""

from __future__ import annotations

import statistics
import sys
from functools import partial
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

import spaces
from search.backends.runner import trial_seed
from search.backends.worker import study_splits
from search.study.record import (
    TrialRecord,
    confirmations,
    original_number,
    record_confirmation,
)
from search.study.spec import StudySpec
from trainers.proxy import DeviceData, ProxyTrainer

SEED_STRIDE = 1_000_003  # confirmation seed j of a trial: its seed + j * SEED_STRIDE


class Confirmer:
    """Runs confirmation seeds on one device; the data is loaded on first use."""

    def __init__(self, workspace: Path, device: str | None = None, data: str | None = None,
                 log=None):
        self.workspace, self.device, self.data = workspace, device, data
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._loaded: tuple[ProxyTrainer, DeviceData] | None = None

    def __call__(self, study: optuna.Study, spec: StudySpec, trials: list[FrozenTrial],
                 seeds: int) -> None:
        trainer, data = self._setup(spec)
        for t in trials:
            record_confirmation(study, t.number, self.confirm(t, spec, seeds, trainer, data,
                                                              confirmations(study)
                                                              .get(t.number)))

    def _setup(self, spec: StudySpec) -> tuple[ProxyTrainer, DeviceData]:
        if self._loaded is None:
            trainer = ProxyTrainer(spec.recipe_obj, device=self.device)
            splits = study_splits(spec, self.workspace, self.data)
            self._loaded = trainer, DeviceData(splits, trainer.device, spec.proxy_size)
        return self._loaded

    def confirm(self, t: FrozenTrial, spec: StudySpec, seeds: int, trainer: ProxyTrainer,
                data: DeviceData, before: dict | None) -> dict:
        r = TrialRecord.from_trial(t)
        family = spaces.get(r.family)
        config = family.to_target(family.config_of(r.config), data.image_size)
        base = trial_seed(spec.seed, original_number(t))
        runs = list((before or {}).get("runs", []))
        if not runs:
            runs.append({"seed": r.seed if r.seed is not None else base,
                         "val_acc": r.last_val_acc, "original": True})
        done = len(runs) - 1
        for j in range(done + 1, seeds + 1):
            seed = base + j * SEED_STRIDE
            result = trainer.fit(partial(family.build, config, data.num_classes,
                                         data.image_size, drop_path=spec.recipe_obj.drop_path),
                                 data, seed=seed)
            self.log(f"trial {t.number} seed {j}/{seeds}: {result.status}, val_acc "
                     f"{result.val_acc}")
            if result.status == "completed":
                runs.append({"seed": seed, "val_acc": result.val_acc, "original": False})
            else:  # a diverged or OOM seed is a result too: it counts as chance accuracy 0
                runs.append({"seed": seed, "val_acc": 0.0, "original": False,
                             "status": result.status})
        accs = [r["val_acc"] for r in runs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        return {"runs": runs, "seeds_run": len(runs) - 1, "mean": statistics.fmean(accs),
                "std": std, "sem": std / len(accs) ** 0.5}
