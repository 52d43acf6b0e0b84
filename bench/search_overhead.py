"""Search overhead: trials with a zero-cost objective through patchnas vs. bare Optuna.

    python bench/search_overhead.py [--trials 500]

Both loops use the same kind of storage (a fresh SQLite file each, in WAL mode as patchnas
creates its own), the same sampler (NSGA-II) and the same space (ConvMixer, two objectives).
The bare loop suggests the parameters and returns constants. The patchnas loop is a real
worker (search.backends.worker.make_runner and run_trials: heartbeat, budget accounting, the
family's define-by-run space, target and proxy costs, constraint and reuse checks, trial
attributes) with a trainer that returns at once. Prints the time ratios: per Optuna trial
(bare Optuna runs as many as patchnas asked) and per budget trial.
Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import optuna

from search.backends.worker import make_runner, run_trials
from search.study.spec import build_spec
from search.study.studies import create_or_resume
from trainers.zero import ZeroCostTrainer, zero_data

optuna.logging.set_verbosity(optuna.logging.WARNING)


def bare_optuna(url: str, n: int) -> float:
    # the same storage: a SQLite file in WAL mode, as patchnas makes its own
    with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
        db.execute("PRAGMA journal_mode=WAL")
    study = optuna.create_study(storage=url, directions=["maximize", "minimize"],
                                sampler=optuna.samplers.NSGAIISampler(seed=0,
                                                                      population_size=20))

    def objective(trial):
        trial.suggest_int("h", 64, 1536, step=32)
        trial.suggest_int("d", 2, 32)
        trial.suggest_categorical("p", [1, 2, 4])
        trial.suggest_int("k", 3, 11, step=2)
        trial.suggest_categorical("act", ["gelu", "relu"])
        return 0.5, 1.0

    start = time.perf_counter()
    study.optimize(objective, n_trials=n)
    return time.perf_counter() - start


def through_patchnas(url: str, n: int, workspace: Path) -> float:
    spec = build_spec("overhead", {"epochs": 1, "pruner": "none", "sampler": "nsga2"}, None,
                      "zero")
    create_or_resume(replace(spec, data_hash="zero"), url, n)
    study, runner = make_runner("overhead", url, workspace=workspace, log=lambda message: None,
                                trainer=ZeroCostTrainer(), device_data=zero_data())
    start = time.perf_counter()
    run_trials(study, runner)
    return time.perf_counter() - start, len(study.get_trials(deepcopy=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=500)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours, asked = through_patchnas(f"sqlite:///{tmp}/ours.db", args.trials, Path(tmp))
        # patchnas asks Optuna for more trials than its budget: a sampled twin of a trained
        # architecture is told the twin's result (REUSED) and takes no slot of the budget. So
        # bare Optuna runs as many trials as were asked (its cost per trial grows with the
        # study: each ask reads every trial), and the first ratio is per ask-and-tell
        bare = bare_optuna(f"sqlite:///{tmp}/bare.db", asked)
        bare_budget = bare_optuna(f"sqlite:///{tmp}/bare-budget.db", args.trials)
    print(f"{args.trials} budget trials, {asked} Optuna trials asked: patchnas {ours:.1f}s "
          f"({ours / asked * 1000:.1f} ms/trial), bare Optuna {bare:.1f}s for {asked} trials "
          f"({bare / asked * 1000:.1f} ms/trial), {bare_budget:.1f}s for {args.trials}; ratio "
          f"{ours / bare:.2f}x per Optuna trial, {ours / bare_budget:.2f}x per budget trial")

if __name__ == "__main__":
    main()
