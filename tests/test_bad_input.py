"""Bad input never ends in a traceback: a table of mistakes across the commands, files and
stores. Each case asserts a non-zero exit, exactly one line on stderr that contains the
expected words, no traceback, and that a store it was pointed at is unchanged."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml

from search.cli import main
from tests.helpers import TINY_SETS, postgres_url

TINY = ["--family", "convmixer", "--set", *TINY_SETS]
RUN = ["search", "run", "--name", "s", "--trials", "1", "--epochs", "1", "--val-size", "40",
       "--device", "cpu", "--data", "{data}", "--workspace", "{ws}"]
PROXY = ["train", "proxy", "--family", "convmixer", "--set", "h=16", "d=1", "p=4", "k=3",
         "--device", "cpu", "--data", "{data}", "--epochs", "1", "--val-size", "40",
         "--workspace", "{ws}"]
FULL = ["train", "full", "--data", "{data}", "--no-tracking", "--workspace", "{ws}"]
CONFIG = ["search", "run", "--workspace", "{ws}", "--data", "{data}", "--config", "{f}"]


@pytest.fixture(scope="module")
def study_ws(tmp_path_factory, tiny_data) -> Path:
    """A workspace holding a real study `s` (2 trials) with its MLflow runs."""
    ws = tmp_path_factory.mktemp("study") / "ws"
    assert main(["search", "run", "--name", "s", *TINY, "--trials", "2", "--epochs", "1",
                 "--val-size", "40", "--device", "cpu", "--data", str(tiny_data),
                 "--workspace", str(ws)]) == 0
    for db in ("optuna.db", "mlflow.db"):  # what the write-ahead log holds, into the file
        with contextlib.closing(sqlite3.connect(ws / db)) as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return ws


def _damage(path: Path) -> None:
    """A truncated copy, as a failed disk or an interrupted copy leaves it (without the
    write-ahead log beside it)."""
    for log in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        log.unlink(missing_ok=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _dump(path: Path) -> str:
    """A database's content (not its bytes: SQLite may rewrite pages without changing it)."""
    if not path.exists():
        return "<none>"
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return hashlib.sha256("\n".join(db.iterdump()).encode()).hexdigest()
    except sqlite3.DatabaseError:
        return "bytes " + hashlib.sha256(path.read_bytes()).hexdigest()


