"""Workers on real Optuna storage and real (tiny) images: budget, states, reuse, constraints."""

from dataclasses import replace

import optuna
import pytest
from optuna.trial import TrialState

from search.backends.worker import run_worker
from search.study.record import TrialRecord
from search.study.results import front_trials, pareto, state_of, status
from search.study.spec import build_spec
from search.study.studies import create_or_resume, load_spec, load_study
from search.study.workspace import load_splits
from tests.helpers import TINY


def make_study(tmp_path, data, n, name="w", **changes):
    url, ws = f"sqlite:///{tmp_path}/optuna.db", tmp_path / "ws"
    spec = build_spec(name, {**TINY, **changes}, None, str(data))
    splits = load_splits(str(data), ws, val_size=spec.val_size, seed=spec.seed)
    create_or_resume(replace(spec, data_hash=splits.content_hash), url, n)
    return url, ws


def test_worker_runs_exactly_the_budget_and_records_curves(tmp_path, tiny_data):
    url, ws = make_study(tmp_path, tiny_data, 5, pruner="none")
    assert run_worker("w", url, device="cpu", workspace=ws) == 5
    study = load_study("w", url)
    trials = study.get_trials()
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    trained = [t for t in trials if state_of(t) == "COMPLETE"]
    assert trained and all(state_of(t) in ("COMPLETE", "REUSED") for t in trials)
    for t in trained:
        r = TrialRecord.from_trial(t)
        assert [c["epoch"] for c in r.curve] == [1, 2]
        assert t.values[1] == r.costs["params"]
        assert 0 <= t.values[0] <= 1
    front = pareto(study)
    assert front and all(m["fidelity"]["epochs"] == 2 for m in front)
    assert status(study).counts["RUNNING"] == 0
    # a second worker on a finished study has nothing to do
    assert run_worker("w", url, device="cpu", workspace=ws) == 0


def test_infeasible_configs_are_never_trained_and_never_on_the_front(tmp_path, tiny_data):
    # p=4 -> p=28 at 224 px; h=16: ~0.05M params, h=48: ~0.17M; the limit lies between
    url, ws = make_study(tmp_path, tiny_data, 6, overrides={"h": "16,48", "d": "1..2",
                                                             "p": "4", "k": "3"},
                         max_params=100_000, pruner="none", sampler="random")
    run_worker("w", url, device="cpu", workspace=ws)
    study = load_study("w", url)
    infeasible = [t for t in study.trials if state_of(t) == "INFEASIBLE"]
    feasible = [t for t in study.trials if state_of(t) != "INFEASIBLE"]
    assert infeasible and feasible
    for t in infeasible:
        assert t.state == TrialState.COMPLETE and t.constraints["params"] > 0
        assert "curve" not in t.user_attrs and t.values[0] == 0.0
    for t in feasible:
        assert t.constraints["params"] <= 0
    assert {m["trial"] for m in pareto(study)} <= {t.number for t in feasible}


def test_the_same_architecture_is_trained_once_and_listed_once(tmp_path, tiny_data):
    url, ws = make_study(tmp_path, tiny_data, 3, overrides={"h": "32", "d": "1", "p": "4",
                                                             "k": "3", "act": "gelu"},
                         pruner="none")
    run_worker("w", url, device="cpu", workspace=ws)
    study = load_study("w", url)
    states = [state_of(t) for t in study.trials]
    assert states.count("COMPLETE") == 1 and states.count("REUSED") == 2
    original = next(t for t in study.trials if state_of(t) == "COMPLETE")
    for t in study.trials:
        if state_of(t) == "REUSED":
            assert t.user_attrs["reused_from"] == original.number
            assert t.values == original.values and "seconds" not in t.user_attrs
    assert [m["trial"] for m in pareto(study)] == [original.number]


def test_a_diverging_trial_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path,
                                                                              tiny_data):
    url, ws = make_study(tmp_path, tiny_data, 2, recipe={"batch_size": 32, "lr": 1e30,
                                                         "clip_norm": 0.0},
                         pruner="none")
    assert run_worker("w", url, device="cpu", workspace=ws) == 2
    study = load_study("w", url)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    assert all(t.user_attrs["reason"].startswith("diverged") for t in study.trials)
    assert front_trials(study, load_spec(study)) == []


def test_moasha_prunes_with_two_objectives_and_keeps_partial_metrics(tmp_path, tiny_data):
    url, ws = make_study(tmp_path, tiny_data, 9, epochs=3, sampler="random",
                         overrides={"h": "16..64:16", "d": "1..3", "p": "2,4", "k": "3,5"})
    run_worker("w", url, device="cpu", workspace=ws)
    study = load_study("w", url)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, [state_of(t) for t in study.trials]
    for t in pruned:
        assert t.values is None and len(t.user_attrs["curve"]) in (1, 2)
    assert len([t for t in study.trials if t.state.is_finished()]) == 9
    # a sampler still works on a study holding pruned trials
    optuna.load_study(study_name="w", storage=url,
                      sampler=optuna.samplers.NSGAIISampler(seed=0)).ask()


@pytest.mark.parametrize("sampler", ["tpe", "gp"])
def test_single_objective_studies_use_optuna_pruners(tmp_path, tiny_data, sampler):
    url, ws = make_study(tmp_path, tiny_data, 3, objectives="val_acc:max", sampler=sampler)
    assert load_spec(load_study("w", url)).pruner == "hyperband"  # the one-objective default
    assert run_worker("w", url, device="cpu", workspace=ws) == 3
    study = load_study("w", url)
    trained = [t for t in study.trials if state_of(t) in ("COMPLETE", "PRUNED")]
    assert trained
    for t in trained:  # each epoch was reported to Optuna's pruner, which decided on it
        curve = TrialRecord.from_trial(t).curve
        assert t.intermediate_values == {c["epoch"]: c["val_acc"] for c in curve}
    assert study.best_trial.value == max(t.value for t in trained if t.value is not None)
