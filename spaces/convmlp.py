"""ConvMLP ("ConvMLP: Hierarchical Convolutional MLPs for Vision", Li et al. 2021), following
the reference code (SHI-Labs/Convolutional-MLPs):

    conv tokenizer: 3x3 s2 conv -> 3x3 conv -> 3x3 conv (BN, ReLU each) -> 3x3 s2 max-pool
    conv stage:     n x residual [1x1 -> 3x3 -> 1x1 conv, BN, ReLU], then 3x3 s2 conv
    3 Conv-MLP stages of b_i blocks, width w_i, MLP ratio r_i; each block:
        x + DropPath(MLP(LN(x)));  x = DWConv3x3(LN(x));  x + DropPath(MLP(LN(x)))
    3x3 s2 conv downsampling between stages; LayerNorm -> mean pool -> linear head

Transfer rule: c, n, b_i, w_i and r_i transfer unchanged. The paper's tokenizer downsamples
4x (stride-2 conv and max-pool) and the stages another 8x, which leaves 1x1 maps at 32 px, so
the stem stride follows the image (`stem_stride_for`): 1 at 32 px (no stride, no pool), 2 at
64 px (stride-2 conv, no pool), 4 from 128 px up (the paper's stem).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torchvision.ops import MLP, StochasticDepth

from spaces.errors import UserError
from spaces.family import Family, Preset, stem_stride_for
from spaces.layers import depth_rates
from spaces.params import Param, Range


@dataclass(frozen=True)
class ConvMLPConfig:
    c: int  # tokenizer width
    n: int  # blocks in the conv stage
    b1: int  # Conv-MLP blocks per stage
    b2: int
    b3: int
    w1: int  # stage widths
    w2: int
    w3: int
    r1: int  # MLP ratios
    r2: int
    r3: int
    stem_stride: int = 1  # 1: the 32 px proxy stem; 4: the paper's (see stem_stride_for)

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise UserError(f"convmlp: {name} must be at least 1")
        if self.stem_stride not in (1, 2, 4):
            raise UserError("convmlp: stem_stride must be 1, 2 or 4")

    @property
    def blocks(self) -> tuple[int, int, int]:
        return (self.b1, self.b2, self.b3)

    @property
    def widths(self) -> tuple[int, int, int]:
        return (self.w1, self.w2, self.w3)

    @property
    def ratios(self) -> tuple[int, int, int]:
        return (self.r1, self.r2, self.r3)


def _stage_params() -> tuple[Param, ...]:
    out = []
    for i in (1, 2, 3):
        out.append(Param(f"b{i}", int, Range(1, 12), f"Conv-MLP blocks in stage {i}",
                         low=1, high=48))
    for i in (1, 2, 3):
        out.append(Param(f"w{i}", int, Range(64, 1024, 32), f"width of stage {i}",
                         low=8, high=4096))
    for i in (1, 2, 3):
        out.append(Param(f"r{i}", int, Range(1, 4), f"MLP ratio of stage {i}", low=1, high=16))
    return tuple(out)


class ConvMLPFamily(Family):
    name = "convmlp"
    config_cls = ConvMLPConfig
    params = (
        Param("c", int, Range(32, 128, 32), "tokenizer width", low=8, high=1024),
        Param("n", int, Range(1, 4), "blocks in the conv stage", low=1, high=16),
    ) + _stage_params()
    presets = {
        "convmlp-s": Preset(ConvMLPConfig(64, 2, 2, 4, 2, 128, 256, 512, 2, 2, 2, 4)),
        "convmlp-m": Preset(ConvMLPConfig(64, 3, 3, 6, 3, 128, 256, 512, 3, 3, 3, 4)),
        "convmlp-l": Preset(ConvMLPConfig(96, 3, 4, 8, 3, 192, 384, 768, 3, 3, 3, 4)),
    }
    default_preset = "convmlp-s"
    default_drop_path = 0.1  # the reference code's stochastic depth rate
    transfer_rule = (
        "c, n, b1-b3, w1-w3 and r1-r3 transfer unchanged; the tokenizer's stride follows the "
        "image so the last stage keeps at least 4x4 maps: 1 at 32 px (no stride-2 conv, no "
        "max-pool), 2 at 64 px, 4 (the paper's stem) from 128 px up."
    )

    def to_target(self, config: ConvMLPConfig, image_size: int) -> ConvMLPConfig:
        return replace(config, stem_stride=stem_stride_for(image_size))

    def to_proxy(self, config: ConvMLPConfig, image_size: int) -> ConvMLPConfig:
        return replace(config, stem_stride=1)

    def label(self, config: ConvMLPConfig) -> str:
        c = config
        return (f"convmlp c{c.c} n{c.n} b{c.b1}-{c.b2}-{c.b3} w{c.w1}-{c.w2}-{c.w3} "
                f"r{c.r1}-{c.r2}-{c.r3}")

    def build_model(self, config, num_classes, image_size, drop_path):
        return ConvMLP(config, num_classes, drop_path)


# --- the model ----------------------------------------------------------------------------
def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ConvTokenizer(nn.Sequential):
    def __init__(self, width: int, stem_stride: int):
        conv_stride = 1 if stem_stride == 1 else 2
        layers = (_conv_bn_relu(3, width // 2, 3, conv_stride)
                  + _conv_bn_relu(width // 2, width // 2, 3)
                  + _conv_bn_relu(width // 2, width, 3))
        if stem_stride == 4:
            layers.append(nn.MaxPool2d(3, 2, 1))
        super().__init__(*layers)


class ConvStage(nn.Module):
    def __init__(self, blocks: int, width: int, hidden: int, out: int):
        super().__init__()
        self.blocks = nn.ModuleList([
            nn.Sequential(*_conv_bn_relu(width, hidden, 1), *_conv_bn_relu(hidden, hidden, 3),
                          *_conv_bn_relu(hidden, width, 1))
            for _ in range(blocks)
        ])
        self.downsample = nn.Conv2d(width, out, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return self.downsample(x)


def _mlp(dim: int, hidden: int) -> MLP:
    """The reference code's channel MLP: Linear (bias) -> GELU -> Linear (bias). torchvision
    adds a Dropout after each Linear; at p=0 they return their input untouched."""
    return MLP(dim, [hidden, dim], activation_layer=nn.GELU)


class ConvMLPBlock(nn.Module):
    """Channel MLP, depthwise 3x3 connector, channel MLP; tokens are channels-last."""

    def __init__(self, dim: int, hidden: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mlp1 = _mlp(dim, hidden)
        self.connect_norm = nn.LayerNorm(dim)
        self.connect = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp2 = _mlp(dim, hidden)
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mlp1(self.norm1(x)))
        x = self.connect(self.connect_norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.mlp2(self.norm2(x)))


class ConvMLPStage(nn.Module):
    def __init__(self, blocks: int, dim: int, ratio: int, out: int | None, drop_path: float):
        super().__init__()
        self.blocks = nn.Sequential(*[ConvMLPBlock(dim, dim * ratio, rate)
                                      for rate in depth_rates(drop_path, blocks)])
        self.downsample = nn.Conv2d(dim, out, 3, 2, 1) if out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        if self.downsample is not None:
            x = self.downsample(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x


class ConvMLP(nn.Module):
    def __init__(self, config: ConvMLPConfig, num_classes: int, drop_path: float = 0.1):
        super().__init__()
        c, w = config, config.widths
        self.tokenizer = ConvTokenizer(c.c, c.stem_stride)
        self.conv_stage = ConvStage(c.n, c.c, w[0], w[0])
        self.stages = nn.Sequential(*[
            ConvMLPStage(c.blocks[i], w[i], c.ratios[i], w[i + 1] if i < 2 else None, drop_path)
            for i in range(3)
        ])
        self.norm = nn.LayerNorm(w[2])
        self.head = nn.Linear(w[2], num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_stage(self.tokenizer(x))
        return self.stages(x.permute(0, 2, 3, 1))  # channels-last tokens from here on

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x.flatten(1, 2)).mean(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
