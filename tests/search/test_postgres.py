"""Two workers on one study through a real PostgreSQL (started by .ci/run)."""

import os
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

from optuna.trial import TrialState

from search.study.spec import build_spec
from search.study.studies import create_or_resume, load_study
from search.study.workspace import load_splits
from tests.helpers import TINY, postgres_url

PATCHNAS = str(Path(sys.executable).with_name("patchnas"))


def test_two_workers_share_one_study_and_its_budget(tmp_path, tiny_data):
    url = postgres_url()
    name = f"pg-{uuid.uuid4().hex[:8]}"
    ws = tmp_path / "ws"
    spec = build_spec(name, {**TINY, "epochs": 3, "pruner": "none",
                             "overrides": {"h": "16..96:16", "d": "1..3", "p": "2,4",
                                           "k": "3,5"}}, None, str(tiny_data))
    splits = load_splits(str(tiny_data), ws, val_size=spec.val_size, seed=spec.seed)
    create_or_resume(replace(spec, data_hash=splits.content_hash), url, 8)
    env = {**os.environ, "PATCHNAS_STORAGE": url, "PATCHNAS_THREADS": "1"}
    workers = [subprocess.Popen([PATCHNAS, "search", "worker", name, "--device", "cpu",
                                 "--workspace", str(ws), "--worker-index", str(i), "--no-tracking"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env) for i in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (_, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err
        assert "patchnas-ci" not in err  # the password never reaches a log
    ran = [int(err.rsplit("worker done: ", 1)[1].split()[0]) for _, err in outputs]
    assert all(r >= 1 for r in ran), ran  # both took part
    trials = load_study(name, url).get_trials()
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 8
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert len({t.number for t in trials}) == len(trials)
