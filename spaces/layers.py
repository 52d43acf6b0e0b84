"""Building blocks shared by more than one family.

Stochastic depth is torchvision's `StochasticDepth(rate, "row")`: it drops a sample's whole
residual branch with probability `rate` and scales the kept ones by 1 / (1 - rate), exactly
as timm's DropPath in the papers' code does (same draws, same arithmetic).
"""

from __future__ import annotations


def depth_rates(rate: float, blocks: int) -> list[float]:
    """Drop-path rates rising linearly from 0 to `rate` over `blocks` blocks."""
    if blocks == 1:
        return [0.0]
    return [rate * i / (blocks - 1) for i in range(blocks)]
