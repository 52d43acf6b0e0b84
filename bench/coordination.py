"""Coordination cost: N worker processes on one study, patchnas's worker loop vs bare Optuna.

    python bench/coordination.py [--storage sqlite postgres] [--workers 1 4 8 16 32]
                                 [--trials 200] [--sleep-ms 5] [--repeat 1]
                                 [--postgres URL]   # default: $PATCHNAS_TEST_POSTGRES

The trials cost nothing (a trainer that sleeps a few ms), so the storage is all that is under
load. For each storage (SQLite in WAL mode; PostgreSQL when a URL is given) and each N, both
loops run N processes on a fresh study with the same budget: bare Optuna
(`study.optimize(n_trials=...)`, the budget split between the processes) and patchnas's own
worker loop (`search.backends.worker.run_trials`: budget accounting, reuse and constraint
checks, trial attributes). Prints trials/s, p50/p99 of each trial's ask-to-tell time, and the
counts that must be zero: trials lost (budget not reached), duplicated architectures, trials
left RUNNING, budget overrun. Not a test.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _bare_worker(url: str, name: str, n: int, sleep_s: float, seed: int, start) -> None:
    import optuna

    from search.backends.worker import die_with_parent

    die_with_parent()  # a benchmark stopped by hand leaves no worker running

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=name, storage=url,
                              sampler=optuna.samplers.RandomSampler(seed=seed))

    def objective(trial):
        trial.suggest_int("h", 64, 1536, step=32)
        trial.suggest_int("d", 2, 32)
        trial.suggest_categorical("p", [1, 2, 4])
        trial.suggest_int("k", 3, 11, step=2)
        trial.suggest_categorical("act", ["gelu", "relu"])
        time.sleep(sleep_s)
        return 0.5, 1.0

    start.wait()
    study.optimize(objective, n_trials=n)


def _ours_worker(url: str, name: str, sleep_s: float, workspace: str, seed: int,
                 start) -> None:
    import optuna

    from search.backends.worker import die_with_parent, make_runner, run_trials
    from trainers.zero import ZeroCostTrainer, zero_data

    die_with_parent()

    study, runner = make_runner(name, url, worker_index=seed, workspace=workspace,
                                log=lambda message: None, trainer=ZeroCostTrainer(sleep_s),
                                device_data=zero_data())
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # after the storage set it to WARNING
    start.wait()
    run_trials(study, runner)


def _run(target, args_of, n: int) -> None:
    """`n` processes of `target`; each waits for the others' start-up (imports, opening the
    study) before its first trial: on 2 cores, 32 processes importing torch while the first
    ones run trials measured the imports (patchnas's are heavier), not coordination."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(n)
    procs = [ctx.Process(target=target, args=(*args_of(i), start)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise SystemExit(f"a worker failed (exit codes {bad})")


def _span(trials) -> float:
    """Seconds from the first trial's start to the last one's end."""
    done = [t for t in trials if t.datetime_complete and t.datetime_start]
    return (max(t.datetime_complete for t in done)
            - min(t.datetime_start for t in done)).total_seconds()


def _latencies(trials) -> tuple[float, float]:
    ms = sorted((t.datetime_complete - t.datetime_start).total_seconds() * 1000
                for t in trials if t.datetime_complete and t.datetime_start)
    return statistics.median(ms), ms[min(len(ms) - 1, int(0.99 * len(ms)))]


def bare(url: str, n: int, total: int, sleep_s: float) -> dict:
    import optuna

    name = f"bare-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=url, directions=["maximize", "minimize"])
    shares = [total // n + (i < total % n) for i in range(n)]
    _run(_bare_worker, lambda i: (url, name, shares[i], sleep_s, i), n)
    trials = optuna.load_study(study_name=name, storage=url).trials
    seconds = _span(trials)
    p50, p99 = _latencies(trials)
    done = sum(t.state.is_finished() for t in trials)
    return {"seconds": seconds, "trials/s": done / seconds, "p50_ms": p50, "p99_ms": p99,
            "lost": total - done, "duplicated": 0, "running": 0, "overrun": 0}


def ours(url: str, n: int, total: int, sleep_s: float, workspace: Path) -> dict:
    import optuna

    from search.study.record import TrialRecord
    from search.study.results import state_of
    from search.study.spec import build_spec
    from search.study.studies import create_or_resume

    name = f"ours-{uuid.uuid4().hex[:8]}"
    spec = build_spec(name, {"epochs": 1, "pruner": "none", "sampler": "random"}, None, "zero")
    create_or_resume(replace(spec, data_hash="zero"), url, total)
    _run(_ours_worker, lambda i: (url, name, sleep_s, str(workspace), i), n)
    trials = optuna.load_study(study_name=name, storage=url).trials
    seconds = _span(trials)
    trained = [t for t in trials if state_of(t) in ("COMPLETE", "PRUNED")]
    hashes = [TrialRecord.from_trial(t).arch_hash for t in trained]
    p50, p99 = _latencies(trained)
    return {"seconds": seconds, "trials/s": len(trained) / seconds, "p50_ms": p50,
            "p99_ms": p99, "lost": max(0, total - len(trained)),
            "duplicated": len(hashes) - len(set(hashes)),
            "running": sum(t.state == optuna.trial.TrialState.RUNNING for t in trials),
            "overrun": max(0, len(trained) - total)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--sleep-ms", type=float, default=5)
    p.add_argument("--repeat", type=int, default=1, help="pairs of runs per N; prints the "
                   "median ratio (on a shared machine one pair moves by +-0.3)")
    p.add_argument("--postgres", default=os.environ.get("PATCHNAS_TEST_POSTGRES"))
    p.add_argument("--storage", "--storages", dest="storages", nargs="+",
                   choices=["sqlite", "postgres"], default=["sqlite", "postgres"])
    args = p.parse_args()
    sleep_s = args.sleep_ms / 1000
    print(f"{'storage':<9}{'N':>4} {'loop':<9}{'trials/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'lost':>6}{'dup':>5}{'run':>5}{'over':>6}  ours/bare")
    with tempfile.TemporaryDirectory() as tmp:
        for storage in args.storages:
            if storage == "postgres" and not args.postgres:
                print("postgres: no URL (--postgres or $PATCHNAS_TEST_POSTGRES): skipped")
                continue
            for n in args.workers:
                url = (args.postgres if storage == "postgres"
                       else f"sqlite:///{tmp}/{storage}-{n}.db")
                if storage == "sqlite":  # WAL, as patchnas opens its own SQLite files
                    from search.study.storage import open_storage
                    open_storage(url, heartbeat=False, create=True)
                ratios = []
                for _ in range(args.repeat):  # pairs back to back: the ratio of a pair
                    b = bare(url, n, args.trials, sleep_s)  # cancels the machine's drift
                    o = ours(url, n, args.trials, sleep_s, Path(tmp))
                    ratios.append(o["trials/s"] / b["trials/s"])
                    for loop, r in (("optuna", b), ("patchnas", o)):
                        ratio = f"  {ratios[-1]:.2f}x" if loop == "patchnas" else ""
                        print(f"{storage:<9}{n:>4} {loop:<9}{r['trials/s']:>9.1f}"
                              f"{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['lost']:>6}"
                              f"{r['duplicated']:>5}{r['running']:>5}{r['overrun']:>6}{ratio}",
                              flush=True)
                if args.repeat > 1:
                    print(f"{storage:<9}{n:>4} median of {args.repeat} pairs: "
                          f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-"
                          f"{max(ratios):.2f})", flush=True)


if __name__ == "__main__":
    main()
