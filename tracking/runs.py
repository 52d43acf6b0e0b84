"""MLflow runs of a study: one experiment, one parent run, one child run per trial.

Works on plain dicts only (nothing of patchnas is imported), and always through
`MlflowClient` with explicit run ids, never the fluent global state, so threads, processes
and hosts can log at once. Child runs are created by the worker that runs the trial; the
process that runs the study keeps the parent and reconciles the children with the study
(Pareto tags, the status of trials whose worker died).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

ROLE = "patchnas.role"
TRIAL = "patchnas.trial"
PARENT = "mlflow.parentRunId"
RUN_STATUS = {"COMPLETE": "FINISHED", "REUSED": "FINISHED", "INFEASIBLE": "FINISHED",
              "PRUNED": "KILLED", "FAIL": "FAILED", "RETRIED": "KILLED"}
LOGGED_ARTIFACTS = "mlflow.loggedArtifacts"  # which artifacts the UI renders as tables
MAX_PARAM = 6000  # MLflow's limit on a param value
SEARCH_PAGE = 10_000  # runs per search_runs page (MLflow allows up to 50,000)
REVIEW_TAGS = ("pareto", "pareto_rank")  # a child's tags that the study's review writes
NEW_RUNS_ONE_BY_ONE = 50  # more new trial runs than this since a review: one search instead


def experiment_id(uri: str, study: str) -> str | None:
    """The id of study's (active) experiment, or None."""
    found = MlflowClient(tracking_uri=uri).get_experiment_by_name(study)
    return None if found is None or found.lifecycle_stage == "deleted" else found.experiment_id


