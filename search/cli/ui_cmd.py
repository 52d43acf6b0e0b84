"""`patchnas ui`: the MLflow UI for a workspace's runs."""

from __future__ import annotations

import argparse
import sys

from search.cli.common import add_storage_flags, add_workspace_flag, at_least, storage_url
from spaces.errors import UserError


def add_commands(commands) -> None:
    ui = commands.add_parser("ui", help="the MLflow UI on 127.0.0.1 for the workspace's runs")
    ui.add_argument("study", nargs="?", help="open on this study's runs")
    ui.add_argument("--port", type=at_least(1), default=5000)
    ui.add_argument("--open", action="store_true", help="open the page in a web browser")
    add_workspace_flag(ui)
    ui.add_argument("--tracking-uri", metavar="URI", help="default: <workspace>/mlflow.db")
    ui.set_defaults(run=_ui)

    dash = commands.add_parser("dashboard", help="optuna-dashboard on 127.0.0.1 for the study "
                                                 "storage (pip install 'patchnas[dashboard]')")
    dash.add_argument("--port", type=at_least(1), default=8080)
    add_storage_flags(dash)
    dash.set_defaults(run=_dashboard)


def _ui(args: argparse.Namespace) -> int:
    from search.study.reach import check_tracking
    from search.study.settings import tracking_uri
    from search.study.workspace import default_tracking_uri, workspace_dir
    from tracking.ui import PortBusy, serve

    workspace = workspace_dir(args.workspace)
    uri = tracking_uri(args.tracking_uri, workspace)
    if uri is None:
        raise UserError("$PATCHNAS_TRACKING_URI is off: give --tracking-uri")
    if uri == default_tracking_uri(workspace) and not (workspace / "mlflow.db").exists():
        raise UserError(f"no MLflow runs in {workspace} yet: run a study first "
                        f"(patchnas search run ...) or give --workspace / --tracking-uri")
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: give a port between 1 and 65535")
    check_tracking(uri)
    path = ""
    if args.study:
        from tracking.runs import experiment_id
        from tracking.ui import runs_page

        found = experiment_id(uri, args.study)
        if found is None:
            raise UserError(f"no MLflow experiment for study {args.study} in "
                            f"{uri.split('?')[0]}; `patchnas search list` names the studies")
        path = runs_page(found)
    try:
        return serve(uri, args.port, log=lambda m: print(m, file=sys.stderr, flush=True),
                     path=path, open_browser=args.open)
    except PortBusy as err:
        raise UserError(str(err)) from None


def _dashboard(args: argparse.Namespace) -> int:
    from search.study.storage import missing_file
    from tracking.dashboard import serve_dashboard
    from tracking.ui import PortBusy

    url = storage_url(args)
    if missing_file(url):
        raise UserError(f"no study storage at {missing_file(url)}: run a study first "
                        f"(patchnas search run ...) or give --storage / --workspace")
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: give a port between 1 and 65535")
    try:
        return serve_dashboard(url, args.port,
                               log=lambda m: print(m, file=sys.stderr, flush=True))
    except (PortBusy, FileNotFoundError) as err:
        raise UserError(str(err)) from None
