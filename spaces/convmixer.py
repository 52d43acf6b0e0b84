"""ConvMixer ("Patches Are All You Need?", Trockman & Kolter 2022), exactly as in the paper.

    patch embedding: conv(3 -> h, kernel = stride = p) -> act -> BN
    d x [ Residual(depthwise conv k, "same" padding -> act -> BN) -> 1x1 conv -> act -> BN ]
    global average pool -> linear

Transfer rule: h, d, k and the activation transfer as they are; the patch keeps the token
grid, so p scales with the image: p_target = p_proxy * size / 32 (p=1 at 32 px is p=7 at
224 px: 32x32 tokens either way; at 128 px p x 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from spaces.errors import UserError
from spaces.family import PROXY_SIZE, Family, Preset
from spaces.params import Choices, Param, Range

ACTIVATIONS = ("gelu", "relu")


@dataclass(frozen=True)
class ConvMixerConfig:
    h: int  # width (channels)
    d: int  # depth (blocks)
    p: int  # patch size
    k: int  # depthwise kernel size
    act: str = "gelu"

    def __post_init__(self) -> None:
        for name in ("h", "d", "p", "k"):
            if getattr(self, name) < 1:
                raise UserError(f"convmixer: {name} must be at least 1")
        if self.k % 2 == 0:
            raise UserError(f"convmixer: k={self.k} must be odd (a 'same' depthwise conv)")
        if self.act not in ACTIVATIONS:
            raise UserError(f"convmixer: act={self.act} must be one of {', '.join(ACTIVATIONS)}")


def _odd(v: int) -> bool:
    return v % 2 == 1


def _fits_proxy(p: int) -> bool:
    return p <= PROXY_SIZE


class ConvMixerFamily(Family):
    name = "convmixer"
    config_cls = ConvMixerConfig
    params = (
        Param("h", int, Range(64, 1536, 32), "width (channels)", low=1, high=4096),
        Param("d", int, Range(2, 32), "depth (blocks)", low=1, high=64),
        Param("p", int, Choices((1, 2, 4)), "patch size at 32 px", low=1, check=_fits_proxy,
              rule=f"at most {PROXY_SIZE}: a patch larger than the {PROXY_SIZE} px image",
              monotone=False),  # larger patches: more parameters but fewer MACs
        Param("k", int, Range(3, 11, 2), "depthwise kernel size", low=1, high=31,
              check=_odd, rule="odd"),
        Param("act", str, Choices(ACTIVATIONS), "activation", allowed=ACTIVATIONS),
    )
    presets = {
        "convmixer-1536-20": Preset(ConvMixerConfig(1536, 20, 7, 9, "gelu")),
        "convmixer-768-32": Preset(ConvMixerConfig(768, 32, 7, 7, "relu")),
        "convmixer-1024-20": Preset(ConvMixerConfig(1024, 20, 14, 9, "gelu")),
        "convmixer-256-8": Preset(ConvMixerConfig(256, 8, 2, 5, "gelu"), 32, 10,
                                  "the paper's CIFAR-10 model"),
    }
    default_preset = "convmixer-256-8"
    transfer_rule = (
        "h, d, k and act transfer unchanged; p scales with the image so the token grid is "
        "kept: p_target = p * size / 32 (p=1 -> 7 and p=2 -> 14 at 224 px, p x 4 at 128 px), "
        "and back: p_proxy = p * 32 / size, rounded, at least 1."
    )

    def check_space_at(self, space, image_size: int) -> None:
        """p is in 32 px terms: at another proxy size it scales with the image, and must stay
        a whole patch (p=1 at 16 px would be half a pixel; rounding it would train another
        token grid than the one searched)."""
        [patch] = [p for p in space.params if p.name == "p"]
        for p in patch.values():
            self.check_config_at(ConvMixerConfig(1, 1, p, 3), image_size)

    def check_config_at(self, config: ConvMixerConfig, image_size: int) -> None:
        scaled = config.p * image_size / PROXY_SIZE
        if scaled < 1 or scaled != int(scaled):
            raise UserError(
                f"convmixer: p={config.p} (in 32 px terms) is p={scaled:g} at {image_size} px, "
                f"not a whole patch; give p values that scale to whole patches (multiples "
                f"of {PROXY_SIZE // math.gcd(PROXY_SIZE, image_size)}), or another "
                f"--proxy-size")

    def check_size(self, config: ConvMixerConfig, image_size: int) -> None:
        if config.p > image_size:
            raise UserError(
                f"convmixer: patch p={config.p} is larger than the {image_size} px image"
            )

    def to_target(self, config: ConvMixerConfig, image_size: int) -> ConvMixerConfig:
        return replace(config, p=max(1, round(config.p * image_size / PROXY_SIZE)))

    def to_proxy(self, config: ConvMixerConfig, image_size: int) -> ConvMixerConfig:
        return replace(config, p=max(1, round(config.p * PROXY_SIZE / image_size)))

    def exact_costs(self, config: ConvMixerConfig, image_size: int,
                    num_classes: int) -> tuple[int, int]:
        h, d, p, k = config.h, config.d, config.p, config.k
        tokens = (image_size // p) ** 2  # the stem's stride-p grid; blocks keep it
        block_params = (h * k * k + h) + (h * h + h) + 2 * 2 * h  # two convs, two BNs
        params = (3 * p * p * h + h + 2 * h) + d * block_params + (h * num_classes + num_classes)
        macs = tokens * h * (3 * p * p + d * (k * k + h)) + h * num_classes
        return params, macs

    def label(self, config: ConvMixerConfig) -> str:
        c = config
        return f"convmixer h{c.h} d{c.d} p{c.p} k{c.k}" + ("" if c.act == "gelu" else " relu")

    def build_model(self, config, num_classes, image_size, drop_path):
        return ConvMixer(config, num_classes)


# --- the model ----------------------------------------------------------------------------
class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class ConvMixer(nn.Module):
    def __init__(self, config: ConvMixerConfig, num_classes: int):
        super().__init__()
        h, act = config.h, {"gelu": nn.GELU, "relu": nn.ReLU}[config.act]
        self.stem = nn.Sequential(nn.Conv2d(3, h, config.p, stride=config.p), act(),
                                  nn.BatchNorm2d(h))
        self.blocks = nn.Sequential(*[
            nn.Sequential(
                Residual(nn.Sequential(
                    nn.Conv2d(h, h, config.k, groups=h, padding="same"), act(),
                    nn.BatchNorm2d(h))),
                nn.Conv2d(h, h, 1), act(), nn.BatchNorm2d(h),
            ) for _ in range(config.d)
        ])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(h, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
