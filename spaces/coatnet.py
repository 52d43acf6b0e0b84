"""CoAtNet ("CoAtNet: Marrying Convolution and Attention", Dai et al. 2021, Table 3).

    S0  conv stem: 3x3 stride-2 conv -> BN, GELU -> 3x3 conv             (D0 channels)
    S1..S4, each "C" or "T", L_i blocks of D_i channels, the first block of each stride 2:
      C  MBConv, pre-norm: BN -> 1x1 (x4 of the output width) -> BN, GELU -> depthwise 3x3
         -> BN, GELU -> SE (0.25 of the output width) -> 1x1; shortcut pools + projects
      T  pre-norm Transformer: LN -> (pool) -> multi-head attention with a relative position
         bias, head size 32 (D_i / 32 heads) -> residual; LN -> MLP x4 -> residual
    pool -> LN -> linear + tanh (D4) -> linear head        (as timm's coatnet_*_224)

S1 is always C and a C never follows a T, so the layouts are CCCC, CCCT, CCTT and CTTT.

Transfer rule: the layout, L1..L4 and D0..D4 transfer unchanged. S0 and S1 downsample 4x in
the paper and S2..S4 another 8x, which leaves 1x1 maps at 32 px, so the stem stride follows
the image (`stem_stride_for`): 1 at 32 px (S0 and S1 keep the resolution), 2 at 64 px (S0
strides), 4 from 128 px up (the paper's). Attention biases are sized to the feature maps of
the image size the model is built for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from spaces.errors import UserError
from spaces.family import Family, Preset, stem_stride_for
from spaces.layers import depth_rates
from spaces.params import Choices, Param, Range

LAYOUTS = ("CCCC", "CCCT", "CCTT", "CTTT")
HEAD_SIZE = 32
EXPANSION = 4
SE_RATIO = 0.25


@dataclass(frozen=True)
class CoAtNetConfig:
    layout: str  # block type of S1..S4
    L1: int  # blocks per stage
    L2: int
    L3: int
    L4: int
    D0: int  # stem width
    D1: int  # stage widths
    D2: int
    D3: int
    D4: int
    stem_stride: int = 1  # 1: the 32 px proxy stem; 4: the paper's (see stem_stride_for)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise UserError(
                f"coatnet: layout {self.layout} is invalid: S1 is always C and no C follows "
                f"a T; choose from {', '.join(LAYOUTS)}"
            )
        for name in ("L1", "L2", "L3", "L4", "D0", "D1", "D2", "D3", "D4"):
            if getattr(self, name) < 1:
                raise UserError(f"coatnet: {name} must be at least 1")
        for kind, width, i in zip(self.layout, self.widths, (1, 2, 3, 4), strict=True):
            if kind == "T" and width % HEAD_SIZE:
                raise UserError(
                    f"coatnet: D{i}={width} feeds a Transformer stage, so it must be a "
                    f"multiple of the head size {HEAD_SIZE}"
                )
        if self.stem_stride not in (1, 2, 4):
            raise UserError("coatnet: stem_stride must be 1, 2 or 4")

    @property
    def depths(self) -> tuple[int, int, int, int]:
        return (self.L1, self.L2, self.L3, self.L4)

    @property
    def widths(self) -> tuple[int, int, int, int]:
        return (self.D1, self.D2, self.D3, self.D4)

    @property
    def strides(self) -> tuple[int, int, int, int, int]:
        """Strides of S0..S4."""
        s0, s1 = {1: (1, 1), 2: (2, 1), 4: (2, 2)}[self.stem_stride]
        return (s0, s1, 2, 2, 2)


def _stage_params() -> tuple[Param, ...]:
    depths = tuple(Param(f"L{i}", int, Range(1, 16), f"blocks in stage S{i}", low=1, high=64)
                   for i in (1, 2, 3, 4))
    widths = tuple(Param(f"D{i}", int, Range(32, 1536, 32), f"width of stage S{i}",
                         low=8, high=4096) for i in (1, 2, 3, 4))
    return depths + (Param("D0", int, Range(32, 256, 32), "stem width", low=8, high=1024),
                     ) + widths


class CoAtNetFamily(Family):
    name = "coatnet"
    config_cls = CoAtNetConfig
    params = (
        Param("layout", str, Choices(LAYOUTS), "C (MBConv) or T (Transformer) per stage S1..S4",
              allowed=LAYOUTS, rule="S1 is always C and no C follows a T"),
    ) + _stage_params()
    presets = {
        "coatnet-0": Preset(CoAtNetConfig("CCTT", 2, 3, 5, 2, 64, 96, 192, 384, 768, 4)),
        "coatnet-1": Preset(CoAtNetConfig("CCTT", 2, 6, 14, 2, 64, 96, 192, 384, 768, 4)),
        "coatnet-2": Preset(CoAtNetConfig("CCTT", 2, 6, 14, 2, 128, 128, 256, 512, 1024, 4)),
        "coatnet-3": Preset(CoAtNetConfig("CCTT", 2, 6, 14, 2, 192, 192, 384, 768, 1536, 4)),
    }
    default_preset = "coatnet-0"
    transfer_rule = (
        "layout, L1-L4 and D0-D4 transfer unchanged; the stem stride (S0 and S1) follows the "
        "image so the last stage keeps at least 4x4 maps: 1 at 32 px, 2 at 64 px, 4 (the "
        "paper's) from 128 px up."
    )

    def to_target(self, config: CoAtNetConfig, image_size: int) -> CoAtNetConfig:
        return replace(config, stem_stride=stem_stride_for(image_size))

    def to_proxy(self, config: CoAtNetConfig, image_size: int) -> CoAtNetConfig:
        return replace(config, stem_stride=1)

    def label(self, config: CoAtNetConfig) -> str:
        c = config
        return (f"coatnet {c.layout} L{c.L1}-{c.L2}-{c.L3}-{c.L4} "
                f"D{c.D0}-{c.D1}-{c.D2}-{c.D3}-{c.D4}")

    def build_model(self, config, num_classes, image_size, drop_path):
        return CoAtNet(config, num_classes, image_size, drop_path)


# --- the model ----------------------------------------------------------------------------
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        return super().forward(x).permute(0, 3, 1, 2)


def _pool() -> nn.Module:
    # ceil_mode matches the size a stride-2 3x3 conv gives on odd maps
    return nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)


class Shortcut(nn.Sequential):
    """Identity, or average-pool (stride 2) then 1x1 projection (new width)."""

    def __init__(self, cin: int, cout: int, stride: int):
        layers = [_pool()] if stride == 2 else []
        if cin != cout:
            layers.append(nn.Conv2d(cin, cout, 1))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """timm's SEModule as CoAtNet uses it: mean pool -> 1x1 (bias) -> SiLU -> 1x1 (bias) ->
    sigmoid gate. torchvision.ops.SqueezeExcitation(channels, reduced, nn.SiLU) computes the
    same with the same parameters, but names them fc1/fc2: kept for its names, which tests
    (`se.reduce`) and CoAtNet checkpoints already written use."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.expand(F.silu(self.reduce(s))).sigmoid()


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop_path: float):
        super().__init__()
        mid = cout * EXPANSION
        self.shortcut = Shortcut(cin, cout, stride)
        self.pre_norm = nn.BatchNorm2d(cin)
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid),
                                    nn.GELU())
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                                       nn.BatchNorm2d(mid), nn.GELU())
        self.se = SqueezeExcite(mid, int(cout * SE_RATIO))
        self.project = nn.Conv2d(mid, cout, 1)
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(self.pre_norm(x)))))
        return self.shortcut(x) + self.drop_path(y)


