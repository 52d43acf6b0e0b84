"""MO-ASHA vs. no pruning on a simulated search with known learning curves and front.

    python bench/pruning_sim.py [--trials 300] [--epochs 27] [--eta 3] [--repeats 5]

Each simulated architecture has a size (params, log-uniform 1e5..1e8) and a final accuracy
that rises with size along a known trade-off, minus a random architecture penalty. Its
learning curve approaches the final accuracy exponentially at its own speed, with noise,
so rankings at early epochs are informative but imperfect, as in real proxy runs. Both
runs see the same architectures in the same order; a trial's value on the front is its
accuracy after the epochs it actually trained. Prints hypervolume (the study definition:
1 - acc, log-scaled params) and epochs spent, and their ratios. Not a test.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics

from search.backends.pruners import rung_keeps
from search.study.objectives import normalized_hypervolume, parse_objectives

OBJECTIVES = parse_objectives("val_acc:max,params:min")
BOUNDS = {"params": (1e5, 1e8)}


def make_arch(rng: random.Random) -> dict:
    params = 10 ** rng.uniform(5, 8)
    ideal = 0.55 + 0.4 * (math.log10(params) - 5) / 3  # the known front
    final = ideal - abs(rng.gauss(0, 0.08))
    speed = rng.uniform(2, 10)  # epochs to reach ~63% of the final accuracy
    noise = [rng.gauss(0, 0.01) for _ in range(1000)]
    return {"params": params, "final": final, "speed": speed, "noise": noise}


def accuracy(arch: dict, epoch: int, epochs: int) -> float:
    # normalized so that the full budget reaches the final accuracy
    progress = (1 - math.exp(-epoch / arch["speed"])) / (1 - math.exp(-epochs / arch["speed"]))
    return arch["final"] * progress + arch["noise"][epoch]


def run(archs: list[dict], epochs: int, eta: int, prune: bool) -> tuple[float, int]:
    rungs, r = [], 1
    while r < epochs:
        rungs.append(r)
        r *= eta
    at_rung: dict[int, list[list[float]]] = {r: [] for r in rungs}
    spent, results = 0, []
    for arch in archs:
        final_epoch = epochs
        for epoch in range(1, epochs + 1):
            spent += 1
            if prune and epoch in at_rung:
                point = [-accuracy(arch, epoch, epochs), arch["params"]]
                at_rung[epoch].append(point)
                if not rung_keeps(at_rung[epoch], len(at_rung[epoch]) - 1, eta):
                    final_epoch = epoch
                    break
        if final_epoch == epochs:  # pruned trials have no values, as in the study
            results.append([accuracy(arch, epochs, epochs), arch["params"]])
    return normalized_hypervolume(OBJECTIVES, results, BOUNDS), spent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--epochs", type=int, default=27)
    p.add_argument("--eta", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    hv_ratios, epoch_ratios = [], []
    for seed in range(args.repeats):
        rng = random.Random(seed)
        archs = [make_arch(rng) for _ in range(args.trials)]
        hv_full, epochs_full = run(archs, args.epochs, args.eta, prune=False)
        hv_pruned, epochs_pruned = run(archs, args.epochs, args.eta, prune=True)
        hv_ratios.append(hv_pruned / hv_full)
        epoch_ratios.append(epochs_pruned / epochs_full)
        print(f"seed {seed}: hypervolume {hv_pruned:.4f} vs {hv_full:.4f} "
              f"({hv_ratios[-1]:.3f}); epochs {epochs_pruned} vs {epochs_full} "
              f"({epoch_ratios[-1]:.3f})")
    print(f"MO-ASHA / no pruning: hypervolume {statistics.mean(hv_ratios):.3f} "
          f"(min {min(hv_ratios):.3f}), epochs {statistics.mean(epoch_ratios):.3f} "
          f"(max {max(epoch_ratios):.3f})")


if __name__ == "__main__":
    main()
