"""What can be searched: the families, their spaces, presets and transfer rules.

    import spaces
    family = spaces.get("convmixer")
    config = family.suggest(trial)              # define-by-run, 32 px proxy terms
    model = family.build(config, num_classes=10, image_size=32)
"""

from __future__ import annotations

from spaces.coatnet import CoAtNetConfig, CoAtNetFamily
from spaces.convmixer import ConvMixerConfig, ConvMixerFamily
from spaces.convmlp import ConvMLPConfig, ConvMLPFamily
from spaces.errors import UserError
from spaces.family import PROXY_SIZE, Family, Preset, Space, stem_stride_for
from spaces.params import Choices, Param, Range, parse_assignments

FAMILIES: dict[str, Family] = {
    f.name: f for f in (ConvMixerFamily(), ConvMLPFamily(), CoAtNetFamily())
}


def get(name: str) -> Family:
    """The family called `name` ('convmixer', 'convmlp', 'coatnet')."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UserError(
            f"unknown family {name!r}; choose from {', '.join(FAMILIES)}"
        ) from None


def preset(name: str) -> tuple[Family, Preset]:
    """The family and preset called `name` (e.g. 'coatnet-0')."""
    for family in FAMILIES.values():
        if name in family.presets:
            return family, family.presets[name]
    raise UserError(f"unknown preset {name!r}; choose from {', '.join(preset_names())}")


def resolve(preset_name: str | None = None, family: str | None = None,
            overrides: dict | None = None) -> tuple[Family, object, Preset]:
    """The family, the single 32 px proxy config that a preset or `--family F --set ...`
    names, and its native setting (the preset's, or 224 px and 1000 classes for a family);
    `overrides` (single values, proxy terms) change a preset's or family's defaults."""
    if (preset_name is None) == (family is None):
        raise UserError("name a preset (see `patchnas spaces list`) or give --family, not both")
    if preset_name is not None:
        fam, native = preset(preset_name)
        base = fam.to_proxy(native.config, native.image_size)
    else:
        fam, native, base = get(family), Preset(None), None
    return fam, fam.space(overrides).fixed_config(base), native


def preset_names() -> list[str]:
    return [name for family in FAMILIES.values() for name in family.presets]


__all__ = [
    "FAMILIES", "PROXY_SIZE", "Choices", "CoAtNetConfig", "ConvMLPConfig", "ConvMixerConfig",
    "Family", "Param", "Preset", "Range", "Space", "UserError", "get", "parse_assignments",
    "preset", "preset_names", "resolve", "stem_stride_for",
]
