"""Checking a mapping read from a file against a dataclass, before anything is built.

The one place where the values of a YAML file (a study's `recipe:`, an exported model's
`config:` and `recipe:`) meet their types: unknown keys, missing keys and wrong types are
one UserError naming the key path (e.g. `run.yaml: recipe.lr: expected a number, got
'fast'`). Ranges are the dataclasses' own business (their `__post_init__`).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import Any

from spaces.errors import UserError

_NOUNS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def build(cls: type, values: Any, where: str) -> Any:
    """`cls(**values)`, once every key is known, present and of its field's type."""
    if not isinstance(values, Mapping):
        raise UserError(f"{where}: expected a mapping of {', '.join(names(cls))}, got "
                        f"{shown(values)}")
    known = names(cls)
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(known)}")
    missing = [f.name for f in fields(cls) if f.name not in values
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: value(v, hints[k], f"{where}.{k}") for k, v in values.items()})


def names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def value(v: Any, hint: Any, where: str) -> Any:
    """`v` as `hint` wants it (an int is a float; nothing else is converted), or a UserError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if v is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return value(v, option, where)
            except UserError as err:
                errors.append(err)
        raise errors[0]
    if hint is Any or hint is object:
        return v
    if origin in (tuple, list):
        if not isinstance(v, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {shown(v)}")
        (item, *_) = typing.get_args(hint) or (Any,)
        out = [value(x, item, f"{where}[{i}]") for i, x in enumerate(v)]
        return tuple(out) if origin is tuple else out
    if origin is dict or hint is dict:
        if not isinstance(v, Mapping):
            raise UserError(f"{where}: expected a mapping, got {shown(v)}")
        return dict(v)
    if hint in _NOUNS:
        ok = isinstance(v, hint) and not (hint is not bool and isinstance(v, bool))
        if hint is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if not ok:
            raise UserError(f"{where}: expected {_NOUNS[hint]}, got {shown(v)}")
        return v
    return v


def shown(v: Any) -> str:
    """A value as a message names it: its repr, or its kind for a mapping or a list."""
    if isinstance(v, Mapping):
        return "a mapping"
    if isinstance(v, (list, tuple)):
        return "a list"
    return repr(v)
