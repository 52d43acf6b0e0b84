"""The full trainer on real Imagenette images: runs, evaluates, checkpoints, resumes exactly
after a kill, runs under torchrun on the CPU, and refuses bad input in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from search.cli import main
from spaces.convmixer import ConvMixerConfig
from tests.helpers import lrs_of_each_update
from trainers.full import FullOptions, FullTrainer, join_processes
from trainers.full_config import FullConfig
from trainers.recipes import published
from trainers.schedule import lr_at


def write_config(path: Path, **recipe) -> Path:
    config = FullConfig("convmixer", ConvMixerConfig(h=64, d=2, p=8, k=3), 128,
                        published("convmixer", batch_size=8, epochs=2, **recipe))
    path.write_text(config.dump())
    return path


def train(args: list[str], capsys) -> tuple[int, dict]:
    code = main(["train", "full", *args, "--device", "cpu", "--no-progress", "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if code == 0 else {}


def test_runs_evaluates_and_checkpoints(tmp_path, imagenette_small, capsys):
    config = write_config(tmp_path / "c.yaml")
    code, result = train([str(config), "--data", str(imagenette_small), "--epochs", "1",
                          "--max-steps", "5", "--out", str(tmp_path / "run"),
                          "--no-tracking", "--workers", "0"], capsys)
    assert code == 0
    assert result["steps"] == 5 and result["num_classes"] == 4
    assert 0 <= result["top1"] <= result["top5"] <= 1
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 5 and state["identity"]["num_classes"] == 4
    weights = torch.load(result["weights"], weights_only=True)
    assert set(weights) == set(state["model"])
    assert all(torch.equal(weights[k], state["model"][k]) for k in weights)
    [epoch] = state["history"]
    assert epoch["images_per_s"] > 0  # logged per epoch, beside the loss


def test_upsampled_images_are_warned_about_in_one_line(tmp_path, capsys):
    """A 128 px config on 48 px images trains on blur: said once, the run goes on."""
    from PIL import Image

    for split in ("train", "val"):
        for c in range(2):
            folder = tmp_path / "small" / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(8 if split == "train" else 2):
                Image.new("RGB", (48, 48), (c * 200, i * 30, 7 * i)).save(folder / f"{i}.png")
    config = write_config(tmp_path / "c.yaml")
    assert main(["train", "full", str(config), "--data", str(tmp_path / "small"), "--epochs",
                 "1", "--max-steps", "1", "--out", str(tmp_path / "run"), "--no-tracking",
                 "--workers", "0", "--device", "cpu", "--no-progress", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["steps"] == 1
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "about 48 px" in warned[0] and "upsampled 2.7x" in warned[0]


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_every_update_uses_exactly_the_schedules_rate(tmp_path, imagenette_small, schedule):
    config = FullConfig.load(write_config(tmp_path / "c.yaml", schedule=schedule, warmup=0.2,
                                          min_lr=1e-5))
    options = FullOptions(imagenette_small, tmp_path / "run", max_steps=6, device="cpu",
                          workers=0, progress=False)
    trainer = FullTrainer(config, options, join_processes("cpu"))
    lrs = lrs_of_each_update(lambda: trainer.fit(log=lambda *_: None))
    r = config.recipe  # --max-steps ends the schedule: it spans 6 steps
    assert lrs == [[lr_at(schedule, r.lr_for(8), s, 6, 0.2, 1e-5)] * 2 for s in range(6)]


def _run_cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "search", "train", "full", *args,
                             "--device", "cpu", "--no-tracking", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_run_killed_mid_epoch_resumes_to_identical_weights(tmp_path, imagenette_small):
    config = write_config(tmp_path / "c.yaml", mixup=0.5, cutmix=0.5, drop_path=0.1)
    common = [str(config), "--data", str(imagenette_small), "--workers", "2",
              "--checkpoint-every", "1"]
    whole = _run_cli([*common, "--out", str(tmp_path / "whole")])
    assert whole.wait(timeout=300) == 0, whole.stderr.read()

    killed = _run_cli([*common, "--out", str(tmp_path / "killed")])
    checkpoint = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert killed.poll() is None, "the run ended before it could be killed"
    time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    state = torch.load(checkpoint, weights_only=True)
    steps_per_epoch = 64 // 8
    assert 0 < state["step"] < 2 * steps_per_epoch
    assert state["step_in_epoch"] > 0, "killed at an epoch's end, not in the middle"

    resumed = _run_cli([*common, "--out", str(tmp_path / "killed"), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert "resumed at epoch" in resumed.stderr.read()
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the epoch that was cut reports its loss over all of its steps, as the whole run does
    losses = [[e["train_loss"] for e in torch.load(tmp_path / run / "last.pt",
                                                   weights_only=True)["history"]]
              for run in ("whole", "killed")]
    assert len(losses[0]) == 2 and losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_torchrun_two_processes_on_the_cpu(tmp_path, imagenette_small):
    config = write_config(tmp_path / "c.yaml")
    out = subprocess.run([sys.executable, "-m", "search", "train", "full", str(config),
                          "--data", str(imagenette_small), "--nproc-per-node", "2", "--device",
                          "cpu", "--max-steps", "3", "--out", str(tmp_path / "ddp"),
                          "--no-tracking", "--no-progress", "--workers", "0", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert result["world_size"] == 2 and result["steps"] == 3
    assert torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["step"] == 3


def test_bad_input_ends_in_one_line(tmp_path, imagenette_small, capsys):
    good = yaml.safe_load(write_config(tmp_path / "good.yaml").read_text())
    cases = {
        "unknown family": {**good, "model": {**good["model"], "family": "resnet"}},
        "missing field": {**good, "model": {k: v for k, v in good["model"].items()
                                            if k != "image_size"}},
        "unknown parameter": {**good, "model": {**good["model"],
                                                "config": {**good["model"]["config"], "z": 1}}},
        "bad recipe": {**good, "recipe": {**good["recipe"], "lr": -1}},
    }
    expected = {"unknown family": "unknown family 'resnet'",
                "missing field": "model.image_size is missing",
                "unknown parameter": "model.config (convmixer): unknown key 'z'",
                "bad recipe": "lr must be positive"}
    for name, doc in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        code = main(["train", "full", str(path), "--data", str(imagenette_small), "--device",
                     "cpu", "--no-tracking"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected[name] in err[0], (name, err)

    no_train = tmp_path / "flat"
    (no_train / "images").mkdir(parents=True)
    code = main(["train", "full", str(tmp_path / "good.yaml"), "--data", str(no_train),
                 "--device", "cpu", "--no-tracking"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "has no train/ folder" in err[0]

    # a checkpoint from another model in --out
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**good, "model": {**good["model"], "config": {
        **good["model"]["config"], "h": 32}}}))
    args = ["--data", str(imagenette_small), "--max-steps", "1", "--out",
            str(tmp_path / "shared-out"), "--no-tracking", "--workers", "0"]
    assert train([str(other), *args], capsys)[0] == 0
    code = main(["train", "full", str(tmp_path / "good.yaml"), *args, "--resume", "--device",
                 "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "is from another model" in err[-1]
    code = main(["train", "full", str(tmp_path / "good.yaml"), *args, "--device", "cpu",
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "already holds a checkpoint" in err[-1]


def test_the_config_round_trips_through_yaml(tmp_path):
    path = write_config(tmp_path / "c.yaml")
    loaded = FullConfig.load(path)
    assert yaml.safe_load(loaded.dump()) == yaml.safe_load(path.read_text())
    assert loaded.recipe.lr_for(1280) == pytest.approx(0.02)  # linear in the batch
