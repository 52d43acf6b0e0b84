"""Rank correlations agree with scipy's, ties included; the bootstrap interval brackets."""

import random

import pytest
from scipy import stats

from search.fidelity import bootstrap, kendall_tau_b, spearman


def test_rank_correlations_match_scipy_with_ties():
    rng = random.Random(1)
    for _ in range(20):
        n = rng.randint(4, 15)
        x = [rng.randint(0, 5) for _ in range(n)]
        y = [v + rng.randint(-2, 2) for v in x]
        if len(set(x)) < 2 or len(set(y)) < 2:
            continue
        assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_bootstrap_interval_brackets_a_strong_correlation():
    x = list(range(12))
    y = [v + (0.5 if v % 3 == 0 else -0.5) for v in x]
    lo, hi = bootstrap(kendall_tau_b, x, y)
    assert 0.5 < lo <= kendall_tau_b(x, y) <= hi <= 1.0
