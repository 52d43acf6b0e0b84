"""Pareto logic, the normalized hypervolume and the MO-ASHA rung rule."""

import itertools
import random

import pytest

from search.backends.pruners import rung_keeps, rung_vector
from search.study.objectives import normalize, normalized_hypervolume, parse_objectives
from search.study.pareto import (
    crowding_distances,
    dominates,
    hypervolume,
    nondominated_ranks,
    nsga2_order,
    pareto_front,
)
from spaces.errors import UserError


def test_dominance_and_ranks():
    pts = [(1, 5), (2, 2), (5, 1), (3, 3), (4, 4), (2, 2)]
    assert dominates((1, 1), (1, 2)) and not dominates((1, 2), (2, 1))
    assert not dominates((2, 2), (2, 2))
    assert nondominated_ranks(pts) == [0, 0, 0, 1, 2, 0]
    assert pareto_front(pts) == [0, 1, 2, 5]


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_ranks_peel_fronts_by_the_definition(dims):
    """Each rank is the non-dominated set of what the earlier ranks left, with ties (a small
    grid of values) and duplicates."""
    rng = random.Random(dims)
    pts = [tuple(rng.randint(0, 5) for _ in range(dims)) for _ in range(120)]
    ranks = nondominated_ranks(pts)
    left, rank = set(range(len(pts))), 0
    while left:
        front = {i for i in left if not any(dominates(pts[j], pts[i]) for j in left)}
        assert {i for i in left if ranks[i] == rank} == front
        left, rank = left - front, rank + 1
    assert max(ranks) == rank - 1 and nondominated_ranks([]) == []


def test_crowding_prefers_boundaries_and_sparse_regions():
    d = crowding_distances([(0, 10), (1, 9), (5, 5), (10, 0)])
    assert d[0] == d[3] == float("inf") and d[2] > d[1]
    order = nsga2_order([(0, 10), (1, 9), (5, 5), (10, 0), (6, 6)])
    assert order[-1] == 4 and set(order[:2]) == {0, 3}


def brute_force_hv(points, ref, grid=60):
    """Count grid cells dominated by some point: an independent check of `hypervolume`."""
    dims = len(ref)
    step = [r / grid for r in ref]
    count = 0
    for cell in itertools.product(range(grid), repeat=dims):
        centre = [(c + 0.5) * s for c, s in zip(cell, step, strict=True)]
        if any(all(p[i] <= centre[i] for i in range(dims)) for p in points):
            count += 1
    vol = 1.0
    for r in ref:
        vol *= r
    return count / grid**dims * vol


@pytest.mark.parametrize("dims", [2, 3])
def test_hypervolume_matches_brute_force(dims):
    rng = random.Random(dims)
    points = [tuple(rng.random() for _ in range(dims)) for _ in range(12)]
    ref = (1.0,) * dims
    assert hypervolume(points, ref) == pytest.approx(brute_force_hv(points, ref, 60 if dims == 2
                                                                    else 24), abs=0.03)


def test_hypervolume_known_values():
    assert hypervolume([(0.5, 0.5)], (1, 1)) == pytest.approx(0.25)
    assert hypervolume([(0.0, 0.5), (0.5, 0.0)], (1, 1)) == pytest.approx(0.75)
    assert hypervolume([(2, 2)], (1, 1)) == 0.0  # outside the reference box
    assert hypervolume([(0.5, 0.5, 0.5)], (1, 1, 1)) == pytest.approx(0.125)


def test_objectives_parse_and_refuse_nonsense():
    objs = parse_objectives("val_acc:max,params:min")
    assert [str(o) for o in objs] == ["val_acc:max", "params:min"]
    assert [o.optuna_direction for o in parse_objectives("val_acc,macs")] == \
        ["maximize", "minimize"]
    for bad, message in [("accuracy:max", "unknown objective"), ("params:max", "only be min"),
                         ("params:min", "val_acc must be"), ("val_acc,val_acc", "once")]:
        with pytest.raises(UserError, match=message):
            parse_objectives(bad)


def test_normalized_hypervolume_is_in_unit_box_and_log_scaled():
    objs = parse_objectives("val_acc:max,params:min")
    bounds = {"params": (1e4, 1e8)}
    assert normalize(objs, [0.9, 1e6], bounds) == pytest.approx([0.1, 0.5])
    assert normalize(objs, [0.9, 1e4], bounds) == pytest.approx([0.1, 0.0])
    best = normalized_hypervolume(objs, [[1.0, 1e4]], bounds)
    assert best == pytest.approx(1.0)
    assert 0 < normalized_hypervolume(objs, [[0.9, 1e6], [0.8, 1e5]], bounds) < 1


@pytest.mark.parametrize("keep_front", [False, True])
def test_rung_keeps_the_best_third_and_on_request_its_front(keep_front):
    # minimization vectors (-acc, params): one front point, then a dominated crowd
    pts = [(-0.9, 1), (-0.8, 5), (-0.7, 6), (-0.6, 7), (-0.5, 8), (-0.4, 9)]
    assert [i for i in range(6) if rung_keeps(pts, i, 3, keep_front)] == [0, 1]  # ceil(6/3)
    # three non-dominated points: the best third (by crowding: the two ends) or all three
    front = [(-0.9, 10), (-0.8, 5), (-0.7, 1), (-0.6, 10), (-0.5, 10), (-0.4, 10)]
    kept = [i for i in range(6) if rung_keeps(front, i, 3, keep_front)]
    assert kept == ([0, 1, 2] if keep_front else [0, 2])
    assert all(rung_keeps(pts[:2], i, 3, keep_front) for i in range(2))  # too few to halve


