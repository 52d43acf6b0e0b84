"""What every command group shares: flags, settings resolution, JSON output.

Imports nothing heavy (no torch, optuna, ray or mlflow): `patchnas --help` and the read-only
commands must start fast; each command imports its library function when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from search.study import settings
from spaces import checks
from spaces.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, but a wrong flag is one line (with where to read more), not usage + error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def at_least(low: float, kind: type = int, above: bool = False):
    """An argparse type: a number of `kind` that is `low` or more (more than `low`, with
    `above`). 0 is a value, not "unset": refused where it makes no sense, never replaced."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if value < low or (above and value == low):
            wanted = f"more than {low:g}" if above else f"{low:g} or more"
            raise argparse.ArgumentTypeError(f"{text} is not allowed here; give {wanted}")
        return value
    parse.__name__ = kind.__name__
    return parse


COUNT = at_least(1)  # trials, epochs, workers, images, batch sizes
SECONDS = POSITIVE = at_least(0, float, above=True)  # timeouts, limits, learning rates


class _SetAction(argparse.Action):
    """`--set h=64 d=2` and `--set h=64 --set d=2` both append to one list."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest) or [])
        items.extend(values)
        setattr(namespace, self.dest, items)


def add_set_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="sets", nargs="+", action=_SetAction, default=[], metavar="NAME=SPEC",
        help="set parameters in the 32 px search space's terms: NAME=VALUE fixes, "
             "NAME=LO..HI[:STEP] a range, NAME=a,b,c choices")


def read_config(parser: argparse.ArgumentParser, path: str | None,
                extra: dict[str, type]) -> dict[str, Any]:
    """A `--config` YAML file, each key checked as its flag would be (the same type, range
    and choices: the flags are the one definition of a setting), before anything is created.
    `extra` names the keys only a file has, with the type of their value (str, dict, list).
    Keys may be spelled with - or _ (`val-size` or `val_size`)."""
    if not path:
        return {}
    from spaces.overrides import read_yaml_mapping

    data = read_yaml_mapping(path, "--config", "family: convmixer")
    skip = ("help", "config", "json", "sets")  # `set:` is in `extra`, as a mapping or list
    actions = {a.dest: a for a in parser._actions if a.dest not in skip}
    out: dict[str, Any] = {}
    for raw, v in data.items():
        key, where = raw.replace("-", "_"), f"--config {path}: {raw}"
        if key in extra:
            wanted = extra[key]
            if v is not None and not isinstance(v, wanted):
                raise UserError(f"{where}: expected {_KIND[wanted]}, got {checks.shown(v)}")
            out[key] = v
        elif key in actions:
            out[key] = None if v is None else _as_flag(actions[key], v, where)
        else:
            known = sorted([*actions, *extra])
            raise UserError(f"--config {path}: unknown setting {raw!r}; known: "
                            f"{', '.join(known)}")
    return out


_KIND = {str: "a string", dict: "a mapping", list: "a list", (dict, list): "a mapping or a list"}


def _as_flag(action: argparse.Action, v: Any, where: str) -> Any:
    """A YAML value parsed as the text of its flag."""
    if action.nargs == 0:  # a switch (--no-tracking): true or false
        if not isinstance(v, bool):
            raise UserError(f"{where}: expected true or false, got {checks.shown(v)}")
        return v
    if isinstance(v, (dict, list)) or (isinstance(v, bool) and action.type is not None):
        raise UserError(f"{where}: expected one value, got {checks.shown(v)}")
    text = str(v)
    try:
        out = action.type(text) if action.type else text
    except (argparse.ArgumentTypeError, ValueError) as err:
        raise UserError(f"{where}: {err}") from None
    if action.choices is not None and out not in action.choices:
        raise UserError(f"{where}: {text!r} is not one of {', '.join(map(str, action.choices))}")
    return out


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """One model: `PRESET` or `--family F`, with `--set`/`--space` single values."""
    parser.add_argument("preset", nargs="?", help="a preset name (see `patchnas spaces list`)")
    parser.add_argument("--family", help="a family; unset parameters take its default "
                                         "preset's")
    add_set_flag(parser)
    parser.add_argument("--space", metavar="FILE", help="a YAML file of NAME: VALUE")


def add_workspace_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", metavar="DIR",
                        help="workspace folder (default: $PATCHNAS_WORKSPACE, else "
                             "./patchnas-workspace)")


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="PATH",
                        help="dataset folder or archive (default: $PATCHNAS_DATA, else "
                             "<workspace>/data/cifar10, downloaded there when online)")
    parser.add_argument("--download", action="store_true",
                        help="download CIFAR-10 to --data if it is missing (needs internet)")
    parser.add_argument("--subset", type=COUNT, metavar="N", help="train on N images only")
    parser.add_argument("--val-size", type=COUNT, default=5000,
                        help="held-out validation images from the train set")
    add_workspace_flag(parser)


def add_storage_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna storage (default: $PATCHNAS_STORAGE, else "
                             "<workspace>/optuna.db)")
    add_workspace_flag(parser)


def add_tracking_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking URI (default: $PATCHNAS_TRACKING_URI, else "
                             "<workspace>/mlflow.db; an http:// MLflow server for workers on "
                             "several hosts)")
    parser.add_argument("--no-tracking", action="store_true", help="log nothing to MLflow")


def storage_url(args: argparse.Namespace) -> str:
    """The storage of every command that takes `--storage` (search.study.settings)."""
    return settings.storage_url(args.storage, args.workspace)


def tracking_uri(args: argparse.Namespace) -> str | None:
    """--no-tracking, else --tracking-uri, else $PATCHNAS_TRACKING_URI ("off"), else the
    workspace's MLflow database."""
    from search.study.reach import check_tracking

    uri = settings.tracking_uri(args.tracking_uri, args.workspace, off=args.no_tracking)
    if uri is not None:
        check_tracking(uri)  # a server that is down or a damaged file: one line, up front
    return uri


def print_json(data: Any) -> int:
    """stdout carries exactly this one JSON document."""
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def print_front(front: list[dict[str, Any]]) -> None:
    print(f"Pareto front ({len(front)}):")
    for m in front:
        values = "  ".join(f"{k} {_fmt(v)}" for k, v in m["values"].items())
        rank = m.get("rank") or {}
        ranked = (f"  {rank['by']} {_fmt(rank['score'])}"
                  if rank.get("by") not in (None, "last") and rank.get("score") is not None
                  else "")  # by last val_acc: the same as the value shown
        print(f"  #{m['trial']:<4} {values}{ranked}  {m['label']}")


def _fmt(v: float) -> str:
    return f"{v:.4f}" if abs(v) < 10 else f"{v:,.0f}"
