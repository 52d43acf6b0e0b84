"""`patchnas search run --backend ray`: the same study, scheduled by Ray Tune.

The Optuna storage stays the source of truth. `StudySearcher` (Ray's search algorithm, in the
driver) asks the study for each trial, so the study's sampler picks the parameters and sees
every result; each Ray trial runs the very `TrialRunner` of the Optuna backend on the trial it
was given (same spaces, costs, reuse, constraints, MLflow child runs), reporting each epoch
with the proxy trainer's checkpoint to Ray so a retried or paused trial continues from it.

What ray 2.60's own `OptunaSearch` gets wrong, and this avoids: a trial stopped early by a
scheduler is told to Optuna as PRUNED (its partial curve kept as attributes), never as
COMPLETE; the searcher holds no closure and no study object when pickled (its state is the
map of Ray trial ids to Optuna trial numbers), so `Tuner.restore` brings it back.

Multi-fidelity: Ray's ASHA (on `val_acc`, in epochs) for one objective; for several, the
project's MO-ASHA rule inside the trial (Ray's schedulers take one metric).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher

from search.backends.base import Backend, RunOptions, SearchJob
from search.backends.runner import Discarded, TrialFailed, queue_again
from search.backends.samplers import make_sampler, run_stream
from search.backends.worker import make_runner
from search.study import record
from search.study.reach import check_reachable
from search.study.record import TrialRecord, live_trial
from search.study.results import budget
from search.study.spec import StudySpec
from search.study.storage import redact
from search.study.studies import load_spec, load_study
from spaces.errors import UserError
from tracking.runs import is_local

MAX_FAILURES = 3  # a Ray trial whose worker dies is retried from its last checkpoint
STORAGE_ENV = "PATCHNAS_STORAGE"  # the URL travels in the environment: never in a pickle


class StudySearcher(Searcher):
    """Ray Tune search algorithm over a patchnas study in its Optuna storage."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        self._study: optuna.Study | None = None
        self._spec: StudySpec | None = None
        self._adopted = False  # orphans of an earlier driver are handled once per driver

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_study"] = state["_spec"] = None  # reopened from the environment's URL
        state["_adopted"] = False
        return state

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            url = os.environ[STORAGE_ENV]
            first = load_study(self.name, url)
            self._spec = load_spec(first)
            self._study = load_study(self.name, url, sampler=make_sampler(
                self._spec, 0, run_stream(first)))
        return self._study

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        study = self.study
        if not self._adopted:
            self._requeue_orphans(study)
            self._adopted = True
        state = budget(study)
        if state.done:
            return Searcher.FINISHED  # the budget is spent, or the space searched to the end
        if (state.reserved >= state.total or state.space_full) and not state.waiting:
            # the rest is running; ask again when a trial ends: one may end free (a twin
            # discarded, a result reused, a retry) and leave its slot to a new trial
            return None
        trial = study.ask()  # a queued trial first (presets, retries)
        self._spec.space.suggest(trial)  # the sampler picks the parameters here
        self.numbers[trial_id] = trial.number
        return {"optuna_trial": trial.number}

    def _requeue_orphans(self, study: optuna.Study) -> None:
        """RUNNING trials that no Ray trial of this experiment will finish (their driver died
        before Ray saved its state) are failed and queued again, as a dead worker's are."""
        mine = set(self.numbers.values())
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.number in mine:
                continue
            queue_again(study, live_trial(study, t), "its Ray driver stopped "
                        "before Ray recorded the trial; queued again")
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        number = self.numbers.pop(trial_id, None)
        if number is None:
            return
        study = self.study
        frozen = study.get_trials(deepcopy=False)[number]
        if frozen.state.is_finished():
            return
        live = live_trial(study, frozen)
        result = result or {}
        outcome = result.get("patchnas_state")
        if error:
            record.write(live, state="FAIL", counted=True,
                         reason=f"error: the Ray trial failed {MAX_FAILURES + 1} times "
                                f"(see its Ray log)")
            study.tell(number, state=optuna.trial.TrialState.FAIL)
        elif outcome == "COMPLETE":
            study.tell(number, result["values"])
        elif outcome == "FAIL":
            study.tell(number, state=optuna.trial.TrialState.FAIL)
        else:  # PRUNED by MO-ASHA in the trial, or stopped by Ray's scheduler
            if outcome is None:
                record.write(live, state="PRUNED",
                             reason=f"stopped by ASHA at epoch {result.get('epoch', '?')}")
            study.tell(number, state=optuna.trial.TrialState.PRUNED)

    def get_state(self) -> dict[str, Any]:
        return {"name": self.name, "numbers": dict(self.numbers)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.name, self.numbers = state["name"], dict(state["numbers"])
        self._adopted = False

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))  # noqa: S301 - our own file, plain dicts


