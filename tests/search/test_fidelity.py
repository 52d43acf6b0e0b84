"""Rank correlations on hand-checked cases, ties included; the bootstrap interval brackets
the statistic and leaves degenerate resamples out."""

import math

import pytest

from search.promote.fidelity import bootstrap, kendall_tau_b, spearman


def test_rank_correlations_on_hand_checked_cases():
    assert kendall_tau_b([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # 6 pairs: 5 concordant, 1 discordant, no ties -> (5 - 1) / 6
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # one tie in x: pairs (n0 = 6, n1 = 1 tie in x): C=5 D=0 -> 5 / sqrt(5 * 6)
    assert kendall_tau_b([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))
    # Spearman: 1 - 6 * sum(d^2) / (n (n^2 - 1)) with d = (0, 1, -1, 0) -> 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_bootstrap_interval_brackets_a_strong_correlation():
    x = list(range(12))
    y = [v + (0.5 if v % 3 == 0 else -0.5) for v in x]
    lo, hi = bootstrap(kendall_tau_b, x, y)
    assert 0.5 < lo <= kendall_tau_b(x, y) <= hi <= 1.0


def test_bootstrap_leaves_degenerate_resamples_out():
    # three configs: many resamples repeat one config (all ranks tied, tau undefined)
    lo, hi = bootstrap(kendall_tau_b, [0.1, 0.2, 0.3], [0.5, 0.6, 0.7])
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)


def _study_with_four_trained(tmp_path):
    from dataclasses import replace

    from optuna.distributions import IntDistribution
    from optuna.trial import TrialState, create_trial

    from search.study.record import TrialRecord
    from search.study.spec import build_spec
    from search.study.studies import create_or_resume

    spec = build_spec("fid", {"epochs": 2, "sampler": "random"}, None, "zero")
    study = create_or_resume(replace(spec, data_hash="zero"), f"sqlite:///{tmp_path}/f.db", 4)
    for n, acc in enumerate((0.5, 0.6, 0.7, 0.8)):
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, values=[acc, 1e5 * (n + 1)], params={"x": n},
            distributions={"x": IntDistribution(0, 9)},
            user_attrs=TrialRecord(arch_hash=f"a{n}", curve=[{"epoch": 1, "val_acc": acc}],
                                   costs={"params": 1e5 * (n + 1)}).to_attrs()))
    return study


def _run(top1, completed=True, size=64, classes=20, when="2026-12-04T10:00:00"):
    return {"top1": top1, "completed": completed, "image_size": size, "num_classes": classes,
            "steps": 100 if completed else 20, "steps_planned": 100, "run_id": f"r{top1}",
            "when": when}


def test_fidelity_takes_each_trials_best_complete_run_at_the_target(tmp_path):
    from search.promote.fidelity import fidelity
    from search.study.record import StudyKey, record_full_result, write_json

    study = _study_with_four_trained(tmp_path)
    write_json(study, StudyKey.TARGET, {"image_size": 64, "num_classes": 20})
    for n in range(3):
        record_full_result(study, n, _run(0.3 + 0.1 * n, when="2026-12-04T10:00:00"))
    # trial 0: a partial run first, then its complete one, then a later partial run
    record_full_result(study, 0, _run(0.9, completed=False, when="2026-12-04T09:00:00"))
    record_full_result(study, 0, _run(0.95, completed=False, when="2026-12-04T11:00:00"))
    record_full_result(study, 1, _run(0.99, size=224, when="2026-12-04T12:00:00"))
    record_full_result(study, 2, _run(0.98, classes=1000, when="2026-12-04T12:00:00"))
    report = fidelity(study)
    assert {p["trial"]: p["full_top1"] for p in report["pairs"]} == {0: 0.3, 1: 0.4, 2: 0.5}
    whys = sorted(r["why"].split(":")[0].split(" ")[0] for r in report["left_out"])
    assert whys == ["partial", "partial", "trained", "trained"]
    assert report["partial"] == 0 and report["kendall_tau"]["value"] == pytest.approx(1.0)
    with_partial = fidelity(study, include_partial=True)
    assert {p["trial"]: p["full_top1"] for p in with_partial["pairs"]}[0] == 0.95


def test_too_few_says_what_would_help(tmp_path):
    from search.promote.fidelity import fidelity
    from search.study.record import StudyKey, record_full_result, write_json
    from spaces.errors import UserError

    study = _study_with_four_trained(tmp_path)
    write_json(study, StudyKey.TARGET, {"image_size": 64, "num_classes": 20})
    record_full_result(study, 0, _run(0.3))
    record_full_result(study, 1, _run(0.4, completed=False))
    with pytest.raises(UserError) as err:
        fidelity(study)
    line = str(err.value)
    assert "\n" not in line and "1 trial(s) with a completed full run at 64 px, 20 classes" in line
    assert "1 run(s) left out: partial: 20 of 100 steps" in line
    assert "4 distinct trained architectures: promote more" in line and "top-k:4" in line
