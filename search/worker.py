"""A worker: takes trials of a stored study one at a time until the study's budget is spent.

Any number of workers, on any hosts, may join one study; the storage is the only thing they
share. A trial's life:

    ask -> suggest a config -> costs of the target model (no GPU time) -> over a constraint?
    -> INFEASIBLE (told COMPLETE with its constraint violations, never trained)
    -> the same architecture already trained at this fidelity? -> REUSED (its result)
    -> proxy training, reporting each epoch to the pruner -> COMPLETE / PRUNED / FAIL (reason)

The budget (`--trials`) counts trials that finished (COMPLETE, PRUNED, or FAIL with a reason
of their own such as a diverged loss). A trial lost with its worker (heartbeat stale) or
interrupted is failed and queued again, so it is retried rather than counted.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import TrialState

from search.pruning import CURVE_ATTR, MOASHA
from search.space import arch_hash
from search.storage import set_user_attrs
from search.study import BUDGET_ATTR, StudySpec, load_spec, load_study
from search.train import load_splits
from search.workspace import workspace_dir
from spaces.cost import measure_latency, target_and_proxy_costs
from spaces.errors import UserError
from trainers.proxy import DeviceData, ProxyTrainer

STATE_ATTR, REASON_ATTR, COUNTED_ATTR = "state", "reason", "counted"
WAIT_SECONDS = 2.0


class TrialFailed(Exception):
    """The trial ran and failed for a reason of its own (diverged, out of memory, error)."""


class SurplusTrial(Exception):
    """The trial was asked after the budget was already taken by other workers' trials."""


@dataclass
class Budget:
    finished: int
    reserved: int  # finished + running + waiting
    waiting: int


def budget(study: optuna.Study) -> Budget:
    trials = study.get_trials(deepcopy=False)
    finished = sum(1 for t in trials if counts(t) and t.state.is_finished())
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    return Budget(finished, finished + running + waiting, waiting)


def counts(t: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial holds a slot of the budget."""
    if t.state == TrialState.FAIL:
        return bool(t.user_attrs.get(COUNTED_ATTR))
    return True


def queue_again(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Mark a trial that will not finish here FAIL with `reason`, and queue its parameters
    again (the retry keeps the original's number for its seed)."""
    set_user_attrs(trial, {STATE_ATTR: "FAIL", REASON_ATTR: reason})
    study.enqueue_trial(trial.params, user_attrs={"retry_of": original_number(trial)})


def original_number(t: Any) -> int:
    """The number of the trial this one retries (itself if it is not a retry)."""
    attrs = t.user_attrs
    if "retry_of" in attrs:
        return attrs["retry_of"]
    system = getattr(t, "system_attrs", None)
    if system is None:  # a live Trial: its state as of ask() (a retry's mark is set before)
        frozen = getattr(t, "_cached_frozen_trial", None)
        system = (frozen.system_attrs if frozen is not None
                  else t.study._storage.get_trial_system_attrs(t._trial_id))
    return system.get("failed_trial", t.number)


def trial_seed(study_seed: int, number: int) -> int:
    return (study_seed * 1_000_003 + number) % (2**31 - 1)


def make_sampler(spec: StudySpec, worker_index: int) -> optuna.samplers.BaseSampler:
    # each worker gets its own stream, or parallel workers would propose the same configs
    seed = trial_seed(spec.seed, 7919 * (worker_index + 1))
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True,
                                          n_startup_trials=8)
    if spec.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)
    return optuna.samplers.RandomSampler(seed=seed)


def make_optuna_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.min_epochs,
                                              max_resource=spec.epochs,
                                              reduction_factor=spec.eta)
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_warmup_steps=spec.min_epochs - 1)
    return optuna.pruners.NopPruner()


