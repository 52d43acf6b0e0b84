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
