"""The `patchnas` command. Thin: each subcommand parses flags and calls a library function.

With `--json`, stdout carries exactly one JSON document; progress and logs go to stderr.
Mistakes a user can make end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from spaces.errors import UserError
from trainers.proxy import Recipe
from trainers.schedule import SCHEDULES

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


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """One model: `PRESET` or `--family F`, with `--set`/`--space` single values."""
    parser.add_argument("preset", nargs="?", help="a preset name (see `patchnas spaces list`)")
    parser.add_argument("--family", help="a family; unset parameters take its default "
                                         "preset's")
    add_set_flag(parser)
    parser.add_argument("--space", metavar="FILE", help="a YAML file of NAME: VALUE")


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
    add_model_flags(show)
    show.add_argument("--image-size", type=int,
                      help="target image size (a preset's native size, else 224)")
    show.add_argument("--num-classes", type=int,
                      help="target classes (a preset's own, else 1000)")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    show.set_defaults(run=_spaces_show)

    train_cmd = commands.add_parser("train", help="train one model")
    train_sub = train_cmd.add_subparsers(dest="train_command", required=True,
                                         metavar="SUBCOMMAND")
    proxy = train_sub.add_parser(
        "proxy", help="a short CIFAR-10 proxy run of a preset (as its 32 px proxy) or a config")
    add_model_flags(proxy)
    proxy.add_argument("--epochs", type=int, default=10)
    proxy.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    proxy.add_argument("--lr", type=float, default=Recipe.lr, help="peak learning rate")
    proxy.add_argument("--weight-decay", type=float, default=Recipe.weight_decay)
    proxy.add_argument("--schedule", choices=SCHEDULES, default=Recipe.schedule)
    proxy.add_argument("--label-smoothing", type=float, default=Recipe.label_smoothing)
    proxy.add_argument("--cutout", type=int, default=Recipe.cutout, metavar="SIZE",
                       help="side of a random zeroed square (0: off)")
    proxy.add_argument("--drop-path", type=float, default=Recipe.drop_path)
    add_data_flags(proxy)
    proxy.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    proxy.add_argument("--compile", action="store_true", help="torch.compile the model")
    proxy.add_argument("--seed", type=int, default=0)
    proxy.add_argument("--test", action="store_true",
                       help="also report test accuracy (never used for selection)")
    proxy.add_argument("--checkpoint", metavar="PATH",
                       help="write a checkpoint after each epoch; resume from it if it exists")
    proxy.add_argument("--json", action="store_true", help="print one JSON document")
    proxy.set_defaults(run=_train_proxy)

    from search.cli_full import add_export_commands, add_fidelity_command, add_full_training
    from search.cli_search import add_search_commands

    add_full_training(train_sub)
    search_sub = add_search_commands(commands)
    add_fidelity_command(search_sub)
    add_export_commands(commands)

    ui = commands.add_parser("ui", help="the MLflow UI on 127.0.0.1 for the workspace's runs")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--workspace", metavar="DIR")
    ui.add_argument("--tracking-uri", metavar="URI", help="default: <workspace>/mlflow.db")
    ui.set_defaults(run=_ui)
    return parser


def _ui(args: argparse.Namespace) -> int:
    from search.workspace import workspace_dir
    from tracking.runs import default_uri
    from tracking.ui import serve

    workspace = workspace_dir(args.workspace)
    uri = args.tracking_uri or default_uri(workspace)
    if uri.startswith("sqlite:///") and not (workspace / "mlflow.db").exists() \
            and not args.tracking_uri:
        raise UserError(f"no MLflow runs in {workspace} yet: run a study first "
                        f"(patchnas search run ...) or give --workspace / --tracking-uri")
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: give a port between 1 and 65535")
    return serve(uri, args.port, log=lambda m: print(m, file=sys.stderr, flush=True))


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="PATH",
                        help="dataset folder or archive (default: $PATCHNAS_DATA, else "
                             "<workspace>/data/cifar10, downloaded there when online)")
    parser.add_argument("--download", action="store_true",
                        help="download CIFAR-10 to --data if it is missing (needs internet)")
    parser.add_argument("--subset", type=int, metavar="N", help="train on N images only")
    parser.add_argument("--val-size", type=int, default=5000,
                        help="held-out validation images from the train set")
    parser.add_argument("--workspace", metavar="DIR",
                        help="workspace folder (default: $PATCHNAS_WORKSPACE, else "
                             "./patchnas-workspace)")


def _spaces_list(args: argparse.Namespace) -> None:
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


def _spaces_show(args: argparse.Namespace) -> None:
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
          f"MACs {result['macs_32'] / 1e9:.3f}G")
    print(f"  config: {result['config']}")
    print(f"  proxy config: {result['proxy_config']}")


def _train_proxy(args: argparse.Namespace) -> int:
    from search.train import train_proxy
    from spaces.overrides import collect_overrides

    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    weight_decay=args.weight_decay, schedule=args.schedule,
                    label_smoothing=args.label_smoothing, cutout=args.cutout,
                    drop_path=args.drop_path)
    result = train_proxy(preset=args.preset, family=args.family,
                         overrides=collect_overrides(args.sets, args.space), recipe=recipe,
                         data=args.data, workspace=args.workspace, device=args.device,
                         subset=args.subset, val_size=args.val_size, compile=args.compile,
                         seed=args.seed, evaluate_test=args.test, download=args.download,
                         checkpoint=args.checkpoint)
    if args.json:
        print_json(result)
    else:
        test = f"  test_acc {result['test_acc']:.4f}" if args.test else ""
        print(f"{result['status']}: val_acc {result['val_acc']}{test}  epochs "
              f"{result['epochs']}  {result['seconds']:.1f}s")
    if result["status"] in ("diverged", "oom"):
        print(f"patchnas: the run ended early: {result['reason']}", file=sys.stderr)
        return 1
    return 0


def print_json(data: Any) -> int:
    """stdout carries exactly this one JSON document."""
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `train full --nproc-per-node N` runs itself again under torchrun
    try:
        code = args.run(args) or 0
    except UserError as err:
        print(f"patchnas: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("patchnas: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `patchnas ... --json | head`: the reader left; not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