def test_a_rung_spaces_its_front_on_log_costs_as_the_hypervolume_does():
    """Six nets on the front (accuracy grows with params) and two dominated ones; a rung of
    eta 2 keeps four: the two ends, then the two most isolated by crowding distance. On log
    params (the hypervolume's scale) the small net beside the smallest one is isolated; on raw
    params the gaps between the largest nets hid it."""
    objs = parse_objectives("val_acc:max,params:min")
    nets = [(0.45, 1e4), (0.51, 1.05e4), (0.60, 1e5), (0.70, 8e5), (0.705, 9e5), (0.71, 1e6),
            (0.40, 5e5), (0.30, 7e5)]
    points = [rung_vector(objs, acc, {"params": params}) for acc, params in nets]
    assert [i for i in range(8) if rung_keeps(points, i, 2)] == [0, 1, 2, 5]
    raw = [(-acc, params) for acc, params in nets]
    assert [i for i in range(8) if rung_keeps(raw, i, 2)] == [0, 2, 3, 5]  # what it was


def _study_with_twins(rng):
    """A stored two-objective study whose trials share architectures (same costs, other
    accuracies: trained concurrently, or again), some with equal accuracies."""
    import optuna

    from search.study import record
    from search.study.record import StudyKey
    from search.study.spec import build_spec

    spec = build_spec("twins", {"family": "convmixer"}, None, "data")
    study = optuna.create_study(directions=spec.directions,
                                storage=optuna.storages.InMemoryStorage())
    record.write_json(study, StudyKey.SPEC, spec.to_dict())
    archs = [(f"a{i}", rng.choice([1e5, 2e5, 4e5, 8e5])) for i in range(rng.randint(2, 8))]
    for _ in range(rng.randint(3, 25)):
        digest, params = rng.choice(archs)
        acc = rng.choice([0.1, 0.15, 0.18, 0.2, 0.3, rng.random()])
        study.add_trial(optuna.trial.create_trial(
            values=[acc, params],
            user_attrs=record.TrialRecord.attrs(state="COMPLETE", arch_hash=digest)))
    return study, spec


def test_the_front_is_optunas_best_trials_one_per_architecture():
    from search.study.record import TrialRecord
    from search.study.results import front_trials

    rng = random.Random(0)
    for _ in range(200):
        study, spec = _study_with_twins(rng)
        ours = front_trials(study, spec)
        optunas = {t.number for t in study.best_trials}
        arch = {t.number: TrialRecord.from_trial(t).arch_hash for t in study.trials}
        assert sorted(arch[t.number] for t in ours) == sorted({arch[n] for n in optunas})
        for t in ours:  # the best of its architecture, and on Optuna's front
            assert t.number in optunas
            twins = [u for u in study.trials if arch[u.number] == arch[t.number]]
            assert t.values[0] == max(u.values[0] for u in twins)


def test_a_summary_read_gives_the_status_and_front_a_whole_read_gives(tmp_path):
    """`search status` and `search pareto` read a stored study's trials without their
    curves and parameters (read_summaries): the same status and front as whole trials."""
    from dataclasses import replace

    import optuna
    from optuna.distributions import IntDistribution
    from optuna.trial import TrialState

    from search.study import record
    from search.study.results import pareto, status, stored_pareto, stored_status
    from search.study.spec import build_spec
    from search.study.studies import create_or_resume, load_study

    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = build_spec("sum", {"epochs": 4, "sampler": "random"}, None, "zero")
    study = create_or_resume(replace(spec, data_hash="zero"), url, 30)
    rng = random.Random(3)
    kinds = [(TrialState.COMPLETE, {}), (TrialState.COMPLETE, {"state": "REUSED"}),
             (TrialState.COMPLETE, {"state": "INFEASIBLE"}), (TrialState.PRUNED, {}),
             (TrialState.FAIL, {"counted": True}), (TrialState.FAIL, {})]
    for n in range(30):
        state, marks = kinds[0] if n < 12 else rng.choice(kinds)
        h = rng.randrange(64, 512, 32)
        attrs = record.TrialRecord.attrs(
            family="convmixer", config={"h": h, "d": 4}, label=f"ConvMixer-{h}/4",
            arch_hash=f"a{h}", costs={"params": h * 100.0}, epochs_run=4, image_size=32,
            num_classes=10, train_images=900, val_images=100, seed=n,
            estimates={spec.rank_by: rng.random()}, seconds=10.0 + n, device=rng.choice(
                ["cuda:0", "cpu"]), curve=[{"epoch": 1, "val_acc": 0.3}], **marks)
        study.add_trial(optuna.trial.create_trial(
            state=state, values=[rng.random(), h * 100.0] if state == TrialState.COMPLETE
            else None, params={"h": h}, distributions={"h": IntDistribution(64, 512, step=32)},
            user_attrs=attrs, intermediate_values={1: 0.3}))
    whole, summary = status(load_study("sum", url)), stored_status(load_study("sum", url))
    assert summary.as_dict() == whole.as_dict()
    assert whole.front_size >= 2 and len([c for c in whole.counts.values() if c]) >= 5
    assert set(whole.device_hours) == {"cuda", "cpu"}
    assert stored_pareto(load_study("sum", url)) == pareto(load_study("sum", url))
    light = record.read_summaries(load_study("sum", url), ("state",))
    assert len(light) == 30 and all(t.params == {} and "curve" not in t.user_attrs
                                    for t in light)  # it did read less
