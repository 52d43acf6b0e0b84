"""`patchnas spaces list|show`, through the installed console command and in process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import spaces
from search.cli import main
from tests.helpers import PUBLISHED_PARAMS


def run_cli(*args):
    """The installed console command, in its own process."""
    patchnas = Path(sys.executable).with_name("patchnas")
    return subprocess.run([str(patchnas), *args], capture_output=True, text=True)


def test_console_command_prints_exactly_one_json_document():
    out = run_cli("spaces", "show", "coatnet-0", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["params"] == 25_036_820


@pytest.mark.parametrize("name", spaces.preset_names())
def test_show_every_preset_as_json(capsys, name):
    assert main(["spaces", "show", name, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["preset"] == name
    for key in ("params", "macs", "macs_224", "proxy_params", "proxy_macs"):
        assert type(data[key]) is int and data[key] > 0
    if name in PUBLISHED_PARAMS:
        want, tol = PUBLISHED_PARAMS[name]
        assert abs(data["params"] - want) / want <= tol
        assert data["macs"] == data["macs_224"]
    assert data["proxy_params"] <= data["params"] or name == "convmixer-256-8"


def test_bad_layout_is_one_line_and_exit_2():
    out = run_cli("spaces", "show", "--family", "coatnet", "--set", "layout=TCTT")
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "TCTT" in lines[0] and "Traceback" not in out.stderr


@pytest.mark.parametrize("args, message", [
    (["spaces", "show", "--family", "resnet"], "unknown family 'resnet'"),
    (["spaces", "show", "resnet-50"], "unknown preset 'resnet-50'"),
    (["spaces", "show", "--family", "convmixer", "--set", "depth=3"], "unknown parameter"),
    (["spaces", "show", "--family", "convmixer", "--set", "h=100000"], "out of range"),
    (["spaces", "show", "--family", "convmixer", "--set", "p=64"], "larger than the 32 px"),
    (["spaces", "show", "coatnet-0", "--family", "coatnet"], "not both"),
    (["spaces", "show"], "name what to build"),
    (["spaces", "show", "--family", "convmixer", "--image-size", "0"], "give 1 or more"),
])
def test_bad_input_is_one_clear_line(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_set_repeated_or_grouped_is_the_same(capsys):
    assert main(["spaces", "show", "--family", "convmixer", "--set", "h=64", "d=2",
                 "--json"]) == 0
    grouped = json.loads(capsys.readouterr().out)
    assert main(["spaces", "show", "--family", "convmixer", "--set", "h=64", "--set", "d=2",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == grouped
    assert grouped["proxy_config"]["h"] == 64 and grouped["proxy_config"]["d"] == 2
    # a family is shown at 224 px and 1000 classes: p=2 at 32 px is p=14 at 224 px
    assert grouped["config"]["p"] == 14 and grouped["image_size"] == 224


def test_show_at_another_size_applies_the_transfer_rule(capsys):
    assert main(["spaces", "show", "convmixer-256-8", "--image-size", "128", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["p"] == 8 and data["proxy_config"]["p"] == 2
    assert data["num_classes"] == 10  # the preset's own unless told otherwise
    assert data["macs"] != data["macs_224"]


def test_list_shows_every_family_parameter_and_preset(capsys):
    assert main(["spaces", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [f["family"] for f in data] == ["convmixer", "convmlp", "coatnet"]
    names = {p["name"] for f in data for p in f["params"]}
    assert {"h", "d", "p", "k", "b1", "w3", "r2", "layout", "L4", "D0"} <= names
    assert sorted(n for f in data for n in f["presets"]) == sorted(spaces.preset_names())
    assert main(["spaces", "list"]) == 0
    assert "coatnet-3" in capsys.readouterr().out


def test_malformed_flags_exit_2():
    out = run_cli("spaces", "show", "--image-size", "big")
    assert out.returncode == 2 and "--image-size: 'big' is not an integer" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
