"""Trials per GPU-hour: the same small proxy trials at --trials-per-gpu 1 vs. K on one GPU.

    python bench/trials_per_gpu.py --data ../shared/data/cifar10-jpeg.tar.gz          # GPU
    python bench/trials_per_gpu.py --device cpu --trials 4 --epochs 1 --subset 1000 \\
        --per-gpu 1,2                                                   # smoke (CPU slots)

Each setting is a real `patchnas search run` (worker processes, storage, budget; no MLflow,
pruning off so every trial trains all its epochs) on a fresh study whose budget is the same N
small ConvMixers, enqueued ahead in the same order, so the runs differ only in how many
trials share the GPU. The wall time counts everything a user waits for (worker start-up,
data to the GPU, every trial). Prints trials per GPU-hour for each setting and the ratio.
Not a test: numbers go to bench/RESULTS.md with the date, machine and command.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
import torch  # noqa: E402

import spaces  # noqa: E402
from search.backends.base import RunOptions  # noqa: E402
from search.backends.run import run_search  # noqa: E402
from search.study.results import state_of  # noqa: E402
from search.study.spec import build_spec  # noqa: E402
from search.study.studies import create_or_resume, find_spec  # noqa: E402
from search.study.workspace import default_storage_url as default_url  # noqa: E402
from search.study.workspace import load_splits, resolve_data  # noqa: E402
from spaces.overrides import parse_assignments  # noqa: E402

SPACE = ["h=64,96,128,160", "d=2..6", "p=2", "k=3,5,7"]


def small_configs(n: int, seed: int = 0) -> list[dict[str, int]]:
    grid = [dict(h=h, d=d, p=2, k=k) for h, d, k in
            itertools.product((64, 96, 128, 160), range(2, 7), (3, 5, 7))]
    return random.Random(seed).sample(grid, n)


def one_run(name: str, per_gpu: int, args, workspace: Path) -> dict:
    given = {"family": "convmixer", "overrides": parse_assignments(SPACE),
             "epochs": args.epochs, "pruner": "none", "sampler": "random", "seed": 0,
             "subset": args.subset, "val_size": args.val_size}
    url = default_url(workspace)
    find_spec(name, url)  # creates the database, as the command does
    data = str(resolve_data(args.data, workspace, download=False).resolve())
    spec = build_spec(name, given, None, data)
    splits = load_splits(data, workspace, val_size=spec.val_size, subset=spec.subset,
                         seed=spec.seed)
    study = create_or_resume(replace(spec, data_hash=splits.content_hash), url, args.trials,
                             log=lambda _: None)
    family = spaces.get("convmixer")
    for params in small_configs(args.trials):
        study.enqueue_trial(spec.space.params_of(family, family.config_of(params)))
    on_gpu = args.device == "cuda"
    options = RunOptions(trials=args.trials, workspace=str(workspace), data=data,
                         gpus=[0] if on_gpu else None, trials_per_gpu=per_gpu if on_gpu else 1,
                         workers=None if on_gpu else per_gpu, device=args.device,
                         tracking=False, progress=False)
    start = time.perf_counter()
    run_search(name, given, options, log=lambda msg: print(f"  {msg}", file=sys.stderr))
    wall = time.perf_counter() - start
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    done = [t for t in trials if state_of(t) == "COMPLETE"]
    seconds = sorted((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
    return {"per_gpu": per_gpu, "trials": len(trials), "trained": len(done),
            "wall_seconds": round(wall, 1),
            "trials_per_gpu_hour": round(len(done) / wall * 3600, 1),
            "median_trial_seconds": round(seconds[len(seconds) // 2], 2) if seconds else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" /
                                         "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--subset", type=int, default=None, help="train images per trial")
    p.add_argument("--val-size", type=int, default=5000, help="validation images per trial")
    p.add_argument("--per-gpu", default="1,4", help="the --trials-per-gpu settings to compare")
    p.add_argument("--workspace", help="default: a temporary folder (the decode cache is "
                                       "shared by the settings)")
    args = p.parse_args()
    settings = [int(k) for k in args.per_gpu.split(",")]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(args.workspace or tmp)
        results = []
        for k in settings:
            print(f"--trials-per-gpu {k}:", file=sys.stderr)
            # a fresh study each time, also when --workspace holds an earlier run's
            results.append(one_run(f"tpg{k}-{uuid.uuid4().hex[:6]}", k, args, workspace))
            print(f"  {json.dumps(results[-1])}", file=sys.stderr)
    base = results[0]["trials_per_gpu_hour"]
    for r in results:
        r["ratio_vs_first"] = round(r["trials_per_gpu_hour"] / base, 2) if base else None
    print(json.dumps({"device": name, "epochs": args.epochs, "subset": args.subset,
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
