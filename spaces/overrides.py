"""Gather a user's parameter settings from `--set` items and a `--space` YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from spaces.errors import UserError
from spaces.params import parse_assignments


def read_yaml_mapping(path: str | Path, flag: str, example: str) -> dict[str, Any]:
    """The YAML mapping in the file that `flag` names; one clear error otherwise."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{flag} {path}: no such file") from None
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{flag} {path}: not a readable YAML file ({_first_line(err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise UserError(f"{flag} {path}: expected a mapping, e.g. '{example}'")
    return data


def load_space_file(path: str | Path) -> dict[str, Any]:
    """A YAML mapping NAME: SPEC (a value, 'LO..HI[:STEP]', 'a,b,c' or a list of choices)."""
    return check_specs(read_yaml_mapping(path, "--space", "h: 64..256"), f"--space {path}")


def check_specs(specs: dict[str, Any], where: str) -> dict[str, Any]:
    """Each NAME: SPEC of a file is a value, a range string or a list of values."""
    def scalar(v: Any) -> bool:
        return isinstance(v, (str, int, float))  # a bool too (act: true is refused later)

    for name, spec in specs.items():
        if not (scalar(spec) or isinstance(spec, list) and spec and all(map(scalar, spec))):
            raise UserError(f"{where}: {name}: expected a value, a range such as 64..256 or a "
                            f"list of choices, got {spec!r}")
    return specs


def collect_overrides(sets: list[str] | None, space_file: str | None) -> dict[str, Any]:
    """The file's settings, then `--set` items on top (flags win)."""
    overrides = load_space_file(space_file) if space_file else {}
    overrides.update(parse_assignments(sets or []))
    return overrides


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
