"""The trial runner: what one trial does, whichever backend scheduled it. A trial's life:

    ask -> suggest a config -> costs of the target model (no GPU time) -> over a constraint?
    -> INFEASIBLE (told COMPLETE with its constraint violations, never trained)
    -> claim the architecture at this fidelity (one atomic write in the storage):
       trained already by another trial -> REUSED (its result; no budget slot)
       in flight in another trial -> DISCARDED (the worker asks for another config)
    -> proxy training, asking the pruner after each epoch -> COMPLETE / PRUNED / FAIL (reason)
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from search.backends.pruners import Pruner, make_pruner
from search.study import estimators, record
from search.study.record import TrialRecord, original_number
from search.study.results import holds_budget_slot, state_of
from search.study.space import arch_hash
from search.study.spec import StudySpec, provenance
from spaces.cost import measure_latency, target_and_proxy_costs
from trainers.proxy import DeviceData, ProxyTrainer, checkpoint_history


class TrialFailed(Exception):
    """The trial ran and failed for a reason of its own (diverged, out of memory, error)."""


class Discarded(Exception):
    """The trial will not run: asked after other workers' trials took the budget (surplus),
    or its architecture is being trained by another trial (a twin in flight)."""


# who runs a trial: the driver fails a dead worker's trials at once by this
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def trial_seed(study_seed: int, number: int) -> int:
    return (study_seed * 1_000_003 + number) % (2**31 - 1)


def queue_again(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Mark a trial that will not finish here FAIL with `reason`, and queue its parameters
    again (the retry keeps the original's number for its seed)."""
    record.write(trial, state="FAIL", reason=reason)
    record.enqueue(study, trial.params, retry_of=original_number(trial))


