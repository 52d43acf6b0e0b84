"""A study is a stored object: everything that defines it lives in the Optuna storage, so a
resume, a joining worker, `status`, `pareto` and `export` need only its name and the URL."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import optuna

from search.study import record
from search.study.record import StudyKey
from search.study.spec import DEFAULT_TRIALS, RESUME_MAY_CHANGE, StudySpec, provenance
from search.study.storage import missing_file, open_storage, redact
from spaces.errors import UserError


def load_spec(study: optuna.Study) -> StudySpec:
    stored = record.read_json(study, StudyKey.SPEC)
    if stored is None:
        raise UserError(f"study {study.study_name} was not created by patchnas")
    return StudySpec.from_dict(stored)


def _existing(name: str, storage: optuna.storages.BaseStorage,
              **engines: Any) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage, **engines)
    except KeyError:
        return None


def load_study(name: str, storage_url: str, heartbeat: bool = False,
               **engines: Any) -> optuna.Study:
    """Study `name` in the storage; `engines`: its sampler and pruner (Optuna's defaults
    otherwise), for the process that runs its trials."""
    storage = open_storage(storage_url, heartbeat=heartbeat)
    study = _existing(name, storage, **engines)
    if study is None:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        known = f"; studies there: {', '.join(names)}" if names else " (it holds no studies)"
        raise UserError(f"no study {name!r} in {redact(storage_url)}{known}")
    return study


def delete_study(name: str, storage_url: str) -> None:
    """Delete study `name`'s rows from the storage (its trials, attributes and claims);
    other studies there are not touched."""
    study = load_study(name, storage_url)  # a missing study is one clear line
    optuna.delete_study(study_name=study.study_name, storage=open_storage(storage_url,
                                                                          heartbeat=False))


def find_spec(name: str, storage_url: str) -> StudySpec | None:
    """The stored spec of study `name`, or None when there is no such study (a SQLite
    file that does not exist yet is not created here)."""
    if missing_file(storage_url):
        return None
    study = _existing(name, open_storage(storage_url, heartbeat=False))
    return None if study is None else load_spec(study)


def create_or_resume(spec: StudySpec, storage_url: str, n_trials: int | None = None,
                     seed_presets: bool = False, log=print) -> optuna.Study:
    """Create the study, or check that `spec` matches the stored one and resume it.

    `n_trials` is the study's whole budget (None: keep the stored one); a larger number
    grows a finished study."""
    if n_trials is not None and n_trials < 1:
        raise UserError("--trials must be at least 1")
    storage = open_storage(storage_url, heartbeat=False, create=True)
    study = _existing(spec.name, storage)
    if study is not None:
        stored = load_spec(study)
        _check_same(stored, spec)
        if stored.data_hash != spec.data_hash:
            log(f"warning: study {spec.name} was searched on other data (content hash "
                f"{stored.data_hash[:12]}, now {spec.data_hash[:12]}); results may not compare")
        before = record.read_json(study, StudyKey.PROVENANCE, {})
        now = provenance()
        if before and before != now:
            changed = [k for k in now if before.get(k) != now.get(k)]
            log(f"warning: study {spec.name} was created with a different "
                f"{' and '.join(changed)}; results may not compare")
        if n_trials is not None and n_trials != record.trial_budget(study):
            record.set_trial_budget(study, n_trials)
        # what a resume may change (sampler, pruner, ranking) is what its workers now use
        changed = replace(stored, **{k: getattr(spec, k) for k in RESUME_MAY_CHANGE})
        if changed != stored:
            record.write_json(study, StudyKey.SPEC, changed.to_dict())
        # studies made before the size was kept learn it now
        record.set_space_size(study, spec.space.size(), only_if_unset=True)
        return study
    bounds = spec.space.cost_bounds(spec.target_size, spec.target_classes)
    _check_feasible(spec, bounds)
    study = optuna.create_study(study_name=spec.name, storage=storage,
                                directions=spec.directions)
    study.set_metric_names([o.metric for o in spec.objectives])
    record.write_json(study, StudyKey.SPEC, spec.to_dict())
    record.write_json(study, StudyKey.PROVENANCE, provenance())
    record.write_json(study, StudyKey.BOUNDS, bounds)
    record.set_trial_budget(study, n_trials or DEFAULT_TRIALS)
    record.set_space_size(study, spec.space.size())
    if seed_presets:
        enqueue_presets(study, spec)
    return study


def enqueue_presets(study: optuna.Study, spec: StudySpec) -> int:
    """Warm start: the paper presets, mapped to their proxies, that lie in the space."""
    import spaces

    count = 0
    for name in spaces.preset_names():
        family, preset = spaces.preset(name)
        proxy = family.to_proxy(preset.config, preset.image_size)
        if spec.space.contains(family, proxy):
            record.enqueue(study, spec.space.params_of(family, proxy), preset=name)
            count += 1
    return count


def _check_same(stored: StudySpec, new: StudySpec) -> None:
    a, b = stored.definition(), new.definition()
    for key in a:
        if a[key] != b.get(key):
            raise UserError(
                f"study {new.name} exists with a different {key} ({_short(a[key])} vs "
                f"{_short(b.get(key))}); resume it with the same settings or choose a new --name")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_feasible(spec: StudySpec, bounds: dict[str, tuple[int, int]]) -> None:
    for metric, limit in (("params", spec.max_params), ("macs", spec.max_macs)):
        if limit is not None and bounds[metric][0] > limit:
            raise UserError(
                f"impossible constraint: --max-{metric} {limit:g}, but the smallest model the "
                f"space allows has {bounds[metric][0]:,} {metric} at {spec.target_size} px; "
                f"raise the limit or widen the space")

