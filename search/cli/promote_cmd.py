"""`patchnas export`, `patchnas promote`, `patchnas search fidelity`: from a study's front
to full training and back."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.cli.common import (
    COUNT,
    add_storage_flags,
    add_tracking_flags,
    at_least,
    print_json,
    storage_url,
    tracking_uri,
)


def _selection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the study")
    parser.add_argument("--select", default="pareto",
                        help="pareto (default), knee, top-k:N, best-under:params=5e6")
    parser.add_argument("--out", metavar="DIR", help="default: <workspace>/exports/<study>")
    parser.add_argument("--target-size", type=COUNT,
                        help="image size of the exported models (default: that of the "
                             "--full-data images, else the study's, 224)")
    parser.add_argument("--target-classes", type=at_least(2), metavar="N",
                        help="classes of the exported models (default: --full-data's class "
                             "folders, else the study's, 1000)")
    parser.add_argument("--confirm-seeds", type=at_least(0), default=0, metavar="N",
                        help="re-run the selected proxy configs with N more seeds first; "
                             "select on the means")
    parser.add_argument("--proxy-data", metavar="PATH",
                        help="the study's proxy data, if it moved (for --confirm-seeds)")
    parser.add_argument("--device", choices=("cuda", "cpu"),
                        help="for --confirm-seeds, and passed to the full trainings")
    add_storage_flags(parser)


def add_commands(commands) -> None:
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
    pro.add_argument("--nproc-per-node", type=COUNT, default=1, help="for --launch torchrun")
    pro.add_argument("--epochs", type=COUNT)
    pro.add_argument("--max-steps", type=COUNT)
    pro.add_argument("--batch-size", type=COUNT)
    add_tracking_flags(pro)
    pro.add_argument("--json", action="store_true", help="print one JSON document")
    pro.set_defaults(run=_promote)


def _confirmer(args: argparse.Namespace):
    if not args.confirm_seeds:
        return None
    from search.promote.confirm import Confirmer
    from search.study.workspace import workspace_dir

    return Confirmer(workspace_dir(args.workspace), args.device, args.proxy_data)


def _out(args: argparse.Namespace) -> Path:
    from search.study.workspace import workspace_dir

    return Path(args.out) if args.out else workspace_dir(args.workspace) / "exports" / args.name


def _export(args: argparse.Namespace) -> int:
    from search.promote.export import export

    written = export(args.name, storage_url(args), args.select, _out(args),
                     target_size=args.target_size, target_classes=args.target_classes,
                     full_data=args.full_data,
                     confirm_seeds=args.confirm_seeds, confirm=_confirmer(args))
    if args.json:
        return print_json(written)
    for item in written:
        print(f"trial {item['trial']:>4}  {item['label']:<40} {item['path']}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from search.promote.launch import LaunchOptions, promote

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
        from search.study.workspace import workspace_dir

        if args.workspace is None:
            extra += ["--workspace", str(workspace_dir(None).resolve())]
    opts = LaunchOptions(args.launch, full_data, args.nproc_per_node, tuple(extra),
                         args.ray_address, tracking_uri(args) or "off")
    launched = promote(args.name, storage_url(args), args.select, opts, out=_out(args),
                       target_size=args.target_size, target_classes=args.target_classes,
                       confirm_seeds=args.confirm_seeds,
                       confirm=_confirmer(args), dry_run=args.dry_run)
    if args.json:
        print_json(launched)
    return 1 if any(item.get("exit_code") for item in launched) else 0


def add_fidelity_command(sub) -> None:
    fid = sub.add_parser("fidelity", help="rank correlation of proxy and full results")
    fid.add_argument("name")
    fid.add_argument("--include-partial", action="store_true",
                     help="count full runs cut short (--max-steps, killed) too")
    add_storage_flags(fid)
    fid.add_argument("--json", action="store_true")
    fid.set_defaults(run=_fidelity)


def _fidelity(args: argparse.Namespace) -> int:
    from search.promote.fidelity import describe, fidelity
    from search.study.studies import load_study

    report = fidelity(load_study(args.name, storage_url(args)), args.include_partial)
    if args.json:
        return print_json(report)
    for run in report["left_out"]:
        print(f"left out: trial {run['trial']} run {run['run_id']}: {run['why']}",
              file=sys.stderr)
    for name in ("kendall_tau", "spearman"):
        r = report[name]
        print(f"{name:<12} {r['value']:+.3f}  95% CI [{r['ci95'][0]:+.3f}, "
              f"{r['ci95'][1]:+.3f}]  over {report['n']} promoted configs")
    by = report["estimators"]
    if len(by) > 1:
        print(f"rank estimators of the proxy's curve (its first {by['epochs']} epoch(s)):")
        for name, r in by.items():
            if name == "epochs":
                continue
            print(f"  {name:<9} {describe(r)}  n {r['n']}")
    if report["partial"]:
        print(f"note: {report['partial']} full result(s) come from shortened runs")
    return 0
