"""`patchnas train full`, `patchnas export`, `patchnas promote`, `patchnas search fidelity`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.cli import print_json
from search.cli_search import _storage_flags, _storage_url, _tracking_flags, _tracking_uri


def add_full_training(train_sub) -> None:
    full = train_sub.add_parser(
        "full", help="train an exported config on an ImageNet-layout folder (DDP, resume)")
    full.add_argument("config", metavar="CONFIG.yaml", help="a config from `patchnas export`")
    full.add_argument("--data", required=True, metavar="DIR",
                      help="a folder with train/<class>/* and val/<class>/*")
    full.add_argument("--epochs", type=int, help="default: the recipe's")
    full.add_argument("--max-steps", type=int, metavar="N",
                      help="stop after N optimizer steps (the schedule ends there)")
    full.add_argument("--batch-size", type=int, help="global batch (default: the recipe's; "
                                                     "the learning rate scales with it)")
    full.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
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
    full.add_argument("--checkpoint-every", type=int, default=500, metavar="STEPS",
                      help="also checkpoint every N steps (0: at epoch ends only)")
    full.add_argument("--seed", type=int, default=0)
    full.add_argument("--no-progress", action="store_true", help="no progress bar")
    _storage_flags(full)
    _tracking_flags(full)
    full.add_argument("--json", action="store_true", help="print one JSON document")
    full.set_defaults(run=_train_full)


def _train_full(args: argparse.Namespace) -> int:
    from search.full import default_out, in_torchrun, relaunch, train_full
    from search.workspace import workspace_dir
    from trainers.full import FullOptions

    if args.nproc_per_node != 1 and not in_torchrun():
        return relaunch(args.nproc_per_node, _without_nproc(args.argv))
    workspace = workspace_dir(args.workspace)
    out = Path(args.out) if args.out else default_out(workspace, args.config)
    options = FullOptions(
        data=Path(args.data), out=out, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, device=args.device, resume=args.resume,
        workers=FullOptions.workers if args.workers is None else args.workers,
        checkpoint_every=args.checkpoint_every, seed=args.seed,
        precision=args.precision, progress=not args.no_progress)
    result = train_full(args.config, options, tracking_uri=_tracking_uri(args),
                        storage_url=_storage_url(args))
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


def _selection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the study")
    parser.add_argument("--select", default="pareto",
                        help="pareto (default), knee, top-k:N, best-under:params=5e6")
    parser.add_argument("--out", metavar="DIR", help="default: <workspace>/exports/<study>")
    parser.add_argument("--target-size", type=int,
                        help="image size of the exported models (default: the study's, 224)")
    parser.add_argument("--confirm-seeds", type=int, default=0, metavar="N",
                        help="re-run the selected proxy configs with N more seeds first; "
                             "select on the means")
    parser.add_argument("--proxy-data", metavar="PATH",
                        help="the study's proxy data, if it moved (for --confirm-seeds)")
    parser.add_argument("--device", choices=("cuda", "cpu"),
                        help="for --confirm-seeds, and passed to the full trainings")
    _storage_flags(parser)


def add_export_commands(commands) -> None:
    exp = commands.add_parser("export", help="selected configs of a study as YAML files")
    _selection_flags(exp)
    exp.add_argument("--full-data", metavar="DIR",
                     help="the ImageNet-layout folder written into each config's command")
    exp.add_argument("--json", action="store_true", help="print one JSON document")
    exp.set_defaults(run=_export)

    pro = commands.add_parser("promote", help="export, then launch the full trainings")
    _selection_flags(pro)
    pro.add_argument("--launch", choices=("local", "torchrun", "print", "ray"), default="local")
    pro.add_argument("--ray-address", metavar="URL",
                     help="for --launch ray: the Ray dashboard, http://HEAD:8265 (default: "
                          "$RAY_ADDRESS, else the local cluster)")
    pro.add_argument("--full-data", required=True, metavar="DIR",
                     help="the ImageNet-layout folder to train on")
    pro.add_argument("--dry-run", action="store_true",
                     help="print what would run; write and run nothing")
    pro.add_argument("--nproc-per-node", type=int, default=1, help="for --launch torchrun")
    pro.add_argument("--epochs", type=int)
    pro.add_argument("--max-steps", type=int)
    pro.add_argument("--batch-size", type=int)
    _tracking_flags(pro)
    pro.add_argument("--json", action="store_true", help="print one JSON document")
    pro.set_defaults(run=_promote)


def _confirmer(args: argparse.Namespace):
    if not args.confirm_seeds:
        return None
    from search.confirm import Confirmer
    from search.workspace import workspace_dir

    return Confirmer(workspace_dir(args.workspace), args.device, args.proxy_data)


def _out(args: argparse.Namespace) -> Path:
    from search.workspace import workspace_dir

    return Path(args.out) if args.out else workspace_dir(args.workspace) / "exports" / args.name


def _export(args: argparse.Namespace) -> int:
    from search.export import export

    written = export(args.name, _storage_url(args), args.select, _out(args),
                     target_size=args.target_size, full_data=args.full_data,
                     confirm_seeds=args.confirm_seeds, confirm=_confirmer(args))
    if args.json:
        return print_json(written)
    for item in written:
        print(f"trial {item['trial']:>4}  {item['label']:<40} {item['path']}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from search.promote import LaunchOptions, promote

    extra: list[str] = []
    for flag in ("epochs", "max_steps", "batch_size", "device", "workspace"):
        value = getattr(args, flag)
        if value is not None:
            value = Path(value).resolve() if flag == "workspace" else value
            extra += [f"--{flag.replace('_', '-')}", str(value)]
    if args.no_tracking:
        extra.append("--no-tracking")
    elif args.tracking_uri:
        extra += ["--tracking-uri", args.tracking_uri]
    full_data = args.full_data
    if args.launch == "ray":  # a job runs elsewhere: paths must be absolute
        full_data = str(Path(full_data).resolve())
        from search.workspace import workspace_dir

        if args.workspace is None:
            extra += ["--workspace", str(workspace_dir(None).resolve())]
    opts = LaunchOptions(args.launch, full_data, args.nproc_per_node, tuple(extra),
                         args.ray_address, _tracking_uri(args) or "off")
    launched = promote(args.name, _storage_url(args), args.select, opts, out=_out(args),
                       target_size=args.target_size, confirm_seeds=args.confirm_seeds,
                       confirm=_confirmer(args), dry_run=args.dry_run)
    if args.json:
        print_json(launched)
    return 1 if any(item.get("exit_code") for item in launched) else 0


def add_fidelity_command(sub) -> None:
    fid = sub.add_parser("fidelity", help="rank correlation of proxy and full results")
    fid.add_argument("name")
    _storage_flags(fid)
    fid.add_argument("--json", action="store_true")
    fid.set_defaults(run=_fidelity)


def _fidelity(args: argparse.Namespace) -> int:
    from search.fidelity import fidelity
    from search.study import load_study

    report = fidelity(load_study(args.name, _storage_url(args)))
    if args.json:
        return print_json(report)
    for name in ("kendall_tau", "spearman"):
        r = report[name]
        print(f"{name:<12} {r['value']:+.3f}  95% CI [{r['ci95'][0]:+.3f}, "
              f"{r['ci95'][1]:+.3f}]  over {report['n']} promoted configs")
    if report["partial"]:
        print(f"note: {report['partial']} full result(s) come from shortened runs")
    return 0
