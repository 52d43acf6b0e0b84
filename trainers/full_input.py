"""The full trainer's input: an ImageNet-layout folder to augmented batches on the device.

Two loaders with the same recipe (`--loader`):

- `device` (the default): each image is decoded once into a uint8 cache at the training
  resolution (`DecodedFolder`, a memory-mapped file); DataLoader workers only gather rows of
  it, batches travel as uint8, and every per-pixel step runs batched on the device
  (`DeviceAugment`). When the device is the CPU, the workers augment too: each batch under
  the seed the trainer would set for it in the main process, so the result is the same and
  every core works. Measured on a 2-core CPU in bench/RESULTS.md (`bench/full_input.py`).
- `torchvision`: the baseline. Workers decode every JPEG and augment it with torchvision's
  v2 transforms in float32 on the CPU, then MixUp/CutMix run on the CPU batch.

What is drawn per sample and what per batch, on the device path: the crop box (torchvision's
RandomResizedCrop sampling), the flip and random erasing per sample; RandAugment's two ops
and magnitude per group of RANDAUGMENT_GROUP images (torchvision's RandAugment applied to
each group: one call per image would cost a kernel launch per op and image); MixUp/CutMix
per batch, as on the torchvision path. Crops are drawn from the central square of each
image (the cache keeps that square at size / crop_pct, the evaluation's resize), so a crop
never reaches the outer parts of a very wide photo; evaluation is the same center crop as
torchvision's Resize + CenterCrop, within a pixel.

Exact resume holds on both: the trainer seeds the global generators with (seed, epoch,
step, rank) before `prepare`, and `DeviceAugment` draws only from them.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets
from torchvision.ops import roi_align
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from spaces.errors import UserError
from trainers.plumbing import mix_seed

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LOADERS = ("device", "torchvision")
RANDAUGMENT_GROUP = 8
CACHE_VERSION = 2


def _require_split(root: Path, split: str) -> Path:
    """`root/split`, or one line saying the layout wanted."""
    if not (root / split).is_dir():
        raise UserError(f"{root} has no {split}/ folder; give a folder in ImageNet's layout: "
                        f"train/<class>/*.JPEG and val/<class>/*.JPEG")
    return root / split


def check_folders(root: Path) -> tuple[datasets.ImageFolder, datasets.ImageFolder]:
    """`train/` and `val/` ImageFolders (ImageNet's layout, same classes), untransformed."""
    root = Path(root)
    for split in ("train", "val"):
        _require_split(root, split)
    try:
        train = datasets.ImageFolder(str(root / "train"))
        val = datasets.ImageFolder(str(root / "val"))
    except (FileNotFoundError, OSError) as err:
        raise UserError(f"cannot read the images under {root}: {err}") from None
    if val.classes != train.classes:
        raise UserError(f"{root}/val has classes {val.classes[:3]}... but train/ has "
                        f"{train.classes[:3]}...; both need the same class folders")
    return train, val


@dataclass(frozen=True)
class FolderShape:
    classes: list[str]
    image_size: int  # the median shorter side of a sample of its training images


def folder_shape(root: Path, sample: int = 64) -> FolderShape:
    """What an ImageNet-layout folder holds: its classes (train/'s folders) and its images'
    size, from the headers of up to `sample` training images spread over the classes."""
    train = _require_split(Path(root), "train")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    files = sorted(f for c in classes for f in (train / c).iterdir() if f.is_file())
    if not classes or not files:
        raise UserError(f"{train} holds no class folders with images")
    step = max(1, len(files) // sample)
    sides = []
    for f in files[::step][:sample]:
        try:
            with Image.open(f) as image:  # reads the header only
                sides.append(min(image.size))
        except OSError as err:
            raise UserError(f"cannot read {f}: {err}; remove or replace the file") from None
    return FolderShape(classes, int(np.median(sides)))


def batch_mixer(recipe, num_classes: int, lean: bool = False):
    """MixUp and/or CutMix on a batch (one of them, at random, when both are on); `lean`:
    the versions below, without torchvision's copies (CutMix then overwrites its input)."""
    mixup, cutmix = (_MixUpOnePass, _CutMixInPlace) if lean else (v2.MixUp, v2.CutMix)
    mixers = []
    if recipe.mixup:
        mixers.append(mixup(alpha=recipe.mixup, num_classes=num_classes))
    if recipe.cutmix:
        mixers.append(cutmix(alpha=recipe.cutmix, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


# torchvision's MixUp and CutMix (their draws, their pairing of each image with the one
# before it in the batch), without their copies of the whole batch: on a 64-image CPU batch
# at 128 px its roll and clone took 23 of the 90 ms the device path spent per batch.
class _MixUpOnePass(v2.MixUp):
    def transform(self, inpt, params):
        if inpt is params["labels"] or type(inpt) is not torch.Tensor:
            return super().transform(inpt, params)
        lam, out = params["lam"], torch.empty_like(inpt)
        # image i: lam * x[i] + (1 - lam) * x[i - 1], i.e. lerp(x[i - 1], x[i], lam)
        torch.lerp(inpt[:-1], inpt[1:], lam, out=out[1:])
        torch.lerp(inpt[-1:], inpt[:1], lam, out=out[:1])
        return out


class _CutMixInPlace(v2.CutMix):
    def transform(self, inpt, params):
        if inpt is params["labels"] or type(inpt) is not torch.Tensor:
            return super().transform(inpt, params)
        x1, y1, x2, y2 = params["box"]
        inpt[..., y1:y2, x1:x2] = inpt[..., y1:y2, x1:x2].roll(1, 0)  # the box: a copy
        return inpt


class EpochSampler(Sampler):
    """This process's share of epoch e's seeded permutation, in whole global batches,
    skipping the batches a resumed epoch already trained. Yields (epoch, index)."""

    def __init__(self, n: int, seed: int, rank: int, world: int, batch: int):
        self.n, self.seed, self.rank, self.world, self.batch = n, seed, rank, world, batch
        self.steps_per_epoch = n // (world * batch)  # the last partial batch is dropped
        self.epoch, self.skip = 0, 0

    def set_position(self, epoch: int, skip_steps: int) -> None:
        self.epoch, self.skip = epoch, skip_steps

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.skip) * self.batch

    def __iter__(self):
        gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=gen)[:self.steps_per_epoch * self.world
                                                     * self.batch]
        mine = order[self.rank::self.world][self.skip * self.batch:]
        return iter([(self.epoch, int(i)) for i in mine])


# --- the torchvision baseline -----------------------------------------------------------
class SeededSamples(Dataset):
    """Yields sample `i` of epoch `e` (keys are (e, i)) augmented under seed (seed, e, i)."""

    def __init__(self, base: Dataset, seed: int):
        self.base, self.seed = base, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        torch.manual_seed(mix_seed(self.seed, epoch, index))
        return self.base[index]


class TorchvisionInput:
    def __init__(self, root: Path, size: int, recipe, seed: int, workers: int,
                 device: torch.device):
        train, val = check_folders(root)
        bicubic = InterpolationMode.BICUBIC
        train_tf = [v2.ToImage(), v2.RandomResizedCrop(size, interpolation=bicubic,
                                                       antialias=True),
                    v2.RandomHorizontalFlip()]
        if recipe.randaugment_ops:
            train_tf.append(v2.RandAugment(recipe.randaugment_ops,
                                           recipe.randaugment_magnitude))
        train_tf += [v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        if recipe.random_erasing:
            train_tf.append(v2.RandomErasing(recipe.random_erasing, value="random"))
        val_tf = [v2.ToImage(), v2.Resize(int(size / recipe.crop_pct), interpolation=bicubic,
                                          antialias=True),
                  v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True),
                  v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        train.transform, val.transform = v2.Compose(train_tf), v2.Compose(val_tf)
        self.train_set, self.val_set, self.classes = train, val, train.classes
        self.seed, self.workers, self.device = seed, workers, device
        self.mixer = batch_mixer(recipe, len(self.classes))

    def train_loader(self, sampler: EpochSampler) -> DataLoader:
        return DataLoader(SeededSamples(self.train_set, self.seed), batch_size=sampler.batch,
                          sampler=sampler, num_workers=self.workers,
                          pin_memory=self.device.type == "cuda", drop_last=True)

    def prepare(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        if self.mixer is not None:
            x, y = self.mixer(x, y)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def val_loader(self, indices: range, batch: int) -> DataLoader:
        return DataLoader(torch.utils.data.Subset(self.val_set, indices), batch_size=batch,
                          num_workers=self.workers, pin_memory=self.device.type == "cuda")

    def prepare_val(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


# --- decoded once, augmented on the device ----------------------------------------------
class _Decode(Dataset):
    """One image file -> its central square, shorter side resized to `side`, uint8 HWC."""

    def __init__(self, samples: list[tuple[str, int]], side: int):
        self.samples, self.side = samples, side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor | str:
        path = self.samples[i][0]
        try:  # as ImageFolder's loader, then the tensor resize of the torchvision path
            with Image.open(path) as f:
                image = TF.pil_to_tensor(f.convert("RGB"))
        except OSError as err:  # reported by the main process, in one line
            return f"cannot decode {path}: {err}; remove or replace the file"
        image = TF.resize(image, self.side, interpolation=InterpolationMode.BICUBIC,
                          antialias=True)
        return TF.center_crop(image, [self.side, self.side]).permute(1, 2, 0)  # HWC


class DecodedFolder:
    """An ImageFolder decoded once: uint8 images [N, side, side, 3] in a memory-mapped .npy
    under `cache` (the OS pages it in; ImageNet at 146 px is 82 GB on disk), and labels.
    Keyed by the files' names, sizes and times, so a changed folder is decoded again."""

    def __init__(self, folder: datasets.ImageFolder, side: int, cache: Path, workers: int):
        self.labels = torch.tensor(folder.targets, dtype=torch.long)
        key = hashlib.sha256(f"v{CACHE_VERSION} side={side}".encode())
        for path, label in folder.samples:
            st = os.stat(path)
            key.update(f"{path}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        self.path = Path(cache) / f"full-{key.hexdigest()[:20]}-{side}px.npy"
        if not self.path.exists():
            self._decode(folder, side, workers)
        self.images = np.load(self.path, mmap_mode="r")
        if self.images.shape != (len(self.labels), side, side, 3):
            self.path.unlink()
            raise UserError(f"the decoded cache {self.path} was damaged (removed); run again")

    def __len__(self) -> int:
        return len(self.labels)

    def _decode(self, folder, side: int, workers: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(folder.samples), side, side, 3))
        loader = DataLoader(_Decode(folder.samples, side), batch_size=64, collate_fn=list,
                            num_workers=workers)
        start = 0
        for batch in loader:
            failed = next((b for b in batch if isinstance(b, str)), None)
            if failed is not None:
                del out
                tmp.unlink()
                raise UserError(failed)
            out[start:start + len(batch)] = torch.stack(batch).numpy()
            start += len(batch)
        out.flush()
        del out
        tmp.replace(self.path)  # whole or not at all: several processes may decode at once


class _Rows(Dataset):
    """Rows of a DecodedFolder by a list of keys (a whole batch per call: a memcpy).

    With `augment` (a CPU device, which is the workers' own CPU) the batch is augmented
    here, in the worker, under the seed the trainer sets before `prepare`: keys are then
    (epoch, step, index), and the batch comes out as `prepare` in the main process would
    make it, while every core augments (one thread each; in one process the per-crop and
    per-group calls left a core idle)."""

    def __init__(self, decoded: DecodedFolder, augment: DeviceAugment | None = None,
                 seed: int = 0, rank: int = 0):
        self.path, self.labels = decoded.path, decoded.labels
        self.augment, self.seed, self.rank = augment, seed, rank
        self._images = None  # opened in each worker process

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, keys: list) -> tuple[torch.Tensor, torch.Tensor]:
        if self._images is None:
            self._images = np.load(self.path, mmap_mode="r")
        index = [k[-1] if isinstance(k, tuple) else k for k in keys]
        # NCHW in channels-last memory: uint8 resizing on the CPU is fast only so
        x, y = torch.from_numpy(self._images[index]).permute(0, 3, 1, 2), self.labels[index]
        if self.augment is None:
            return x, y
        epoch, step, _ = keys[0]
        torch.manual_seed(mix_seed(self.seed, epoch, step, self.rank))
        return self.augment(x, y)


class _StepBatches(Sampler):
    """An EpochSampler's keys in whole batches, each key (epoch, step, index): the step in
    the epoch counted from the batches a resumed epoch skips, as the trainer counts it."""

    def __init__(self, sampler: EpochSampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler) // self.sampler.batch

    def __iter__(self):
        keys, b = list(self.sampler), self.sampler.batch
        for n in range(len(keys) // b):
            yield [(e, self.sampler.skip + n, i) for e, i in keys[n * b:(n + 1) * b]]


def _as_is(batch):
    return batch


class _Batches(Sampler):
    """A sampler's keys in lists of `batch` (the last one shorter, unless `whole`)."""

    def __init__(self, keys, batch: int, whole: bool):
        self.keys, self.batch, self.whole = keys, batch, whole

    def __len__(self) -> int:
        return (len(self.keys) // self.batch if self.whole
                else math.ceil(len(self.keys) / self.batch))

    def __iter__(self):
        chunk = []
        for key in self.keys:
            chunk.append(key)
            if len(chunk) == self.batch:
                yield chunk
                chunk = []
        if chunk and not self.whole:
            yield chunk


class DeviceAugment:
    """The training recipe's augmentation on a uint8 batch on its device (see the module's
    docstring for what is per sample and what per group or batch)."""

    def __init__(self, size: int, recipe, num_classes: int, device: torch.device):
        self.size, self.recipe, self.device = size, recipe, device
        self.randaugment = (v2.RandAugment(recipe.randaugment_ops, recipe.randaugment_magnitude)
                            if recipe.randaugment_ops else None)
        self.mixer = batch_mixer(recipe, num_classes, lean=True)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.scale = 1 / (255 * std)
        self.shift = -torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) / std

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.resized_crops(x)
        flip = (torch.rand(len(x), device=x.device) < 0.5).nonzero()[:, 0]
        x[flip] = x[flip].flip(-1)
        if self.randaugment is not None:  # in place: torch.cat of channels-last uint8 is slow
            for g in range(0, len(x), RANDAUGMENT_GROUP):
                x[g:g + RANDAUGMENT_GROUP] = self.randaugment(x[g:g + RANDAUGMENT_GROUP])
        x = self.normalize(x)
        if self.recipe.random_erasing:
            x = self.erase(x, self.recipe.random_erasing)
        if self.mixer is not None:
            x, y = self.mixer(x, y)
        return x, y

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        # (x / 255 - mean) / std, on NCHW memory: from channels-last it is 3x slower on a CPU
        return x.contiguous().float().mul_(self.scale).add_(self.shift)

    def resized_crops(self, x: torch.Tensor, scale=(0.08, 1.0),
                      ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
        """torchvision's RandomResizedCrop per sample: its box sampling (10 tries, else the
        whole image), then the resize. On the CPU each crop is resized as torchvision does
        (bicubic, antialiased, on uint8 in channels-last memory: PyTorch's vectorized
        kernel, 13 ms for 64 crops); on CUDA one roi_align for the batch (bilinear, each
        output pixel averaging its source area), since a kernel per crop would cost more
        than the resize."""
        b, _, h, w = x.shape
        dev = x.device
        cw, ch = _box_tries(b, h * w, scale, ratio, dev)
        ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((b,), -1, device=dev))
        pick = first.clamp(min=0)[:, None]
        cw = torch.where(first >= 0, cw.gather(1, pick)[:, 0], torch.full((b,), float(w),
                                                                            device=dev))
        ch = torch.where(first >= 0, ch.gather(1, pick)[:, 0], torch.full((b,), float(h),
                                                                            device=dev))
        top, left = _places(h - ch, w - cw)
        if dev.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
            # written in place (torch.cat of the crops: 0.5 s) and plain NCHW: every later
            # step is 1.5-6x faster on it than on channels-last (normalize 15 -> 2.6 ms)
            out = torch.empty((b, 3, self.size, self.size), dtype=torch.uint8)
            boxes = zip(top.long().tolist(), left.long().tolist(), ch.long().tolist(),
                        cw.long().tolist(), strict=True)
            for i, (t, le, hh, ww) in enumerate(boxes):
                out[i:i + 1] = F.interpolate(x[i:i + 1, :, t:t + hh, le:le + ww],
                                             size=(self.size, self.size), mode="bicubic",
                                             antialias=True)
            return out
        boxes = torch.stack([torch.arange(b, device=dev, dtype=torch.float32), left, top,
                             left + cw, top + ch], 1)
        out = roi_align(x.float(), boxes, output_size=self.size, spatial_scale=1.0,
                        sampling_ratio=-1, aligned=True)
        return out.round_().clamp_(0, 255).to(torch.uint8)

    @staticmethod
    def erase(x: torch.Tensor, p: float, scale=(0.02, 0.33), ratio=(0.3, 3.3)) -> torch.Tensor:
        """torchvision's RandomErasing (value="random") per sample: with probability `p` a
        box of normal noise, its size and place drawn as torchvision draws them (noise is
        drawn for the boxes only: for whole images it was 40% of the augmentation's time)."""
        b, _, h, w = x.shape
        dev = x.device
        eh, ew = _box_tries(b, h * w, scale, ratio, dev)
        ok = (eh < h) & (ew < w)
        pick = ok.float().argmax(1, keepdim=True)
        eh, ew = eh.gather(1, pick)[:, 0], ew.gather(1, pick)[:, 0]
        erase = (torch.rand(b, device=dev) < p) & ok.any(1)
        top, left = _places(h - eh, w - ew)
        boxes = torch.stack([top, left, eh, ew], 1)[erase].long().tolist()
        for i, (t, le, hh, ww) in zip(erase.nonzero()[:, 0].tolist(), boxes, strict=True):
            x[i, :, t:t + hh, le:le + ww] = torch.randn(x.shape[1], hh, ww, device=dev,
                                                        dtype=x.dtype)
        return x


def _box_tries(b: int, area: int, scale, ratio, dev) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten tries per sample of a box's sides, as torchvision draws them: a fraction of the
    area in `scale`, a log-uniform aspect in `ratio`; (sqrt(a * r), sqrt(a / r)), rounded."""
    area = area * torch.empty(b, 10, device=dev).uniform_(*scale)
    aspect = torch.exp(torch.empty(b, 10, device=dev).uniform_(math.log(ratio[0]),
                                                              math.log(ratio[1])))
    return torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()


def _places(room_y: torch.Tensor, room_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniform top-left corner per sample, given the free rows and columns."""
    top = (torch.rand(len(room_y), device=room_y.device) * (room_y + 1)).floor()
    left = (torch.rand(len(room_x), device=room_x.device) * (room_x + 1)).floor()
    return top, left


class DeviceInput:
    def __init__(self, root: Path, size: int, recipe, seed: int, workers: int,
                 device: torch.device, cache: Path):
        train, val = check_folders(root)
        side = int(size / recipe.crop_pct)  # the evaluation's resize, as torchvision's
        self.train_set = DecodedFolder(train, side, cache, workers)
        self.val_set = DecodedFolder(val, side, cache, workers)
        self.classes, self.size, self.side = train.classes, size, side
        self.workers, self.device = workers, device
        self.augment = DeviceAugment(size, recipe, len(self.classes), device)

    def _loader(self, rows: _Rows, batches: Sampler) -> DataLoader:
        # two workers gather rows ahead of the device (a memcpy each, no decoding); on a CPU
        # device they augment as well
        return DataLoader(rows, batch_sampler=batches, collate_fn=_as_is,
                          num_workers=min(self.workers, 2),
                          pin_memory=self.device.type == "cuda")

    def train_loader(self, sampler: EpochSampler) -> DataLoader:
        if self.device.type == "cpu":
            rows = _Rows(self.train_set, self.augment, sampler.seed, sampler.rank)
            return self._loader(rows, _StepBatches(sampler))
        return self._loader(_Rows(self.train_set), _Batches(sampler, sampler.batch, True))

    def prepare(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device.type == "cpu":  # augmented by the loader (_Rows)
            return batch
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        return self.augment(x, y)

    def val_loader(self, indices: range, batch: int) -> DataLoader:
        return self._loader(_Rows(self.val_set), _Batches(list(indices), batch, False))

    def prepare_val(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        top = int(round((self.side - self.size) / 2.0))  # as torchvision's CenterCrop
        x = x[:, :, top:top + self.size, top:top + self.size]
        return self.augment.normalize(x), y


def make_input(loader: str, root: Path, size: int, recipe, seed: int, workers: int,
               device: torch.device, cache: Path):
    if loader == "torchvision":
        return TorchvisionInput(root, size, recipe, seed, workers, device)
    if loader == "device":
        return DeviceInput(root, size, recipe, seed, workers, device, cache)
    raise UserError(f"--loader {loader}: choose one of {', '.join(LOADERS)}")