def ray_trial(config: dict[str, Any], name: str, workspace: str, data: str,
              tracking_uri: str | None) -> None:
    """One Ray trial: the Optuna trial the searcher asked for, run by TrialRunner."""
    checkpoints = Path(tempfile.mkdtemp(prefix="patchnas-ray-"))
    restored = tune.get_checkpoint()
    if restored is not None:  # a retry, or a restored experiment: continue from the epoch
        with restored.as_directory() as folder:
            for path in Path(folder).glob("*.pt"):
                shutil.copy(path, checkpoints / path.name)
    # every report carries the scheduler's metric, also for trials that train no epoch
    last: dict[str, Any] = {"epoch": 0, "val_acc": 0.0}

    def on_epoch(epoch: int, metrics: dict[str, float], checkpoint: Path) -> None:
        last.update(metrics, epoch=epoch)
        if epoch >= runner.spec.epochs:
            return  # the final report carries it, with the outcome: ASHA stops at max_t
        tune.report(dict(last), checkpoint=tune.Checkpoint.from_directory(str(checkpoint.parent)))

    device = "cuda" if ray.get_gpu_ids() else "cpu"
    study, runner = make_runner(name, os.environ[STORAGE_ENV], device=device,
                                workspace=workspace, data=data, tracking_uri=tracking_uri,
                                spawned=True, heartbeat=False, external_pruner=True,
                                on_epoch=on_epoch)
    runner.checkpoints = checkpoints
    frozen = study.get_trials(deepcopy=False)[config["optuna_trial"]]
    if frozen.state.is_finished():
        tune.report({**last, "patchnas_state": "DONE"})  # told before the driver died
        return
    trial = live_trial(study, frozen)
    # how often Ray started this trial: more than once after a retry or a restore
    record.write(trial, ray_attempt=TrialRecord.from_trial(trial).ray_attempt + 1)
    try:
        final = {"patchnas_state": "COMPLETE", "values": runner(trial)}
    except optuna.TrialPruned:
        final = {"patchnas_state": "PRUNED"}
    except (TrialFailed, Discarded):
        final = {"patchnas_state": "FAIL"}
    finally:
        shutil.rmtree(checkpoints, ignore_errors=True)
    tune.report({**last, **final})


class _Progress(tune.Callback):
    """The study's progress lines and MLflow review, from the driver's loop."""

    def __init__(self, tick, every: float = 1.0):
        self.tick, self.every, self.last = tick, every, 0.0

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self.last >= self.every:
            self.tick()
            self.last = time.monotonic()


class RayBackend(Backend):
    name = "ray"

    def check(self, name: str, options: RunOptions) -> str:
        from search.backends.local import worker_slots

        worker_slots(options)  # the same device flags are refused the same way
        if options.ray_address:  # ray.init waits minutes for a head that is not there
            check_reachable(options.ray_address, "the Ray cluster", "start it with `ray start "
                            "--head` or give the right --ray-address", default_port=6379)
        return f"Ray Tune at {options.ray_address or 'a local instance'}"

    def run(self, job: SearchJob) -> int:
        return run_with_ray(job.spec, job.storage_url, job.workspace, job.data, job.options,
                            job.log, job.tick, job.tracking_uri)


def run_with_ray(spec: StudySpec, url: str, workspace: Path, data: str, options, log,
                 tick, tracking_uri: str | None) -> int:
    """Run the study's remaining budget on Ray; returns 0, or 130 after Ctrl-C."""
    env = {STORAGE_ENV: url, "PATCHNAS_SPAWNED": "1"}
    previous = os.environ.get(STORAGE_ENV)
    os.environ[STORAGE_ENV] = url  # for the searcher in this process, while it runs
    started_here = options.ray_address is None
    try:
        _init(options, env)
        _check_cluster(options, url, tracking_uri)
        tuner = _tuner(spec, workspace, data, options, tracking_uri, tick)
        # Ray's own tables stay quiet; whatever it still prints must not reach stdout,
        # which carries only the front (--json)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        try:
            with contextlib.redirect_stdout(sys.stderr):
                tuner.fit()
        except KeyboardInterrupt:
            return 130
        finally:
            tick()
        return 0
    finally:
        if previous is None:
            os.environ.pop(STORAGE_ENV, None)
        else:
            os.environ[STORAGE_ENV] = previous
        if ray.is_initialized():
            ray.shutdown()
            if started_here:
                log("the local Ray instance was shut down")