class TrialRunner:
    """The objective function of one worker (its data and trainer are reused across trials)."""

    def __init__(self, study: optuna.Study, spec: StudySpec, data: DeviceData,
                 trainer: ProxyTrainer, workspace: Path, log=print, runs=None,
                 on_epoch=None, pruner: Pruner | None = None):
        self.study, self.spec, self.data, self.trainer = study, spec, data, trainer
        # on_epoch(epoch, metrics, checkpoint): after each epoch's report (the Ray backend
        # passes each epoch's checkpoint to Ray Tune)
        self.on_epoch = on_epoch
        self.runs = runs  # tracking.runs.StudyRuns, or None without tracking
        self.parent_run = runs.parent() if runs is not None else None
        self.child: str | None = None
        self.resumed_curve: list[dict[str, float]] = []
        self.discarded = False  # whether the last trial was discarded (surplus or a twin)
        self.trial: optuna.Trial | None = None  # the trial being run (or last run)
        self.run_tags = _provenance_tags() if runs is not None else {}
        self.checkpoints = workspace / "checkpoints" / spec.name
        self.log = log
        self.pruner = pruner if pruner is not None else make_pruner(spec)
        self.metrics = {o.metric for o in spec.objectives}
        self.cost_cache: dict[str, dict[str, float]] = {}
        self.budget: int | None = None  # the study's trial budget, as run_trials last read it
        # (trials holding a slot, trials in the study) in that read, just before the ask
        self.seen: tuple[int, int] | None = None
        self.constrained = any(v is not None for v in (spec.max_params, spec.max_macs,
                                                       spec.max_latency_ms))

    def __call__(self, trial: optuna.Trial) -> list[float]:
        self.child, self.resumed_curve, self.discarded, self.trial = None, [], False, trial
        try:
            return self._run(trial)
        except Discarded:
            self.discarded = True
            raise
        except (optuna.TrialPruned, TrialFailed):
            raise
        except Exception as err:  # a crash fails this trial, with its reason; the study goes on
            message = str(err).strip().splitlines()[0] if str(err).strip() else ""
            record.write(trial, state="FAIL", counted=True,
                         reason=f"error: {type(err).__name__}: {message}"[:500])
            self.log(f"trial {trial.number} failed: {type(err).__name__}: {message}")
            raise TrialFailed(type(err).__name__) from err
        except KeyboardInterrupt:
            queue_again(self.study, trial, "interrupted")
            raise
        finally:
            if self.child is not None:
                self._end_child(trial)

    def finished_elsewhere(self) -> bool:
        """Whether the trial it ran was told by another process meanwhile: failed by another
        worker's stale-heartbeat check while this one, starved of CPU, missed its
        heartbeats (Optuna then refuses this worker's own tell)."""
        if self.trial is None:
            return False
        number = self.trial.number  # the read brings the study's unfinished trials anew
        return any(t.number == number and t.state.is_finished()
                   for t in self.study.get_trials(deepcopy=False))

    def _run(self, trial: optuna.Trial) -> list[float]:
        spec = self.spec
        family, proxy = spec.space.suggest(trial)
        digest = arch_hash(family, proxy)
        identity = TrialRecord.attrs(
            family=family.name, config=asdict(proxy), label=family.label(proxy),
            arch_hash=digest, fidelity=spec.epochs,
            seed=trial_seed(spec.seed, original_number(trial)), device=str(self.trainer.device),
            worker=WORKER, image_size=self.data.image_size, num_classes=self.data.num_classes,
            train_images=len(self.data.train_y), val_images=len(self.data.val_y))
        self._check_surplus(trial, identity)
        costs = self._costs(family, proxy, digest)
        found = dict(identity)
        if "latency_ms" in self.metrics or spec.max_latency_ms is not None:
            target = family.build(family.to_target(proxy, spec.target_size),
                                  spec.target_classes, spec.target_size)
            latency = measure_latency(target, spec.target_size, device=self.trainer.device)
            costs["latency_ms"] = latency.median_ms
            found["latency"] = latency.as_dict()
            del target
        record.write(trial, **found, costs=costs)
        infeasible = self._infeasible(trial, costs)
        prior = None if infeasible else self._claim(trial, digest)  # may discard the trial
        if not infeasible and prior is None:  # training it: from its checkpoint, if one is left
            self.resumed_curve = checkpoint_history(self._checkpoint(digest, identity["seed"]))
        if self.runs is not None:
            self._start_child(trial, family, proxy, digest)
        if infeasible:
            record.write(trial, state="INFEASIBLE", reason=f"infeasible: {infeasible}")
            return self._values(0.0, costs)
        if prior is not None:
            return self._reuse(trial, prior)
        return self._train(trial, family, proxy, costs, digest)

    # --- tracking -------------------------------------------------------------------------
    def _start_child(self, trial, family, proxy, digest: str) -> None:
        spec = self.spec
        params = {"family": family.name, "arch": asdict(proxy), "target_size": spec.target_size,
                  "target_classes": spec.target_classes, "epochs": spec.epochs,
                  "subset": spec.subset, "val_size": spec.val_size,
                  "image_size": self.data.image_size, "num_classes": self.data.num_classes,
                  "train_images": len(self.data.train_y),
                  "seed": trial_seed(spec.seed, original_number(trial)),
                  "recipe": asdict(spec.recipe_obj)}
        tags = {"study": spec.name, "trial": str(trial.number), "arch_hash": digest,
                "device": str(self.trainer.device), "state": "RUNNING", **self.run_tags}
        r = TrialRecord.from_trial(trial)
        if r.mlflow_run_id is not None and r.ray_attempt > 1:  # Ray restarted this trial
            self.child = self.runs.resume_run(r.mlflow_run_id)
            if self.child is not None:
                return
        original = original_number(trial)
        if original != trial.number:  # a retry: its own run, linked to the original's
            tags["retry_of"] = str(original)
        self.child = self.runs.start_trial(f"t{trial.number:04d} {family.label(proxy)}",
                                           trial.number, params, tags, self.parent_run)
        record.write(trial, mlflow_run_id=self.child)
        if self.resumed_curve:
            self.runs.log_epochs(self.child, self.resumed_curve)

    def _end_child(self, trial) -> None:
        r = TrialRecord.from_trial(trial)
        metrics = dict(r.costs or {})  # val_acc: the last point of its history
        if r.seconds is not None:
            metrics["seconds"] = r.seconds
        if r.epochs_run is not None:
            metrics["epochs_run"] = r.epochs_run
        if r.images_per_s is not None:
            metrics["images_per_s"] = r.images_per_s
        metrics.update({f"rank.{name}": v for name, v in (r.estimates or {}).items()})
        config = {"family": r.family, "proxy_config": r.config, "costs": r.costs}
        self.runs.end_trial(self.child, r.state or "FAIL", r.reason, metrics, {},
                            {"config.yaml": yaml.safe_dump(config)})

    # --- the steps ----------------------------------------------------------------------
    def _costs(self, family, proxy, digest: str) -> dict[str, float]:
        if digest not in self.cost_cache:  # counting MACs runs the model on the meta device
            self.cost_cache[digest] = target_and_proxy_costs(
                family, proxy, self.spec.target_size, self.spec.target_classes,
                proxy_size=self.data.image_size, proxy_classes=self.data.num_classes)
        return dict(self.cost_cache[digest])

    def _check_surplus(self, trial: optuna.Trial, identity: dict) -> None:
        """Discard the trial when trials before it hold the whole budget (other workers
        asked theirs between this worker's budget check and its ask)."""
        n = self.budget if self.budget is not None else math.inf
        if math.isinf(n):
            return
        if self.seen is not None:
            # trial numbers are dense, so those past the read were asked since: at most
            # that many more trials ahead of this one (a free trial never holds a slot again)
            holding, read = self.seen
            if holding + max(0, trial.number - read) < n:
                return  # not surplus, without reading the study again
        trials = self.study.get_trials(deepcopy=False)
        alive = sorted(t.number for t in trials if holds_budget_slot(t))
        if alive.index(trial.number) >= n:
            self._discard(trial, "surplus: the budget was taken by other workers", **identity)

    def _claim(self, trial: optuna.Trial, digest: str) -> optuna.trial.FrozenTrial | None:
        """Claim the architecture for this trial: None when this trial is to train it, the
        trial that trained it when that is done; raises Discarded while a twin trains it."""
        mine, fidelity = original_number(trial), self.spec.epochs
        owner = record.claim_architecture(self.study, digest, fidelity, mine)
        if owner == mine:
            return None
        chain = [t for t in self.study.get_trials(deepcopy=False)
                 if t.number != trial.number and original_number(t) == owner]
        trained = [t for t in chain if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                   and state_of(t) in ("COMPLETE", "PRUNED")]
        if trained:
            return trained[-1]
        if any(not t.state.is_finished() for t in chain):
            self._discard(trial, f"a twin of trial {owner}, which is training it")
        # the claimant failed for good: this trial trains it, unless another took it first
        if record.claim_architecture(self.study, digest, fidelity, mine,
                                     replacing=owner) != mine:
            self._discard(trial, "a twin of a trial that is training it")
        return None

    def _discard(self, trial: optuna.Trial, why: str, **attrs) -> None:
        record.write(trial, **attrs, state="DISCARDED", reason=why)
        self.log(f"trial {trial.number} discarded: {why}")
        raise Discarded()

    def _infeasible(self, trial: optuna.Trial, costs: dict[str, float]) -> str | None:
        """Why the config breaks a limit (None when it keeps them all); the violations go
        to the sampler through set_constraint."""
        if not self.constrained:
            return None
        limits = {"params": self.spec.max_params, "macs": self.spec.max_macs,
                  "latency_ms": self.spec.max_latency_ms}
        over = []
        for metric, limit in limits.items():
            if limit is None:
                continue
            violation = (costs[metric] - limit) / limit  # <= 0 is feasible
            trial.set_constraint(metric, violation)
            if violation > 0:
                flag = "--max-" + metric.replace("_", "-")
                over.append(f"{metric} {costs[metric]:,.6g} over {flag} {limit:,.6g}")
        return "; ".join(over) or None

    def _reuse(self, trial, prior):
        pruned = prior.state == TrialState.PRUNED
        prior_record = TrialRecord.from_trial(prior)
        curve = prior_record.curve
        record.write(trial, reused_from=prior.number, curve=curve,
                     estimates=prior_record.estimates, state="REUSED",
                     reason=f"reused trial {prior.number}" + (", which was pruned" if pruned
                                                               else ""))
        if self.child is not None:  # the reused trial's curve, as if trained here
            self.runs.log_epochs(self.child, curve)
        if pruned:
            raise optuna.TrialPruned()
        return list(prior.values)

    def _train(self, trial, family, proxy, costs, digest):
        spec, data = self.spec, self.data
        seed = TrialRecord.from_trial(trial).seed
        config = family.to_target(proxy, data.image_size)  # the proxy itself on 32 px data

        def build():  # the trainer builds it on its device
            return family.build(config, data.num_classes, data.image_size,
                                drop_path=spec.recipe_obj.drop_path)
        checkpoint = self._checkpoint(digest, seed)
        curve = list(self.resumed_curve)  # a resumed trial continues its whole curve

        def report(epoch: int, metrics: dict[str, float]) -> str:
            curve[:] = [c for c in curve if c["epoch"] < epoch]
            curve.append({k: float(v) for k, v in metrics.items()})
            record.write(trial, curve=curve, estimates=estimators.scores(curve, spec.epochs))
            if self.child is not None:
                self.runs.log_epochs(self.child, curve[-1:])
            stop = self.pruner.should_stop(self.study, trial, curve, costs)
            if self.on_epoch is not None:
                self.on_epoch(epoch, metrics, checkpoint)
            return "stop" if stop else "continue"

        result = self.trainer.fit(build, data, report=report, seed=seed, checkpoint=checkpoint)
        checkpoint.unlink(missing_ok=True)
        done: dict[str, Any] = {"seconds": result.seconds, "epochs_run": result.epochs,
                                "images_per_s": result.images_per_s}
        if result.peak_memory_bytes is not None:
            done["peak_memory_bytes"] = result.peak_memory_bytes
        if result.status == "stopped":
            record.write(trial, **done, state="PRUNED", reason=f"pruned at epoch {result.epochs}")
            raise optuna.TrialPruned()
        if result.status in ("diverged", "oom"):
            record.write(trial, **done, state="FAIL", counted=True,
                         reason=f"{result.status}: {result.reason}")
            raise TrialFailed(result.status)
        record.write(trial, **done, state="COMPLETE")
        return self._values(result.val_acc, costs)

    def _checkpoint(self, digest: str, seed: int) -> Path:
        return self.checkpoints / f"{digest}-s{seed}.pt"

    def _values(self, val_acc: float, costs: dict[str, float]) -> list[float]:
        return [val_acc if o.metric == "val_acc" else float(costs[o.metric])
                for o in self.spec.objectives]


def _provenance_tags() -> dict[str, str]:
    p = provenance()
    tags = {"git_commit": p["git_commit"] or "unknown", "python": p["python"]}
    tags.update({f"version.{k}": v or "none" for k, v in p["packages"].items()})
    return tags
