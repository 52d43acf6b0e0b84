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
    ran = run_worker("w", url, device="cpu", workspace=ws)
    study = load_study("w", url)
    trials = study.get_trials()
    assert len(trials) == ran and all(t.state == TrialState.COMPLETE for t in trials)
    # --trials counts trained architectures: five distinct ones (twins are reused, free)
    trained = [t for t in trials if state_of(t) == "COMPLETE"]
    assert len({TrialRecord.from_trial(t).arch_hash for t in trained}) == len(trained) == 5
    assert all(state_of(t) in ("COMPLETE", "REUSED") for t in trials)
    assert status(study).finished == 5
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


def test_a_trained_architecture_is_reused_free_and_listed_once(tmp_path, tiny_data):
    url, ws = make_study(tmp_path, tiny_data, 2, overrides={"h": "32,48", "d": "1", "p": "4",
                                                             "k": "3", "act": "gelu"},
                         pruner="none")
    study = load_study("w", url)
    for h in (32, 32, 48):  # a twin of the first, queued before the second architecture
        study.enqueue_trial({"h": h})
    run_worker("w", url, device="cpu", workspace=ws)
    trials = load_study("w", url).trials
    assert [state_of(t) for t in trials] == ["COMPLETE", "REUSED", "COMPLETE"]
    original, twin = trials[0], trials[1]
    r = TrialRecord.from_trial(twin)
    assert r.reused_from == original.number and r.seconds is None
    assert twin.values == original.values
    assert status(load_study("w", url)).finished == 2  # the reuse took no slot
    assert sorted(m["trial"] for m in pareto(load_study("w", url))) in ([0], [0, 2], [2])


def test_a_space_smaller_than_the_budget_ends_when_each_architecture_is_trained(
        tmp_path, tiny_data, capfd):
    url, ws = make_study(tmp_path, tiny_data, 3, overrides={"h": "32", "d": "1", "p": "4",
                                                             "k": "3", "act": "gelu"},
                         pruner="none")
    run_worker("w", url, device="cpu", workspace=ws)
    study = load_study("w", url)
    assert [state_of(t) for t in study.trials] == ["COMPLETE"]
    s = status(study)
    assert s.exhausted and s.finished == 1 and s.eta_seconds == 0.0
    assert "every architecture of the space (1) is trained" in capfd.readouterr().err


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



def test_a_trial_that_kills_its_worker_twice_is_failed_for_good(tmp_path, tiny_data):
    from search.backends.local import fail_trials_of
    from search.study import record

    url, _ = make_study(tmp_path, tiny_data, 2, pruner="none")
    study = load_study("w", url)
    first = study.ask()
    record.write(first, worker="host:11", seconds=30.0)
    assert fail_trials_of(study, "host:99", "was killed by signal 9") == []  # not its trial
    assert fail_trials_of(study, "host:11", "was killed by signal 9") == [
        "trial 0 is queued again"]
    s = status(study)
    assert s.counts["RETRIED"] == 1 and s.counts["FAIL"] == 0 and s.finished == 0
    retry = study.ask()  # the queued retry, on another worker
    assert record.original_number(retry) == 0
    record.write(retry, worker="host:12")
    assert status(study).eta_seconds > 0  # a trial running: not "done"
    assert fail_trials_of(study, "host:12", "was killed by signal 9") == [
        "trial 1 killed its worker twice: failed for good"]
    trials = load_study("w", url).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert TrialRecord.from_trial(trials[1]).counted  # it holds a slot: the study goes on
    assert "twice" in TrialRecord.from_trial(trials[1]).reason
    assert status(load_study("w", url)).finished == 1


def test_a_resumed_study_continues_the_search_instead_of_replaying_it(tmp_path, tiny_data):
    # the random sampler ignores results, so this is deterministic: before each start drew
    # its own stream, the second run proposed the first run's configs again
    url, ws = make_study(tmp_path, tiny_data, 2, epochs=1, sampler="random", pruner="none",
                         overrides={"h": "16..64:16", "d": "1..3", "p": "4", "k": "3,5"})
    run_worker("w", url, device="cpu", workspace=ws)
    from search.study.record import set_trial_budget

    set_trial_budget(load_study("w", url), 4)
    run_worker("w", url, device="cpu", workspace=ws)  # the same worker index, started again
    trials = load_study("w", url).trials
    first, second = [t.params for t in trials[:2]], [t.params for t in trials[2:4]]
    assert first != second and second[0] != first[0]


def test_a_trial_failed_by_another_worker_while_it_ran_does_not_stop_this_one(tmp_path):
    """Another worker's stale-heartbeat check may fail a trial whose worker, starved of CPU,
    missed its heartbeats; Optuna then refuses that worker's own tell. The worker says so and
    goes on with the budget (it crashed before: "Cannot tell a FAIL trial")."""
    from search.backends.worker import make_runner, run_trials
    from trainers.zero import ZeroCostTrainer, zero_data

    url = f"sqlite:///{tmp_path}/optuna.db"
    spec = build_spec("stale", {"epochs": 1, "pruner": "none", "sampler": "random"}, None,
                      "zero")
    create_or_resume(replace(spec, data_hash="zero"), url, 4)
    other = optuna.storages.RDBStorage(url)  # another worker's handle on the storage

    class FailedMeanwhile(ZeroCostTrainer):
        failed: list[int] = []

        def fit(self, *args, **kwargs):
            if not self.failed:  # the first trial: failed by the other worker while it runs
                running = [t for t in load_study("stale", url).trials
                           if t.state == TrialState.RUNNING]
                other.set_trial_state_values(running[0]._trial_id, TrialState.FAIL)
                self.failed.append(running[0].number)
            return super().fit(*args, **kwargs)

    said = []
    study, runner = make_runner("stale", url, workspace=tmp_path, log=said.append,
                                trainer=FailedMeanwhile(), device_data=zero_data())
    run_trials(study, runner)
    assert any(f"trial {FailedMeanwhile.failed[0]} was failed by another worker" in line
               for line in said)
    trials = load_study("stale", url).trials
    assert trials[FailedMeanwhile.failed[0]].state == TrialState.FAIL
    assert sum(state_of(t) == "COMPLETE" for t in trials) == 4  # the budget, trained