class RelPosAttention(nn.Module):
    """Multi-head self-attention over a grid, with a learned relative position bias."""

    def __init__(self, cin: int, cout: int, grid: tuple[int, int]):
        super().__init__()
        self.heads = cout // HEAD_SIZE
        self.qkv = nn.Conv2d(cin, 3 * cout, 1)
        self.proj = nn.Conv2d(cout, cout, 1)
        h, w = grid
        self.bias_table = nn.Parameter(torch.zeros((2 * h - 1) * (2 * w - 1), self.heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"))
        coords = coords.flatten(1)
        rel = coords[:, :, None] - coords[:, None, :]  # 2, N, N
        index = (rel[0] + h - 1) * (2 * w - 1) + (rel[1] + w - 1)
        self.register_buffer("bias_index", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self.qkv(x).flatten(2).view(b, 3, self.heads, HEAD_SIZE, h * w).unbind(1)
        bias = self.bias_table[self.bias_index].permute(2, 0, 1).to(q.dtype)  # heads, N, N
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                             v.transpose(-1, -2), attn_mask=bias)
        return self.proj(out.transpose(-1, -2).reshape(b, -1, h, w))


class TransformerBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, grid: tuple[int, int],
                 drop_path: float):
        super().__init__()
        self.shortcut = Shortcut(cin, cout, stride)
        self.norm1 = nn.Sequential(LayerNorm2d(cin, eps=1e-6),
                                   *([_pool()] if stride == 2 else []))
        self.attn = RelPosAttention(cin, cout, grid)
        self.norm2 = LayerNorm2d(cout, eps=1e-6)
        self.mlp = nn.Sequential(nn.Conv2d(cout, cout * EXPANSION, 1), nn.GELU(),
                                 nn.Conv2d(cout * EXPANSION, cout, 1))
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shortcut(x) + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CoAtNet(nn.Module):
    def __init__(self, config: CoAtNetConfig, num_classes: int, image_size: int,
                 drop_path: float = 0.0):
        super().__init__()
        c = config
        s0 = c.strides[0]
        self.stem = nn.Sequential(nn.Conv2d(3, c.D0, 3, s0, 1, bias=False), nn.BatchNorm2d(c.D0),
                                  nn.GELU(), nn.Conv2d(c.D0, c.D0, 3, 1, 1, bias=False))
        size = math.ceil(image_size / s0)
        rates = iter(depth_rates(drop_path, sum(c.depths)))
        stages, cin = [], c.D0
        for kind, depth, cout, stride in zip(c.layout, c.depths, c.widths, c.strides[1:],
                                             strict=True):
            size = math.ceil(size / stride)
            blocks = []
            for i in range(depth):
                s = stride if i == 0 else 1
                if kind == "C":
                    blocks.append(MBConv(cin, cout, s, next(rates)))
                else:
                    blocks.append(TransformerBlock(cin, cout, s, (size, size), next(rates)))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(c.D4, eps=1e-6)
        self.pre_logits = nn.Sequential(nn.Linear(c.D4, c.D4), nn.Tanh())
        self.head = nn.Linear(c.D4, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pre_logits(self.norm(x.mean((2, 3)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
