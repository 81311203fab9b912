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


# --- bootstrap with the PCA refitted in every resample -------------------------------------

from emotion_vectors.analysis import geometry  # noqa: E402
from emotion_vectors.analysis.stats import (  # noqa: E402
    adjust_pvalues, correlate_pc, holm, pca_bootstrap,
)


def test_refit_equals_the_pca_of_each_resample():
    """The Gram-matrix shortcut gives exactly the PCA of the resampled matrix (duplicates
    included), with each PC's sign set by its cosine with the full-sample PC."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 25)) @ np.diag(np.linspace(3, 0.2, 25)) + 2.0
    full = geometry.orient(geometry.pca(x, 3), (x[:, 0],))
    boot = pca_bootstrap(x, full.components, full.scores, n_bootstrap=25, seed=1)
    assert boot.scores.shape == (25, 30, 3) and boot.idx.shape == (25, 30)
    for b in range(25):
        ref = geometry.pca(x[boot.idx[b]], 3)
        for j in range(3):
            cos = ref.components[j] @ full.components[j]
            np.testing.assert_allclose(boot.scores[b, :, j], np.sign(cos) * ref.scores[:, j],
                                       atol=1e-9)
            assert boot.alignment[b, j] == pytest.approx(abs(cos))


def _two_equal_pcs(seed: int, n: int = 60):
    """Two directions of (nearly) equal variance: which one is PC1 is a coin flip per sample;
    the rating follows one of them."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    a *= 1.0 / a.std()
    b *= 1.0 / b.std()
    x = np.zeros((n, 20))
    x[:, 0], x[:, 1] = a, 1.02 * b
    x[:, 2:] = 0.05 * rng.standard_normal((n, 18))
    rating = b + 0.3 * rng.standard_normal(n)
    return x, rating


def test_refitted_interval_is_wider_than_the_conditional_one():
    """With two PCs of equal variance, resampling emotions but keeping the full-sample PC
    (the old, conditional bootstrap) gives a narrow interval; refitting, PC1 is the other
    direction in many resamples and the interval shows it."""
    x, rating = _two_equal_pcs(3)
    full = geometry.orient(geometry.pca(x, 2), (rating,))
    conditional = correlate(full.scores[:, 0], rating, n_bootstrap=500, seed=0)
    boot = pca_bootstrap(x, full.components, full.scores, n_bootstrap=500, seed=0)
    refit, alignment = correlate_pc(boot, 0, rating)
    assert refit.r == pytest.approx(conditional.r)  # same point estimate
    assert refit.p == pytest.approx(conditional.p)
    assert conditional.ci_low > 0.6
    assert refit.ci_low < conditional.ci_low - 0.3
    # In some resamples PC1 is (mostly) the other direction: its |cos| with the full PC1 is low.
    assert (boot.alignment[:, 0] < 0.7).mean() > 0.05
    assert alignment == pytest.approx(np.nanmedian(boot.alignment[:, 0]))


def test_sign_forced_by_the_rating_does_not_force_the_interval():
    """PC oriented by the rating it is then correlated with: r >= 0 by construction, but the
    resamples keep the full-sample direction (not re-oriented by the rating), so with no real
    relation the interval still covers 0."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((80, 30)) @ np.diag(np.linspace(2, 0.5, 30))
    rating = rng.standard_normal(80)
    full = geometry.orient(geometry.pca(x, 3), (rating,), ("rating",))
    assert full.oriented_by[0] == "rating"
    boot = pca_bootstrap(x, full.components, full.scores, n_bootstrap=400, seed=0)
    c, _ = correlate_pc(boot, 0, rating)
    assert c.r >= 0
    assert c.ci_low < 0 < c.ci_high


def test_correlate_pc_masks_and_spearman():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 12)) @ np.diag(np.linspace(3, 0.3, 12))
    rating = x[:, 0] + rng.standard_normal(50)
    rating[:5] = np.nan
    mask = np.arange(50) % 3 != 0
    full = geometry.orient(geometry.pca(x, 3), (rating,))
    boot = pca_bootstrap(x, full.components, full.scores, n_bootstrap=200, seed=4)
    ok = mask & np.isfinite(rating)
    for method, fn in (("pearson", sps.pearsonr), ("spearman", sps.spearmanr)):
        c, _ = correlate_pc(boot, 0, rating, mask, method=method)
        assert c.n == ok.sum()
        assert c.r == pytest.approx(fn(full.scores[ok, 0], rating[ok]).statistic)
        assert c.ci_low < c.r < c.ci_high
    again, _ = correlate_pc(pca_bootstrap(x, full.components, full.scores, n_bootstrap=200,
                                          seed=4), 0, rating, mask)
    first, _ = correlate_pc(boot, 0, rating, mask)
    assert (again.ci_low, again.ci_high) == (first.ci_low, first.ci_high)  # seeded


def test_holm_by_hand_and_bh_is_scipy():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): x4, x3, x2, x1 -> 0.02, 0.03, 0.06, 0.04 -> cummax
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02, np.nan])
    adj = adjust_pvalues(p)
    np.testing.assert_allclose(adj["bh"][:4], sps.false_discovery_control(p[:4]))
    assert np.isnan(adj["bh"][4]) and np.isnan(adj["holm"][4])
    rng = np.random.default_rng(0)
    q = rng.uniform(0, 0.2, 200) ** 2
    a = adjust_pvalues(q)
    assert (a["holm"] >= q).all() and (a["bh"] >= q).all() and (a["holm"] <= 1).all()
    assert (a["bh"] <= a["holm"] + 1e-15).all()  # BH is never stricter than Holm
    order = np.argsort(q)
    assert (np.diff(a["holm"][order]) >= 0).all()
    assert holm(np.array([0.5, 0.9])).tolist() == [1.0, 1.0]
