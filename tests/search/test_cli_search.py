"""`patchnas search run --config` with flags on top, and the read commands, in process."""

import json

import pytest

from search.cli import main
from search.study.studies import load_spec, load_study


def test_study_file_with_flags_on_top(tmp_path, tiny_data, capsys, monkeypatch):
    monkeypatch.setenv("PATCHNAS_THREADS", "1")
    study_file = tmp_path / "study.yaml"
    study_file.write_text(f"""
name: fromfile
family: convmixer
set: [h=16..32:16, d=1, p=4, k=3]
epochs: 3
trials: 2
val-size: 40
recipe: {{batch_size: 32}}
data: {tiny_data}
""")
    ws = tmp_path / "ws"
    code = main(["search", "run", "--config", str(study_file), "--epochs", "1",
                 "--set", "act=relu", "--device", "cpu", "--workspace", str(ws), "--json"])
    assert code == 0
    front = json.loads(capsys.readouterr().out)
    assert front and all(m["config"]["act"] == "relu" for m in front)
    spec = load_spec(load_study("fromfile", f"sqlite:///{ws.resolve()}/optuna.db"))
    assert spec.epochs == 1  # the flag won over the file
    assert spec.space.overrides["convmixer"] == {"h": "16..32:16", "d": "1", "p": "4",
                                                 "k": "3", "act": "relu"}
    assert main(["search", "status", "fromfile", "--workspace", str(ws), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["RUNNING"] == 0
    assert main(["search", "list", "--workspace", str(ws), "--json"]) == 0
    assert [s["name"] for s in json.loads(capsys.readouterr().out)] == ["fromfile"]


@pytest.mark.parametrize("text, message", [
    ("- a\n", "expected a mapping"),
    ("name: x\ncolour: red\n", "unknown setting 'colour'"),
    ("family: convmixer\n", "give the study a --name"),
])
def test_bad_study_files_are_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    assert main(["search", "run", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_status_of_a_missing_study_names_the_ones_there(tmp_path, capsys):
    import optuna

    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert main(["search", "status", "nope", "--workspace", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no study 'nope'" in err and "studies there: other" in err
