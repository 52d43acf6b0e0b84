"""`patchnas train proxy` on the real shared CIFAR-10, and its errors."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.cli import main
from tests.helpers import CIFAR_ARCHIVE

PATCHNAS = str(Path(sys.executable).with_name("patchnas"))


@pytest.mark.alone
def test_issue_check_command_learns_real_cifar_in_under_90s(cifar, workspace):
    """The issue's check: ConvMixer h64 d2 p4 k5, 2 epochs on the CPU, val_acc >= 0.45."""
    start = time.perf_counter()
    out = subprocess.run(
        [PATCHNAS, "train", "proxy", "--family", "convmixer", "--set", "h=64", "d=2", "p=4",
         "k=5", "--epochs", "2", "--device", "cpu", "--data", str(CIFAR_ARCHIVE), "--json"],
        capture_output=True, text=True, env={**os.environ, "PATCHNAS_WORKSPACE": str(workspace)})
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "completed" and result["epochs"] == 2
    assert result["val_acc"] >= 0.45, result
    assert "test_acc" not in result  # only when asked
    assert seconds < 90
    assert result["data"] == {"name": "cifar10", "content_hash": cifar.content_hash,
                              "train": 45000, "val": 5000, "image_size": 32,
                              "num_classes": 10}
    assert result["images_per_s"] > 0
    progress = [line for line in out.stderr.splitlines() if line.startswith("epoch ")]
    assert len(progress) == 2 and "val_acc" in progress[0]


def test_preset_trains_as_its_proxy_with_a_subset_and_test_accuracy(cifar, capsys):
    code = main(["train", "proxy", "convmixer-1024-20", "--set", "h=32", "d=1", "--epochs", "1",
                 "--subset", "500", "--val-size", "500", "--device", "cpu",
                 "--data", str(CIFAR_ARCHIVE), "--test", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"] == {"h": 32, "d": 1, "p": 2, "k": 9, "act": "gelu"}  # p14 -> p2
    assert result["data"]["train"] == 500 and 0 <= result["test_acc"] <= 1


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path, capsys):
    code = main(["train", "proxy", "--family", "convmixer", "--epochs", "1", "--device", "cpu",
                 "--data", str(tmp_path / "nowhere")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "nowhere") in err[0] and "--download" in err[0]


def test_bad_training_flags_are_one_line(capsys):
    assert main(["train", "proxy", "--family", "convmixer", "--epochs", "0"]) == 2
    assert "--epochs: 0 is not allowed here; give 1 or more" in capsys.readouterr().err
    assert main(["train", "proxy", "--family", "convmixer", "--set", "d=2..4"]) == 2
    assert "is a range" in capsys.readouterr().err
