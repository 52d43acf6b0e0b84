"""The one GPU script, rehearsed on the CPU: every step runs end to end in its tiny mode and
prints what the GPU run will record, so the day a GPU is lent nothing is debugged on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import CIFAR_ARCHIVE, IMAGENETTE, need

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("gpu_tests", "full_input", "proxy_speed", "trials_per_gpu", "imagenette_full")


@pytest.mark.slow
def test_the_gpu_session_runs_end_to_end_in_its_smoke_mode(tmp_path):
    need(CIFAR_ARCHIVE.exists() and IMAGENETTE.exists(), "the shared data archives")
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", "bench/gpu_session.sh", "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    summary = (tmp_path / "summary.txt").read_text()
    assert done.returncode == 0, summary + done.stderr[-2000:]
    for step in STEPS:
        assert f"== {step}: exit 0" in summary, summary
    full_input = json.loads((tmp_path / "full_input.json").read_text())
    assert full_input["old"]["images"] == full_input["new"]["images"] > 0
    assert full_input["ratio"] > 0 and full_input["step"]["images_per_s"] > 0
    proxy = json.loads((tmp_path / "proxy_speed.json").read_text())
    assert 0 <= proxy["reference"]["test_acc"] <= 1 and proxy["eager"]["seconds"] > 0
    per_gpu = json.loads((tmp_path / "trials_per_gpu.json").read_text())
    assert [r["per_gpu"] for r in per_gpu["results"]] == [1, 2]
    assert all(r["trained"] == 2 for r in per_gpu["results"])
    full = json.loads((tmp_path / "imagenette_full.json").read_text())
    assert 0 <= full["top1"] <= 1 and full["device"] == "cpu"
