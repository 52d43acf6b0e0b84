"""Which rank estimator of a short proxy run predicts a 5x longer one? On real CIFAR-10.

    python bench/proxy_fidelity.py                       # 19 configs, 2 vs 10 epochs
    python bench/proxy_fidelity.py --configs 4 --short 1 --subset 500 --val-size 200  # smoke

Each config (16 ConvMixers across the space, a CoAtNet and two ConvMLPs, all small enough
for the CPU) trains twice, seeded the same: for `--short` epochs and for `--factor` x as many,
each with the one-cycle schedule fitted to its own budget (what a study at that fidelity
does). The truth is the long run's final val_acc; each estimator of
search.study.estimators scores the short run's curve. Prints every estimator's Kendall tau and
Spearman rho against the truth, with 95% bootstrap intervals, and the short runs' cost as a
fraction of the long runs' (wall seconds, both measured here). Not a test: results go to
bench/RESULTS.md with the date, machine and command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.promote.fidelity import correlations, describe  # noqa: E402
from search.study import estimators  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONVMIXERS = [  # h, d, p, k: widths 32..128, depths 1..6, patches 2 and 4, kernels 3..9
    (32, 2, 4, 3), (32, 4, 4, 5), (48, 3, 4, 7), (64, 1, 4, 3), (64, 4, 4, 5), (64, 6, 4, 9),
    (96, 2, 4, 5), (96, 4, 4, 3), (128, 2, 4, 7), (128, 4, 4, 5), (32, 2, 2, 3), (48, 2, 2, 5),
    (64, 2, 2, 7), (32, 4, 2, 9), (96, 3, 4, 9), (128, 6, 4, 3)]
OTHERS = [  # the smallest of their spaces: at 32 px with stride-1 stems they cost 5-10x more
    ("coatnet", {"layout": "CCTT", "L1": 1, "L2": 1, "L3": 1, "L4": 1, "D0": 16, "D1": 16,
                 "D2": 32, "D3": 64, "D4": 64}),
    ("convmlp", {"c": 16, "n": 1, "b1": 1, "b2": 1, "b3": 1, "w1": 32, "w2": 48, "w3": 64,
                 "r1": 2, "r2": 2, "r3": 2}),
    ("convmlp", {"c": 16, "n": 1, "b1": 2, "b2": 1, "b3": 1, "w1": 32, "w2": 64, "w3": 96,
                 "r1": 1, "r2": 2, "r3": 3}),
]


def configs(n: int) -> list[tuple[str, dict]]:
    """The first `n` configs: the costly families first, so that the pool starts them early."""
    mixers = [("convmixer", {"h": h, "d": d, "p": p, "k": k,
                             "act": ("gelu", "relu")[i % 2]})
              for i, (h, d, p, k) in enumerate(CONVMIXERS)]
    others = OTHERS[:max(0, n - len(mixers))] if n > 4 else OTHERS[1:2]
    return others + mixers[:n - len(others)]


def train(job: dict) -> dict:
    """One proxy run in this process (one thread: two runs share the two cores)."""
    import torch

    import spaces
    from trainers import data as datasets
    from trainers.proxy import ProxyTrainer, Recipe

    torch.set_num_threads(job["threads"])
    ds = datasets.load(job["data"], cache_dir=job["cache"])
    splits = ds.split(val_size=job["val_size"], subset=job["subset"], seed=0)
    family, config, _ = spaces.resolve(family=job["family"], overrides=job["config"])
    recipe = Recipe(epochs=job["epochs"], batch_size=job["batch_size"], lr=job["lr"])

    def build():
        return family.build(config, splits.num_classes, splits.image_size)
    start = time.perf_counter()
    result = ProxyTrainer(recipe, device="cpu").fit(build, splits, seed=job["seed"])
    return {**{k: job[k] for k in ("family", "config", "epochs")},
            "status": result.status, "seconds": time.perf_counter() - start,
            "curve": [{"epoch": h["epoch"], "val_acc": h["val_acc"],
                       "train_loss": h["train_loss"]} for h in result.history]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" /
                                         "cifar10-jpeg.tar.gz"))
    p.add_argument("--cache", default=str(ROOT / "patchnas-workspace" / "cache"))
    p.add_argument("--configs", type=int, default=19)
    p.add_argument("--short", type=int, default=2, help="epochs of the short runs")
    p.add_argument("--factor", type=int, default=5, help="the long runs train this x longer")
    p.add_argument("--subset", type=int, default=3000, help="train images per run")
    # 5,000 (a study's default split): at 2,000 the truth's noise (1.1 points) was about
    # the gap between neighbouring configs and capped every estimator's tau
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.004)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    args = p.parse_args()
    long_epochs = args.short * args.factor
    base = {"data": args.data, "cache": args.cache, "val_size": args.val_size,
            "subset": args.subset, "batch_size": args.batch_size, "lr": args.lr,
            "seed": args.seed, "threads": max(1, (os.cpu_count() or 1) // args.jobs)}
    chosen = configs(args.configs)
    jobs = [{**base, "family": f, "config": c, "epochs": e}
            for f, c in chosen for e in (long_epochs, args.short)]
    from trainers import data as datasets  # decode once, before the workers read the cache
    datasets.load(args.data, cache_dir=args.cache)
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = []
        for run in pool.map(train, jobs):
            runs.append(run)
            last = run["curve"][-1]["val_acc"] if run["curve"] else None
            print(f"  {run['family']} {run['config']} {run['epochs']} ep: val {last} "
                  f"({run['seconds']:.0f} s, {time.perf_counter() - start:.0f} s in)",
                  file=sys.stderr)
    pairs = []
    for i in range(0, len(runs), 2):
        long, short = runs[i], runs[i + 1]
        if long["status"] == short["status"] == "completed":
            pairs.append((short, long))
    truth = [long["curve"][-1]["val_acc"] for _, long in pairs]
    table = {}
    for name in estimators.ESTIMATORS:
        scores = [estimators.score(name, short["curve"], long_epochs) for short, _ in pairs]
        table[name] = correlations(scores, truth)
    cost = sum(s["seconds"] for s, _ in pairs) / sum(long["seconds"] for _, long in pairs)
    out = {"configs": len(pairs), "short_epochs": args.short, "long_epochs": long_epochs,
           "subset": args.subset, "val_size": args.val_size, "batch_size": args.batch_size,
           "cost_fraction": cost, "wall_seconds": time.perf_counter() - start,
           "estimators": table, "runs": runs}
    print(f"{len(pairs)} configs, {args.short} vs {long_epochs} epochs; the short runs cost "
          f"{cost:.1%} of the long ones", file=sys.stderr)
    for name, r in table.items():
        print(f"  {name:<9} {describe(r)}", file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
