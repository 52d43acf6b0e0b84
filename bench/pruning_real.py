"""MO-ASHA on real CIFAR-10 studies: the same seeded study with and without pruning.

    python bench/pruning_real.py                        # 24 trials x 9 epochs, 5,000 images
    python bench/pruning_real.py --trials 4 --epochs 3 --subset 500 --val-size 200  # smoke

Runs `patchnas search run` (in this process, through the library's CLI function) once with
`--pruner none` and once for each pruner of `--pruners` and `--rank-by` given, each a fresh
study of the same space, sampler (NSGA-II) and seed, on the CPU. Prints each study's
hypervolume (the study's own definition and bounds, so the numbers are comparable), the
epochs its trials trained, and both as ratios to the unpruned study. Not a test: results go to
bench/RESULTS.md with the date, machine and command.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.cli import main as patchnas  # noqa: E402
from search.study.record import TrialRecord  # noqa: E402
from search.study.results import state_of, status  # noqa: E402
from search.study.studies import load_study  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPACE = ["h=32..96:16", "d=1..4", "p=4", "k=3,5,7"]  # 120 architectures, cheap on the CPU


def one_study(name: str, args, workspace: Path, pruner: str, rank_by: str) -> dict:
    config = workspace / "recipe.yaml"
    config.write_text(yaml.safe_dump({"recipe": {"batch_size": args.batch_size}}))
    start = time.perf_counter()
    code = patchnas(["search", "run", "--name", name, "--config", str(config),
                     "--family", "convmixer", "--set", *SPACE, "--trials", str(args.trials),
                     "--epochs", str(args.epochs), "--subset", str(args.subset),
                     "--val-size", str(args.val_size), "--workers", str(args.workers),
                     "--device", "cpu", "--sampler", "nsga2", "--seed", str(args.seed),
                     "--pruner", pruner, "--rank-by", rank_by, "--data", args.data,
                     "--workspace", str(workspace), "--no-tracking"])
    if code != 0:
        raise SystemExit(f"study {name} failed ({code})")
    study = load_study(name, f"sqlite:///{workspace}/optuna.db")
    trained = [t for t in study.trials if state_of(t) in ("COMPLETE", "PRUNED")]
    s = status(study)
    return {"study": name, "pruner": pruner, "rank_by": rank_by,
            "hypervolume": s.hypervolume, "front_size": s.front_size,
            "trained": len(trained), "pruned": sum(state_of(t) == "PRUNED" for t in trained),
            "epochs": sum(TrialRecord.from_trial(t).epochs_run or 0 for t in trained),
            "wall_seconds": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" /
                                         "cifar10-jpeg.tar.gz"))
    p.add_argument("--trials", type=int, default=24)
    # 9 epochs: rungs at 1 and 3 (eta 3) and the end, so that halving can save ~3/4 of the
    # epochs; at 6 its floor was ~34% (bench/RESULTS.md, 2026-12-04)
    p.add_argument("--epochs", type=int, default=9)
    p.add_argument("--subset", type=int, default=5000)
    p.add_argument("--val-size", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pruners", default="moasha,moasha-front",
                   help="the pruned studies: one per pruner and estimator")
    p.add_argument("--rank-by", default="tse", help="estimators the rungs rank by")
    p.add_argument("--workspace", help="default: a temporary folder")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(args.workspace or tmp).resolve()
        workspace.mkdir(parents=True, exist_ok=True)  # a --workspace not made yet
        tag = time.strftime("%H%M%S")
        runs = [one_study(f"full-{tag}", args, workspace, "none", "last")]
        for pruner in args.pruners.split(","):
            for rank_by in args.rank_by.split(","):
                runs.append(one_study(f"{pruner}-{rank_by}-{tag}", args, workspace, pruner,
                                      rank_by))
    base = runs[0]
    for r in runs:
        r["hypervolume_ratio"] = r["hypervolume"] / base["hypervolume"]
        r["epochs_ratio"] = r["epochs"] / base["epochs"]
        print(f"{r['pruner']:<12} rank-by {r['rank_by']:<8} hypervolume {r['hypervolume']:.4f} "
              f"({r['hypervolume_ratio']:.3f}x)  epochs {r['epochs']} "
              f"({r['epochs_ratio']:.0%})  pruned {r['pruned']}/{r['trained']}  "
              f"{r['wall_seconds']:.0f} s", file=sys.stderr)
    print(json.dumps({"trials": args.trials, "epochs": args.epochs, "subset": args.subset,
                      "val_size": args.val_size, "space": SPACE, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
