"""`patchnas train proxy|full`: train one model, outside a study's search."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.cli.common import (
    COUNT,
    POSITIVE,
    add_data_flags,
    add_model_flags,
    add_storage_flags,
    add_tracking_flags,
    at_least,
    print_json,
    storage_url,
    tracking_uri,
)
from trainers.recipes import Recipe
from trainers.schedule import SCHEDULES


def add_commands(commands) -> None:
    train_cmd = commands.add_parser("train", help="train one model")
    train_sub = train_cmd.add_subparsers(dest="train_command", required=True,
                                         metavar="SUBCOMMAND")
    _add_proxy(train_sub)
    _add_full(train_sub)


def _add_proxy(train_sub) -> None:
    proxy = train_sub.add_parser(
        "proxy", help="a short CIFAR-10 proxy run of a preset (as its 32 px proxy) or a config")
    add_model_flags(proxy)
    proxy.add_argument("--epochs", type=COUNT, default=10)
    proxy.add_argument("--batch-size", type=COUNT, default=Recipe.batch_size)
    proxy.add_argument("--lr", type=POSITIVE, default=Recipe.lr, help="peak learning rate")
    proxy.add_argument("--weight-decay", type=at_least(0, float), default=Recipe.weight_decay)
    proxy.add_argument("--schedule", choices=SCHEDULES, default=Recipe.schedule)
    proxy.add_argument("--label-smoothing", type=at_least(0, float), default=Recipe.label_smoothing)
    proxy.add_argument("--cutout", type=at_least(0), default=Recipe.cutout, metavar="SIZE",
                       help="side of a random zeroed square (0: off)")
    proxy.add_argument("--drop-path", type=at_least(0, float), default=Recipe.drop_path)
    add_data_flags(proxy)
    proxy.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    proxy.add_argument("--proxy-size", type=COUNT, metavar="PX",
                       help="train at PX px, downsampled on the device (default: the data's "
                            "size); --set values stay in 32 px terms")
    proxy.add_argument("--compile", action="store_true", help="torch.compile the model")
    proxy.add_argument("--seed", type=int, default=0)
    proxy.add_argument("--test", action="store_true",
                       help="also report test accuracy (never used for selection)")
    proxy.add_argument("--checkpoint", metavar="PATH",
                       help="write a checkpoint after each epoch; resume from it if it exists")
    proxy.add_argument("--json", action="store_true", help="print one JSON document")
    proxy.set_defaults(run=_train_proxy)


def _train_proxy(args: argparse.Namespace) -> int:
    from search.backends.train_one import train_proxy
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
                         checkpoint=args.checkpoint, proxy_size=args.proxy_size)
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


def _add_full(train_sub) -> None:
    full = train_sub.add_parser(
        "full", help="train an exported config on an ImageNet-layout folder (DDP, resume)")
    full.add_argument("config", metavar="CONFIG.yaml", help="a config from `patchnas export`")
    full.add_argument("--data", required=True, metavar="DIR",
                      help="a folder with train/<class>/* and val/<class>/*")
    full.add_argument("--epochs", type=COUNT, help="default: the recipe's")
    full.add_argument("--max-steps", type=COUNT, metavar="N",
                      help="stop after N optimizer steps (the schedule ends there)")
    full.add_argument("--batch-size", type=COUNT, help="global batch (default: the recipe's; "
                                                     "the learning rate scales with it)")
    full.add_argument("--nproc-per-node", type=COUNT, default=1, metavar="N",
                      help="processes on this node through torchrun (DDP)")
    full.add_argument("--resume", action="store_true",
                      help="continue from the checkpoint in --out")
    full.add_argument("--device", choices=("cuda", "cpu"))
    full.add_argument("--precision", choices=("bf16", "fp16", "fp32"),
                      help="default: bf16 on CUDA, fp32 on the CPU")
    full.add_argument("--out", metavar="DIR",
                      help="checkpoints and weights (default: <workspace>/full/<config>)")
    full.add_argument("--workers", type=int, help="DataLoader workers per process "
                                                  "(default: up to 4)")
    full.add_argument("--loader", choices=("device", "torchvision"), default="device",
                      help="device: each image decoded once into a uint8 cache, augmented in "
                           "batches on the device (default); torchvision: decoded and "
                           "augmented per image in DataLoader workers (the baseline)")
    full.add_argument("--num-classes-from-data", action="store_true",
                      help="train a model with --data's class count even when the config "
                           "was exported for another")
    full.add_argument("--checkpoint-every", type=int, default=500, metavar="STEPS",
                      help="also checkpoint every N steps (0: at epoch ends only)")
    full.add_argument("--seed", type=int, default=0)
    full.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_storage_flags(full)
    add_tracking_flags(full)
    full.add_argument("--json", action="store_true", help="print one JSON document")
    full.set_defaults(run=_train_full)


def _train_full(args: argparse.Namespace) -> int:
    from search.promote.full import default_out, in_torchrun, relaunch, train_full
    from search.study.workspace import cache_dir, workspace_dir
    from trainers.full import FullOptions

    if args.nproc_per_node != 1 and not in_torchrun():
        return relaunch(args.nproc_per_node, _without_nproc(args.argv))
    workspace = workspace_dir(args.workspace)
    out = Path(args.out) if args.out else default_out(workspace, args.config)
    options = FullOptions(
        data=Path(args.data), out=out, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, device=args.device, resume=args.resume,
        workers=FullOptions.workers if args.workers is None else args.workers,
        loader=args.loader, cache=cache_dir(workspace),
        checkpoint_every=args.checkpoint_every, seed=args.seed,
        precision=args.precision, progress=not args.no_progress)
    result = train_full(args.config, options, tracking_uri=tracking_uri(args),
                        storage_url=storage_url(args),
                        classes_from_data=args.num_classes_from_data)
    if result is None:  # not the main process of a DDP run
        return 0
    if args.json:
        return print_json(result)
    print(f"top1 {result['top1']:.4f}  top5 {result['top5']:.4f}  steps {result['steps']}  "
          f"weights {result['weights']}", file=sys.stderr)
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--nproc-per-node":
            skip = True
            continue
        if item.startswith("--nproc-per-node="):
            continue
        out.append(item)
    return out
