"""Rank estimators on hand-made curves, and `--rank-by` deciding a rung."""

import math

import optuna
import pytest

from search.backends.pruners import MOASHA
from search.study import estimators
from search.study.objectives import parse_objectives
from search.study.record import TrialRecord


def curve(losses, accs):
    return [{"epoch": i + 1, "train_loss": loss, "val_acc": acc}
            for i, (loss, acc) in enumerate(zip(losses, accs, strict=True))]


def test_estimators_give_their_documented_values_on_a_hand_made_curve():
    # error 0.5 t^-1 exactly: the power law extrapolates it to 0.5/8 at epoch 8
    c = curve([2.0, 1.5, 1.0], [0.5, 0.75, 1 - 0.5 / 3])
    assert estimators.last(c, 8) == 1 - 0.5 / 3
    assert estimators.best(curve([2.0, 1.0], [0.6, 0.5]), 8) == 0.6
    assert estimators.tse(c, 8) == pytest.approx(-4.5)
    assert estimators.tse_ema(c, 8) == pytest.approx(-(0.81 * 2.0 + 0.9 * 1.5 + 1.0))
    assert estimators.powerlaw(c, 8) == pytest.approx(1 - 0.5 / 8)
    assert estimators.powerlaw(c, 3) == 1 - 0.5 / 3  # at (or before) the horizon: what it measured
    assert estimators.powerlaw(c[:1], 8) == 0.5  # one epoch: no fit, no gain predicted
    assert estimators.powerlaw(curve([1, 1], [0.6, 0.5]), 8) == 0.5  # error rose: no gain
    assert estimators.scores(c, 8) == {name: estimators.score(name, c, 8)
                                       for name in estimators.ESTIMATORS}
    assert estimators.score("tse", [{"epoch": 1, "val_acc": 0.5}], 8) is None  # no loss
    assert estimators.score("tse", [], 8) is None
    assert estimators.score("tse", curve([float("nan")], [0.1]), 8) is None  # diverged


def _trial_at_rung(study, loss, acc):
    attrs = TrialRecord(costs={"params": 1000.0}, curve=curve([loss], [acc])).to_attrs()
    study.add_trial(optuna.trial.create_trial(values=[acc, 1000.0], user_attrs=attrs))


@pytest.mark.parametrize("rank_by, stops", [("last", True), ("tse", False)])
def test_rank_by_decides_which_trial_a_rung_keeps(rank_by, stops):
    """Two trials passed the rung with better val_acc but slower training; the third
    trains fastest. By val_acc it is in the worse half; by the loss sum it is the best."""
    objectives = parse_objectives("val_acc:max,params:min")
    study = optuna.create_study(directions=["maximize", "minimize"])
    _trial_at_rung(study, 2.0, 0.60)
    _trial_at_rung(study, 1.9, 0.55)
    trial = study.ask()
    pruner = MOASHA(objectives, rungs=[1], eta=2, rank_by=rank_by, horizon=3)
    own = curve([1.0], [0.50])
    assert pruner.should_stop(study, trial, own, {"params": 1000.0}) is stops
    # past the rungs nobody is stopped, whatever the ranking
    assert not pruner.should_stop(study, trial, curve([1.0, 0.9], [0.5, 0.5]),
                                  {"params": 1000.0})
    assert math.isfinite(pruner.score(own))
