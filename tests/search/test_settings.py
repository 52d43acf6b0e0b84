"""One resolver for settings, with one precedence; every command that takes --storage
resolves it the same way ($PATCHNAS_STORAGE included, `search run` too)."""

import argparse
import json

from search.cli import build_parser, main
from search.study.settings import resolve, storage_url, tracking_uri
from search.study.workspace import default_storage_url


def test_precedence_flags_config_environment_stored_defaults(tmp_path):
    env = {"PATCHNAS_STORAGE": "sqlite:///env.db", "PATCHNAS_TRACKING_URI": "http://env:5000"}
    levels = dict(defaults={"epochs": 1, "seed": 0, "storage": "d", "eta": 3},
                  stored={"epochs": 2, "seed": 5, "storage": "s"}, env=env)
    assert resolve({"epochs": None}, {"epochs": None}, **levels)["epochs"] == 2
    assert resolve({"epochs": None}, {"epochs": 3}, **levels)["epochs"] == 3
    assert resolve({"epochs": 4}, {"epochs": 3}, **levels)["epochs"] == 4
    got = resolve({"storage": None}, {}, **levels)
    assert (got["storage"], got["tracking_uri"], got["eta"]) == \
        ("sqlite:///env.db", "http://env:5000", 3)
    assert resolve({}, {"storage": "c"}, **levels)["storage"] == "c"  # the file beats env
    assert resolve({"seed": 0}, {}, **levels)["seed"] == 0  # 0 is a value, not "unset"


def test_storage_and_tracking_defaults(tmp_path):
    assert storage_url(None, tmp_path, env={}) == default_storage_url(tmp_path)
    assert storage_url(None, tmp_path, env={"PATCHNAS_STORAGE": "sqlite:///x"}) == \
        "sqlite:///x"
    assert storage_url("sqlite:///flag", tmp_path, env={"PATCHNAS_STORAGE": "x"}) == \
        "sqlite:///flag"
    assert tracking_uri(None, tmp_path, env={"PATCHNAS_TRACKING_URI": "off"}) is None
    assert tracking_uri("http://h:1", tmp_path, off=True) is None


def _commands_with_storage():
    found = []

    def walk(parser, path):
        for action in parser._actions:
            if action.dest == "storage":
                found.append(" ".join(path))
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
    walk(build_parser(), [])
    return set(found)


def test_every_command_with_storage_finds_the_study_in_patchnas_storage(
        tmp_path, tiny_data, capsys, monkeypatch):
    db = tmp_path / "elsewhere" / "X.db"
    monkeypatch.setenv("PATCHNAS_STORAGE", f"sqlite:///{db}")
    monkeypatch.setenv("PATCHNAS_THREADS", "1")
    ws = tmp_path / "ws"
    assert main(["search", "run", "--name", "envs", "--family", "convmixer", "--set", "h=16",
                 "d=1", "p=4", "k=3", "--trials", "1", "--epochs", "1", "--val-size", "40",
                 "--device", "cpu", "--data", str(tiny_data), "--workspace", str(ws),
                 "--no-tracking"]) == 0
    assert db.exists() and not (ws / "optuna.db").exists()
    capsys.readouterr()
    # each command run against the study: none may say it is missing
    runs = {"search run": None,  # above
            "search status": ["search", "status", "envs", "--json"],
            "search pareto": ["search", "pareto", "envs", "--json"],
            "search list": ["search", "list", "--json"],
            "search fidelity": ["search", "fidelity", "envs"],
            "export": ["export", "envs", "--out", str(tmp_path / "out")],
            "promote": ["promote", "envs", "--full-data", str(tmp_path), "--dry-run"],
            "search worker": ["search", "worker", "envs", "--device", "cpu", "--no-tracking"],
            "search trials": ["search", "trials", "envs", "--json"],
            "search show": ["search", "show", "envs", "0", "--json"],
            # serves until stopped: its storage is the same storage_url(); its refusal of a
            # missing one is tests/tracking/test_dashboard.py
            "dashboard": None,
            # last: it deletes the study
            "search delete": ["search", "delete", "envs", "--yes", "--no-tracking"],
            # train full takes --storage to write its result back: a missing config is
            # refused before it is needed, so its resolution is checked by the parser walk
            "train full": None}
    assert set(runs) == _commands_with_storage(), "a new command takes --storage: test it"
    for command, argv in runs.items():
        if argv is None:
            continue
        main([*argv, "--workspace", str(ws)])
        out, err = capsys.readouterr()
        assert "no study" not in err and "holds no studies" not in err, (command, err)
        if command == "search list":
            assert [s["name"] for s in json.loads(out)] == ["envs"]
        if command == "search status":
            assert json.loads(out)["budget"] == 1
    assert not (ws / "optuna.db").exists()
