"""Correlations with bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from emotion_vectors.analysis.stats import correlate, resampled_ranks


def test_correlation_values_match_scipy_and_drop_nans():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(60)
    y = x + rng.standard_normal(60)
    y[[3, 7]] = np.nan
    ok = np.isfinite(y)
    p = correlate(x, y, n_bootstrap=500, seed=3)
    assert p.n == 58
    assert p.r == pytest.approx(sps.pearsonr(x[ok], y[ok]).statistic)
    assert p.ci_low < p.r < p.ci_high
    s = correlate(x, y, method="spearman", n_bootstrap=500, seed=3)
    assert s.r == pytest.approx(sps.spearmanr(x[ok], y[ok]).statistic)
    assert s.ci_low < s.r < s.ci_high


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal(30), rng.standard_normal(30)
    a = correlate(x, y, n_bootstrap=200, seed=5)
    b = correlate(x, y, n_bootstrap=200, seed=5)
    c = correlate(x, y, n_bootstrap=200, seed=6)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)


def test_perfect_and_degenerate_cases():
    x = np.arange(10.0)
    c = correlate(x, 2 * x + 1, n_bootstrap=100)
    assert c.r == pytest.approx(1.0) and c.ci_low == pytest.approx(1.0)
    assert np.isnan(correlate(x[:2], x[:2]).r)
    assert np.isnan(correlate(x, np.ones(10)).r)
    with pytest.raises(ValueError):
        correlate(x, x, method="kendall")


def test_resampled_ranks_equal_rankdata_with_ties():
    rng = np.random.default_rng(4)
    v = np.round(rng.uniform(1, 9, 50), 1)  # many ties, like the norms
    idx = rng.integers(0, 50, size=(300, 50))
    np.testing.assert_allclose(resampled_ranks(v, idx), sps.rankdata(v[idx], axis=1))
