"""Learning-rate schedules, in steps, shared by the proxy and the full trainer.

Breakpoints are in steps (not epochs), so even a run of a few steps warms up.
"""

from __future__ import annotations

import math

SCHEDULES = ("onecycle", "cosine")


def lr_at(schedule: str, peak: float, step: int, total_steps: int, warmup: float = 0.05,
          floor: float = 0.0) -> float:
    """The rate for the update that completes step `step` (0-based) of `total_steps`.

    onecycle (ConvMixer's timm fork): 0 -> peak at 2/5, peak/20 at 4/5, 0 at the end.
    cosine: linear warm-up over the fraction `warmup` of the steps, then cosine to `floor`.
    """
    t = step + 1
    if schedule == "onecycle":
        points = [(0.0, 0.0), (total_steps * 2 / 5, peak), (total_steps * 4 / 5, peak / 20),
                  (float(total_steps), 0.0)]
        for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
            if t <= x1:
                return y0 + (y1 - y0) * (t - x0) / (x1 - x0) if x1 > x0 else y1
        return 0.0
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}")
    warm = max(1, round(warmup * total_steps))
    if t <= warm:
        return peak * t / warm
    progress = (t - warm) / max(1, total_steps - warm)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
