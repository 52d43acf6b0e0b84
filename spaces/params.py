"""Searchable parameters, the `NAME=SPEC` override syntax, and define-by-run suggestion.

Every searchable value is a scalar `Param` with a default domain (a `Range` or `Choices`) and
hard limits (`low`/`high`, `allowed`, `check`) that say what still builds a valid model. A user
may narrow or widen a domain with `NAME=SPEC`:

    h=64          fix the value
    h=64..512     an integer (or float) range, step 1 for ints
    h=64..512:32  a range with a step
    k=3,5,7       choices
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from spaces.errors import UserError

Value = int | float | str


@dataclass(frozen=True)
class Range:
    low: int | float
    high: int | float
    step: int | float | None = None
    log: bool = False

    def spec(self) -> str:
        text = f"{self.low}..{self.high}"
        if self.step not in (None, 1):
            text += f":{self.step}"
        return text + (" (log)" if self.log else "")


@dataclass(frozen=True)
class Choices:
    values: tuple[Value, ...]

    def spec(self) -> str:
        return ",".join(str(v) for v in self.values)


@dataclass(frozen=True)
class Param:
    """One searchable scalar. `type` is int, float or str."""

    name: str
    type: type
    domain: Range | Choices
    help: str = ""
    low: float | None = None  # hard limits: what still builds a valid model
    high: float | None = None
    allowed: tuple[str, ...] | None = None
    check: Callable[[Any], bool] | None = field(default=None, compare=False)
    rule: str = ""  # words for `check`, used in error messages
    monotone: bool = True  # costs grow with the value (used to find a space's cost bounds)

    @property
    def fixed(self) -> bool:
        return isinstance(self.domain, Choices) and len(self.domain.values) == 1

    def validate(self, value: Value) -> Value:
        """Return `value` converted to this param's type, or raise UserError."""
        try:
            if self.type is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                value = int(value)
            elif self.type is float:
                value = float(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise UserError(
                f"{self.name}={value!r} is not a valid {self.type.__name__}"
            ) from None
        if self.allowed is not None and value not in self.allowed:
            why = f" ({self.rule})" if self.rule else ""
            raise UserError(f"{self.name}={value} is not allowed{why}; "
                            f"choose from {', '.join(self.allowed)}")
        if self.low is not None and value < self.low:
            raise UserError(f"{self.name}={value} is out of range: it must be >= {self.low}")
        if self.high is not None and value > self.high:
            raise UserError(f"{self.name}={value} is out of range: it must be <= {self.high}")
        if self.check is not None and not self.check(value):
            raise UserError(f"{self.name}={value} is invalid: {self.name} must be {self.rule}")
        return value

    def with_spec(self, spec: Value | list | tuple) -> Param:
        """This param with its domain replaced by a user's SPEC (string, value or list)."""
        return replace(self, domain=self._parse(spec))

    def _parse(self, spec: Value | list | tuple) -> Range | Choices:
        if isinstance(spec, (list, tuple)):
            return self._choices(spec)
        if not isinstance(spec, str):
            return Choices((self.validate(spec),))
        text = spec.strip()
        if not text:
            raise UserError(f"{self.name}= needs a value, a range LO..HI[:STEP] or choices a,b,c")
        if ".." in text:
            return self._range(text)
        if "," in text:
            return self._choices([v for v in text.split(",") if v.strip()])
        return Choices((self.validate(_scalar(text)),))

    def _choices(self, items: Iterable) -> Choices:
        values = tuple(dict.fromkeys(self.validate(_scalar(v)) for v in items))
        if not values:
            raise UserError(f"{self.name}: an empty list of choices")
        return Choices(values)

    def _range(self, text: str) -> Range:
        if self.type is str:
            raise UserError(f"{self.name} takes choices, not a range (e.g. {self.domain.spec()})")
        bounds, _, step_text = text.partition(":")
        low_text, _, high_text = bounds.partition("..")
        low, high = self._number(low_text, text), self._number(high_text, text)
        step = self._number(step_text, text) if step_text else None
        for end in (low, high):  # hard limits here; `check` is applied to every value below
            replace(self, check=None).validate(end)
        if low > high:
            raise UserError(f"{self.name}={text}: the low end is above the high end")
        if step is not None and step <= 0:
            raise UserError(f"{self.name}={text}: the step must be positive")
        if self.type is int and self.check is not None:
            bad = next((v for v in range(low, high + 1, step or 1) if not self.check(v)), None)
            if bad is not None:
                raise UserError(
                    f"{self.name}={text} includes {bad}, but {self.name} must be {self.rule}"
                )
        return Range(low, high, step)

    def _number(self, part: str, text: str) -> int | float:
        value = _scalar(part)
        if isinstance(value, str) or (self.type is int and not float(value).is_integer()):
            raise UserError(f"{self.name}={text}: write a range of {self.type.__name__}s as "
                            f"LO..HI or LO..HI:STEP")
        return self.type(value)

    def admits(self, value: Value) -> bool:
        """Whether `value` lies in this param's domain (on its step, for ranges)."""
        d = self.domain
        if isinstance(d, Choices):
            return value in d.values
        return d.low <= value <= d.high and not (d.step and (value - d.low) % d.step)

    def count(self) -> float:
        """How many values this param can take (inf for a continuous range)."""
        d = self.domain
        if isinstance(d, Choices):
            return len(d.values)
        if self.type is int or d.step:
            return int((d.high - d.low) // (d.step or 1)) + 1
        return math.inf

    def values(self) -> tuple[Value, ...]:
        """Every value this param can take (a discrete domain)."""
        d = self.domain
        if isinstance(d, Choices):
            return d.values
        step = d.step or 1
        return tuple(d.low + i * step for i in range(int((d.high - d.low) // step) + 1))

    def extremes(self) -> tuple[Value, ...]:
        """The values at which this param can make a model smallest or largest."""
        d = self.domain
        if isinstance(d, Choices):
            return d.values
        return (d.low, d.high)

    def suggest(self, trial: Any, prefix: str = "") -> Value:
        """Ask an Optuna-style trial for a value (fixed values are not asked for)."""
        name = prefix + self.name
        domain = self.domain
        if isinstance(domain, Choices):
            if len(domain.values) == 1:
                return domain.values[0]
            return trial.suggest_categorical(name, list(domain.values))
        if self.type is int:
            return trial.suggest_int(name, domain.low, domain.high, step=domain.step or 1,
                                     log=domain.log)
        return trial.suggest_float(name, domain.low, domain.high, step=domain.step,
                                   log=domain.log)

    def describe(self) -> dict:
        """A JSON-friendly description for `patchnas spaces list`."""
        d = self.domain
        out: dict[str, Any] = {"name": self.name, "type": self.type.__name__, "help": self.help}
        if isinstance(d, Range):
            out.update(low=d.low, high=d.high, step=d.step, log=d.log)
        else:
            out["choices"] = list(d.values)
        return out


def _scalar(text: Any) -> Value:
    """'64' -> 64, '0.5' -> 0.5, 'gelu' -> 'gelu' (YAML values pass through)."""
    if not isinstance(text, str):
        return text
    text = text.strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """`["h=64", "d=2..8"]` -> `{"h": "64", "d": "2..8"}`; later items win."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--set {item!r}: write NAME=SPEC, e.g. h=256 or d=2..8 or k=3,5")
        out[name.strip()] = spec.strip()
    return out


def apply_overrides(params: Iterable[Param], overrides: Mapping[str, Any],
                    family: str) -> tuple[Param, ...]:
    """The family's params with each override applied; unknown names are an error."""
    params = tuple(params)
    by_name = {p.name: p for p in params}
    unknown = [name for name in overrides if name not in by_name]
    if unknown:
        raise UserError(
            f"unknown parameter {unknown[0]!r} for family {family}; "
            f"its parameters are {', '.join(by_name)}"
        )
    return tuple(p.with_spec(overrides[p.name]) if p.name in overrides else p for p in params)
