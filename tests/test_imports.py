"""`spaces` and `trainers` must import on a GPU box that has only torch."""

import subprocess
import sys


def test_spaces_and_trainers_do_not_import_search_engines_or_tracking():
    code = ("import sys, spaces, spaces.cost, spaces.describe, trainers\n"
            "heavy = [m for m in ('optuna', 'ray', 'mlflow') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
