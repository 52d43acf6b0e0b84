"""A study of thousands of finished trials: how long `status`, `pareto` and the MLflow
parent-run refresh take to read it.

    python bench/large_study.py [--trials 5000] [--storage sqlite|postgresql] [--keep DIR]

The study is written straight into the storage (Optuna's add_trials, with the records a
worker leaves: costs, curve, arch hash, seed, MLflow run id; 80% trained, 8% pruned, 6%
reused twins, 4% retried, 2% failed) and each trial gets its real MLflow child run in a
SQLite tracking store, so the readers see what a long search leaves behind. Each reader is
timed cold (a fresh load of the study, as a command starts), and `patchnas search status`
as a whole process. Goal (issue 15): each under 2 s at 5,000 trials. Not a test.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from search.backends.review import refresh
from search.study import record
from search.study.record import TrialRecord
from search.study.results import stored_pareto, stored_status
from search.study.spec import build_spec
from search.study.studies import create_or_resume, load_study
from tracking.runs import StudyRuns

ROOT = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)
DISTRIBUTIONS = {"convmixer.h": IntDistribution(64, 1536, step=32),
                 "convmixer.d": IntDistribution(2, 32),
                 "convmixer.p": CategoricalDistribution([1, 2, 4]),
                 "convmixer.k": IntDistribution(3, 11, step=2)}


def fill(url: str, tracking: str, n: int) -> None:
    """Write a study of `n` finished trials (and their MLflow runs)."""
    spec = build_spec("large", {"epochs": 4, "sampler": "random"}, None, "zero")
    study = create_or_resume(replace(spec, data_hash="zero"), url, n)
    runs = (StudyRuns(tracking, "large", claim_parent=partial(record.claim_parent_run, study))
            if tracking else None)
    parent = runs.parent() if runs else None
    rng = random.Random(0)
    trained: list[tuple[dict, dict, list]] = []
    batch = []
    for number in range(n):
        roll = rng.random()
        if trained and roll < 0.06:  # a twin of a trained architecture: its result
            params, costs, values = rng.choice(trained)
            state, kind, reason = TrialState.COMPLETE, "REUSED", "reused trial 0"
        else:
            params = {name: (rng.choice(d.choices) if isinstance(d, CategoricalDistribution)
                             else rng.randrange(d.low, d.high + 1, d.step))
                      for name, d in DISTRIBUTIONS.items()}
            h, d, p, k = (params[f"convmixer.{x}"] for x in "hdpk")
            weights = d * (h * k * k + h * h) + 3 * h * p * p
            costs = {"params": float(weights), "macs": float(weights * (224 // p) ** 2),
                     "params_proxy": float(weights), "macs_proxy": float(weights * (32 // p) ** 2)}
            acc = min(0.95, 0.3 + 0.1 * rng.random() + 0.05 * (weights / 1e6) ** 0.5)
            values = [acc, costs["params"]]
            state, kind, reason = TrialState.COMPLETE, "COMPLETE", None
            if roll > 0.98:
                state, kind, reason = TrialState.FAIL, "FAIL", "diverged: loss is nan"
            elif roll > 0.94:
                state, kind, reason = TrialState.FAIL, None, "its worker's heartbeat stopped"
            elif roll > 0.86:
                state, kind, reason = TrialState.PRUNED, "PRUNED", "pruned at epoch 2"
            if kind == "COMPLETE":
                trained.append((params, costs, values))
        epochs = 2 if kind == "PRUNED" else 4
        curve = [{"epoch": e, "val_acc": values[0] * e / epochs, "train_loss": 2.0 / e,
                  "lr": 0.01, "epoch_seconds": 30.0} for e in range(1, epochs + 1)]
        run_id = None
        if runs:
            run_id = runs.start_trial(f"t{number:04d}", number, {"arch": params},
                                      {"study": "large", "state": kind or "RETRIED"}, parent)
            runs.end_trial(run_id, kind or "FAIL", reason, {"val_acc": values[0]}, {}, {})
        attrs = TrialRecord(state=kind if kind in ("REUSED",) else None, reason=reason,
                            counted=kind == "FAIL", family="convmixer",
                            config={x: params[f"convmixer.{x}"] for x in "hdpk"},
                            label=f"ConvMixer-{params['convmixer.h']}/{params['convmixer.d']}",
                            arch_hash=f"{hash(tuple(params.values())) & 0xffffffff:08x}",
                            fidelity=4, seed=number, device="cuda:0", costs=costs,
                            curve=curve, seconds=120.0, epochs_run=epochs,
                            mlflow_run_id=run_id, worker=f"gpu{number % 64}:1").to_attrs()
        batch.append(create_trial(
            state=state, values=values if state == TrialState.COMPLETE else None,
            params=params, distributions=DISTRIBUTIONS, user_attrs=attrs,
            intermediate_values={e["epoch"]: e["val_acc"] for e in curve}))
        if len(batch) == 500:
            study.add_trials(batch)
            batch = []
            print(f"  {number + 1} trials written", file=sys.stderr, flush=True)
    study.add_trials(batch)


def one_more(study: optuna.Study, runs: StudyRuns) -> None:
    """A trial finishing while the driver runs: a copy of the last trained one, new run."""
    last = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))[-1]
    run_id = runs.start_trial("one-more", len(study.trials), {"arch": last.params},
                              {"study": "large", "state": "COMPLETE"}, runs.parent())
    runs.end_trial(run_id, "COMPLETE", None, {"val_acc": last.values[0]}, {}, {})
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=last.values,
                                 params=last.params, distributions=last.distributions,
                                 user_attrs={**last.user_attrs, "mlflow_run_id": run_id}))


def _refresh_imports() -> None:
    import matplotlib.pyplot  # noqa: F401  (the pictures)
    import optuna.importance  # noqa: F401  (fANOVA, with scikit-learn's forests)


def timed(what: str, fn) -> float:
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    print(f"{what:<34} {seconds:6.2f} s")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5000)
    p.add_argument("--storage", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--keep", type=Path, help="write the stores here and keep them; a later "
                   "run with the same DIR reads them again (SQLite)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            tmp = str(args.keep.resolve())
        if args.storage == "postgresql":
            url = os.environ["PATCHNAS_TEST_POSTGRES"]  # an empty database: it is reset
            from sqlalchemy import create_engine, text
            with create_engine(url).begin() as db:
                db.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        else:
            url = f"sqlite:///{tmp}/large.db"
        tracking = f"sqlite:///{tmp}/mlflow.db"
        start = time.perf_counter()
        if args.keep and args.storage == "sqlite" and (args.keep / "large.db").exists():
            print(f"reading the study kept in {args.keep}")
        else:
            fill(url, tracking, args.trials)
            print(f"{args.trials} trials on {args.storage} written in "
                  f"{time.perf_counter() - start:.0f} s")
        driver = load_study("large", url), StudyRuns(tracking, "large")  # one run's own
        times = {
            "status": timed("stored_status (library, cold)",
                            lambda: stored_status(load_study("large", url))),
            "pareto": timed("stored_pareto (library, cold)",
                            lambda: stored_pareto(load_study("large", url))),
            # paid once by a driver process whatever its study's size (sklearn: 1.7 s)
            "imports": timed("first refresh's imports (any study)", _refresh_imports),
            # a resuming driver's sampler reads every trial at its first ask, 10 s before
            # the first refresh (that read is the cold `status` above, less its spec)
            "first ask's read": timed("a resuming driver's first read",
                                      lambda: driver[0].get_trials(deepcopy=False)),
            "refresh": timed("parent-run refresh (cold)", lambda: refresh(*driver)),
            "refresh again": timed("refresh in the driver, nothing new",
                                   lambda: refresh(*driver)),
        }
        one_more(driver[0], driver[1])
        times["refresh one new"] = timed("refresh in the driver, one trial new",
                                         lambda: refresh(*driver))
        for command in ("status", "pareto"):
            times[f"{command} command"] = timed(
                f"patchnas search {command} (process)", partial(
                    subprocess.run, [sys.executable, "-m", "search", "search", command,
                                     "large", "--storage", url],
                    check=True, cwd=ROOT, stdout=subprocess.DEVNULL))
        worst = max((k for k in times if k != "imports"), key=times.get)
        print(f"slowest: {worst} {times[worst]:.2f} s (goal: each under 2 s)")


if __name__ == "__main__":
    main()
