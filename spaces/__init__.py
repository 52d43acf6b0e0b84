"""What can be searched: the families, their spaces, presets and transfer rules.

    import spaces
    family = spaces.get("convmixer")
    config = family.suggest(trial)              # define-by-run, 32 px proxy terms
    model = family.build(config, num_classes=10, image_size=32)

The family modules (spaces.convmixer, ...) define their models and so import torch; they are
imported on first use of FAMILIES, get, preset, resolve, preset_names or a config class, so
`import spaces` and the torch-free modules (errors, params, overrides, family) stay light for
the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from spaces.errors import UserError
from spaces.family import PROXY_SIZE, Family, Preset, Space, stem_stride_for
from spaces.params import Choices, Param, Range, parse_assignments

if TYPE_CHECKING:
    from spaces.coatnet import CoAtNetConfig
    from spaces.convmixer import ConvMixerConfig
    from spaces.convmlp import ConvMLPConfig

    FAMILIES: dict[str, Family]

_CONFIGS = {"ConvMixerConfig": "spaces.convmixer", "ConvMLPConfig": "spaces.convmlp",
            "CoAtNetConfig": "spaces.coatnet"}


def _families() -> dict[str, Family]:
    """FAMILIES, built on first use. Read through the module's globals, so that a FAMILIES
    set on the module (a test's monkeypatch) is the one that get() and preset() see."""
    families = globals().get("FAMILIES")
    if families is None:
        from spaces.coatnet import CoAtNetFamily
        from spaces.convmixer import ConvMixerFamily
        from spaces.convmlp import ConvMLPFamily

        families = {f.name: f for f in (ConvMixerFamily(), ConvMLPFamily(), CoAtNetFamily())}
        globals()["FAMILIES"] = families  # later lookups find it without __getattr__
    return families


def __getattr__(name: str) -> Any:
    """The lazily imported names (PEP 562): FAMILIES and the config classes."""
    if name == "FAMILIES":
        return _families()
    if name in _CONFIGS:
        return getattr(importlib.import_module(_CONFIGS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get(name: str) -> Family:
    """The family called `name` ('convmixer', 'convmlp', 'coatnet')."""
    families = _families()
    try:
        return families[name]
    except KeyError:
        raise UserError(
            f"unknown family {name!r}; choose from {', '.join(families)}"
        ) from None


def preset(name: str) -> tuple[Family, Preset]:
    """The family and preset called `name` (e.g. 'coatnet-0')."""
    for family in _families().values():
        if name in family.presets:
            return family, family.presets[name]
    raise UserError(f"unknown preset {name!r}; choose from {', '.join(preset_names())}")


def resolve(preset_name: str | None = None, family: str | None = None,
            overrides: dict | None = None) -> tuple[Family, object, Preset]:
    """The family, the single 32 px proxy config that a preset or `--family F --set ...`
    names, and its native setting (the preset's, or 224 px and 1000 classes for a family);
    `overrides` (single values, proxy terms) change a preset's or family's defaults."""
    if preset_name is not None and family is not None:
        raise UserError("name a preset (see `patchnas spaces list`) or give --family, not both")
    if preset_name is None and family is None:
        raise UserError("name what to build: a preset (see `patchnas spaces list`) or "
                        "--family F (with --set NAME=VALUE ...)")
    if preset_name is not None:
        fam, native = preset(preset_name)
        base = fam.to_proxy(native.config, native.image_size)
    else:
        fam, native, base = get(family), Preset(None), None
    return fam, fam.space(overrides).fixed_config(base), native


def preset_names() -> list[str]:
    return [name for family in _families().values() for name in family.presets]


__all__ = [
    "FAMILIES", "PROXY_SIZE", "Choices", "CoAtNetConfig", "ConvMLPConfig", "ConvMixerConfig",
    "Family", "Param", "Preset", "Range", "Space", "UserError", "get", "parse_assignments",
    "preset", "preset_names", "resolve", "stem_stride_for",
]