def delete_experiment(uri: str, study: str) -> str | None:
    """Mark study's experiment deleted (MLflow keeps it restorable until `mlflow gc`);
    returns its id, or None when there is none."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(study)
    if found is None or found.lifecycle_stage == "deleted":
        return None
    client.delete_experiment(found.experiment_id)
    return found.experiment_id


def is_local(uri: str) -> bool:
    """A tracking URI that only this host can reach."""
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


class StudyRuns:
    def __init__(self, uri: str, study: str,
                 claim_parent: Callable[[str, str], str] | None = None):
        """`claim_parent(experiment_id, run_id)` returns the run that is the study's parent
        (the first claimed, e.g. search.study.record.claim_parent_run): workers that join at
        once then agree on one parent run."""
        self.claim_parent = claim_parent
        # MLflow retries a silent server for minutes by default; a study fails within seconds
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        self.study = study
        self._seen: dict[str, dict[str, Any]] = {}  # trial runs: what review saw or wrote
        self._files: dict[tuple[str, str], int] = {}  # (run, file) -> hash of the last upload
        self._tables: set[tuple[str, str]] = set()  # (run, file) marked as a table
        self.review_state: dict[str, Any] = {}  # the reviewer's own memo between reviews
        found = self.client.get_experiment_by_name(study)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            artifacts = None
            if uri.startswith("sqlite:///"):  # artifacts beside the database
                db = Path(uri.removeprefix("sqlite:///").split("?")[0])
                artifacts = (db.parent / "mlartifacts" / study).resolve().as_uri()
            # a "model training" experiment: the MLflow 3 UI then opens on its runs
            try:
                self.experiment_id = self.client.create_experiment(
                    study, artifact_location=artifacts,
                    tags={"mlflow.experimentKind": "custom_model_development"})
            except MlflowException:  # workers joining at once: another one made it first
                found = self.client.get_experiment_by_name(study)
                if found is None:
                    raise
                self.experiment_id = found.experiment_id

    # --- the study's parent run -----------------------------------------------------------
    def parent(self, create: bool = True) -> str | None:
        first = self._first_parent()
        if first is not None or not create:
            return first
        mine = self.client.create_run(self.experiment_id, run_name=self.study,
                                      tags={ROLE: "study"}).info.run_id
        # workers joining at once each made one: the claimed one (else the first) stays
        first = (self.claim_parent(self.experiment_id, mine) if self.claim_parent is not None
                 else self._first_parent())
        if first != mine:
            self.client.delete_run(mine)
        return first

    def _first_parent(self) -> str | None:
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.`{ROLE}` = 'study'",
                                       max_results=100)
        first = min(runs, key=lambda r: (r.info.start_time, r.info.run_id), default=None)
        return first.info.run_id if first is not None else None

    def start_study(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        run_id = self.parent()
        logged = self.client.get_run(run_id).data.params
        new = {k: v for k, v in _flat(params).items() if k not in logged}
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in new.items()],
                              tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return run_id

    def end_study(self, status: str = "FINISHED") -> None:
        run_id = self.parent(create=False)
        if run_id is not None:
            self.client.set_terminated(run_id, status)

    def review(self, metrics: Mapping[str, float], files: Mapping[str, str | bytes],
               trials: Iterable[Mapping[str, Any]]) -> None:
        """Refresh the parent's metrics and files (tables, plots), and the children's Pareto
        tags and status. `trials`: dicts with run_id, state, pareto, pareto_rank, finished."""
        parent = self.parent()
        now = _now()
        self.client.log_batch(parent, metrics=[Metric(k, float(v), now, 0)
                                               for k, v in metrics.items()])
        self._log_files(parent, files)
        self._mark_tables(parent, [name for name in files if name.endswith("_table.json")])
        trials = list(trials)
        children = self._children([t["run_id"] for t in trials])
        for t in trials:
            seen = children.get(t["run_id"])
            if seen is None:  # deleted in the UI, or logged to another tracking server
                continue
            tags = {"pareto": str(bool(t["pareto"])).lower(),
                    "pareto_rank": "" if t["pareto_rank"] is None else str(t["pareto_rank"])}
            changed = [RunTag(k, v) for k, v in tags.items() if seen["tags"].get(k) != v]
            if changed:
                self.client.log_batch(t["run_id"], tags=changed)
                seen["tags"].update(tags)
            if t["finished"] and seen["status"] == "RUNNING":  # its worker died
                self.client.log_batch(t["run_id"], tags=[RunTag("state", t["state"])])
                seen["status"] = RUN_STATUS.get(t["state"], "FAILED")
                self.client.set_terminated(t["run_id"], seen["status"])

    def _children(self, run_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The Pareto tags and status of these trial runs, as this object last saw or wrote
        them. Only its own review writes those tags, so what it saw stays true: all of them
        read once (the first review of a driver), then only the runs that are new since (a
        worker's new trials)."""
        new = [r for r in run_ids if r not in self._seen]
        if len(new) > NEW_RUNS_ONE_BY_ONE:
            self._seen.update(self._trial_runs())
        else:
            for run_id in new:
                try:
                    self._seen[run_id] = _seen(self.client.get_run(run_id))
                except MlflowException:  # deleted, or on another tracking server
                    pass
        return self._seen

    def _trial_runs(self) -> dict[str, dict[str, Any]]:
        """The status and Pareto tags of all the study's trial runs, by id. From a database
        store, one SELECT of the two tables (MLflow's search built ~75,000 ORM objects for a
        study of 5,000 trials: 3.5 s, against 0.05 s); from a server, its paged search."""
        found = _trial_runs_in_database(self.uri, self.experiment_id)
        if found is not None:
            return found
        found, token = {}, None
        while True:
            page = self.client.search_runs([self.experiment_id],
                                           filter_string=f"tags.`{ROLE}` = 'trial'",
                                           max_results=SEARCH_PAGE, page_token=token)
            found.update((run.info.run_id, _seen(run)) for run in page)
            token = page.token
            if not token:
                return found

    # --- a trial's child run --------------------------------------------------------------
    def start_trial(self, name: str, number: int, params: Mapping[str, Any],
                    tags: Mapping[str, str], parent: str) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            PARENT: parent, ROLE: "trial", TRIAL: str(number), **tags})
        self.client.log_batch(run.info.run_id,
                              params=[Param(k, v) for k, v in _flat(params).items()])
        return run.info.run_id

    def resume_run(self, run_id: str) -> str | None:
        """Mark a run (a retried trial's, a resumed training's) RUNNING again; None if gone."""
        try:
            self.client.update_run(run_id, status="RUNNING")
        except Exception:  # deleted, or on another tracking server
            return None
        return run_id

    def log_epochs(self, run_id: str, curve: Iterable[Mapping[str, float]]) -> None:
        now = _now()
        metrics = [Metric(k, float(v), now, int(point["epoch"])) for point in curve
                   for k, v in point.items() if k != "epoch"]
        for i in range(0, len(metrics), 1000):  # MLflow takes 1000 metrics per batch
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])

    def end_trial(self, run_id: str, state: str, reason: str | None,
                  metrics: Mapping[str, float], tags: Mapping[str, str],
                  texts: Mapping[str, str]) -> None:
        now = _now()
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, str(v)) for k, v in {**tags, "state": state,
                                                   "reason": reason or ""}.items()])
        self._log_files(run_id, texts)
        self.client.set_terminated(run_id, RUN_STATUS.get(state, "FAILED"))

    # --- full trainings of exported configs -----------------------------------------------
    def start_full(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str],
                   source_run: str | None = None) -> str:
        """A run nested under the study's parent, linked to the trial run it came from."""
        link = {"source_run_id": source_run} if source_run else {}
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            PARENT: self.parent(), ROLE: "full", **link, **tags})
        self.client.log_batch(run.info.run_id,
                              params=[Param(k, v) for k, v in _flat(params).items()])
        return run.info.run_id

    def end_full(self, run_id: str, status: str, metrics: Mapping[str, float],
                 texts: Mapping[str, str], weights: Path | None) -> None:
        now = _now()
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0)
                                               for k, v in metrics.items()])
        self._log_files(run_id, texts)
        if weights is not None:
            self.client.log_artifact(run_id, str(weights), "weights")
        self.client.set_terminated(run_id, status)

    def register(self, run_id: str, top1: float) -> tuple[str, int, bool]:
        """Register the run's weights as a version of the study's model; the alias `best`
        follows the version with the highest top-1. Returns (model, version, is_best)."""
        name = f"patchnas-{self.study}"
        if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
            self.client.create_registered_model(name, tags={"study": self.study})
        source = f"{self.client.get_run(run_id).info.artifact_uri}/weights"
        version = self.client.create_model_version(name, source=source, run_id=run_id,
                                                   tags={"top1": repr(float(top1))})
        versions = self.client.search_model_versions(f"name = '{name}'")
        best = max(versions, key=lambda v: (float(v.tags.get("top1", "-1")), int(v.version)))
        self.client.set_registered_model_alias(name, "best", best.version)
        return name, int(version.version), best.version == version.version

    def note_full_result(self, trial: int, top1: float, top5: float) -> None:
        """The full-training result beside the proxy's, on the study's parent run."""
        now = _now()
        self.client.log_batch(self.parent(), metrics=[
            Metric(f"full_top1.t{trial:04d}", float(top1), now, 0),
            Metric(f"full_top5.t{trial:04d}", float(top5), now, 0)])

    def _mark_tables(self, run_id: str, names: list[str]) -> None:
        """Show these JSON artifacts as tables in the UI (the tag `log_table` keeps)."""
        names = [n for n in names if (run_id, n) not in self._tables]
        if not names:
            return
        self._tables.update((run_id, n) for n in names)
        listed = json.loads(self.client.get_run(run_id).data.tags.get(LOGGED_ARTIFACTS, "[]"))
        wanted = listed + [{"path": n, "type": "table"} for n in names
                           if {"path": n, "type": "table"} not in listed]
        if wanted != listed:
            self.client.set_tag(run_id, LOGGED_ARTIFACTS, json.dumps(wanted))

    def _log_files(self, run_id: str, files: Mapping[str, str | bytes]) -> None:
        """Upload the files whose content this object has not uploaded there already."""
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in files.items():
                digest = hash(content)
                if self._files.get((run_id, name)) == digest:
                    continue
                path = Path(tmp) / name
                path.write_bytes(content if isinstance(content, bytes) else content.encode())
                self.client.log_artifact(run_id, str(path))
                self._files[(run_id, name)] = digest