# files a case may write: name -> text (yaml, or raw with a leading "raw:")
STUDY = "name: s\nfamily: convmixer\n"
CASES = [
    # --- study files (--config): types, unknown keys, what a YAML may hold --------------
    ("config-trials-word", CONFIG, {"f": STUDY + "trials: ten"},
     "trials: 'ten' is not an integer"),
    ("config-epochs-float", CONFIG, {"f": STUDY + "epochs: 1.5"},
     "epochs: '1.5' is not an integer"),
    ("config-trials-bool", CONFIG, {"f": STUDY + "trials: yes"},
     "trials: expected one value, got True"),
    ("config-set-string", CONFIG, {"f": STUDY + "set: h=64"},
     "set: expected a mapping or a list, got 'h=64'"),
    ("config-set-item", CONFIG, {"f": STUDY + "set: [5]"},
     "write NAME=SPEC"),
    ("config-recipe-list", CONFIG, {"f": STUDY + "recipe: [1, 2]"},
     "recipe: expected a mapping, got a list"),
    ("config-recipe-string", CONFIG, {"f": STUDY + "recipe: fast"},
     "recipe: expected a mapping, got 'fast'"),
    ("config-recipe-lr", CONFIG,
     {"f": STUDY + "recipe: {lr: fast}"}, "recipe.lr: expected a number, got 'fast'"),
    ("config-recipe-key", CONFIG,
     {"f": STUDY + "recipe: {nope: 1}"}, "recipe: unknown key 'nope'"),
    ("config-recipe-range", CONFIG,
     {"f": STUDY + "recipe: {lr: -1}"}, "lr must be positive"),
    ("config-workers-zero", CONFIG, {"f": STUDY + "workers: 0"},
     "workers: 0 is not allowed here; give 1 or more"),
    ("config-switch", CONFIG, {"f": STUDY + "no_tracking: maybe"},
     "no_tracking: expected true or false"),
    ("config-device", CONFIG, {"f": STUDY + "device: tpu"},
     "device: 'tpu' is not one of cuda, cpu"),
    ("config-sampler", CONFIG, {"f": STUDY + "sampler: best"},
     "sampler: 'best' is not one of"),
    ("config-family-list", CONFIG, {"f": "name: s\nfamily: [a]"},
     "family: expected one value, got a list"),
    ("config-unknown-key", CONFIG, {"f": STUDY + "colour: red"},
     "unknown setting 'colour'"),
    ("config-list", CONFIG, {"f": "- a\n- b"},
     "expected a mapping"),
    ("config-syntax", CONFIG, {"f": "name: [s"},
     "not a readable YAML file"),
    ("config-folder", [*CONFIG[:-1], "{tmp}"], {},
     "not a readable YAML file"),
    ("config-missing", [*CONFIG[:-1], "{tmp}/nope.yaml"], {}, "no such file"),
    ("config-objective", CONFIG, {"f": STUDY + "objectives: 5"},
     "unknown objective '5'"),
    ("config-no-name", CONFIG, {"f": "family: convmixer"},
     "give the study a --name"),
    # --- flags -----------------------------------------------------------------------------
    ("flag-trials-word", [*RUN, "--trials", "ten"], {}, "'ten' is not an integer"),
    ("flag-trials-zero", [*RUN, "--trials", "0"], {}, "0 is not allowed here"),
    ("flag-epochs-negative", [*RUN, "--epochs", "-1"], {}, "-1 is not allowed here"),
    ("flag-unknown", [*RUN, "--trails", "3"], {}, "unrecognized arguments: --trails"),
    ("flag-device-choice", [*RUN, "--device", "tpu"], {}, "invalid choice: 'tpu'"),
    ("flag-set-no-value", [*RUN, *TINY, "--set", "h"], {}, "write NAME=SPEC"),
    ("flag-set-unknown", [*RUN, *TINY, "--set", "zz=3"], {}, "unknown parameter 'zz'"),
    ("flag-family", [*RUN, "--family", "resnet"], {}, "unknown family 'resnet'"),
    ("flag-objective", [*RUN, *TINY, "--objectives", "speed:max"], {},
     "unknown objective 'speed'"),
    ("flag-space-file-type", [*RUN, "--family", "convmixer", "--space", "{f}"],
     {"f": "h: {a: 1}"}, "input.yaml: h: expected a value, a range such as 64..256"),
    ("config-set-value", CONFIG, {"f": STUDY + "set: {h: {a: 1}}"},
     "set: h: expected a value, a range such as 64..256"),
    ("flag-data-missing", [*RUN, *TINY, "--data", "{tmp}/no-such-data"], {}, "no-such-data"),
    ("proxy-device", ["train", "proxy", "convmixer-256-8", "--device", "tpu", "--data",
                      "{data}", "--epochs", "1", "--val-size", "40", "--workspace", "{ws}"], {},
     "--device tpu: give cuda, cuda:N or cpu"),
    ("proxy-checkpoint-folder", [*PROXY, "--checkpoint", "{tmp}"],
     {}, "is a folder; give the path of a checkpoint file"),
    ("proxy-checkpoint-corrupt", [*PROXY, "--checkpoint", "{f}"],
     {"f": "raw:not a checkpoint"}, "cannot read the checkpoint"),
    ("proxy-checkpoint-foreign", [*PROXY, "--checkpoint", "{f}"],
     {"f": "torch:{}"}, "is not a patchnas checkpoint"),
    # --- the YAML `train full` runs --------------------------------------------------------
    ("full-folder", [*FULL, "{tmp}"], {},
     "not a readable YAML file"),
    ("full-not-yaml", [*FULL, "{f}"],
     {"f": "raw:\x00\x01binary"}, "not a readable YAML file"),
    ("full-plain-text", [*FULL, "{f}"],
     {"f": "hello"}, "expected a mapping"),
    ("full-image-size", [*FULL, "{f}"],
     {"f": "export:model.image_size=abc"}, "model.image_size: expected an integer, got 'abc'"),
    ("full-config-type", [*FULL, "{f}"],
     {"f": "export:model.config.h=wide"}, "model.config (convmixer).h: expected an integer"),
    ("full-recipe-type", [*FULL, "{f}"],
     {"f": "export:recipe.lr=fast"}, "recipe.lr: expected a number, got 'fast'"),
    # --- stores: missing, damaged, down, wrong scheme, wrong password ----------------------
    ("status-missing-file", ["search", "status", "s", "--storage", "sqlite:///{tmp}/x.db"], {},
     "no study storage at"),
    ("status-no-study", ["search", "status", "nope", "--workspace", "{ws}"], {"ws": "study"},
     "nope"),
    ("show-no-trial", ["search", "show", "s", "99", "--workspace", "{ws}"], {"ws": "study"},
     "99"),
    ("status-server-down", ["search", "status", "s", "--storage",
                            "postgresql+psycopg://u:hunter2@127.0.0.1:1/db"], {},
     "cannot open the study storage postgresql+psycopg://u:***@127.0.0.1:1/db"),
    ("status-scheme", ["search", "status", "s", "--storage", "mysqlx://a/b"], {},
     "cannot open the study storage mysqlx://a/b"),
    ("tracking-scheme", [*RUN, *TINY, "--tracking-uri", "bogus://x"], {},
     "MLflow cannot use a bogus:// store"),
    ("tracking-down", [*RUN, *TINY, "--tracking-uri", "http://127.0.0.1:1"], {},
     "cannot reach the MLflow tracking server at http://127.0.0.1:1"),
    ("damaged-optuna-status", ["search", "status", "s", "--workspace", "{ws}"],
     {"ws": "damaged:optuna.db"}, "optuna.db is damaged"),
    ("damaged-optuna-pareto", ["search", "pareto", "s", "--workspace", "{ws}"],
     {"ws": "damaged:optuna.db"}, "optuna.db is damaged"),
    ("damaged-optuna-list", ["search", "list", "--workspace", "{ws}"],
     {"ws": "damaged:optuna.db"}, "optuna.db is damaged"),
    ("damaged-optuna-trials", ["search", "trials", "s", "--workspace", "{ws}"],
     {"ws": "damaged:optuna.db"}, "optuna.db is damaged"),
    ("damaged-optuna-export", ["export", "s", "--out", "{tmp}/out", "--workspace", "{ws}"],
     {"ws": "damaged:optuna.db"}, "optuna.db is damaged"),
    ("damaged-optuna-run", [*RUN, *TINY], {"ws": "damaged:optuna.db"}, "optuna.db is damaged"),
    ("damaged-mlflow-ui", ["ui", "s", "--workspace", "{ws}"], {"ws": "damaged:mlflow.db"},
     "mlflow.db is damaged"),
    ("damaged-mlflow-run", [*RUN, *TINY], {"ws": "damaged:mlflow.db"}, "mlflow.db is damaged"),
    ("damaged-mlflow-delete", ["search", "delete", "s", "--yes", "--workspace", "{ws}"],
     {"ws": "damaged:mlflow.db"}, "mlflow.db is damaged"),
    ("resume-changed", [*RUN, *TINY, "--epochs", "3"], {"ws": "study"},
     "study s exists with a different epochs"),
]


