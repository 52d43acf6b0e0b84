"""`patchnas search run|worker|list|status|pareto` (thin: flags -> library calls)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from search.cli import add_set_flag, print_json
from spaces.errors import UserError
from spaces.overrides import collect_overrides, read_yaml_mapping
from spaces.params import parse_assignments

# flag -> key of the study settings (`given` in search.runner.build_spec)
SPEC_FLAGS = {"family": str, "objectives": str, "epochs": int, "min_epochs": int, "eta": int,
              "sampler": str, "pruner": str, "max_params": float, "max_macs": float,
              "max_latency_ms": float, "seed": int, "subset": int, "val_size": int,
              "target_size": int, "target_classes": int}
RUN_FLAGS = {"trials": int, "timeout": float, "workers": int, "trials_per_gpu": int,
             "device": str, "storage": str, "workspace": str, "data": str, "backend": str,
             "ray_address": str, "ray_storage": str}


def add_search_commands(commands) -> None:
    search = commands.add_parser("search", help="multi-objective search studies")
    sub = search.add_subparsers(dest="search_command", required=True, metavar="SUBCOMMAND")

    run = sub.add_parser("run", help="create or resume a study and run it to the end")
    run.add_argument("--name", help="the study's name (required here or in --config)")
    run.add_argument("--config", metavar="FILE", help="a YAML study file; flags win")
    run.add_argument("--family", help="one family, or several comma-separated")
    add_set_flag(run)
    run.add_argument("--space", metavar="FILE", help="a YAML file of NAME: SPEC")
    run.add_argument("--objectives", help="default val_acc:max,params:min; also macs:min, "
                                          "latency_ms:min")
    run.add_argument("--trials", type=int, help="the study's trial budget (default 10)")
    run.add_argument("--timeout", type=float, metavar="SECONDS")
    run.add_argument("--epochs", type=int, help="epochs per trial (the maximum fidelity)")
    run.add_argument("--min-epochs", type=int, help="first pruning rung (default 1)")
    run.add_argument("--eta", type=int, help="keep 1/eta at each rung (default 3)")
    run.add_argument("--sampler", choices=("nsga2", "tpe", "gp", "random"))
    run.add_argument("--pruner", choices=("moasha", "hyperband", "median", "none"))
    run.add_argument("--max-params", type=float)
    run.add_argument("--max-macs", type=float)
    run.add_argument("--max-latency-ms", type=float)
    run.add_argument("--seed", type=int)
    run.add_argument("--target-size", type=int, help="image size the costs are counted at "
                                                     "(default 224)")
    run.add_argument("--target-classes", type=int, help="classes of the target (default 1000)")
    _storage_flags(run)
    run.add_argument("--workers", type=int, help="trials at once")
    run.add_argument("--gpus", help="GPU indices, e.g. 0,1")
    run.add_argument("--trials-per-gpu", type=int)
    run.add_argument("--device", choices=("cuda", "cpu"))
    run.add_argument("--data", metavar="PATH")
    run.add_argument("--subset", type=int, metavar="N", help="train on N images per trial")
    run.add_argument("--val-size", type=int)
    run.add_argument("--backend", choices=("optuna", "ray"),
                     help="who schedules the trials: worker processes (optuna, default) or "
                          "Ray Tune")
    run.add_argument("--ray-address", metavar="ADDR",
                     help="auto or ray://HOST:10001 (default: a local Ray instance)")
    run.add_argument("--ray-storage", metavar="PATH_OR_URI",
                     help="Ray's experiment storage (default: <workspace>/ray; shared "
                          "storage with several nodes)")
    run.add_argument("--seed-presets", action="store_true",
                     help="enqueue the paper presets (as proxies) that lie in the space")
    _tracking_flags(run)
    run.add_argument("--json", action="store_true", help="print the front as one JSON list")
    run.set_defaults(run=_run)

    worker = sub.add_parser("worker", help="join a running study (e.g. from another host)")
    worker.add_argument("name")
    _storage_flags(worker)
    worker.add_argument("--device", choices=("cuda", "cpu"))
    worker.add_argument("--data", metavar="PATH", help="this host's copy of the study's data")
    worker.add_argument("--worker-index", type=int, default=None,
                        help="seeds this worker's sampler stream (default: from the pid)")
    _tracking_flags(worker)
    worker.set_defaults(run=_worker)

    listing = sub.add_parser("list", help="the studies in a storage")
    _storage_flags(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_list)

    st = sub.add_parser("status", help="counts by state, front size, hypervolume, ETA")
    st.add_argument("name")
    _storage_flags(st)
    st.add_argument("--json", action="store_true")
    st.set_defaults(run=_status)

    pareto = sub.add_parser("pareto", help="the Pareto front of a study")
    pareto.add_argument("name")
    _storage_flags(pareto)
    pareto.add_argument("--json", action="store_true")
    pareto.set_defaults(run=_pareto)
    return sub


def _tracking_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking URI (default: <workspace>/mlflow.db; an "
                             "http:// MLflow server for workers on several hosts)")
    parser.add_argument("--no-tracking", action="store_true", help="log nothing to MLflow")


def _storage_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna storage (default: $PATCHNAS_STORAGE, else "
                             "<workspace>/optuna.db)")
    parser.add_argument("--workspace", metavar="DIR")


def _storage_url(args: argparse.Namespace) -> str:
    from search.storage import default_url
    from search.workspace import workspace_dir

    return (args.storage or os.environ.get("PATCHNAS_STORAGE")
            or default_url(workspace_dir(args.workspace)))


def _load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    data = read_yaml_mapping(path, "--config", "family: convmixer")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _run(args: argparse.Namespace) -> int:
    from search.runner import RunOptions, run_search

    config = _load_config(args.config)
    known = set(SPEC_FLAGS) | set(RUN_FLAGS) | {"name", "set", "space", "gpus", "recipe",
                                                 "seed_presets", "no_tracking", "tracking_uri"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise UserError(f"--config: unknown setting {unknown[0]!r}")
    name = args.name or config.get("name")
    if not name:
        raise UserError("give the study a --name")
    # the config's space file, then its `set` (a mapping or NAME=SPEC items), then the flags
    overrides = collect_overrides([], config.get("space"))
    file_sets = config.get("set") or {}
    overrides.update(parse_assignments(file_sets) if isinstance(file_sets, list) else file_sets)
    overrides.update(collect_overrides(args.sets, args.space))
    given = {k: (getattr(args, k) if getattr(args, k) is not None else config.get(k))
             for k in SPEC_FLAGS}
    given["overrides"] = overrides or None
    given["recipe"] = config.get("recipe")
    run = {k: (getattr(args, k) if getattr(args, k) is not None else config.get(k))
           for k in RUN_FLAGS}
    gpus = args.gpus if args.gpus is not None else config.get("gpus")
    if isinstance(gpus, str):
        try:
            gpus = [int(g) for g in gpus.split(",") if g.strip()]
        except ValueError:
            raise UserError(f"--gpus {gpus}: give GPU indices such as 0,1") from None
    options = RunOptions(trials=run["trials"], timeout=run["timeout"], workers=run["workers"],
                         gpus=gpus, trials_per_gpu=run["trials_per_gpu"] or 1,
                         device=run["device"], storage=run["storage"],
                         workspace=run["workspace"], data=run["data"],
                         seed_presets=args.seed_presets or bool(config.get("seed_presets")),
                         tracking=not (args.no_tracking or config.get("no_tracking")),
                         tracking_uri=args.tracking_uri or config.get("tracking_uri"),
                         backend=run["backend"] or "optuna", ray_address=run["ray_address"],
                         ray_storage=run["ray_storage"])
    result = run_search(name, given, options)
    front = result["front"]
    if args.json:
        return print_json(front)
    _print_front(front)
    return 0


def _print_front(front: list[dict[str, Any]]) -> None:
    print(f"Pareto front ({len(front)}):")
    for m in front:
        values = "  ".join(f"{k} {_fmt(v)}" for k, v in m["values"].items())
        print(f"  #{m['trial']:<4} {values}  {m['label']}")


def _fmt(v: float) -> str:
    return f"{v:.4f}" if v < 10 else f"{v:,.0f}"


def _worker(args: argparse.Namespace) -> int:
    from search.worker import install_signal_handlers, run_worker, threads_from_env

    install_signal_handlers()
    threads_from_env()
    index = args.worker_index if args.worker_index is not None else os.getpid()
    try:
        ran = run_worker(args.name, _storage_url(args), device=args.device,
                         worker_index=index, workspace=args.workspace, data=args.data,
                         tracking_uri=_tracking_uri(args),
                         spawned=os.environ.get("PATCHNAS_SPAWNED") == "1")
    except KeyboardInterrupt:
        print("worker interrupted: its trial was queued again", file=sys.stderr)
        return 130
    print(f"worker done: {ran} trial(s)", file=sys.stderr)
    return 0


def _tracking_uri(args: argparse.Namespace) -> str | None:
    """--no-tracking, else --tracking-uri, else $PATCHNAS_TRACKING_URI ("off"), else the
    workspace's MLflow database."""
    uri = args.tracking_uri or os.environ.get("PATCHNAS_TRACKING_URI")
    if args.no_tracking or uri == "off":
        return None
    if uri:
        return uri
    from search.workspace import workspace_dir
    from tracking.runs import default_uri

    return default_uri(workspace_dir(args.workspace))