def _seen(run) -> dict[str, Any]:
    """What a review compares with: a run's status and Pareto tags."""
    return {"status": run.info.status,
            "tags": {k: run.data.tags[k] for k in REVIEW_TAGS if k in run.data.tags}}


def _trial_runs_in_database(uri: str, experiment_id: str) -> dict[str, dict[str, Any]] | None:
    """`_seen` of every active trial run of the experiment, read from the tables of MLflow's
    database store (`runs`, `tags`: their shape has held since MLflow 1.x, and a test checks
    this against MLflow's own search); None for a tracking server or a schema it cannot
    read."""
    if urlsplit(uri).scheme.split("+")[0] not in ("sqlite", "postgresql", "mysql", "mssql"):
        return None
    from sqlalchemy import bindparam, create_engine, text
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    query = text("SELECT r.run_uuid, r.status, t.key, t.value FROM runs r "
                 "JOIN tags role ON role.run_uuid = r.run_uuid AND role.key = :role "
                 "AND role.value = 'trial' "
                 "LEFT JOIN tags t ON t.run_uuid = r.run_uuid AND t.key IN :keys "
                 "WHERE r.experiment_id = :experiment AND r.lifecycle_stage = 'active'"
                 ).bindparams(bindparam("keys", expanding=True))
    try:
        engine = create_engine(uri, poolclass=NullPool)
    except (SQLAlchemyError, ImportError):  # a driver MLflow names differently
        return None
    try:
        with engine.connect() as db:
            rows = db.execute(query, {"role": ROLE, "keys": list(REVIEW_TAGS),
                                      "experiment": int(experiment_id)}).all()
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()
    found: dict[str, dict[str, Any]] = {}
    for run_id, status, key, value in rows:
        seen = found.setdefault(run_id, {"status": status, "tags": {}})
        if key is not None:
            seen["tags"][key] = value
    return found


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        elif value is not None:
            out[f"{prefix}{key}"] = str(value)[:MAX_PARAM]
    return out


def _now() -> int:
    return int(time.time() * 1000)