class TrialRunner:
    """The objective function of one worker (its data and trainer are reused across trials)."""

    def __init__(self, study: optuna.Study, spec: StudySpec, data: DeviceData,
                 trainer: ProxyTrainer, workspace: Path, log=print, runs=None,
                 on_epoch=None):
        self.study, self.spec, self.data, self.trainer = study, spec, data, trainer
        # on_epoch(epoch, metrics, checkpoint): after each epoch's report (the Ray backend
        # passes each epoch's checkpoint to Ray Tune)
        self.on_epoch = on_epoch
        self.runs = runs  # tracking.runs.StudyRuns, or None without tracking
        self.parent_run = runs.parent() if runs is not None else None
        self.child: str | None = None
        self.run_tags = _provenance_tags() if runs is not None else {}
        self.checkpoints = workspace / "checkpoints" / spec.name
        self.log = log
        self.moasha = (MOASHA(spec.objectives, spec.rungs, spec.eta)
                       if spec.pruner == "moasha" else None)
        self.metrics = {o.metric for o in spec.objectives}
        self.cost_cache: dict[str, dict[str, float]] = {}
        self.budget: int | None = None  # the study's trial budget, as run_trials last read it
        self.constrained = any(v is not None for v in (spec.max_params, spec.max_macs,
                                                       spec.max_latency_ms))

    def __call__(self, trial: optuna.Trial) -> list[float]:
        self.child = None
        try:
            return self._run(trial)
        except (optuna.TrialPruned, TrialFailed, SurplusTrial):
            raise
        except Exception as err:  # a crash fails this trial, with its reason; the study goes on
            message = str(err).strip().splitlines()[0] if str(err).strip() else ""
            set_user_attrs(trial, {STATE_ATTR: "FAIL", COUNTED_ATTR: True, REASON_ATTR:
                                   f"error: {type(err).__name__}: {message}"[:500]})
            self.log(f"trial {trial.number} failed: {type(err).__name__}: {message}")
            raise TrialFailed(type(err).__name__) from err
        except KeyboardInterrupt:
            queue_again(self.study, trial, "interrupted")
            raise
        finally:
            if self.child is not None:
                self._end_child(trial)

    def _run(self, trial: optuna.Trial) -> list[float]:
        spec = self.spec
        family, proxy = spec.space.suggest(trial)
        digest = arch_hash(family, proxy)
        identity = {"family": family.name, "config": asdict(proxy),
                    "label": family.label(proxy), "arch_hash": digest, "fidelity": spec.epochs,
                    "seed": trial_seed(spec.seed, original_number(trial)),
                    "device": str(self.trainer.device)}
        trials = self.study.get_trials(deepcopy=False)  # one read serves both checks
        self._check_surplus(trial, identity, trials)
        costs = self._costs(family, proxy, digest)
        attrs = dict(identity)
        if "latency_ms" in self.metrics or spec.max_latency_ms is not None:
            target = family.build(family.to_target(proxy, spec.target_size),
                                  spec.target_classes, spec.target_size)
            latency = measure_latency(target, spec.target_size, device=self.trainer.device)
            costs["latency_ms"] = latency.median_ms
            attrs["latency"] = latency.as_dict()
            del target
        set_user_attrs(trial, {**attrs, "costs": costs})
        if self.runs is not None:
            self._start_child(trial, family, proxy, digest)
        if self._infeasible(trial, costs):
            trial.set_user_attr(STATE_ATTR, "INFEASIBLE")
            return self._values(0.0, costs)
        prior = self._prior(digest, trial.number, trials)
        if prior is not None:
            return self._reuse(trial, prior, costs)
        return self._train(trial, family, proxy, costs, digest)

    # --- tracking -------------------------------------------------------------------------
    def _start_child(self, trial, family, proxy, digest: str) -> None:
        spec = self.spec
        params = {"family": family.name, "arch": asdict(proxy), "target_size": spec.target_size,
                  "target_classes": spec.target_classes, "epochs": spec.epochs,
                  "subset": spec.subset, "val_size": spec.val_size,
                  "seed": trial_seed(spec.seed, original_number(trial)),
                  "recipe": asdict(spec.recipe_obj)}
        tags = {"study": spec.name, "trial": str(trial.number), "arch_hash": digest,
                "device": str(self.trainer.device), "state": "RUNNING", **self.run_tags}
        if "mlflow_run_id" in trial.user_attrs:  # a retried trial continues its run
            self.child = self.runs.resume_run(trial.user_attrs["mlflow_run_id"])
            if self.child is not None:
                return
        self.child = self.runs.start_trial(f"t{trial.number:04d} {family.label(proxy)}",
                                           trial.number, params, tags, self.parent_run)
        trial.set_user_attr("mlflow_run_id", self.child)

    def _end_child(self, trial) -> None:
        attrs = trial.user_attrs
        metrics = dict(attrs.get("costs") or {})  # val_acc: the last point of its history
        for key in ("seconds", "epochs_run"):
            if key in attrs:
                metrics[key] = attrs[key]
        config = {"family": attrs.get("family"), "proxy_config": attrs.get("config"),
                  "costs": attrs.get("costs")}
        self.runs.end_trial(self.child, attrs.get(STATE_ATTR, "FAIL"), attrs.get(REASON_ATTR),
                            metrics, {}, {"config.yaml": yaml.safe_dump(config)})

    # --- the steps ----------------------------------------------------------------------
    def _costs(self, family, proxy, digest: str) -> dict[str, float]:
        if digest not in self.cost_cache:  # counting MACs runs the model on the meta device
            self.cost_cache[digest] = target_and_proxy_costs(
                family, proxy, self.spec.target_size, self.spec.target_classes)
        return dict(self.cost_cache[digest])

    def _check_surplus(self, trial: optuna.Trial, identity: dict, trials) -> None:
        n = self.budget if self.budget is not None else math.inf
        alive = sorted(t.number for t in trials if counts(t))
        if alive.index(trial.number) >= n:
            set_user_attrs(trial, {**identity, STATE_ATTR: "FAIL", REASON_ATTR:
                                   "surplus: the budget was taken by other workers"})
            raise SurplusTrial()

    def _infeasible(self, trial: optuna.Trial, costs: dict[str, float]) -> bool:
        if not self.constrained:
            return False
        limits = {"params": self.spec.max_params, "macs": self.spec.max_macs,
                  "latency_ms": self.spec.max_latency_ms}
        violated = False
        for metric, limit in limits.items():
            if limit is None:
                continue
            violation = (costs[metric] - limit) / limit  # <= 0 is feasible
            trial.set_constraint(metric, violation)
            violated |= violation > 0
        return violated

    def _prior(self, digest: str, number: int, trials) -> optuna.trial.FrozenTrial | None:
        """An earlier trial that trained this architecture to the same fidelity."""
        for t in trials:
            if (t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.number != number
                    and t.user_attrs.get("arch_hash") == digest
                    and t.user_attrs.get("fidelity") == self.spec.epochs
                    and t.user_attrs.get(STATE_ATTR) in ("COMPLETE", "PRUNED")):
                return t
        return None

    def _reuse(self, trial, prior, costs):
        pruned = prior.state == TrialState.PRUNED
        set_user_attrs(trial, {
            "reused_from": prior.number, CURVE_ATTR: prior.user_attrs.get(CURVE_ATTR, []),
            STATE_ATTR: "REUSED", REASON_ATTR: f"reused trial {prior.number}"
                                               + (", which was pruned" if pruned else "")})
        if self.child is not None:  # the reused trial's curve, as if trained here
            self.runs.log_epochs(self.child, prior.user_attrs.get(CURVE_ATTR, []))
        if pruned:
            raise optuna.TrialPruned()
        return list(prior.values)

    def _train(self, trial, family, proxy, costs, digest):
        spec, data = self.spec, self.data
        seed = trial.user_attrs["seed"]
        config = family.to_target(proxy, data.image_size)  # the proxy itself on 32 px data

        def build():  # the trainer builds it on its device
            return family.build(config, data.num_classes, data.image_size,
                                drop_path=spec.recipe_obj.drop_path)
        checkpoint = self.checkpoints / f"{digest}-s{seed}.pt"
        # a resumed trial (its checkpoint survived) continues its curve
        curve = list(trial.user_attrs.get(CURVE_ATTR, [])) if checkpoint.exists() else []

        def report(epoch: int, metrics: dict[str, float]) -> str:
            curve[:] = [c for c in curve if c["epoch"] < epoch]
            curve.append({k: float(v) for k, v in metrics.items()})
            trial.set_user_attr(CURVE_ATTR, curve)
            if self.child is not None:
                self.runs.log_epochs(self.child, curve[-1:])
            if self.moasha is not None:
                stop = self.moasha.should_stop(self.study, trial.number, epoch,
                                               metrics["val_acc"], costs)
            elif len(spec.objectives) == 1:
                trial.report(metrics["val_acc"], epoch)
                stop = trial.should_prune()
            else:
                stop = False
            if self.on_epoch is not None:
                self.on_epoch(epoch, metrics, checkpoint)
            return "stop" if stop else "continue"

        result = self.trainer.fit(build, data, report=report, seed=seed, checkpoint=checkpoint)
        checkpoint.unlink(missing_ok=True)
        done = {"seconds": result.seconds, "epochs_run": result.epochs}
        if result.peak_memory_bytes is not None:
            done["peak_memory_bytes"] = result.peak_memory_bytes
        if result.status == "stopped":
            set_user_attrs(trial, {**done, STATE_ATTR: "PRUNED",
                                   REASON_ATTR: f"pruned at epoch {result.epochs}"})
            raise optuna.TrialPruned()
        if result.status in ("diverged", "oom"):
            set_user_attrs(trial, {**done, STATE_ATTR: "FAIL", COUNTED_ATTR: True,
                                   REASON_ATTR: f"{result.status}: {result.reason}"})
            raise TrialFailed(result.status)
        set_user_attrs(trial, {**done, STATE_ATTR: "COMPLETE"})
        return self._values(result.val_acc, costs)

    def _values(self, val_acc: float, costs: dict[str, float]) -> list[float]:
        return [val_acc if o.metric == "val_acc" else float(costs[o.metric])
                for o in self.spec.objectives]