def _list(args: argparse.Namespace) -> int:
    from search.results import list_studies

    studies = list_studies(_storage_url(args))
    if args.json:
        return print_json(studies)
    for s in studies:
        print(f"{s['name']:<24} {','.join(s['families']):<20} trials {s['trials']}/"
              f"{s['budget']}  front {s['front_size']}  hypervolume {s['hypervolume']}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from search.results import status
    from search.study import load_study

    s = status(load_study(args.name, _storage_url(args))).as_dict()
    if args.json:
        return print_json(s)
    counts = "  ".join(f"{k.lower()} {v}" for k, v in s["counts"].items() if v)
    hours = ", ".join(f"{v:.3f} {k}-hours" for k, v in s["device_hours"].items()) or "none"
    eta = "done" if not s["eta_seconds"] else f"about {s['eta_seconds'] / 60:.1f} min"
    print(f"{s['name']}: budget {s['budget']}  {counts}")
    print(f"  front {s['front_size']}  hypervolume {s['hypervolume']:.4f}  compute {hours}  "
          f"ETA {eta}")
    return 0


def _pareto(args: argparse.Namespace) -> int:
    from search.results import pareto
    from search.study import load_study

    front = pareto(load_study(args.name, _storage_url(args)))
    if args.json:
        return print_json(front)
    _print_front(front)
    return 0


