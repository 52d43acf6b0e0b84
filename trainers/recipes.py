"""The recipes: the proxy's (`Recipe`), and the full training's (`FullRecipe`) with each
family's published ImageNet recipe as the default.

Full-training learning rates are given at the published global batch (`ref_batch`) and
scaled linearly with the batch actually used (`lr_for`), as the papers' own code does.

Torch-free, so the CLI can read and check a recipe before (or without) loading torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from spaces import checks
from spaces.errors import UserError
from trainers.schedule import SCHEDULES


@dataclass(frozen=True)
class Recipe:
    """Everything about a proxy run that is not the architecture or the data."""

    epochs: int = 10
    batch_size: int = 512
    lr: float = 0.01  # peak learning rate
    weight_decay: float = 0.01
    schedule: str = "onecycle"
    warmup: float = 0.05  # fraction of steps, for "cosine"
    label_smoothing: float = 0.1
    clip_norm: float = 1.0  # 0 turns clipping off
    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0  # side of the zeroed square; 0 turns it off
    drop_path: float = 0.0
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        check_settings(self.epochs, (self.batch_size, self.eval_batch_size), self.lr,
                       self.weight_decay, self.label_smoothing, self.schedule)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Recipe:
        return settings_from_dict(cls, values)


@dataclass(frozen=True)
class FullRecipe:
    epochs: int
    batch_size: int  # global, over all processes
    lr: float  # peak, at ref_batch
    ref_batch: int
    weight_decay: float
    schedule: str  # onecycle | cosine
    warmup: float = 0.0  # fraction of the steps (cosine)
    min_lr: float = 0.0
    eps: float = 1e-8  # AdamW epsilon
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    mixup: float = 0.0  # Beta(alpha, alpha); 0 turns it off
    cutmix: float = 0.0
    random_erasing: float = 0.0  # probability
    label_smoothing: float = 0.1
    clip_norm: float = 0.0  # 0 turns clipping off
    drop_path: float = 0.0
    crop_pct: float = 0.875  # evaluation: resize to size / crop_pct, center-crop size
    source: str = ""  # where the numbers come from

    def __post_init__(self) -> None:
        check_settings(self.epochs, (self.batch_size, self.ref_batch), self.lr,
                       self.weight_decay, self.label_smoothing, self.schedule)
        if not 0 < self.crop_pct <= 1 or not 0 <= self.random_erasing <= 1:
            raise UserError("recipe: crop_pct must be in (0, 1], random_erasing in [0, 1]")

    def lr_for(self, batch_size: int) -> float:
        return self.lr * batch_size / self.ref_batch

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FullRecipe:
        return settings_from_dict(cls, values)


def check_settings(epochs: int, batch_sizes: tuple[int, ...], lr: float, weight_decay: float,
                   label_smoothing: float, schedule: str) -> None:
    """What every recipe, proxy or full, must satisfy."""
    if epochs < 1 or min(batch_sizes) < 1:
        raise UserError("recipe: epochs and batch sizes must be at least 1")
    if lr <= 0 or weight_decay < 0 or not 0 <= label_smoothing < 1:
        raise UserError("recipe: lr must be positive, weight_decay >= 0, label_smoothing "
                        "in [0, 1)")
    if schedule not in SCHEDULES:
        raise UserError(f"recipe: unknown schedule {schedule!r}; choose from "
                        f"{', '.join(SCHEDULES)}")


def settings_from_dict(cls, values: dict[str, Any]):
    """A recipe dataclass from a mapping: unknown keys, missing keys and wrong types are one
    line naming the key (spaces.checks)."""
    return checks.build(cls, values, "recipe")


PUBLISHED = {
    # Trockman & Kolter, "Patches Are All You Need?" (2022), README training command:
    # 10 GPUs x 64, AdamW lr 0.01, eps 1e-3, onecycle, 150 epochs, rand-m9-mstd0.5-inc1,
    # mixup 0.5, cutmix 0.5, reprob 0.25, clip 1.0; timm's default weight decay (2e-5) and
    # ConvMixer's crop_pct 0.96.
    "convmixer": FullRecipe(
        epochs=150, batch_size=640, lr=0.01, ref_batch=640, weight_decay=2e-5,
        schedule="onecycle", eps=1e-3, randaugment_ops=2, randaugment_magnitude=9, mixup=0.5,
        cutmix=0.5, random_erasing=0.25, label_smoothing=0.1, clip_norm=1.0, crop_pct=0.96,
        source="ConvMixer (Trockman & Kolter 2022), README ImageNet command"),
    # Li et al., "ConvMLP" (2021): the DeiT/timm recipe they follow: 8 GPUs x 128, AdamW
    # lr 5e-4 per 512 images, wd 0.05, cosine with 5 warm-up epochs of 300, RandAugment m9,
    # mixup 0.8, cutmix 1.0, random erasing 0.25, label smoothing 0.1, drop path 0.1.
    "convmlp": FullRecipe(
        epochs=300, batch_size=1024, lr=1e-3, ref_batch=1024, weight_decay=0.05,
        schedule="cosine", warmup=5 / 300, min_lr=1e-5, randaugment_ops=2,
        randaugment_magnitude=9, mixup=0.8, cutmix=1.0, random_erasing=0.25,
        label_smoothing=0.1, drop_path=0.1, crop_pct=0.875,
        source="ConvMLP (Li et al. 2021), DeiT-style ImageNet-1k recipe"),
    # Dai et al., "CoAtNet" (2021), Table 8, ImageNet-1k from scratch: batch 4096, AdamW
    # peak lr 1e-3, 10k warm-up steps (of ~94k: 300 epochs at 4096), cosine to 1e-5, wd 0.05,
    # RandAugment (2, 15), mixup 0.8, label smoothing 0.1, clip 1.0, stochastic depth 0.2
    # (CoAtNet-0; 0.3 / 0.5 / 0.7 for -1 / -2 / -3).
    "coatnet": FullRecipe(
        epochs=300, batch_size=4096, lr=1e-3, ref_batch=4096, weight_decay=0.05,
        schedule="cosine", warmup=10_000 / 93_750, min_lr=1e-5, randaugment_ops=2,
        randaugment_magnitude=15, mixup=0.8, cutmix=0.0, random_erasing=0.0,
        label_smoothing=0.1, clip_norm=1.0, drop_path=0.2, crop_pct=1.0,
        source="CoAtNet (Dai et al. 2021), Table 8, ImageNet-1k"),
}


def published(family: str, **changes: Any) -> FullRecipe:
    if family not in PUBLISHED:
        raise UserError(f"no published recipe for family {family!r}")
    return replace(PUBLISHED[family], **changes)
