"""The `patchnas` command. Thin: each subcommand parses flags and calls a library function.

One module per command group (spaces, train, search, export/promote, ui) over `common.py`.
With `--json`, stdout carries exactly one JSON document; progress and logs go to stderr.
Mistakes a user can make end in one line on stderr and exit code 2. Anything else is a bug:
one line and exit code 1, its traceback written to the workspace's logs/ (shown in full with
PATCHNAS_DEBUG=1).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from search.cli import promote_cmd, search_cmd, spaces_cmd, train_cmd, ui_cmd
from search.cli.common import Parser
from spaces.errors import UserError

EXIT_USER_ERROR = 2
EXIT_BUG = 1


def _version() -> str:
    try:
        return version("patchnas")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="patchnas",
        description="Multi-objective architecture search for ConvMixer, ConvMLP and CoAtNet.")
    parser.add_argument("--version", action="version", version=f"patchnas {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    spaces_cmd.add_commands(commands)
    train_cmd.add_commands(commands)
    search_sub = search_cmd.add_commands(commands)
    promote_cmd.add_fidelity_command(search_sub)
    promote_cmd.add_commands(commands)
    ui_cmd.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a wrong flag (one line, see Parser)
        return stop.code if isinstance(stop.code, int) else EXIT_USER_ERROR
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
    except Exception as err:
        if os.environ.get("PATCHNAS_DEBUG") == "1":
            raise
        where = _write_traceback(getattr(args, "workspace", None))
        print(f"patchnas: internal error: {type(err).__name__}: {_first_line(err)} (a bug in "
              f"patchnas; the traceback is in {where}; PATCHNAS_DEBUG=1 shows it here)",
              file=sys.stderr)
        return EXIT_BUG
    return code


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]


def _write_traceback(workspace: str | None) -> str:
    """The current exception's traceback in <workspace>/logs/ (else the temp folder)."""
    import tempfile
    import time
    import traceback

    from search.study.workspace import workspace_dir

    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    for folder in (workspace_dir(workspace) / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(traceback.format_exc())
            return str(folder / name)
        except OSError:
            continue
    return "nowhere (no writable folder)"