def run_worker(name: str, storage_url: str, *, device: str | None = None,
               worker_index: int = 0, workspace: str | Path | None = None,
               data: str | None = None, log=None, tracking_uri: str | None = None,
               spawned: bool = False) -> int:
    """Run trials of study `name` until its budget is spent; returns how many it ran."""
    study, runner = make_runner(name, storage_url, device=device, worker_index=worker_index,
                                workspace=workspace, data=data, log=log,
                                tracking_uri=tracking_uri, spawned=spawned)
    return run_trials(study, runner)


def make_runner(name: str, storage_url: str, *, device: str | None = None,
                worker_index: int = 0, workspace: str | Path | None = None,
                data: str | None = None, log=None, tracking_uri: str | None = None,
                spawned: bool = False, heartbeat: bool = True, optuna_pruner: bool = True,
                on_epoch=None) -> tuple[optuna.Study, TrialRunner]:
    """The study (with its sampler and pruner) and the objective that runs its trials here.
    Without `optuna_pruner` a one-objective study is pruned by someone else (Ray's ASHA)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    study = load_study(name, storage_url, heartbeat=heartbeat)
    spec = load_spec(study)
    study = optuna.load_study(study_name=name, storage=study._storage,
                              sampler=make_sampler(spec, worker_index),
                              pruner=make_optuna_pruner(spec) if optuna_pruner
                              else optuna.pruners.NopPruner())
    workspace = workspace_dir(workspace)
    splits = study_splits(spec, workspace, data)
    trainer = ProxyTrainer(spec.recipe_obj, device=device)
    runs = open_runs(tracking_uri, name, storage_url, spawned)
    return study, TrialRunner(study, spec, DeviceData(splits, trainer.device), trainer,
                              workspace, log, runs, on_epoch)


def study_splits(spec: StudySpec, workspace: Path, data: str | None = None):
    """The study's train/val split, from `data` if the dataset moved (same content only)."""
    splits = load_splits(data or spec.data, workspace, val_size=spec.val_size,
                         subset=spec.subset, seed=spec.seed)
    if spec.data_hash and splits.content_hash != spec.data_hash:
        raise UserError(f"the data at {data or spec.data} differs from the study's (content "
                        f"hash {splits.content_hash[:12]} vs {spec.data_hash[:12]}); give "
                        f"--data the same dataset")
    return splits


