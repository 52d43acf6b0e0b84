"""What `patchnas spaces list` and `patchnas spaces show` print, as plain data."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import spaces
from spaces.cost import target_and_proxy_costs
from spaces.errors import UserError


def listing() -> list[dict[str, Any]]:
    """Every family with its parameters (32 px proxy terms), presets and transfer rule."""
    return [family.describe() for family in spaces.FAMILIES.values()]


def show(preset: str | None = None, family: str | None = None,
         overrides: dict[str, Any] | None = None, image_size: int | None = None,
         num_classes: int | None = None) -> dict[str, Any]:
    """One model: its target config and costs, beside its 32 px, 10-class proxy.

    A preset is shown at its native size and class count unless told otherwise; a family
    at 224 px and 1000 classes. `overrides` (NAME=value, proxy terms) change single values.
    """
    fam, proxy, native = spaces.resolve(preset, family=family, overrides=overrides)
    image_size = native.image_size if image_size is None else image_size
    num_classes = native.num_classes if num_classes is None else num_classes
    if image_size < 1 or num_classes < 1:
        raise UserError("--image-size and --num-classes must be positive")
    target = fam.to_target(proxy, image_size)
    return {
        "family": fam.name,
        "preset": preset,
        "label": fam.label(target),
        "image_size": image_size,
        "num_classes": num_classes,
        "config": asdict(target),
        **target_and_proxy_costs(fam, proxy, image_size, num_classes),
        "proxy_config": asdict(proxy),
    }
