"""The one place that knows how patchnas stores things in Optuna.

`TrialRecord` names every attribute a trial carries; a study's own attributes (its spec,
budget, bounds, and the per-trial results that arrive after a trial finished: seed
confirmations and full trainings) are the `StudyKey`s and functions below. Nothing else in
patchnas spells an attribute key.

All use of Optuna's private API lives here too, each with the public way as a fallback:
  - `set_user_attrs`: many attributes in one statement (`_storage`, `_backend`,
    `optuna.storages._rdb`, `Trial._cached_frozen_trial`); else one `set_user_attr` each;
  - `live_trial`: a `Trial` to write to by number (`optuna.Trial(study, trial_id)`);
  - `trial_id`: Optuna's storage id of a trial (`Trial._trial_id`);
  - `system_attrs`: a live trial's system attributes as of `ask()` (the retry mark);
  - `claim_architecture`: one INSERT into Optuna's study-attribute table, whose unique key
    makes the claim atomic across processes and hosts (`_study_id`, `_rdb.models`);
  - `budget_attrs`: the budget, the space's size, the claim count and the trials' counts
    by state in one statement (`_rdb.models`' tables);
  - `TrialReadingRDBStorage`: all trials in six plain SELECTs (`RDBStorage._get_trials`),
    one trial the same way (`get_trial`), a parameter in one INSERT (`_set_trial_param`).
tests/search/test_record.py fails when Optuna moves any of them (optuna is pinned < 6).
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import sqlite3
import uuid
import weakref
from dataclasses import dataclass, field, fields
from typing import Any

import optuna
import sqlalchemy


@dataclass
class TrialRecord:
    """Everything patchnas records about one trial (Optuna user attributes, same names)."""

    number: int = -1  # Optuna's, not stored as an attribute
    # patchnas's refinement of Optuna's: INFEASIBLE, REUSED, DISCARDED (asked but never run:
    # surplus to the budget, or a twin of an architecture in flight), ...
    state: str | None = None
    reason: str | None = None  # why it failed, was pruned, or reused
    counted: bool = False  # a FAIL of its own (diverged, OOM, error): holds a budget slot
    family: str | None = None
    config: dict[str, Any] | None = None  # the 32 px proxy config
    label: str | None = None
    arch_hash: str | None = None  # the architecture's identity (family + config)
    fidelity: int | None = None  # the epochs a trial of the study trains to
    seed: int | None = None
    device: str | None = None
    costs: dict[str, float] | None = None  # of the target model, and the proxy's
    # what the proxy trained at: the data's image size and classes, its split, its speed
    image_size: int | None = None
    num_classes: int | None = None
    train_images: int | None = None
    val_images: int | None = None
    images_per_s: float | None = None
    latency: dict[str, Any] | None = None
    curve: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch
    # every rank estimator's score of the curve (search.study.estimators), as of its last epoch
    estimates: dict[str, float] | None = None
    seconds: float | None = None
    epochs_run: int | None = None
    peak_memory_bytes: int | None = None
    reused_from: int | None = None
    retry_of: int | None = None  # the trial this one retries
    preset: str | None = None  # a warm start from this paper preset
    mlflow_run_id: str | None = None
    worker: str | None = None  # HOST:PID of the process running it
    ray_attempt: int = 0  # how often Ray started the trial

    @classmethod
    def from_trial(cls, t: Any) -> TrialRecord:
        """The record of a FrozenTrial or a live Trial."""
        attrs = t.user_attrs
        return cls(number=t.number, **{k: attrs[k] for k in ATTRS if k in attrs})

    def to_attrs(self) -> dict[str, Any]:
        """The attributes to store: every field that holds something."""
        blank = TrialRecord()
        return {k: getattr(self, k) for k in ATTRS if getattr(self, k) != getattr(blank, k)}

    @staticmethod
    def attrs(**values: Any) -> dict[str, Any]:
        """Attributes from field names (a wrong name is a bug, caught here)."""
        unknown = set(values) - set(ATTRS)
        if unknown:
            raise TypeError(f"TrialRecord has no field {sorted(unknown)[0]!r}")
        return values

    @property
    def last_val_acc(self) -> float | None:
        return self.curve[-1].get("val_acc") if self.curve else None


ATTRS = tuple(f.name for f in fields(TrialRecord) if f.name != "number")


def state_marks(t: Any) -> tuple[str | None, bool]:
    """(the recorded state, counted) of a trial, without building its whole record: every
    budget check reads them for every trial of the study (6 us a record, at 5,000 trials)."""
    attrs = t.user_attrs
    return attrs.get("state"), attrs.get("counted", False)


def write(trial: optuna.Trial, **values: Any) -> None:
    """Record fields of a running trial (one statement where the storage allows)."""
    set_user_attrs(trial, TrialRecord.attrs(**values))


def enqueue(study: optuna.Study, params: dict[str, Any], **values: Any) -> None:
    """Queue a trial with these parameters and these recorded fields."""
    study.enqueue_trial(params, user_attrs=TrialRecord.attrs(**values))


# --- the study's own attributes ---------------------------------------------------------
class StudyKey:
    SPEC = "patchnas.spec"
    PROVENANCE = "patchnas.provenance"
    BUDGET = "patchnas.n_trials"
    BOUNDS = "patchnas.bounds"
    CONFIRM = "patchnas.confirm"  # + ".t0012": seed confirmations of trial 12
    FULL = "patchnas.full"  # + ".t0012.<id>": a full training of trial 12 (each one kept)
    TARGET = "patchnas.target"  # the size and classes the study was last promoted at
    SPACE_SIZE = "patchnas.space_size"  # how many architectures the space holds (None: inf)
    CLAIM = "patchnas.claim"  # + ".<arch hash>.e<epochs>": the trial that trains it
    PARENT_RUN = "patchnas.parent_run"  # + ".<experiment id>": the study's MLflow parent run


def read_json(study: optuna.Study, key: str, default: Any = None) -> Any:
    raw = study.user_attrs.get(key)
    return default if raw is None else json.loads(raw)


def write_json(study: optuna.Study, key: str, value: Any) -> None:
    study.set_user_attr(key, json.dumps(value, sort_keys=True))


def trial_budget(study: optuna.Study, attrs: dict[str, Any] | None = None) -> int:
    return (study.user_attrs if attrs is None else attrs).get(StudyKey.BUDGET, 0)


def set_trial_budget(study: optuna.Study, n: int) -> None:
    study.set_user_attr(StudyKey.BUDGET, n)


def space_size(study: optuna.Study, attrs: dict[str, Any] | None = None) -> float:
    size = (study.user_attrs if attrs is None else attrs).get(StudyKey.SPACE_SIZE)
    return math.inf if size is None else size


def set_space_size(study: optuna.Study, size: float, only_if_unset: bool = False) -> None:
    if not (only_if_unset and StudyKey.SPACE_SIZE in study.user_attrs):
        study.set_user_attr(StudyKey.SPACE_SIZE, None if math.isinf(size) else int(size))


def budget_attrs(study: optuna.Study, counts: bool = True) -> dict[str, Any]:
    """What the budget is made of, read before every trial: `total` (the trial budget),
    `space_size`, `claimed` (architectures claimed) and, on an RDB storage with `counts`,
    the trials' counts: `finished` (holding a budget slot), `running`, `waiting`,
    `trials` (all).
    On an RDB storage this is one statement. The whole attribute table holds a claim per
    architecture and grows with the study; reading it, or every unfinished trial, before
    each trial cost a worker more per trial the longer it ran and more round trips."""
    backend = _rdb_backend(study)
    if backend is None:
        attrs = study.user_attrs
        return {"total": trial_budget(study, attrs), "space_size": space_size(study, attrs),
                "claimed": len(claims(study, attrs))}
    with autocommit(backend).connect() as connection:  # one statement, one round trip
        row = connection.execute(_budget_statement(counts),
                                 {"study_id": study._study_id}).one()._asdict()
    raw = {k: row.pop(k) for k in (StudyKey.BUDGET, StudyKey.SPACE_SIZE)}
    attrs = {k: json.loads(v) for k, v in raw.items() if v is not None}
    return {"total": trial_budget(study, attrs), "space_size": space_size(study, attrs),
            **row}


@functools.cache
def _budget_statement(counts: bool):
    """The budget attributes and (with `counts`) the trials' counts of one study (the
    parameter `study_id`), in one SELECT; built once, as building it costs more than
    running it."""
    from optuna.storages._rdb import models

    study_id = sqlalchemy.bindparam("study_id")
    attr = models.StudyUserAttributeModel.__table__
    mine = attr.c.study_id == study_id

    def value(key: str):
        return sqlalchemy.select(attr.c.value_json).where(
            mine & (attr.c.key == key)).scalar_subquery().label(key)
    claimed = sqlalchemy.select(sqlalchemy.func.count()).where(
        mine & attr.c.key.startswith(StudyKey.CLAIM + ".", autoescape=True)).scalar_subquery()
    trials = models.TrialModel.__table__
    marks = models.TrialUserAttributeModel.__table__
    state, counted = marks.alias("state"), marks.alias("counted")
    joined = trials.outerjoin(state, (state.c.trial_id == trials.c.trial_id)
                              & (state.c.key == "state")).outerjoin(
        counted, (counted.c.trial_id == trials.c.trial_id) & (counted.c.key == "counted"))
    S = optuna.trial.TrialState
    recorded = sqlalchemy.func.coalesce(state.c.value_json, "")
    # search.study.results.holds_budget_slot, spelled in SQL (a test holds the two equal):
    # finished, neither reused nor discarded, and no FAIL retried (not counted, not
    # infeasible); values are stored as JSON, so a recorded state is '"REUSED"'
    retried = ((trials.c.state == S.FAIL) & (sqlalchemy.func.coalesce(counted.c.value_json,
                                                                       "false") != "true")
               & (recorded != json.dumps("INFEASIBLE")))
    holding = (trials.c.state.in_([S.COMPLETE, S.PRUNED, S.FAIL])
               & recorded.not_in([json.dumps("REUSED"), json.dumps("DISCARDED")]) & ~retried)

    def count(condition):
        return sqlalchemy.func.count(sqlalchemy.case((condition, 1)))
    attrs = (value(StudyKey.BUDGET), value(StudyKey.SPACE_SIZE), claimed.label("claimed"))
    if not counts:
        return sqlalchemy.select(*attrs)
    return sqlalchemy.select(
        *attrs, count(holding).label("finished"),
        count(trials.c.state == S.RUNNING).label("running"),
        count(trials.c.state == S.WAITING).label("waiting"),
        sqlalchemy.func.count().label("trials")).select_from(joined).where(
        trials.c.study_id == study_id)


def _rdb_backend(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The study's RDB storage (behind Optuna's cache), or None for another storage."""
    backend = getattr(study._storage, "_backend", study._storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def _per_trial_key(kind: str, trial: int) -> str:
    return f"{kind}.t{trial:04d}"


def _by_trial(study: optuna.Study, kind: str) -> dict[int, dict[str, Any]]:
    # Optuna refuses to update a finished trial's attributes: these live on the study
    prefix = kind + ".t"
    return {int(k[len(prefix):]): v for k, v in study.user_attrs.items()
            if k.startswith(prefix)}


def confirmations(study: optuna.Study) -> dict[int, dict[str, Any]]:
    return _by_trial(study, StudyKey.CONFIRM)


def full_results(study: optuna.Study) -> dict[int, list[dict[str, Any]]]:
    """Every full training of each trial, oldest first."""
    prefix = StudyKey.FULL + ".t"
    out: dict[int, list[dict[str, Any]]] = {}
    for key, value in study.user_attrs.items():
        if key.startswith(prefix):
            out.setdefault(int(key[len(prefix):].split(".")[0]), []).append(value)
    for runs in out.values():
        runs.sort(key=lambda r: r.get("when") or "")
    return out


def record_confirmation(study: optuna.Study, trial: int, data: dict[str, Any]) -> None:
    study.set_user_attr(_per_trial_key(StudyKey.CONFIRM, trial), data)


def record_full_result(study: optuna.Study, trial: int, data: dict[str, Any]) -> None:
    """Keep one more full training of `trial`: each under its own key, so none is
    overwritten and two trainings that finish at once both stay."""
    study.set_user_attr(f"{_per_trial_key(StudyKey.FULL, trial)}.{uuid.uuid4().hex[:12]}",
                        data)


def claims(study: optuna.Study, attrs: dict[str, Any] | None = None) -> dict[str, int]:
    """Architecture claims: "<arch hash>.e<epochs>" -> the (original) trial that trains it."""
    prefix = StudyKey.CLAIM + "."
    return {k[len(prefix):]: v for k, v in (study.user_attrs if attrs is None else attrs)
            .items() if k.startswith(prefix)}


def claim_architecture(study: optuna.Study, digest: str, fidelity: int, owner: int,
                       replacing: int | None = None) -> int:
    """Claim training `digest` at `fidelity` for trial `owner` (an original number); returns
    the owner after the call: `owner` when the claim is ours, else the earlier claimant.
    With `replacing`, take over a claim only if `replacing` still holds it."""
    return claim(study, f"{StudyKey.CLAIM}.{digest}.e{fidelity}", owner, replacing)


def claim_parent_run(study: optuna.Study, experiment_id: str, run_id: str) -> str:
    """Claim `run_id` as the study's MLflow parent run in that experiment; returns the run
    that holds the claim (workers joining at once each make one; one stays)."""
    return claim(study, f"{StudyKey.PARENT_RUN}.{experiment_id}", run_id)


def claim(study: optuna.Study, key: str, value: Any, replacing: Any = None) -> Any:
    """Set study attribute `key` to `value` unless another process set it first (or, with
    `replacing`, only while it still holds `replacing`); returns the value it holds after.

    On an RDB storage the claim is one INSERT (or one conditional UPDATE) on Optuna's
    study-attribute table, whose unique (study, key) makes two processes racing for the same
    key agree on one winner; elsewhere (in-memory studies: one process) a read then a
    write."""
    backend = _rdb_backend(study)
    if backend is None:
        held = study.user_attrs.get(key)
        if held is None or held == replacing:
            study.set_user_attr(key, value)
            return value
        return held
    from optuna.storages._rdb import models

    table = models.StudyUserAttributeModel.__table__
    where = (table.c.study_id == study._study_id) & (table.c.key == key)
    # each statement commits by itself: the claim is one round trip
    with autocommit(backend).connect() as connection:
        try:  # a key already claimed raises IntegrityError
            if replacing is None:
                connection.execute(table.insert().values(study_id=study._study_id, key=key,
                                                         value_json=json.dumps(value)))
                return value  # the statement took the claim: nothing to read back
            if connection.execute(table.update().where(
                    where & (table.c.value_json == json.dumps(replacing)))
                    .values(value_json=json.dumps(value))).rowcount == 1:
                return value
        except sqlalchemy.exc.IntegrityError:
            pass  # claimed by another process first
        return json.loads(connection.execute(sqlalchemy.select(table.c.value_json)
                                             .where(where)).scalar_one())


# --- Optuna's private API, with the public way as fallback -------------------------------
class TrialReadingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage with a trial reader that builds FrozenTrials from plain rows.

    Optuna's own reader loads every trial through the ORM: at 5,000 trials about 114,000
    mapped objects (each attribute, parameter and value a row), 6 s before `search status`
    can print. This one reads the same six tables with one Core SELECT each and parses each
    distinct distribution once: same FrozenTrials, about 10x faster. It overrides Optuna's
    private `_get_trials`, which `get_all_trials` and Optuna's trial cache both call; a
    statement the database refuses (too many ids in an IN) falls back to Optuna's reader."""

    def _get_trials(self, study_id, states, included_trial_ids, trial_id_greater_than):
        try:
            return _read_trials(self, study_id, states, {
                i for i in included_trial_ids if i <= trial_id_greater_than},
                trial_id_greater_than)
        except sqlalchemy.exc.OperationalError:
            return super()._get_trials(study_id, states, included_trial_ids,
                                       trial_id_greater_than)

    def get_trial(self, trial_id: int) -> optuna.trial.FrozenTrial:
        """One trial by the same reader: Optuna's loads it through the ORM, and a trial is
        read twice (when asked, when told)."""
        from optuna.storages._rdb import models

        found = _read(self, models.TrialModel.__table__.c.trial_id == trial_id)
        if not found:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        return found[0]

    def _set_trial_param(self, trial_id, param_name, param_value_internal, distribution,
                         previous_distribution):
        """One autocommitted INSERT ... SELECT that writes the parameter only while the
        trial is unfinished. Optuna's writer opens a transaction and loads the trial
        through the ORM for each of a trial's parameters, about a fifth of a zero-cost
        trial's time. Without a distribution seen before (Optuna's cache gives it), the
        study-wide compatibility check is Optuna's own."""
        if previous_distribution is None:
            return super()._set_trial_param(trial_id, param_name, param_value_internal,
                                            distribution, previous_distribution)
        from optuna.distributions import check_distribution_compatibility, distribution_to_json

        check_distribution_compatibility(previous_distribution, distribution)
        with autocommit(self).connect() as connection:
            written = connection.execute(_param_statement(), {
                "tid": trial_id, "name": param_name, "value": param_value_internal,
                "distribution": distribution_to_json(distribution)})
        if written.rowcount != 1:
            _refuse_finished(self, trial_id, f"parameter {param_name} not written")


@functools.cache
def _param_statement():
    """INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json)
    SELECT trial_id, :name, :value, :distribution FROM trials
    WHERE trial_id = :tid AND state IN ('RUNNING', 'WAITING')"""
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    trials, params = models.TrialModel.__table__, models.TrialParamModel.__table__
    unfinished = sqlalchemy.select(
        trials.c.trial_id, sqlalchemy.bindparam("name", type_=params.c.param_name.type),
        sqlalchemy.bindparam("value", type_=params.c.param_value.type),
        sqlalchemy.bindparam("distribution", type_=params.c.distribution_json.type)).where(
        trials.c.trial_id == sqlalchemy.bindparam("tid"),
        trials.c.state.in_([TrialState.RUNNING, TrialState.WAITING]))
    return params.insert().from_select(
        ["trial_id", "param_name", "param_value", "distribution_json"],
        unfinished).execution_options(preserve_rowcount=True)


def _read_trials(storage: optuna.storages.RDBStorage, study_id: int, states: Any,
                 included: set[int], greater_than: int) -> list[optuna.trial.FrozenTrial]:
    from optuna.storages._rdb import models

    trial = models.TrialModel.__table__
    where = trial.c.study_id == study_id
    if states is not None:
        where &= trial.c.state.in_(list(states))
    if included and greater_than > -1:
        where &= trial.c.trial_id.in_(included) | (trial.c.trial_id > greater_than)
    elif greater_than > -1:
        where &= trial.c.trial_id > greater_than
    trials = _read(storage, where)
    if not trials:  # nothing new nor unfinished (most reads of a worker's loop): done, once
        study = models.StudyModel.__table__  # the study is known to exist
        with autocommit(storage).connect() as connection:
            if connection.execute(sqlalchemy.select(study.c.study_id).where(
                    study.c.study_id == study_id)).first() is None:
                raise KeyError(f"No study with study_id {study_id} exists.")
    return trials


def read_summaries(study: optuna.Study,
                   fields: tuple[str, ...]) -> list[optuna.trial.FrozenTrial]:
    """The study's trials for a summary: states, values, system attributes and, of the user
    attributes, only these TrialRecord `fields`; no parameters or intermediate values (on
    an RDB storage; elsewhere whole trials). Curves, costs, configs and parameters are
    most of what a whole read of a large study parses; a summary needs none of them."""
    TrialRecord.attrs(**dict.fromkeys(fields))  # a wrong name is a bug, caught here
    backend = _rdb_backend(study)
    if backend is None:
        return study.get_trials(deepcopy=False)
    from optuna.storages._rdb import models

    return _read(backend, models.TrialModel.__table__.c.study_id == study._study_id, fields)


def _read(storage: optuna.storages.RDBStorage, where: Any,
          summary: tuple[str, ...] | None = None) -> list[optuna.trial.FrozenTrial]:
    """The trials that `where` (on the trials table) selects, in the order of their ids;
    as `summary`s (read_summaries) with these user attributes only."""
    from optuna.distributions import json_to_distribution
    from optuna.storages._rdb import models

    trial = models.TrialModel.__table__
    chosen = sqlalchemy.select(trial.c.trial_id).where(where).scalar_subquery()

    def rows(model: Any, *columns: str, keys: tuple[str, ...] | None = None) -> list[Any]:
        table = model.__table__
        picked = sqlalchemy.select(table.c.trial_id, *(table.c[c] for c in columns)).where(
            table.c.trial_id.in_(chosen))
        if keys is not None:
            picked = picked.where(table.c.key.in_(keys))
        return connection.execute(picked.order_by(*table.primary_key.columns)).all()

    # plain reads, each statement its own snapshot (PostgreSQL's READ COMMITTED gave the
    # same in a transaction): no BEGIN and COMMIT round trips
    with autocommit(storage).connect() as connection:
        heads = connection.execute(sqlalchemy.select(
            trial.c.trial_id, trial.c.number, trial.c.state, trial.c.datetime_start,
            trial.c.datetime_complete).where(where).order_by(trial.c.trial_id)).all()
        if not heads:
            return []
        whole = summary is None
        params = rows(models.TrialParamModel, "param_name", "param_value",
                      "distribution_json") if whole else []
        values = rows(models.TrialValueModel, "objective", "value", "value_type")
        steps = rows(models.TrialIntermediateValueModel, "step", "intermediate_value",
                     "intermediate_value_type") if whole else []
        user = rows(models.TrialUserAttributeModel, "key", "value_json", keys=summary)
        system = rows(models.TrialSystemAttributeModel, "key", "value_json")

    parsed: dict[str, Any] = {}  # a study has few distinct distributions: parse each once
    built = {h.trial_id: {"params": {}, "distributions": {}, "values": {}, "steps": {},
                          "user": {}, "system": {}} for h in heads}
    # each SELECT sees the trials committed by then: rows of a trial that arrived after the
    # first one are left for the next read (Optuna's reader, loading the children of the
    # trials it found, leaves them too)
    for tid, name, value, text in params:
        if tid in built:
            dist = parsed.get(text) or parsed.setdefault(text, json_to_distribution(text))
            built[tid]["params"][name] = dist.to_external_repr(value)
            built[tid]["distributions"][name] = dist
    for tid, objective, value, kind in values:
        if tid in built:
            built[tid]["values"][objective] = models.TrialValueModel.stored_repr_to_value(
                value, kind)
    for tid, step, value, kind in steps:
        if tid in built:
            built[tid]["steps"][step] = (models.TrialIntermediateValueModel
                                         .stored_repr_to_intermediate_value(value, kind))
    for table, key in ((user, "user"), (system, "system")):
        kept = [row for row in table if row[0] in built]
        # one parse of all the values as a JSON array: 13 json.loads a trial were a third
        # of reading 5,000 trials
        for (tid, name, _), value in zip(kept, json.loads(
                "[" + ",".join(text for _, _, text in kept) + "]"), strict=True):
            built[tid][key][name] = value
    return [optuna.trial.FrozenTrial(
        number=h.number, state=h.state, value=None,
        values=[b["values"][i] for i in range(len(b["values"]))] if b["values"] else None,
        datetime_start=_local(h.datetime_start), datetime_complete=_local(h.datetime_complete),
        params=b["params"], distributions=b["distributions"], user_attrs=b["user"],
        system_attrs=b["system"], intermediate_values=b["steps"], trial_id=h.trial_id)
        for h in heads for b in (built[h.trial_id],)]


def _refuse_finished(backend: optuna.storages.RDBStorage, tid: int, what: str) -> None:
    """A one-statement write that wrote less than asked: the trial is finished, so raise
    Optuna's own error (UpdateFinishedTrialError); anything else is a bug."""
    backend.check_trial_is_updatable(tid, backend.get_trial(tid).state)
    raise AssertionError(f"trial id {tid}: {what}")


def _local(stored: Any) -> Any:
    """A stored trial time as Optuna shows it: Optuna 5 stores naive UTC and shows naive
    local time (its model's properties); Optuna 4 stored local time."""
    if stored is None or not _stores_utc():
        return stored
    return stored.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)