def run_trials(study: optuna.Study, runner: TrialRunner) -> int:
    """The worker loop: one trial at a time until the study's budget is spent."""
    ran = 0
    while True:
        n = study.user_attrs.get(BUDGET_ATTR, 0)
        state = budget(study)
        if state.finished >= n:
            return ran
        if state.reserved >= n and not state.waiting:
            # the rest of the budget is running elsewhere; wait, and retry trials whose
            # worker died (their heartbeats stop and they are failed and queued again)
            time.sleep(WAIT_SECONDS)
            optuna.storages.fail_stale_trials(study)
            continue
        runner.budget = n
        study.optimize(runner, n_trials=1, catch=(TrialFailed, SurplusTrial),
                       gc_after_trial=False)
        ran += 1


def _provenance_tags() -> dict[str, str]:
    from search.study import provenance

    p = provenance()
    tags = {"git_commit": p["git_commit"] or "unknown", "python": p["python"]}
    tags.update({f"version.{k}": v or "none" for k, v in p["packages"].items()})
    return tags


def open_runs(tracking_uri: str | None, study: str, storage_url: str, spawned: bool):
    """The study's MLflow runs, or None when tracking is off (mlflow is then not imported)."""
    if not tracking_uri:
        return None
    from tracking.runs import StudyRuns, is_local

    if not spawned and is_local(tracking_uri) and not storage_url.startswith("sqlite"):
        raise UserError(
            f"a worker joining from another host needs an HTTP tracking URI (an MLflow server),"
            f" not {tracking_uri.split('?')[0]}: its runs would stay on this machine; give "
            f"--tracking-uri http://HOST:5000 or --no-tracking")
    return StudyRuns(tracking_uri, study)


def install_signal_handlers() -> None:
    """SIGTERM ends a worker like Ctrl-C: its trial is failed, queued again, nothing hangs."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def threads_from_env() -> None:
    threads = os.environ.get("PATCHNAS_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
