"""Proxy trainer vs. the published convmixer-cifar10 recipe, in one run on one device.

    python bench/proxy_speed.py --data ../shared/data/cifar10-jpeg.tar.gz            # GPU
    python bench/proxy_speed.py --device cpu --subset 2000 --ref-epochs 1 --epochs 1  # smoke

Reference (locuslab/convmixer-cifar10 style): torchvision DataLoader with CPU
RandomResizedCrop + flip + RandAugment(2, 12), fp16 autocast + GradScaler, batch 512, AdamW
lr 0.05 wd 0.005, one-cycle over 25 epochs, ConvMixer-256/8 k5 p2, all 50,000 train images.
Ours: trainers.proxy.ProxyTrainer on the 45,000-image split (5,000 held out, as in a search),
eager and compiled. Prints test accuracy, wall time (everything included) and the ratio.
Not a test: numbers go to bench/RESULTS.md with the date, machine and command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import spaces  # noqa: E402
from trainers import data as datasets  # noqa: E402
from trainers.augment import CIFAR_MEAN, CIFAR_STD  # noqa: E402
from trainers.proxy import ProxyTrainer, Recipe  # noqa: E402

CONFIG = spaces.ConvMixerConfig(256, 8, 2, 5, "gelu")


class Images(Dataset):
    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(self.x[i]), self.y[i]


def reference(ds, device, epochs, workers, subset, config=None):
    """The published recipe, as its train.py runs it."""
    train_tf = v2.Compose([
        v2.RandomResizedCrop(32, scale=(1.0, 1.0), ratio=(1.0, 1.0)),
        v2.RandomHorizontalFlip(), v2.RandAugment(num_ops=2, magnitude=12),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR_MEAN, CIFAR_STD)])
    test_tf = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                          v2.Normalize(CIFAR_MEAN, CIFAR_STD)])
    n = subset or len(ds.train_y)
    train = DataLoader(Images(ds.train_x[:n], ds.train_y[:n], train_tf), batch_size=512,
                       shuffle=True, num_workers=workers, pin_memory=True,
                       persistent_workers=workers > 0)
    test = DataLoader(Images(ds.test_x, ds.test_y, test_tf), batch_size=512,
                      num_workers=workers)
    torch.manual_seed(0)
    model = spaces.get("convmixer").build(config or CONFIG, 10, 32).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.005)
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda")
    lr_at = lambda t: np.interp([t], [0, epochs * 2 / 5, epochs * 4 / 5, epochs],  # noqa: E731
                                [0, 0.05, 0.05 / 20, 0])[0]
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for i, (x, y) in enumerate(train):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.param_groups[0]["lr"] = lr_at(epoch + (i + 1) / len(train))
            with torch.autocast(device.type, torch.float16, enabled=device.type == "cuda"):
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
        print(f"  reference epoch {epoch + 1}/{epochs}  {time.perf_counter() - start:.1f}s",
              file=sys.stderr)
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast(device.type, torch.float16,
                                         enabled=device.type == "cuda"):
        for x, y in test:
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"test_acc": correct / len(ds.test_y), "seconds": time.perf_counter() - start}


def ours(ds, device, recipe, compile, subset, val_size=5000):
    splits = ds.split(subset=subset, val_size=val_size)
    torch.manual_seed(0)
    model = spaces.get("convmixer").build(CONFIG, 10, 32)
    start = time.perf_counter()
    result = ProxyTrainer(recipe, device=device, compile=compile).fit(
        model, splits, evaluate_test=True,
        report=lambda e, m: print(f"  ours epoch {e}/{recipe.epochs}  val {m['val_acc']:.4f}"
                                  f"  {m['epoch_seconds']:.2f}s", file=sys.stderr))
    seconds = time.perf_counter() - start
    steady = sorted(result.epoch_seconds)[len(result.epoch_seconds) // 2]
    return {"test_acc": result.test_acc, "val_acc": result.val_acc, "seconds": seconds,
            "first_step_seconds": result.first_step_seconds, "median_epoch_seconds": steady,
            "compile_seconds_estimate": (result.first_step_seconds or 0) - steady /
            math.ceil(len(splits.train_y) / recipe.batch_size) if compile else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" /
                                         "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ref-epochs", type=int, default=25)
    p.add_argument("--epochs", type=int, default=10, help="our trainer's epochs")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--cutout", type=int, default=0)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--subset", type=int, help="train images (smoke runs)")
    p.add_argument("--modes", default="eager,compiled")
    p.add_argument("--cache", default="patchnas-workspace/cache")
    p.add_argument("--tiny", action="store_true", help="a rehearsal (bench/gpu_session.sh "
                   "--smoke): ConvMixer-32/2, 500 validation and 500 test images")
    args = p.parse_args()
    device = torch.device(args.device)
    ds = datasets.load(args.data, cache_dir=args.cache)
    val_size = 5000
    if args.tiny:
        global CONFIG
        CONFIG = spaces.ConvMixerConfig(32, 2, 4, 3, "gelu")
        # every 20th: the test set may be stored class by class
        ds = replace(ds, test_x=ds.test_x[::20], test_y=ds.test_y[::20])
        val_size = 500
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}  torch {torch.__version__}", file=sys.stderr)
    ref = reference(ds, device, args.ref_epochs, args.workers, args.subset)
    out = {"device": name, "reference": ref}
    recipe = Recipe(epochs=args.epochs, lr=args.lr, cutout=args.cutout)
    for mode in args.modes.split(","):
        res = ours(ds, device, recipe, mode == "compiled", args.subset, val_size)
        res["speedup_vs_reference"] = ref["seconds"] / res["seconds"]
        res["test_acc_minus_reference"] = res["test_acc"] - ref["test_acc"]
        out[mode] = res
        print(f"{mode}: test {res['test_acc']:.4f} vs {ref['test_acc']:.4f}; "
              f"{res['seconds']:.1f}s vs {ref['seconds']:.1f}s = "
              f"{res['speedup_vs_reference']:.2f}x faster", file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
