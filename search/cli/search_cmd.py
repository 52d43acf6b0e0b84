"""`patchnas search run|worker|list|status|pareto` (thin: flags -> library calls)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from search.backends import BACKENDS
from search.cli.common import (
    COUNT,
    POSITIVE,
    SECONDS,
    add_set_flag,
    add_storage_flags,
    add_tracking_flags,
    at_least,
    print_front,
    print_json,
    read_config,
    storage_url,
    tracking_uri,
)
from search.study.estimators import DEFAULT as DEFAULT_ESTIMATOR
from search.study.estimators import ESTIMATORS
from search.study.settings import resolve
from search.study.spec import PRUNERS, SAMPLERS, SPEC_SETTINGS
from spaces.errors import UserError

# the study's settings a flag or the --config file may give (search.study.spec.build_spec)
STUDY_KEYS = ("family", "objectives", *SPEC_SETTINGS)
# how to run it (search.backends.base.RunOptions)
RUN_KEYS = ("trials", "timeout", "workers", "gpus", "trials_per_gpu", "device", "storage",
            "workspace", "data", "backend", "ray_address", "ray_storage", "seed_presets",
            "no_tracking", "tracking_uri")
# keys only a --config file has, with the type of their value
FILE_ONLY = {"set": (dict, list), "recipe": dict}


def add_commands(commands):
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
    run.add_argument("--trials", type=COUNT,
                     help="the study's budget: distinct architectures trained, plus "
                          "infeasible configs and failures of their own; reused twins and "
                          "retries are free (default 10)")
    run.add_argument("--timeout", type=SECONDS, metavar="SECONDS")
    run.add_argument("--epochs", type=COUNT, help="epochs per trial (the maximum fidelity)")
    run.add_argument("--min-epochs", type=COUNT, help="first pruning rung (default 1)")
    run.add_argument("--eta", type=at_least(2), help="keep 1/eta at each rung (default 3)")
    run.add_argument("--sampler", choices=SAMPLERS)
    run.add_argument("--pruner", choices=PRUNERS)
    run.add_argument("--rank-by", choices=tuple(ESTIMATORS),
                     help="what MO-ASHA's rungs rank trials by (the front still reports "
                          f"measured val_acc; default {DEFAULT_ESTIMATOR}): the last or best "
                          "val_acc, the sum of training losses (tse, tse_ema), or val_acc "
                          "extrapolated by a power law (powerlaw)")
    run.add_argument("--max-params", type=POSITIVE)
    run.add_argument("--max-macs", type=POSITIVE)
    run.add_argument("--max-latency-ms", type=POSITIVE)
    run.add_argument("--seed", type=int)
    run.add_argument("--target-size", type=COUNT, help="image size the costs are counted at "
                                                     "(default 224)")
    run.add_argument("--target-classes", type=at_least(2),
                     help="classes of the target (default 1000)")
    add_storage_flags(run)
    run.add_argument("--workers", type=COUNT, help="trials at once")
    run.add_argument("--gpus", help="GPU indices, e.g. 0,1")
    run.add_argument("--trials-per-gpu", type=COUNT)
    run.add_argument("--device", choices=("cuda", "cpu"))
    run.add_argument("--data", metavar="PATH")
    run.add_argument("--subset", type=COUNT, metavar="N", help="train on N images per trial")
    run.add_argument("--proxy-size", type=COUNT, metavar="PX",
                     help="train the proxies at PX px, downsampled on the device (default: "
                          "the data's size); --set values stay in 32 px terms")
    run.add_argument("--val-size", type=COUNT)
    run.add_argument("--backend", choices=tuple(BACKENDS),
                     help="who schedules the trials: worker processes (optuna, default) or "
                          "Ray Tune")
    run.add_argument("--ray-address", metavar="ADDR",
                     help="auto or ray://HOST:10001 (default: a local Ray instance)")
    run.add_argument("--ray-storage", metavar="PATH_OR_URI",
                     help="Ray's experiment storage (default: <workspace>/ray; shared "
                          "storage with several nodes)")
    run.add_argument("--seed-presets", action="store_true", default=None,
                     help="enqueue the paper presets (as proxies) that lie in the space")
    add_tracking_flags(run)
    run.set_defaults(no_tracking=None)  # unset, so that a --config file may say it
    run.add_argument("--json", action="store_true", help="print the front as one JSON list")
    run.set_defaults(run=_run, parser=run)

    worker = sub.add_parser("worker", help="join a running study (e.g. from another host)")
    worker.add_argument("name")
    add_storage_flags(worker)
    worker.add_argument("--device", choices=("cuda", "cpu"))
    worker.add_argument("--data", metavar="PATH", help="this host's copy of the study's data")
    worker.add_argument("--worker-index", type=at_least(0), default=None,
                        help="seeds this worker's sampler stream (default: from the pid)")
    add_tracking_flags(worker)
    worker.set_defaults(run=_worker)

    listing = sub.add_parser("list", help="the studies in a storage")
    add_storage_flags(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_list)

    st = sub.add_parser("status", help="counts by state, front size, hypervolume, ETA")
    st.add_argument("name")
    add_storage_flags(st)
    st.add_argument("--json", action="store_true")
    st.set_defaults(run=_status)

    trials = sub.add_parser("trials", help="a table of a study's trials")
    trials.add_argument("name")
    add_storage_flags(trials)
    trials.add_argument("--state", help="only these states, comma-separated (e.g. "
                                        "complete,pruned)")
    trials.add_argument("--sort", default="number",
                        help="number (default), val_acc, params, macs, seconds, state")
    trials.add_argument("--json", action="store_true")
    trials.set_defaults(run=_trials)

    show = sub.add_parser("show", help="everything stored about one trial")
    show.add_argument("name")
    show.add_argument("trial", type=at_least(0))
    add_storage_flags(show)
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=_show)

    delete = sub.add_parser("delete", help="delete a study (its Optuna rows; its MLflow "
                                           "experiment is marked deleted)")
    delete.add_argument("name")
    add_storage_flags(delete)
    add_tracking_flags(delete)
    delete.add_argument("--yes", action="store_true", help="do not ask")
    delete.set_defaults(run=_delete)

    pareto = sub.add_parser("pareto", help="the Pareto front of a study")
    pareto.add_argument("name")
    add_storage_flags(pareto)
    pareto.add_argument("--json", action="store_true")
    pareto.set_defaults(run=_pareto)
    return sub


def _given(value, default):
    """`value` unless it is unset (None): 0 is a value."""
    return default if value is None else value


def _run(args: argparse.Namespace) -> int:
    from search.backends.base import RunOptions
    from search.backends.run import run_search
    from spaces.overrides import check_specs, collect_overrides
    from spaces.params import parse_assignments
    from trainers.recipes import Recipe

    config = read_config(args.parser, args.config, FILE_ONLY)
    flags = {k: getattr(args, k, None) for k in (*STUDY_KEYS, *RUN_KEYS, "name")}
    s = resolve(flags, config)  # flags > --config > environment (search.study.settings)
    if not s["name"]:
        raise UserError("give the study a --name")
    # the config's space file, then its `set` (a mapping or NAME=SPEC items), then the flags
    overrides = collect_overrides([], config.get("space"))
    file_sets = config.get("set") or {}
    overrides.update(parse_assignments(map(str, file_sets)) if isinstance(file_sets, list)
                     else check_specs(file_sets, f"--config {args.config}: set"))
    overrides.update(collect_overrides(args.sets, args.space))
    given = {k: s[k] for k in STUDY_KEYS}
    given["overrides"] = overrides or None
    given["recipe"] = config.get("recipe")
    if given["recipe"] is not None:  # checked here, to say which file it came from
        try:
            Recipe.from_dict({"epochs": 1, **given["recipe"]})
        except UserError as err:
            raise UserError(f"--config {args.config}: {err}") from None
    gpus = s["gpus"]
    if isinstance(gpus, str):
        try:
            gpus = [int(g) for g in gpus.split(",") if g.strip()]
        except ValueError:
            raise UserError(f"--gpus {gpus}: give GPU indices such as 0,1") from None
    options = RunOptions(trials=s["trials"], timeout=s["timeout"], workers=s["workers"],
                         gpus=gpus, trials_per_gpu=_given(s["trials_per_gpu"], 1),
                         device=s["device"], storage=s["storage"], workspace=s["workspace"],
                         data=s["data"], seed_presets=bool(s["seed_presets"]),
                         tracking=not s["no_tracking"], tracking_uri=s["tracking_uri"],
                         backend=s["backend"] or "optuna", ray_address=s["ray_address"],
                         ray_storage=s["ray_storage"])
    result = run_search(s["name"], given, options)
    front = result["front"]
    if args.json:
        return print_json(front)
    print_front(front)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from search.backends.worker import install_signal_handlers, run_worker, threads_from_env

    install_signal_handlers()
    threads_from_env()
    index = args.worker_index if args.worker_index is not None else os.getpid()
    try:
        ran = run_worker(args.name, storage_url(args), device=args.device,
                         worker_index=index, workspace=args.workspace, data=args.data,
                         tracking_uri=tracking_uri(args),
                         spawned=os.environ.get("PATCHNAS_SPAWNED") == "1")
    except KeyboardInterrupt:
        print("worker interrupted: its trial was queued again", file=sys.stderr)
        return 130
    print(f"worker done: {ran} trial(s)", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    from search.study.results import list_studies

    studies = list_studies(storage_url(args))
    if args.json:
        return print_json(studies)
    for s in studies:
        print(f"{s['name']:<24} {','.join(s['families']):<20} trials {s['trials']}/"
              f"{s['budget']}  front {s['front_size']}  hypervolume {s['hypervolume']}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from search.study.results import stored_status
    from search.study.studies import load_study

    s = stored_status(load_study(args.name, storage_url(args))).as_dict()
    if args.json:
        return print_json(s)
    counts = "  ".join(f"{k.lower()} {v}" for k, v in s["counts"].items()
                       if v and k != "DISCARDED")  # asked, never run: not a trial's outcome
    hours = ", ".join(f"{v:.3f} {k}-hours" for k, v in s["device_hours"].items()) or "none"
    eta = ("done" if s["eta_seconds"] == 0 else "unknown" if s["eta_seconds"] is None
           else f"about {s['eta_seconds'] / 60:.1f} min")
    if s["exhausted"]:
        eta = "done: every architecture of the space is trained"
    print(f"{s['name']}: done {s['finished']}/{s['budget']}  {counts}")
    print(f"  front {s['front_size']}  hypervolume {s['hypervolume']:.4f}  compute {hours}  "
          f"ETA {eta}")
    return 0


def _trials(args: argparse.Namespace) -> int:
    from search.study.studies import load_study
    from search.study.trials import trial_rows

    states = [s.strip() for s in args.state.split(",") if s.strip()] if args.state else None
    rows = trial_rows(load_study(args.name, storage_url(args)), states, args.sort)
    if args.json:
        return print_json(rows)
    print(f"{'#':>4}  {'state':<10} {'architecture':<34} {'val_acc':>7} {'params':>10} "
          f"{'macs':>13} {'epochs':>6} {'seconds':>7}  reason")
    for r in rows:
        print(f"{r['number']:>4}  {r['state']:<10} {(r['label'] or '-')[:34]:<34} "
              f"{_num(r['val_acc'], '.4f'):>7} {_num(r['params'], ',.0f'):>10} "
              f"{_num(r['macs'], ',.0f'):>13} "
              f"{_num(r['epochs_run'], 'd'):>3}/{r['max_epochs']:<2} "
              f"{_num(r['seconds'], '.1f'):>7}  {r['reason'] or ''}")
    return 0


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _show(args: argparse.Namespace) -> int:
    from search.study.studies import load_study
    from search.study.trials import trial_detail

    d = trial_detail(load_study(args.name, storage_url(args)), args.trial)
    if args.json:
        return print_json(d)
    print(f"trial {d['number']} of {args.name}: {d['state']}"
          + (f" ({d['reason']})" if d["reason"] else ""))
    for key in ("label", "config_32px", "config_target", "values", "costs", "epochs_run",
                "seconds", "reused_from", "retry_of", "retries", "mlflow_run_id", "started",
                "finished"):
        if d.get(key) not in (None, [], {}):
            value = d[key]
            print(f"  {key:<14} {json.dumps(value) if isinstance(value, dict | list) else value}")
    for point in d["record"].get("curve", []):
        print("  epoch {epoch:<3} val_acc {val_acc:.4f}  train_loss {train_loss:.4f}".format(
            **{"train_loss": float("nan"), **point}))
    return 0


def _delete(args: argparse.Namespace) -> int:
    from search.study.storage import missing_file
    from search.study.studies import delete_study, load_study

    url = storage_url(args)
    load_study(args.name, url)  # a study that is not there: one line, nothing asked
    uri = tracking_uri(args)  # a damaged or unreachable MLflow store: refused before deleting
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(f"delete study {args.name}: give --yes (no terminal to ask on)")
        answer = input(f"delete study {args.name} and mark its MLflow runs deleted? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=sys.stderr)
            return 1
    delete_study(args.name, url)
    experiment = None
    if uri is not None and not missing_file(uri):  # no MLflow store there: nothing to mark
        from tracking.runs import delete_experiment

        experiment = delete_experiment(uri, args.name)
    print(f"deleted study {args.name}" + (f"; MLflow experiment {experiment} marked deleted"
                                          if experiment else ""), file=sys.stderr)
    return 0


def _pareto(args: argparse.Namespace) -> int:
    from search.study.results import stored_pareto
    from search.study.studies import load_study

    front = stored_pareto(load_study(args.name, storage_url(args)))
    if args.json:
        return print_json(front)
    print_front(front)
    return 0


