"""The YAML a search exports and the full trainer runs: model, recipe, data, provenance.

    model:      family, config (at image_size), image_size, proxy_config (32 px)
    recipe:     trainers.recipes.FullRecipe fields (the family's published recipe by default)
    data:       format (imagefolder), layout, image_size
    provenance: study, trial, MLflow run, proxy metrics, costs, seed, git, versions
    command:    the exact command that trains it
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

import spaces
from spaces import checks
from spaces.errors import UserError
from spaces.overrides import read_yaml_mapping
from trainers.recipes import FullRecipe

SECTIONS = ("model", "recipe", "data", "provenance", "command")


@dataclass(frozen=True)
class FullConfig:
    family: str
    config: Any  # the family's config dataclass, at image_size
    image_size: int
    recipe: FullRecipe
    proxy_config: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    command: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {"family": self.family, "config": asdict(self.config),
                      "image_size": self.image_size, "proxy_config": self.proxy_config},
            "recipe": self.recipe.as_dict(),
            "data": dict(self.data),
            "provenance": dict(self.provenance),
            "command": self.command,
        }

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, doc: Any, where: str = "the config") -> FullConfig:
        if not isinstance(doc, dict):
            raise UserError(f"{where}: expected a mapping with {', '.join(SECTIONS)}")
        for section in ("model", "recipe"):
            if not isinstance(doc.get(section), dict):
                raise UserError(f"{where}: the `{section}` section is missing")
        model = doc["model"]
        for key in ("family", "config", "image_size"):
            if key not in model:
                raise UserError(f"{where}: model.{key} is missing")
        try:
            family = spaces.get(model["family"])
            config = family.config_of(model["config"], f"model.config ({family.name})")
            image_size = checks.value(model["image_size"], int, "model.image_size")
            family.check(config, image_size)
            recipe = FullRecipe.from_dict(doc["recipe"])
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        return cls(family.name, config, image_size, recipe, model.get("proxy_config"),
                   dict(doc.get("data") or {}), dict(doc.get("provenance") or {}),
                   str(doc.get("command") or ""))

    @classmethod
    def load(cls, path: str | Path) -> FullConfig:
        doc = read_yaml_mapping(path, "config", "model: {family: convmixer, ...}")
        return cls.from_dict(doc, str(path))
