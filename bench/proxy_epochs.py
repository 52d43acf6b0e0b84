"""Epochs to the reference's accuracy: the published convmixer-cifar10 recipe for 25 epochs
vs. the proxy's recipe for at most 10, the same ConvMixer, in one run on one device (issue 14).

    python bench/proxy_epochs.py                                  # CPU: ConvMixer-64/4 p4 k5
    python bench/proxy_epochs.py --config 256,8,2,5 --workers 12  # GPU: ConvMixer-256/8
    python bench/proxy_epochs.py --subset 512 --ref-epochs 1 --epochs 1 --test-every 20  # smoke

The reference (bench/proxy_speed.py's `reference`: CPU RandAugment(2, 12) per image in
DataLoader workers, batch 512, lr 0.05, one-cycle, all 50,000 train images) gives its
25-epoch test accuracy. Ours (`trainers.proxy.ProxyTrainer` with the study's default
`Recipe`, fitted to `--epochs`, on the 45,000-image split a search uses) is scored on the
test set after every epoch, as is and with test-time flip (the mean of the logits of each
image and its mirror). The first epoch at which ours reaches the reference is the answer;
since the schedule is fitted to the whole budget, an epoch before the last is scored
mid-schedule, so the count is an upper bound on what a run fitted to that many epochs needs.
Not a test: numbers go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy_speed import reference  # noqa: E402

import spaces  # noqa: E402
from trainers import data as datasets  # noqa: E402
from trainers.augment import Normalize  # noqa: E402
from trainers.proxy import DeviceData, ProxyTrainer, Recipe  # noqa: E402


@torch.no_grad()
def accuracy_on(model, normalize, x_all, y_all, flip: bool, batch: int = 1000) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y_all), batch):
        x = normalize(x_all[i:i + batch])
        logits = model(x)
        if flip:
            logits = logits + model(x.flip(-1))
        correct += int((logits.argmax(1) == y_all[i:i + batch]).sum())
    model.train(was_training)
    return correct / len(y_all)


def ours(ds, config, device, recipe: Recipe, subset: int | None, val_size: int) -> dict:
    trainer = ProxyTrainer(recipe, device=device)
    data = DeviceData(ds.split(subset=subset, val_size=val_size), trainer.device)
    normalize = Normalize(trainer.device, torch.float32, False, data.mean, data.std)
    torch.manual_seed(0)
    model = spaces.get("convmixer").build(config, 10, 32).to(device)
    curve, start, paused = [], time.perf_counter(), 0.0

    def report(epoch, metrics):  # the test scoring is not the recipe's cost: its time is left out
        nonlocal paused
        tick = time.perf_counter()
        row = {"epoch": epoch, "val_acc": metrics["val_acc"], "train_loss": metrics["train_loss"],
               "test_acc": accuracy_on(model, normalize, data.test_x, data.test_y, False),
               "test_acc_flip": accuracy_on(model, normalize, data.test_x, data.test_y, True),
               "seconds": round(tick - start - paused, 1)}
        curve.append(row)
        print(f"  ours epoch {epoch}/{recipe.epochs}  test {row['test_acc']:.4f}  with flip "
              f"{row['test_acc_flip']:.4f}  {row['seconds']}s", file=sys.stderr)
        paused += time.perf_counter() - tick

    result = trainer.fit(model, data, report=report)
    return {"recipe": asdict(recipe), "status": result.status, "curve": curve,
            "seconds": round(time.perf_counter() - start - paused, 1)}


def first_epoch_at(curve: list[dict], key: str, target: float) -> int | None:
    return next((row["epoch"] for row in curve if row[key] >= target), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" /
                                         "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--config", default="64,4,4,5", help="ConvMixer h,d,p,k")
    p.add_argument("--ref-epochs", type=int, default=25)
    p.add_argument("--epochs", type=int, default=10, help="our recipe's epochs")
    p.add_argument("--lr", type=float, help="our peak rate (default: the Recipe's)")
    p.add_argument("--batch-size", type=int, help="our batch (default: the Recipe's)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="the reference's DataLoader workers")
    p.add_argument("--subset", type=int, help="train images (smoke runs)")
    p.add_argument("--test-every", type=int, default=1,
                   help="score every n-th test image (smoke runs)")
    p.add_argument("--cache", default="patchnas-workspace/cache")
    p.add_argument("--target", type=float, help="the reference's test accuracy from an "
                   "earlier run of the same config (bench/RESULTS.md): the reference is not "
                   "run again")
    args = p.parse_args()
    device = torch.device(args.device)
    h, d, patch, k = (int(v) for v in args.config.split(","))
    config = spaces.ConvMixerConfig(h, d, patch, k, "gelu")
    ds = datasets.load(args.data, cache_dir=args.cache)
    ds = replace(ds, test_x=ds.test_x[::args.test_every], test_y=ds.test_y[::args.test_every])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"ConvMixer-{h}/{d} p{patch} k{k}", file=sys.stderr)
    recipe = Recipe(epochs=args.epochs)
    recipe = replace(recipe, **{k: v for k, v in (("lr", args.lr),
                                                  ("batch_size", args.batch_size)) if v})
    mine = ours(ds, config, device, recipe, args.subset, 5000)
    ref = (reference(ds, device, args.ref_epochs, args.workers, args.subset, config)
           if args.target is None else {"test_acc": args.target, "seconds": None,
                                        "from": "--target"})
    target = ref["test_acc"]
    last = mine["curve"][-1]
    out = {"device": name, "config": f"ConvMixer-{h}/{d} p{patch} k{k}",
           "reference": {"epochs": args.ref_epochs, **ref}, "ours": mine,
           "epochs_to_reference": first_epoch_at(mine["curve"], "test_acc", target),
           "epochs_to_reference_with_flip": first_epoch_at(mine["curve"], "test_acc_flip",
                                                           target),
           "wall_ratio": (round(ref["seconds"] / mine["seconds"], 2) if ref["seconds"]
                          else None)}
    print(json.dumps(out, indent=2))
    took = f"{ref['seconds']:.0f}s" if ref["seconds"] else "an earlier run"
    print(f"reference {args.ref_epochs} epochs: test {target:.4f} in {took}; "
          f"ours {args.epochs} epochs: test {last['test_acc']:.4f} ({last['test_acc_flip']:.4f}"
          f" with flip) in {mine['seconds']:.0f}s; epochs to the reference's accuracy: "
          f"{out['epochs_to_reference']} ({out['epochs_to_reference_with_flip']} with flip)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
