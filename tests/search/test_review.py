"""What the MLflow review reads from a study, on a study written straight into the storage:
the hypervolume curve kept incrementally agrees with the hypervolume recomputed from scratch."""

import random
from dataclasses import replace

import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from search.backends.review import hypervolume_curves, refresh
from search.study.record import TrialRecord
from search.study.results import hypervolume, ranked_trials, status
from search.study.spec import build_spec
from search.study.studies import create_or_resume, load_spec
from tests.helpers import mlflow_test_db
from tracking.runs import StudyRuns, _trial_runs_in_database


def test_the_hypervolume_curve_is_the_hypervolume_of_each_prefix(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    spec = build_spec("hv", {"epochs": 2, "sampler": "random"}, None, "zero")
    study = create_or_resume(replace(spec, data_hash="zero"), url, 60)
    rng = random.Random(3)
    for n in range(60):
        acc, params = rng.random(), float(rng.randint(10_000, 5_000_000))
        state = TrialState.FAIL if n % 9 == 4 else TrialState.COMPLETE
        study.add_trial(create_trial(
            state=state, values=[acc, params] if state == TrialState.COMPLETE else None,
            params={"x": n}, distributions={"x": IntDistribution(0, 100)},
            user_attrs=TrialRecord(arch_hash=f"a{n % 45}", counted=True, seconds=10.0,
                                   costs={"params": params}).to_attrs()))
    spec = load_spec(study)
    ranked = ranked_trials(study, spec)
    trials = study.get_trials(deepcopy=False)
    by_trials, by_seconds = hypervolume_curves(
        study, spec, ranked, trials, {t.number: TrialRecord.from_trial(t) for t in trials})
    finished = sorted((t for t in study.get_trials() if t.state.is_finished()),
                      key=lambda t: t.datetime_complete)
    trained = {t.number for t, _ in ranked}
    assert len(by_trials) == len(finished) == 60 and 0 < len(trained) < 50  # twins, failures
    for i, (count, hv) in enumerate(by_trials):
        seen = [t for t in finished[:i + 1] if t.number in trained]
        assert count == i + 1 and by_seconds[i] == (10.0 * (i + 1), hv)
        assert abs(hv - (hypervolume(study, spec, seen) if seen else 0.0)) < 1e-12
    assert by_trials[-1][1] == status(study).hypervolume > 0


def test_a_driver_refresh_follows_the_front_from_what_it_saw(tmp_path):
    """The driver's refresh remembers each child run's Pareto tags: a new trial that
    dominates the front is tagged from its own run, the member it displaces is untagged from
    the memory, and a refresh with nothing new leaves the runs as they are."""
    url = f"sqlite:///{tmp_path}/s.db"
    spec = build_spec("drv", {"epochs": 2, "sampler": "random"}, None, "zero")
    study = create_or_resume(replace(spec, data_hash="zero"), url, 10)
    runs = StudyRuns(f"sqlite:///{tmp_path}/mlflow.db", "drv")

    def finish(n: int, acc: float, params: float) -> str:
        run = runs.start_trial(f"t{n}", n, {"x": n}, {}, runs.parent())
        runs.end_trial(run, "COMPLETE", None, {"val_acc": acc}, {}, {})
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, values=[acc, params], params={"x": n},
            distributions={"x": IntDistribution(0, 100)},
            user_attrs=TrialRecord(arch_hash=f"a{n}", mlflow_run_id=run, seconds=1.0,
                                   costs={"params": params}).to_attrs()))
        return run

    def tags(run: str) -> dict:
        return runs.client.get_run(run).data.tags

    first = finish(0, 0.5, 2e5)
    second = finish(1, 0.6, 4e5)
    refresh(study, runs)
    assert tags(first)["pareto"] == tags(second)["pareto"] == "true"
    better = finish(2, 0.7, 1e5)  # dominates both
    refresh(study, runs)
    assert tags(better)["pareto"] == "true" and tags(better)["pareto_rank"] == "0"
    assert tags(first)["pareto"] == "false" and tags(second)["pareto"] == "false"
    runs.client.set_tag(first, "pareto", "edited")
    refresh(study, runs)  # nothing started or finished since: nothing read or written
    assert tags(first)["pareto"] == "edited"


@pytest.fixture(params=["sqlite", "postgresql"])
def tracking_db(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/mlflow.db"
    url = mlflow_test_db()
    from sqlalchemy import create_engine, text
    with create_engine(url).begin() as db:  # a store of its own: MLflow makes its tables
        db.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    return url


def test_a_cold_review_reads_the_children_from_the_tables_as_mlflows_search_does(tracking_db):
    """A driver's first review reads every trial run's status and Pareto tags with one
    SELECT of MLflow's tables: the same as MLflow's own search (deleted runs, the parent,
    other studies' runs and tags that are not the review's left out)."""
    runs, other = StudyRuns(tracking_db, "cold"), StudyRuns(tracking_db, "other")
    parent = runs.parent()
    made = [runs.start_trial(f"t{n}", n, {"x": n}, {"pareto": "true"} if n % 3 == 0 else {},
                             parent) for n in range(7)]
    runs.client.set_tag(made[1], "pareto_rank", "2")
    runs.end_trial(made[2], "PRUNED", "rung 1", {"val_acc": 0.1}, {}, {})
    runs.client.delete_run(made[4])
    other.start_trial("t0", 0, {"x": 0}, {"pareto": "true"}, other.parent())
    by_sql = _trial_runs_in_database(tracking_db, runs.experiment_id)
    by_search = {r.info.run_id: {"status": r.info.status, "tags": {
        k: r.data.tags[k] for k in ("pareto", "pareto_rank") if k in r.data.tags}}
        for r in runs.client.search_runs([runs.experiment_id], "tags.`patchnas.role` = 'trial'")}
    assert by_sql == by_search
    assert set(by_sql) == set(made) - {made[4]}
    assert by_sql[made[1]]["tags"] == {"pareto_rank": "2"} and by_sql[made[3]]["tags"] == {
        "pareto": "true"} and by_sql[made[2]]["status"] == "KILLED"
    assert _trial_runs_in_database("http://127.0.0.1:1", runs.experiment_id) is None
