"""A worker: takes trials of a stored study one at a time until the study's budget is spent.

Any number of workers, on any hosts, may join one study; the storage is the only thing they
share; each trial is run by search.backends.runner.TrialRunner.

The budget (`--trials`) counts trials that finished (COMPLETE, PRUNED, or FAIL with a reason
of their own such as a diverged loss): search.study.results.budget. A trial lost with its
worker (heartbeat stale) or interrupted is failed and queued again, so it is retried rather
than counted.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from functools import partial
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.backends.pruners import make_pruner, optuna_pruner
from search.backends.runner import WORKER, Discarded, TrialFailed, TrialRunner, queue_again
from search.backends.samplers import make_sampler, run_stream
from search.study import record
from search.study.record import TrialRecord, live_trial
from search.study.results import budget
from search.study.spec import StudySpec
from search.study.studies import load_spec, load_study
from search.study.workspace import load_splits, workspace_dir
from spaces.errors import UserError

WAIT_SECONDS = 2.0


def run_worker(name: str, storage_url: str, *, device: str | None = None,
               worker_index: int = 0, workspace: str | Path | None = None,
               data: str | None = None, log=None, tracking_uri: str | None = None,
               spawned: bool = False) -> int:
    """Run trials of study `name` until its budget is spent; returns how many it ran. A
    worker `spawned` by a driver dies with it."""
    parent = os.getppid() if spawned else None
    if spawned:
        die_with_parent()
    study, runner = make_runner(name, storage_url, device=device, worker_index=worker_index,
                                workspace=workspace, data=data, log=log,
                                tracking_uri=tracking_uri, spawned=spawned)
    return run_trials(study, runner, parent)


def make_runner(name: str, storage_url: str, *, device: str | None = None,
                worker_index: int = 0, workspace: str | Path | None = None,
                data: str | None = None, log=None, tracking_uri: str | None = None,
                spawned: bool = False, heartbeat: bool = True, external_pruner: bool = False,
                on_epoch=None, trainer=None, device_data=None) -> tuple[optuna.Study, TrialRunner]:
    """The study (with its sampler and pruner) and the objective that runs its trials here.
    With `external_pruner` a one-objective study is pruned by someone else (Ray's ASHA).
    A `trainer` with its `device_data` replaces the proxy trainer and the study's data (the
    zero-cost trainer of the benchmarks and the many-workers test)."""
    if (trainer is None) != (device_data is None):
        raise ValueError("make_runner: give a trainer together with its device_data")
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    first = load_study(name, storage_url)
    spec = load_spec(first)
    study = load_study(name, storage_url, heartbeat=heartbeat, sampler=make_sampler(
        spec, worker_index, run_stream(first)), pruner=optuna_pruner(spec))
    workspace = workspace_dir(workspace)
    if trainer is None:
        from trainers.proxy import DeviceData, ProxyTrainer

        trainer = ProxyTrainer(spec.recipe_obj, device=device)
        device_data = DeviceData(study_splits(spec, workspace, data), trainer.device,
                                 spec.proxy_size)
    runs = open_runs(tracking_uri, name, storage_url, spawned, first)
    return study, TrialRunner(study, spec, device_data, trainer, workspace, log, runs,
                              on_epoch, make_pruner(spec, external=external_pruner))


def study_splits(spec: StudySpec, workspace: Path, data: str | None = None):
    """The study's train/val split, from `data` if the dataset moved (same content only)."""
    splits = load_splits(data or spec.data, workspace, val_size=spec.val_size,
                         subset=spec.subset, seed=spec.seed)
    if spec.data_hash and splits.content_hash != spec.data_hash:
        raise UserError(f"the data at {data or spec.data} differs from the study's (content "
                        f"hash {splits.content_hash[:12]} vs {spec.data_hash[:12]}); give "
                        f"--data the same dataset")
    return splits


def run_trials(study: optuna.Study, runner: TrialRunner, parent: int | None = None) -> int:
    """The worker loop: one trial at a time until the study's budget is spent, or every
    architecture of the space is trained. With `parent` (the driver's pid) it also stops
    when the driver is gone."""
    ran = discarded = 0
    while True:
        if parent is not None and os.getppid() != parent:
            runner.log("the driver is gone: stopping")
            return ran
        state = budget(study)  # one statement on an RDB storage
        if state.done:
            if state.exhausted and state.finished < state.total:
                runner.log(f"every architecture of the space ({state.claimed}) is trained: "
                           f"the study ends with {state.finished} of {state.total} trials")
            return ran
        if (state.reserved >= state.total or state.space_full) and not state.waiting:
            # the rest of the budget (or of the space) is running elsewhere; wait, and retry
            # trials whose worker died (their heartbeats stop; failed and queued again)
            time.sleep(WAIT_SECONDS)
            optuna.storages.fail_stale_trials(study)
            continue
        if discarded:  # twins of trials in flight, sampled in a row: let those progress
            time.sleep(min(WAIT_SECONDS, 0.2 * discarded))
        runner.budget, runner.seen = state.total, (state.reserved, state.trials)
        try:
            study.optimize(runner, n_trials=1, catch=(TrialFailed, Discarded),
                           gc_after_trial=False)
        except BaseException as err:
            if STOPPING:  # the signal may land outside the runner's own handling (inside
                _end_own_trials(study)  # Optuna's tell, say): leave no trial of ours RUNNING
                raise KeyboardInterrupt from None
            if not isinstance(err, Exception) or not runner.finished_elsewhere():
                raise
            # its retry is queued by the worker that failed it; this one goes on
            runner.log(f"trial {runner.trial.number} was failed by another worker (its "
                       f"heartbeat looked stale) while this one ran it: going on")
        discarded = discarded + 1 if runner.discarded else 0
        ran += 1


def open_runs(tracking_uri: str | None, study: str, storage_url: str, spawned: bool,
              stored: optuna.Study | None = None):
    """The study's MLflow runs, or None when tracking is off (mlflow is then not imported);
    with the `stored` study, workers joining at once agree on its parent run through it."""
    if not tracking_uri:
        return None
    from tracking.runs import StudyRuns, is_local

    if not spawned and is_local(tracking_uri) and not storage_url.startswith("sqlite"):
        raise UserError(
            f"a worker joining from another host needs an HTTP tracking URI (an MLflow server),"
            f" not {tracking_uri.split('?')[0]}: its runs would stay on this machine; give "
            f"--tracking-uri http://HOST:5000 or --no-tracking")
    return StudyRuns(tracking_uri, study, claim_parent=None if stored is None else
                     partial(record.claim_parent_run, stored))


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM (a clean stop: its trial is queued again) when
    its parent dies, even by SIGKILL; elsewhere the worker loop's parent check stops it."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


STOPPING = False  # set by SIGINT/SIGTERM in a worker process


def install_signal_handlers() -> None:
    """SIGTERM ends a worker like Ctrl-C: its trial is failed, queued again, nothing hangs."""
    def stop(signum, frame):
        global STOPPING
        STOPPING = True
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def _end_own_trials(study: optuna.Study) -> None:
    """Fail this worker's RUNNING trials; queue again those not yet decided."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        r = TrialRecord.from_trial(t)
        if r.worker != WORKER:
            continue
        if r.state is None:  # stopped in its training: trained again later
            queue_again(study, live_trial(study, t), "interrupted")
        study.tell(t.number, state=TrialState.FAIL)


def threads_from_env() -> None:
    threads = os.environ.get("PATCHNAS_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