@functools.cache
def _stores_utc() -> bool:
    from optuna.storages._rdb import models

    return hasattr(models.TrialModel, "_datetime_start_utc")


def trial_id(trial: Any) -> int:
    """Optuna's storage id of a live or frozen trial."""
    return trial._trial_id


def live_trial(study: optuna.Study, frozen: Any) -> optuna.Trial:
    """A Trial of `study` to write to, for a FrozenTrial (Optuna has no public way)."""
    return optuna.Trial(study, trial_id(frozen))


def system_attrs(trial: Any) -> dict[str, Any]:
    """A trial's system attributes (a live Trial: as of ask(), where Optuna put the retry
    mark of a heartbeat-failed trial)."""
    system = getattr(trial, "system_attrs", None)
    if system is not None:
        return system
    frozen = getattr(trial, "_cached_frozen_trial", None)
    if frozen is not None:
        return frozen.system_attrs
    return trial.study._storage.get_trial_system_attrs(trial_id(trial))


def original_number(t: Any) -> int:
    """The number of the trial this one retries (itself if it is not a retry)."""
    retry_of = t.user_attrs.get("retry_of")  # one lookup: read for every trial, often
    if retry_of is not None:
        return retry_of
    return system_attrs(t).get("failed_trial", t.number)


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Several user attributes of a running trial in one statement, one round trip.

    Optuna commits each `set_user_attr` alone, and even within one transaction its writer
    reloads the trial for every row (about 1.5 ms each on SQLite); a trial writes a dozen:
    most of the search's own overhead. On SQLite and PostgreSQL they go in as one upsert
    that reads the rows from one JSON parameter and writes them only while the trial is
    unfinished (Optuna's own check, in the same statement: a separate SELECT, BEGIN and
    COMMIT were three more round trips to a server); elsewhere, or if Optuna's internals
    move, one by one through the public API."""
    if not attrs:
        return
    upsert, backend, cached = fast_path(trial)
    if upsert is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    tid = trial_id(trial)
    rows = json.dumps({key: json.dumps(value) for key, value in attrs.items()})
    with autocommit(backend).connect() as connection:  # one statement: atomic by itself
        written = connection.execute(_attr_statement(upsert, backend.engine.dialect.name),
                                     {"tid": tid, "rows": rows})
    if written.rowcount != len(attrs):
        _refuse_finished(backend, tid, f"{written.rowcount} of {len(attrs)} attributes "
                                       f"written")
    cached.user_attrs.update(attrs)  # what trial.user_attrs shows, as set_user_attr does


@functools.cache
def _attr_statement(upsert, dialect: str) -> Any:
    """set_user_attrs's statement, built once with its values as parameters (built anew
    with the values inside, SQLAlchemy coerced and hashed every value of every write):

        INSERT INTO trial_user_attributes (trial_id, key, value_json)
        SELECT trials.trial_id, attrs.key, attrs.value
        FROM trials JOIN json_each(:rows) AS attrs ON true
        WHERE trials.trial_id = :tid AND trials.state IN ('RUNNING', 'WAITING')
        ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json
    """
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    trials, table = models.TrialModel.__table__, models.TrialUserAttributeModel.__table__
    rows = sqlalchemy.bindparam("rows", type_=sqlalchemy.Text)
    if dialect == "sqlite":
        attrs = sqlalchemy.func.json_each(rows)
    else:  # a string's value without its quotes, as SQLite's json_each gives it
        attrs = sqlalchemy.func.json_each_text(sqlalchemy.cast(rows, sqlalchemy.JSON))
    attrs = attrs.table_valued("key", "value").alias("attrs")
    unfinished = sqlalchemy.select(trials.c.trial_id, attrs.c.key, attrs.c.value).select_from(
        trials.join(attrs, sqlalchemy.true())).where(
        trials.c.trial_id == sqlalchemy.bindparam("tid"),
        trials.c.state.in_([TrialState.RUNNING, TrialState.WAITING]))
    statement = upsert(table).from_select(["trial_id", "key", "value_json"], unfinished)
    return statement.on_conflict_do_update(
        index_elements=[table.c.trial_id, table.c.key],
        set_={"value_json": statement.excluded.value_json}).execution_options(
        preserve_rowcount=True)  # SQLAlchemy keeps an INSERT's row count only when asked


def autocommit(backend: optuna.storages.RDBStorage) -> sqlalchemy.engine.Engine:
    """The storage's engine (same pool) with each statement committed by itself: a read or
    a single-statement write without the BEGIN and COMMIT round trips of a transaction."""
    engine = _AUTOCOMMIT.get(backend)
    if engine is None:
        engine = _AUTOCOMMIT[backend] = backend.engine.execution_options(
            isolation_level="AUTOCOMMIT")
    return engine


# kept only while its storage lives: a storage let go closes its pool's connections
_AUTOCOMMIT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fast_path(trial: optuna.Trial):
    """(the dialect's upsert, the RDB storage, the trial's cached frozen trial), or
    (None, None, None) when the one-statement write cannot be used."""
    storage = trial.study._storage
    backend = getattr(storage, "_backend", storage)  # behind Optuna's cached storage
    cached = getattr(trial, "_cached_frozen_trial", None)
    if not isinstance(backend, optuna.storages.RDBStorage) or cached is None:
        return None, None, None
    upsert = _upsert(backend)
    return (upsert, backend, cached) if upsert is not None else (None, None, None)


def _upsert(backend: optuna.storages.RDBStorage):
    """The dialect's INSERT with ON CONFLICT (SQLite and PostgreSQL), else None."""
    engine = getattr(backend, "engine", None)
    name = engine.dialect.name if engine is not None else None
    if name == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
        from sqlalchemy.dialects.sqlite import insert
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        return None
    return insert
