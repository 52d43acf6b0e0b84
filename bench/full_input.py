"""The full trainer's input pipeline alone, old (torchvision) vs new (device), and the
training step alone, so the two costs are separated.

    python bench/full_input.py --device cpu --images 2000        # issue 14's goal: >= 4
    python bench/full_input.py --device cuda --images 9469       # on a GPU host

Both paths run the published ConvMixer recipe at 128 px on real Imagenette (RandomResizedCrop,
flip, RandAugment 2/9, random erasing 0.25, MixUp/CutMix) and deliver normalized float
batches on `--device`. Old: DataLoader workers decode each JPEG and augment it in float32
on the CPU (`--loader torchvision`). New: images decoded once into a uint8 cache (its
one-time cost printed apart), uint8 batches to the device, augmentation batched there.
Images/s are measured over the same images in the same run; the ratio is what counts
(absolute timings on a shared machine move). Then the step: ConvMixer-256/8 at 128 px,
forward and backward on synthetic batches, images/s. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import spaces  # noqa: E402
from trainers.full_input import EpochSampler, make_input  # noqa: E402
from trainers.recipes import published  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "imagenette-128.tar.gz"


def subset(archive: Path, into: Path, images: int) -> Path:
    """An ImageNet-layout folder with the first `images` train images (all classes, round
    robin) and 10 val images per class."""
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        top = next(p for p in Path(tmp).rglob("train") if p.is_dir()).parent
        classes = sorted(p.name for p in (top / "train").iterdir())
        files = {c: sorted((top / "train" / c).iterdir()) for c in classes}
        taken = 0
        for i in range(max(len(f) for f in files.values())):
            for c in classes:
                if taken < images and i < len(files[c]):
                    (into / "train" / c).mkdir(parents=True, exist_ok=True)
                    shutil.copy(files[c][i], into / "train" / c)
                    taken += 1
        for c in classes:
            (into / "val" / c).mkdir(parents=True, exist_ok=True)
            for f in sorted((top / "val" / c).iterdir())[:10]:
                shutil.copy(f, into / "val" / c)
    return into


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (DataLoader workers end
    with their pass)."""
    me, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def median_pass(passes: list[dict]) -> dict:
    """The pass of median images/s, with every pass's rates beside it."""
    middle = sorted(passes, key=lambda r: r["images_per_s"])[len(passes) // 2]
    return {**middle, "per_core_passes": [r["images_per_cpu_s"] for r in passes],
            "images_per_cpu_s": statistics.median(r["images_per_cpu_s"] for r in passes),
            "passes": [r["images_per_s"] for r in passes]}


def input_rate(loader: str, data: Path, device: torch.device, workers: int, batch: int,
               cache: Path) -> dict:
    recipe = published("convmixer", batch_size=batch, epochs=1)
    start = time.perf_counter()
    source = make_input(loader, data, 128, recipe, 0, workers, device, cache)
    setup = time.perf_counter() - start
    sampler = EpochSampler(len(source.train_set), 0, 0, 1, batch)

    def steady_rate(prepare) -> tuple[int, float]:
        """Images and seconds after the first batch (the workers' start is left out: an
        epoch of a real dataset has thousands of batches, this bench a few dozen)."""
        seen, start = 0, None
        for step, raw in enumerate(source.train_loader(sampler)):
            torch.manual_seed(step)  # as the trainer seeds each step
            x, _ = prepare(raw)
            sync(device)
            if start is None:
                start = time.perf_counter()
            else:
                seen += len(x)
        return seen, time.perf_counter() - start

    cpu = cpu_seconds()
    seen, seconds = steady_rate(source.prepare)
    cpu = cpu_seconds() - cpu
    out = {"loader": loader, "images": seen, "seconds": round(seconds, 2),
           "images_per_s": round(seen / seconds, 1), "setup_seconds": round(setup, 2),
           # per core: images over the CPU time of this process and its workers in the
           # whole pass (their start included), what the machine's other load moves least
           "images_per_cpu_s": round((seen + batch) / cpu, 1)}
    if loader == "device" and device.type != "cpu":  # the CPU's share when a GPU augments
        gathered, seconds = steady_rate(lambda raw: raw)
        out["cpu_share_images_per_s"] = round(gathered / seconds, 1)
    return out


def step_rate(device: torch.device, batch: int, steps: int) -> dict:
    family = spaces.get("convmixer")
    config = family.to_target(family.config_of({"h": 256, "d": 8, "p": 1, "k": 9}), 128)
    model = family.build(config, 10, 128).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp = torch.bfloat16 if device.type == "cuda" else None
    x = torch.randn(batch, 3, 128, 128, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def one():
        with torch.autocast(device.type, amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    one()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        one()
    sync(device)
    seconds = time.perf_counter() - start
    return {"model": f"ConvMixer-256/8 p{config.p} k{config.k} at 128 px", "batch": batch,
            "images_per_s": round(batch * steps / seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=2000, help="train images read per path")
    p.add_argument("--archive", type=Path, default=ARCHIVE)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=os.cpu_count(),
                   help="DataLoader workers of the old path (and the one-time decode)")
    p.add_argument("--passes", type=int, default=3,
                   help="passes of each path, alternating; the median counts")
    p.add_argument("--steps", type=int, default=3, help="training steps timed")
    p.add_argument("--step-batch", type=int, help="the step's batch (default: --batch-size)")
    args = p.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(args.archive, Path(tmp) / "data", args.images)
        passes = {"torchvision": [], "device": []}
        for _ in range(args.passes):  # alternating, so the machine's load moves both alike
            for loader, done in passes.items():
                done.append(input_rate(loader, data, device, args.workers, args.batch_size,
                                       Path(tmp) / "cache"))
        old, new = (median_pass(done) for done in passes.values())
    step = step_rate(device, args.step_batch or args.batch_size, args.steps)
    cores = os.cpu_count()
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "cores": cores, "old": old, "new": new, "step": step,
              "ratio": round(new["images_per_s"] / old["images_per_s"], 2),
              "ratio_per_core": round(new["images_per_cpu_s"] / old["images_per_cpu_s"], 2)}
    share = ""
    if "cpu_share_images_per_s" in new:
        report["cpu_share_ratio"] = round(new["cpu_share_images_per_s"] / old["images_per_s"], 1)
        share = (f" The CPU's share of the new path (gathering uint8 rows; the rest is the "
                 f"device's): {new['cpu_share_images_per_s']} img/s, "
                 f"{report['cpu_share_ratio']}x the old path's.")
    print(json.dumps(report))
    print(f"input pipeline on {report['device']}: old {old['images_per_s']} img/s, new "
          f"{new['images_per_s']} img/s: ratio {report['ratio']}x; per core (images per "
          f"CPU-second: {old['images_per_cpu_s']} vs {new['images_per_cpu_s']}) "
          f"{report['ratio_per_core']}x (one-time decode "
          f"{new['setup_seconds']} s).{share} Training step alone: {step['images_per_s']} "
          f"img/s", file=sys.stderr)


if __name__ == "__main__":
    main()