def _export_yaml(tmp: Path, study_ws: Path, change: str) -> str:
    """An exported YAML of study `s` with one value changed (KEY.PATH=VALUE)."""
    out = tmp / "export"
    assert main(["export", "s", "--out", str(out), "--workspace", str(study_ws)]) == 0
    doc = yaml.safe_load(next(out.glob("*.yaml")).read_text())
    path, _, value = change.partition("=")
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    node[last] = value
    return yaml.safe_dump(doc)


@pytest.mark.parametrize("argv, files, expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(argv, files, expected, tmp_path, tiny_data, study_ws, capsys,
                               monkeypatch):
    monkeypatch.delenv("PATCHNAS_STORAGE", raising=False)
    monkeypatch.delenv("PATCHNAS_TRACKING_URI", raising=False)
    ws = tmp_path / "ws"
    kind = files.get("ws", "")
    if kind:
        shutil.copytree(study_ws, ws, ignore=shutil.ignore_patterns("cache", "checkpoints"))
        if kind.startswith("damaged:"):
            _damage(ws / kind.partition(":")[2])
    f = tmp_path / "input.yaml"
    text = files.get("f")
    if text is not None:
        if text.startswith("raw:"):
            f.write_bytes(text[4:].encode())
        elif text.startswith("torch:"):
            torch.save({}, f)
        elif text.startswith("export:"):
            f.write_text(_export_yaml(tmp_path, study_ws, text[7:]))
            capsys.readouterr()
        else:
            f.write_text(text)
    args = [a.format(data=tiny_data, ws=ws, tmp=tmp_path, f=f) for a in argv]
    stores = {name: _dump(ws / name) for name in ("optuna.db", "mlflow.db")}
    code = main(args)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code not in (0, None), (args, out, err)
    assert "Traceback" not in out + err
    assert len(lines) == 1, lines
    assert expected in lines[0], lines[0]
    assert "hunter2" not in err
    assert {name: _dump(ws / name) for name in stores} == stores  # nothing stored changed


def test_a_bug_is_one_line_and_its_traceback_is_in_the_workspace_logs(tmp_path, capsys,
                                                                        monkeypatch):
    import search.cli.search_cmd as search_cmd

    def broken(args):
        raise ZeroDivisionError("deep inside")

    monkeypatch.setattr(search_cmd, "_list", broken)
    monkeypatch.delenv("PATCHNAS_DEBUG", raising=False)
    ws = tmp_path / "ws"
    assert main(["search", "list", "--workspace", str(ws)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "internal error: ZeroDivisionError: deep inside" in lines[0]
    (log,) = (ws / "logs").glob("crash-*.txt")
    assert str(log) in lines[0]
    assert "Traceback" in log.read_text() and "deep inside" in log.read_text()
    monkeypatch.setenv("PATCHNAS_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["search", "list", "--workspace", str(ws)])


def test_a_wrong_database_password_is_one_line_without_the_password(capsys):
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url()).set(password="not-the-password-42")
    shown = url.render_as_string(hide_password=False)
    assert main(["search", "list", "--storage", shown]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "password authentication failed" in lines[0], lines
    assert "not-the-password-42" not in lines[0] and ":***@" in lines[0]
