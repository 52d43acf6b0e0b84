"""The small interface every searchable family implements, and the space built from it."""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

from spaces import checks
from spaces.errors import UserError
from spaces.params import Choices, Param, Range, apply_overrides

if TYPE_CHECKING:
    from torch import nn

PROXY_SIZE = 32  # every space is searched on 32x32 images (CIFAR-10)


@dataclass(frozen=True)
class Preset:
    """A published model: its config at its native resolution."""

    config: Any
    image_size: int = 224
    num_classes: int = 1000
    note: str = ""


def stem_stride_for(image_size: int) -> int:
    """Stride of the stem (S0+S1 for CoAtNet, tokenizer for ConvMLP) at an image size.

    The papers' stem downsamples 4x and the stages another 8x: 32x in all, which leaves 1x1
    maps at 32 px. The rule: the largest stem stride in (4, 2, 1) that leaves the last stage
    at least 4x4. That is 4 (the paper's stem) from 128 px up, 2 at 64 px, 1 at 32 px.
    """
    for stride in (4, 2):
        if image_size // (stride * 8) >= 4:
            return stride
    return 1


class Family(ABC):
    """One architecture family. Subclasses set the class attributes and the abstract methods."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    params: ClassVar[tuple[Param, ...]]
    presets: ClassVar[dict[str, Preset]]
    default_preset: ClassVar[str]  # its proxy config is the default for unset parameters
    default_drop_path: ClassVar[float] = 0.0
    transfer_rule: ClassVar[str]  # one paragraph, shown by `spaces list` and in the README

    # --- each family implements these ---------------------------------------------------
    @abstractmethod
    def build_model(self, config: Any, num_classes: int, image_size: int,
                    drop_path: float) -> nn.Module:
        """The model; `build` has checked the config against the image size already."""

    @abstractmethod
    def to_target(self, config: Any, image_size: int) -> Any:
        """Map a 32 px proxy config to the config for `image_size` (the transfer rule)."""

    @abstractmethod
    def to_proxy(self, config: Any, image_size: int) -> Any:
        """Map a config native at `image_size` to its 32 px proxy (the reverse rule)."""

    def check_space_at(self, space: Space, image_size: int) -> None:
        """Raise UserError if a config of `space` (in 32 px terms) has no exact counterpart
        when the proxy trains at `image_size` (by default every config has one)."""
        return None

    def check_config_at(self, config: Any, image_size: int) -> None:
        """The same for one config."""
        return None

    def check_size(self, config: Any, image_size: int) -> None:
        """Raise UserError if `config` cannot run on `image_size` images (any size can, by
        default: strided convs and pools round up)."""
        return None

    def exact_costs(self, config: Any, image_size: int,
                    num_classes: int) -> tuple[int, int] | None:
        """(params, MACs) in closed form, where a family has one; it must equal what
        spaces.cost.count_costs counts (a test holds it to that). None: count them."""
        return None

    def label(self, config: Any) -> str:
        """A short readable name, e.g. 'convmixer h256 d8 p2 k5'."""
        return self.name + " " + " ".join(f"{k}{v}" for k, v in asdict(config).items())

    # --- shared -------------------------------------------------------------------------
    def build(self, config: Any, num_classes: int = 1000, image_size: int = 224,
              drop_path: float | None = None) -> nn.Module:
        """The nn.Module for `config` on `image_size` images with `num_classes` outputs."""
        self.check(config, image_size, num_classes)
        rate = self.default_drop_path if drop_path is None else drop_path
        return self.build_model(config, num_classes, image_size, rate)

    def check(self, config: Any, image_size: int, num_classes: int = 1000) -> None:
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{self.name} expects a {self.config_cls.__name__}")
        if image_size < 1 or num_classes < 1:
            raise UserError("the image size and the number of classes must be positive")
        self.check_size(config, image_size)

    def space(self, overrides: Mapping[str, Any] | None = None) -> Space:
        return Space(self, apply_overrides(self.params, overrides or {}, self.name))

    def suggest(self, trial: Any, prefix: str = "") -> Any:
        """Define-by-run: a proxy config sampled from the family's default space."""
        return self.space().suggest(trial, prefix)

    def config_from(self, values: Mapping[str, Any], base: Any = None) -> Any:
        """A proxy config from searchable values; unset ones come from `base` (by default
        the default preset's proxy config)."""
        base = self.default_proxy_config() if base is None else base
        known = {f.name for f in fields(base)}
        unknown = [k for k in values if k not in known]
        if unknown:
            raise UserError(f"unknown parameter {unknown[0]!r} for family {self.name}")
        return replace(base, **values)

    def config_of(self, values: Mapping[str, Any], where: str | None = None) -> Any:
        """A complete config from a plain mapping (a YAML's `model.config`), checked; errors
        name `where` the mapping came from."""
        return checks.build(self.config_cls, values, where or f"{self.name} config")

    def default_proxy_config(self) -> Any:
        preset = self.presets[self.default_preset]
        return self.to_proxy(preset.config, preset.image_size)

    def describe(self) -> dict:
        return {
            "family": self.name,
            "params": [p.describe() for p in self.params],
            "presets": list(self.presets),
            "transfer_rule": self.transfer_rule,
        }


@dataclass(frozen=True)
class Space:
    """A family's params after the user's overrides."""

    family: Family
    params: tuple[Param, ...]

    def suggest(self, trial: Any, prefix: str = "") -> Any:
        values = {p.name: p.suggest(trial, prefix) for p in self.params}
        return self.family.config_from(values)

    def size(self) -> float:
        """How many configs this space holds (inf with a continuous param)."""
        return math.prod(p.count() for p in self.params)

    def corners(self) -> list[Any]:
        """Configs at which each cost of this space reaches its minimum or maximum.

        Monotone numeric params sit together at their lows or their highs; every other
        param (categoricals, ConvMixer's patch) takes each of its extreme values.
        """
        others = [p for p in self.params if not (p.monotone and isinstance(p.domain, Range))]
        monotone = [p for p in self.params if p not in others]
        configs = []
        for combo in itertools.product(*(p.extremes() for p in others)):
            for end in (0, 1):
                values = {p.name: p.extremes()[end] for p in monotone}
                values.update(zip((p.name for p in others), combo, strict=True))
                configs.append(self.family.config_from(values))
        return configs

    def check_at(self, image_size: int) -> None:
        """Every config of this space trains exactly at `image_size` (see check_space_at)."""
        self.family.check_space_at(self, image_size)

    def fixed_config(self, base: Any = None) -> Any:
        """The single proxy config this space describes (for `spaces show`).

        Parameters the user set must be fixed values; the rest come from `base` (by default
        the default preset's proxy config).
        """
        defaults = self.family.space().params
        values = {}
        for param, default in zip(self.params, defaults, strict=True):
            if param.domain == default.domain:
                continue
            if not param.fixed:
                raise UserError(
                    f"{param.name}={param.domain.spec()} is a range; `spaces show` needs one "
                    f"value (e.g. {param.name}={_first(param)})"
                )
            values[param.name] = param.domain.values[0]
        return self.family.config_from(values, base)


def _first(param: Param) -> Any:
    d = param.domain
    return d.values[0] if isinstance(d, Choices) else d.low
