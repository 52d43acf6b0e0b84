"""`spaces` and `trainers` must import on a GPU box that has only torch."""

import subprocess
import sys


def test_spaces_and_trainers_do_not_import_search_engines_or_tracking():
    code = ("import sys, spaces, spaces.cost, spaces.describe, trainers\n"
            "heavy = [m for m in ('optuna', 'ray', 'mlflow') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_cli_and_read_only_commands_import_no_engine_and_no_torch(tmp_path):
    from search.study.spec import build_spec
    from search.study.studies import create_or_resume

    url = f"sqlite:///{tmp_path}/optuna.db"
    create_or_resume(build_spec("ro", {"family": "convmixer"}, None, "data"), url, 3)
    code = f"""
import sys
from search.cli import main
assert "torch" not in sys.modules and "optuna" not in sys.modules
for argv in (["search", "status", "ro"], ["search", "pareto", "ro"], ["search", "list"]):
    assert main([*argv, "--storage", {url!r}, "--json"]) == 0
heavy = [m for m in ("torch", "ray", "mlflow", "matplotlib.pyplot") if m in sys.modules]
assert not heavy, heavy
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_patchnas_help_imports_no_engine():
    """`patchnas --help` must start fast (0.14 s measured, bench/RESULTS.md): what it
    imports is what decides that, and it is deterministic where a timing is not."""
    code = """
import contextlib, io, sys
from search.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    for argv in (["--help"], ["search", "run", "--help"], ["promote", "--help"]):
        try:
            main(argv)
        except SystemExit as exit:
            assert exit.code == 0
heavy = [m for m in ("torch", "optuna", "ray", "mlflow", "sqlalchemy") if m in sys.modules]
assert not heavy, heavy
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
