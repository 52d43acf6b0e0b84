"""`patchnas spaces list|show`: the searchable families, their presets and costs."""

from __future__ import annotations

import argparse

from search.cli.common import COUNT, add_model_flags, at_least, print_json


def add_commands(commands) -> None:
    spaces_cmd = commands.add_parser("spaces", help="the searchable families and their presets")
    sub = spaces_cmd.add_subparsers(dest="spaces_command", required=True, metavar="SUBCOMMAND")
    listing = sub.add_parser("list", help="families, parameters, ranges, presets")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    listing.set_defaults(run=_list)

    show = sub.add_parser(
        "show", help="one model: config, params and MACs at the target size and at 32 px")
    add_model_flags(show)
    show.add_argument("--image-size", type=COUNT,
                      help="target image size (a preset's native size, else 224)")
    show.add_argument("--num-classes", type=at_least(2),
                      help="target classes (a preset's own, else 1000)")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    show.set_defaults(run=_show)


def _list(args: argparse.Namespace) -> None:
    from spaces.describe import listing

    families = listing()
    if args.json:
        return print_json(families)
    for fam in families:
        print(f"{fam['family']}")
        for p in fam["params"]:
            domain = (",".join(map(str, p["choices"])) if "choices" in p
                      else f"{p['low']}..{p['high']}" + (f":{p['step']}" if p["step"] else ""))
            print(f"  {p['name']:<7} {p['type']:<6} {domain:<24} {p['help']}")
        print(f"  presets: {', '.join(fam['presets'])}")
        print(f"  transfer: {fam['transfer_rule']}\n")


def _show(args: argparse.Namespace) -> None:
    from spaces.describe import show
    from spaces.overrides import collect_overrides

    overrides = collect_overrides(args.sets, args.space)
    result = show(preset=args.preset, family=args.family, overrides=overrides,
                  image_size=args.image_size, num_classes=args.num_classes)
    if args.json:
        return print_json(result)
    print(f"{result['label']}  ({result['image_size']} px, {result['num_classes']} classes)")
    print(f"  params {result['params'] / 1e6:.2f}M   MACs {result['macs'] / 1e9:.3f}G   "
          f"MACs@224 {result['macs_224'] / 1e9:.3f}G")
    print(f"  proxy at 32 px, 10 classes: params {result['proxy_params'] / 1e6:.2f}M   "
          f"MACs {result['proxy_macs'] / 1e9:.3f}G")
    print(f"  config: {result['config']}")
    print(f"  proxy config: {result['proxy_config']}")