def cannot_reach(address: str, err: Exception, fix: str) -> UserError:
    """One line for a Ray cluster that refuses us."""
    if isinstance(err, ray.exceptions.AuthenticationError):
        return UserError(f"the Ray cluster at {address} wants its token: set RAY_AUTH_MODE="
                         f"token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) as on its nodes")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"cannot reach the Ray cluster at {address}: {first}; {fix}")


RAY_ERRORS = (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError)


def _init(options, env: dict[str, str]) -> None:
    runtime_env = {"env_vars": env}
    if options.ray_address:
        try:
            ray.init(address=options.ray_address, runtime_env=runtime_env,
                     log_to_driver=False, logging_level="ERROR")
        except RAY_ERRORS as err:
            raise cannot_reach(options.ray_address, err, "start it with `ray start --head` "
                               "or give the right --ray-address") from None
        return
    import torch

    # address="local": a new instance even when `ray start` runs a cluster on this machine
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(),
             include_dashboard=False, runtime_env=runtime_env, log_to_driver=False,
             logging_level="ERROR")


def _check_cluster(options, url: str, tracking_uri: str | None) -> None:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    if not options.ray_storage:
        raise UserError(f"the Ray cluster has {len(nodes)} nodes: give --ray-storage on shared "
                        f"storage (e.g. s3://bucket/patchnas or an NFS path) so trials and "
                        f"checkpoints survive a node")
    if url.startswith("sqlite"):
        raise UserError(f"the Ray cluster has {len(nodes)} nodes: the study's storage "
                        f"{redact(url)} is a file on this host; give --storage "
                        f"postgresql+psycopg://...")
    if tracking_uri and is_local(tracking_uri):
        raise UserError(f"the Ray cluster has {len(nodes)} nodes: give an http:// tracking URI "
                        f"(an MLflow server) or --no-tracking; trials on other nodes cannot "
                        f"log to {tracking_uri.split('?')[0]}")


def _tuner(spec: StudySpec, workspace: Path, data: str, options, tracking_uri, tick):
    resources = ray.cluster_resources()
    gpus = 0 if options.device == "cpu" else resources.get("GPU", 0)
    if options.device == "cuda" and not gpus:
        raise UserError("--device cuda, but the Ray cluster has no GPU; use --device cpu")
    if gpus:
        per_trial = {"cpu": 1, "gpu": 1 / max(1, options.trials_per_gpu)}
        concurrency = (options.workers if options.workers is not None
                       else int(gpus * max(1, options.trials_per_gpu)))
    else:
        concurrency = 1 if options.workers is None else options.workers
        per_trial = {"cpu": max(1, int(resources.get("CPU", 1)) // concurrency)}
    trainable = tune.with_resources(
        tune.with_parameters(ray_trial, name=spec.name, workspace=str(workspace), data=data,
                             tracking_uri=tracking_uri), per_trial)
    storage = options.ray_storage or str(workspace / "ray")
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    budget_now = record.trial_budget(load_study(spec.name, os.environ[STORAGE_ENV]))
    name = f"{spec.name}-n{budget_now}"  # a grown budget is a new Ray experiment
    path = f"{storage.rstrip('/')}/{name}"
    if tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    if len(spec.objectives) == 1:
        scheduler = ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max",
                                  max_t=spec.epochs, grace_period=spec.min_epochs,
                                  reduction_factor=spec.eta)
    else:
        scheduler = FIFOScheduler()  # MO-ASHA runs inside each trial
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=StudySearcher(spec.name), scheduler=scheduler,
                                    num_samples=-1, max_concurrent_trials=concurrency,
                                    # a new process per trial pays for importing torch (and
                                    # on a GPU, a CUDA context) again: seconds per trial
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=0,
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[_Progress(tick)]))

