"""The searched space of a study: one family, or several with the family itself searched.

With several families, `family` is a categorical and each family's parameters are named
`<family>.<param>`, so Optuna sees a conditional space whose distributions never clash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import spaces
from spaces.errors import UserError
from spaces.family import Family, Space


@dataclass(frozen=True)
class SearchSpace:
    families: tuple[str, ...]
    overrides: dict[str, dict[str, Any]]  # family -> NAME: SPEC as the user gave them

    @classmethod
    def build(cls, families: str | list[str] | tuple[str, ...],
              overrides: dict[str, Any] | None = None) -> SearchSpace:
        """`overrides` holds NAME: SPEC (one family) or FAMILY.NAME: SPEC (any family)."""
        names = tuple(f.strip() for f in (families.split(",") if isinstance(families, str)
                                          else families) if f.strip())
        if not names:
            raise UserError("give at least one --family")
        for name in names:
            spaces.get(name)
        per_family: dict[str, dict[str, Any]] = {name: {} for name in names}
        for key, spec in (overrides or {}).items():
            family, dot, param = key.rpartition(".")
            if not dot:
                owners = [n for n in names if param in {p.name for p in spaces.get(n).params}]
                if not owners:
                    raise UserError(f"unknown parameter {param!r} for family "
                                    f"{' or '.join(names)}")
                if len(owners) > 1:
                    raise UserError(f"{param} belongs to {' and '.join(owners)}: write "
                                    f"{owners[0]}.{param}=...")
                family = owners[0]
            if family not in per_family:
                raise UserError(f"{key}: {family} is not a searched family ({', '.join(names)})")
            per_family[family][param] = spec
        space = cls(names, per_family)
        space.spaces()  # validate every override now, not in the first trial
        return space

    def spaces(self) -> dict[str, Space]:
        return {name: spaces.get(name).space(self.overrides[name]) for name in self.families}

    def check_at(self, image_size: int) -> None:
        """Every config trains exactly at `image_size` (the proxy's size)."""
        for space in self.spaces().values():
            space.check_at(image_size)

    def suggest(self, trial: Any) -> tuple[Family, Any]:
        name = (self.families[0] if len(self.families) == 1 else
                trial.suggest_categorical("family", list(self.families)))
        return spaces.get(name), self.spaces()[name].suggest(trial, self._prefix(name))

    def _prefix(self, family: str) -> str:
        """How a family's params are named in Optuna: bare alone, `family.` among several."""
        return "" if len(self.families) == 1 else f"{family}."

    def size(self) -> float:
        """How many architectures the space holds (inf with a continuous param)."""
        return sum(space.size() for space in self.spaces().values())

    def corners(self) -> list[tuple[Family, Any]]:
        return [(space.family, config) for space in self.spaces().values()
                for config in space.corners()]

    def cost_bounds(self, image_size: int, num_classes: int) -> dict[str, tuple[int, int]]:
        """The smallest and largest params and MACs of target models the space allows."""
        from spaces.cost import target_and_proxy_costs  # torch: only when a study is made

        costs = [target_and_proxy_costs(fam, config, image_size, num_classes)
                 for fam, config in self.corners()]
        return {key: (min(c[key] for c in costs), max(c[key] for c in costs))
                for key in ("params", "macs")}

    def to_dict(self) -> dict[str, Any]:
        return {"families": list(self.families),
                "overrides": {k: {p: _jsonable(v) for p, v in o.items()}
                              for k, o in self.overrides.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        return cls(tuple(data["families"]), {k: dict(v) for k, v in data["overrides"].items()})

    def contains(self, family: Family, config: Any) -> bool:
        """Whether `config` is a point of this space (used for warm starts)."""
        return family.name in self.families and all(
            p.admits(getattr(config, p.name)) for p in self.spaces()[family.name].params)

    def params_of(self, family: Family, config: Any) -> dict[str, Any]:
        """Optuna params that make `suggest` return `config` (for enqueueing it)."""
        prefix = self._prefix(family.name)
        out = {"family": family.name} if prefix else {}
        for param in self.spaces()[family.name].params:
            if not param.fixed:
                out[prefix + param.name] = getattr(config, param.name)
        return out


def arch_hash(family: Family, config: Any) -> str:
    """The identity of an architecture: the same config of the same family, the same hash."""
    blob = json.dumps({"family": family.name, "config": asdict(config)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
