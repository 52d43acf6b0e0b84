"""The `patchnas` command. Thin: each subcommand parses flags and calls a library function.

With `--json`, stdout carries exactly one JSON document; progress and logs go to stderr.
Mistakes a user can make end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from spaces.errors import UserError

EXIT_USER_ERROR = 2


def _version() -> str:
    try:
        return version("patchnas")
    except PackageNotFoundError:
        return "unknown"


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patchnas",
        description="Multi-objective architecture search for ConvMixer, ConvMLP and CoAtNet.")
    parser.add_argument("--version", action="version", version=f"patchnas {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    spaces_cmd = commands.add_parser("spaces", help="the searchable families and their presets")
    spaces_sub = spaces_cmd.add_subparsers(dest="spaces_command", required=True,
                                           metavar="SUBCOMMAND")
    listing = spaces_sub.add_parser("list", help="families, parameters, ranges, presets")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    listing.set_defaults(run=_spaces_list)

    show = spaces_sub.add_parser(
        "show", help="one model: config, params and MACs at the target size and at 32 px")
    show.add_argument("preset", nargs="?", help="a preset name (see `patchnas spaces list`)")
    show.add_argument("--family", help="a family; unset parameters take its default preset's")
    add_set_flag(show)
    show.add_argument("--space", metavar="FILE", help="a YAML file of NAME: SPEC")
    show.add_argument("--image-size", type=int,
                      help="target image size (a preset's native size, else 224)")
    show.add_argument("--num-classes", type=int,
                      help="target classes (a preset's own, else 1000)")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    show.set_defaults(run=_spaces_show)
    return parser


def _spaces_list(args: argparse.Namespace) -> None:
    from spaces.describe import listing

    families = listing()
    if args.json:
        return _print_json(families)
    for fam in families:
        print(f"{fam['family']}")
        for p in fam["params"]:
            domain = (",".join(map(str, p["choices"])) if "choices" in p
                      else f"{p['low']}..{p['high']}" + (f":{p['step']}" if p["step"] else ""))
            print(f"  {p['name']:<7} {p['type']:<6} {domain:<24} {p['help']}")
        print(f"  presets: {', '.join(fam['presets'])}")
        print(f"  transfer: {fam['transfer_rule']}\n")


def _spaces_show(args: argparse.Namespace) -> None:
    from spaces.describe import show
    from spaces.overrides import collect_overrides

    overrides = collect_overrides(args.sets, args.space)
    if args.preset is None and args.family is None:
        raise UserError("name a preset (see `patchnas spaces list`) or give --family")
    result = show(preset=args.preset, family=args.family, overrides=overrides,
                  image_size=args.image_size, num_classes=args.num_classes)
    if args.json:
        return _print_json(result)
    print(f"{result['label']}  ({result['image_size']} px, {result['num_classes']} classes)")
    print(f"  params {result['params'] / 1e6:.2f}M   MACs {result['macs'] / 1e9:.3f}G   "
          f"MACs@224 {result['macs_224'] / 1e9:.3f}G")
    print(f"  proxy at 32 px, 10 classes: params {result['proxy_params'] / 1e6:.2f}M   "
          f"MACs {result['macs_32'] / 1e9:.3f}G")
    print(f"  config: {result['config']}")
    print(f"  proxy config: {result['proxy_config']}")


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UserError as err:
        print(f"patchnas: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("patchnas: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
