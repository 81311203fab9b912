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
from emotion_vectors.analysis.stats import correlate_pc, pca_bootstrap  # noqa: E402
from emotion_vectors.core.stats import adjust_pvalues, holm  # noqa: E402


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


def test_refit_is_as_precise_far_from_the_origin():
    """Emotion vectors sit wherever the residual stream puts them: rows shifted far from the
    origin (a common offset of norm ~6e4, large in a few coordinates like the residual stream's
    massive activations; spread ~1) give the same refitted scores as the same rows at the
    origin, to the precision of their spread."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((25, 40)) @ np.diag(np.linspace(2, 0.1, 40))
    offset = 1e4 * rng.standard_normal(40)
    offset[:3] = [5e4, -3e4, 2e4]
    full = geometry.pca(x, 3)
    near = pca_bootstrap(x, full.components, full.scores, n_bootstrap=40, seed=2)
    far = pca_bootstrap(x + offset, full.components, full.scores, n_bootstrap=40, seed=2)
    np.testing.assert_allclose(far.scores, near.scores, atol=1e-9)
    np.testing.assert_allclose(far.alignment, near.alignment, atol=1e-9)


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


# --- The exact numbers behind each interval, and every field of the results ----------------
# (mutation testing: the tests above check properties of the intervals; these recompute them.)

from emotion_vectors.analysis.stats import _masked_rowwise_pearson  # noqa: E402


def _percentile_ci(values, level):
    values = np.asarray([v for v in values if np.isfinite(v)])
    alpha = (1 - level) / 2
    return tuple(np.quantile(values, [alpha, 1 - alpha]))


def _pearson_or_nan(a, b):
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return np.nan
    return np.corrcoef(a, b)[0, 1]


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_correlate_interval_recomputed_by_hand(method):
    """n pairs drawn with replacement by default_rng(seed), Spearman ranks recomputed in each
    resample, percentile interval at ``level``."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal(25)
    y = 0.5 * x + rng.standard_normal(25)
    c = correlate(x, y, method=method, n_bootstrap=300, level=0.9, seed=11)
    idx = np.random.default_rng(11).integers(0, 25, size=(300, 25))
    rank = sps.rankdata if method == "spearman" else np.asarray
    expected = _percentile_ci([_pearson_or_nan(rank(x[i]), rank(y[i])) for i in idx], 0.9)
    np.testing.assert_allclose((c.ci_low, c.ci_high), expected, rtol=1e-10)
    assert (c.method, c.n, c.level, c.n_bootstrap) == (method, 25, 0.9, 300)
    fn = sps.spearmanr if method == "spearman" else sps.pearsonr
    assert c.p == pytest.approx(fn(x, y).pvalue)
    # The interval of a correlation does not depend on the variables' scale.
    small = correlate(x * 1e-3, y * 1e-3, method=method, n_bootstrap=300, level=0.9, seed=11)
    np.testing.assert_allclose((small.ci_low, small.ci_high), expected, rtol=1e-8)


def test_correlate_defaults_and_small_or_degenerate_inputs():
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal(12), rng.standard_normal(12)
    d = correlate(x, y)
    assert (d.method, d.level, d.n_bootstrap) == ("pearson", 0.95, 1000)
    assert d == correlate(x, y, n_bootstrap=1000, seed=0)
    # Three pairs are enough; a variable spanning exactly 1 is not constant.
    assert correlate(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0]), n_bootstrap=0).r == pytest.approx(0.5)
    assert np.isfinite(correlate(np.arange(10) / 9, x[:10], n_bootstrap=0).r)
    assert np.isfinite(correlate(x[:10], np.arange(10) / 9, n_bootstrap=0).r)
    # No bootstrap: NaN interval; one resample: a one-point interval.
    none = correlate(x, y, n_bootstrap=0)
    assert np.isnan(none.ci_low) and np.isnan(none.ci_high) and none.n_bootstrap == 0
    one = correlate(x, y, n_bootstrap=1, seed=2)
    assert np.isfinite(one.ci_low) and one.ci_low == one.ci_high and one.n_bootstrap == 1
    # Too few pairs, or a constant variable: every number NaN, nothing resampled.
    for a, b, n in ((x[:2], y[:2], 2), (x, np.ones(12), 12), (np.ones(12), y, 12)):
        c = correlate(a, b, method="spearman", n_bootstrap=100, level=0.8)
        assert (c.method, c.n, c.level, c.n_bootstrap) == ("spearman", n, 0.8, 0)
        assert all(np.isnan(v) for v in (c.r, c.ci_low, c.ci_high, c.p))
    with pytest.raises(ValueError, match="method 'kendall'"):
        correlate(x, y, method="kendall")
    with pytest.raises(ValueError, match="1-D of the same length"):
        correlate(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="1-D of the same length"):
        correlate(np.ones((3, 2)), np.ones((3, 2)))
    assert d.as_dict() == {"method": "pearson", "n": 12, "r": d.r, "ci_low": d.ci_low,
                           "ci_high": d.ci_high, "p": d.p, "level": 0.95, "n_bootstrap": 1000}


def _pc_data(seed=2, n=40):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12)) @ np.diag(np.linspace(3, 0.3, 12))
    rating = x[:, 0] + rng.standard_normal(n)
    rating[:4] = np.nan
    full = geometry.orient(geometry.pca(x, 3), (rating,))
    return x, rating, full


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_correlate_pc_interval_recomputed_by_hand(method):
    """Per resample: the drawn emotions in the mask with a rating, ranks within them for
    Spearman, Pearson r; percentile interval."""
    x, rating, full = _pc_data()
    mask = np.arange(40) % 4 != 1
    boot = pca_bootstrap(x, full.components, full.scores, n_bootstrap=150, seed=6)
    assert boot.seed == 6
    np.testing.assert_array_equal(boot.idx, np.random.default_rng(6).integers(0, 40, size=(150, 40)))
    c, _ = correlate_pc(boot, 0, rating, mask, method=method, level=0.8)
    rs = []
    for b in range(150):
        xs, ys = boot.scores[b, :, 0], rating[boot.idx[b]]
        keep = mask[boot.idx[b]] & np.isfinite(ys) & np.isfinite(xs)
        a, o = xs[keep], ys[keep]
        if method == "spearman":
            a, o = sps.rankdata(a), sps.rankdata(o)
        rs.append(_pearson_or_nan(a, o))
    np.testing.assert_allclose((c.ci_low, c.ci_high), _percentile_ci(rs, 0.8), rtol=1e-10)
    assert (c.method, c.level, c.n_bootstrap, c.n) == (method, 0.8, 150, int((mask & np.isfinite(rating)).sum()))
    # Scale-free: the same data a thousand times smaller give the same interval.
    small = pca_bootstrap(x * 1e-3, full.components, full.scores * 1e-3, n_bootstrap=150, seed=6)
    cs, _ = correlate_pc(small, 0, rating * 1e-3, mask, method=method, level=0.8)
    np.testing.assert_allclose((cs.ci_low, cs.ci_high), (c.ci_low, c.ci_high), rtol=1e-6)


def test_correlate_pc_without_resamples_or_without_a_correlation():
    x, rating, full = _pc_data()
    boot0 = pca_bootstrap(x, full.components, full.scores, n_bootstrap=0, seed=1)
    c, align = correlate_pc(boot0, 0, rating, method="spearman", level=0.9)
    point = correlate(full.scores[:, 0], rating, method="spearman", n_bootstrap=0)
    assert (c.method, c.n, c.level, c.n_bootstrap) == ("spearman", point.n, 0.9, 0)
    assert c.r == point.r and c.p == point.p
    assert np.isnan(c.ci_low) and np.isnan(c.ci_high) and np.isnan(align)
    # A constant rating has no correlation, so no interval either (even with resamples).
    boot = pca_bootstrap(x, full.components, full.scores, n_bootstrap=50, seed=1)
    flat, _ = correlate_pc(boot, 0, np.ones(40))
    assert np.isnan(flat.r) and np.isnan(flat.ci_low) and np.isnan(flat.ci_high)
    # One resample: its r is the interval.
    one = pca_bootstrap(x, full.components, full.scores, n_bootstrap=1, seed=1)
    c1, _ = correlate_pc(one, 0, rating)
    assert np.isfinite(c1.ci_low) and c1.ci_low == c1.ci_high
    # Resamples that never hold 3 rated emotions of the mask: NaN interval, not None.
    mask = np.zeros(40, bool)
    mask[[10, 20, 30]] = True
    seed = next(s for s in range(1000)
                if np.isin(np.random.default_rng(s).integers(0, 40, size=(1, 40)), [10, 20, 30]).sum() < 3)
    few = pca_bootstrap(x, full.components, full.scores, n_bootstrap=1, seed=seed)
    cf, _ = correlate_pc(few, 0, rating, mask)
    assert np.isfinite(cf.r) and np.isnan(cf.ci_low) and np.isnan(cf.ci_high)
    with pytest.raises(ValueError, match="method 'kendall'"):
        correlate_pc(boot, 0, rating, method="kendall")


def test_pca_bootstrap_defaults():
    x, _, full = _pc_data(n=12)
    boot = pca_bootstrap(x, full.components, full.scores)
    assert boot.n_bootstrap == 1000 and boot.seed == 0
    np.testing.assert_array_equal(boot.idx, np.random.default_rng(0).integers(0, 12, size=(1000, 12)))


def test_refit_with_few_distinct_emotions():
    """Resamples of 3 emotions hold 1, 2 or 3 distinct ones: the PCs a resample has (distinct - 1)
    equal the PCA of its rows; the others are NaN."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6))
    full = geometry.pca(x, 2)
    boot = pca_bootstrap(x, full.components, full.scores, n_bootstrap=60, seed=3)
    seen = set()
    for b in range(60):
        m = len(set(boot.idx[b].tolist()))
        seen.add(m)
        for j in range(2):
            if j < m - 1:
                ref = geometry.pca(x[boot.idx[b]], j + 1)
                cos = ref.components[j] @ full.components[j]
                np.testing.assert_allclose(boot.scores[b, :, j], np.sign(cos) * ref.scores[:, j], atol=1e-9)
                assert boot.alignment[b, j] == pytest.approx(abs(cos))
            else:
                assert np.isnan(boot.scores[b, :, j]).all() and np.isnan(boot.alignment[b, j])
    assert seen == {1, 2, 3}


def test_masked_rowwise_pearson_needs_three_entries():
    x = np.array([[1.0, 2.0, 3.0, 9.0], [1.0, 2.0, 3.0, 9.0], [1e-4, 2e-4, 4e-4, 0.0]])
    y = np.array([[2.0, 1.0, 4.0, 0.0], [2.0, 1.0, 4.0, 0.0], [2e-4, 1e-4, 3e-4, 5.0]])
    mask = np.array([[True, True, True, False], [True, True, False, False], [True, True, True, False]])
    r = _masked_rowwise_pearson(x, y, mask)
    assert r[0] == pytest.approx(np.corrcoef([1, 2, 3], [2, 1, 4])[0, 1])
    assert np.isnan(r[1])  # two entries
    assert r[2] == pytest.approx(np.corrcoef([1, 2, 4], [2, 1, 3])[0, 1])  # tiny values


def test_holm_of_one_test_is_its_p():
    np.testing.assert_allclose(holm(np.array([0.2, np.nan])), [0.2, np.nan])
    assert np.isnan(holm(np.array([np.nan]))).all()


def test_everything_is_computed_in_float64():
    """float32 inputs (stores hold float32) give the float64 results, not float32 ones."""
    x, rating, full = _pc_data()
    x32, r32 = x.astype(np.float32), rating.astype(np.float32)
    x64, r64 = x32.astype(np.float64), r32.astype(np.float64)
    c32 = correlate(x32[:, 0], r32, n_bootstrap=100, seed=1)
    c64 = correlate(x64[:, 0], r64, n_bootstrap=100, seed=1)
    assert (c32.r, c32.p, c32.ci_low, c32.ci_high) == (c64.r, c64.p, c64.ci_low, c64.ci_high)
    s32 = correlate(x32[:, 0], r32, method="spearman", n_bootstrap=0)
    assert s32.r == correlate(x64[:, 0], r64, method="spearman", n_bootstrap=0).r
    f64 = geometry.orient(geometry.pca(x64, 3), (r64,))
    b32 = pca_bootstrap(x32, f64.components.astype(np.float32), f64.scores.astype(np.float32), n_bootstrap=40, seed=2)
    b64 = pca_bootstrap(x64, f64.components.astype(np.float32).astype(np.float64),
                        f64.scores.astype(np.float32).astype(np.float64), n_bootstrap=40, seed=2)
    assert b32.full_scores.dtype == np.float64
    # bit for bit: every input (the components too) is converted before any arithmetic, also at
    # a width (30) where a float64 x float32 product would sum in another order than float64's
    np.testing.assert_array_equal(b32.scores, b64.scores)
    np.testing.assert_array_equal(b32.alignment, b64.alignment)
    w32 = np.random.default_rng(3).standard_normal((40, 30)).astype(np.float32)
    fw = geometry.pca(w32.astype(np.float64), 3)
    cw32 = fw.components.astype(np.float32)
    a = pca_bootstrap(w32, cw32, fw.scores, n_bootstrap=40, seed=2)
    b = pca_bootstrap(w32.astype(np.float64), cw32.astype(np.float64), fw.scores, n_bootstrap=40, seed=2)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.alignment, b.alignment)
    p32, _ = correlate_pc(b64, 0, r32)
    p64, _ = correlate_pc(b64, 0, r64)
    assert (p32.r, p32.ci_low, p32.ci_high) == (p64.r, p64.ci_low, p64.ci_high)


def test_correlate_pc_mask_may_be_0_1_and_two_ratings_give_no_interval():
    x, rating, full = _pc_data()
    boot = pca_bootstrap(x, full.components, full.scores, n_bootstrap=80, seed=3)
    mask = np.arange(40) % 3 != 0
    as_bool, _ = correlate_pc(boot, 0, rating, mask)
    as_int, _ = correlate_pc(boot, 0, rating, mask.astype(int))
    assert as_int == as_bool
    # two rated emotions: no correlation, and no interval even though resamples draw them 3+ times
    two = np.full(40, np.nan)
    two[[5, 9]] = [1.0, 3.0]
    c, _ = correlate_pc(boot, 0, two)
    assert c.n == 2 and np.isnan(c.r) and np.isnan(c.ci_low) and np.isnan(c.ci_high)


def test_refit_keeps_a_small_but_real_component():
    """The refit drops a PC only when its eigenvalue is at rounding level relative to the
    resample's total variance, however small the data's scale."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((10, 3)) * [1e-2, 1e-2, 1e-7]  # third variance 1e-10 of the others
    full = geometry.pca(x, 3)
    assert full.explained_ratio[2] > 1e-12
    boot = pca_bootstrap(x, full.components, full.scores, n_bootstrap=30, seed=0)
    distinct = np.array([len(set(row.tolist())) for row in boot.idx])
    assert (distinct >= 4).all()
    assert np.isfinite(boot.scores[:, :, 2]).all() and np.isfinite(boot.alignment[:, 2]).all()
    # truly rank 2: the third PC is NaN in every resample
    flat = x.copy()
    flat[:, 2] = 0.0
    fb = pca_bootstrap(flat, full.components, full.scores, n_bootstrap=30, seed=0)
    assert np.isnan(fb.scores[:, :, 2]).all() and np.isnan(fb.alignment[:, 2]).all()
    assert np.isfinite(fb.scores[:, :, :2]).all()


# --- Survivors of mutation testing: degenerate resamples, warnings, dtypes, BLAS threads -----

import warnings  # noqa: E402

from emotion_vectors.analysis import stats  # noqa: E402
from emotion_vectors.analysis.stats import METHODS  # noqa: E402

# Mean ratings with ties, as in norms given to two decimals: 6.86 seven times out of ten. The
# computed mean of ten 6.86 is not 6.86, so a resample that draws only them is constant with
# centred values of rounding size, not zero.
TIED_X = np.array([6.86, 6.86, 3.1, 6.86, 6.86, 4.25, 6.86, 7.9, 6.86, 6.86])
TIED_Y = np.array([5.5, 6.1, 2.0, 4.9, 7.2, 3.8, 5.0, 6.6, 6.4, 5.9])


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_correlate_ignores_resamples_with_a_constant_variable(method):
    """A resample that draws one value of ``x`` only has no correlation: it is left out of the
    interval (not counted as r = 0, which pulled the lower bound of this one down to 0)."""
    c = correlate(TIED_X, TIED_Y, method=method, n_bootstrap=1000, seed=0)
    idx = np.random.default_rng(0).integers(0, 10, size=(1000, 10))
    assert (np.ptp(TIED_X[idx], axis=1) == 0).sum() > 25  # the case at hand
    rank = sps.rankdata if method == "spearman" else np.asarray
    expected = _percentile_ci([_pearson_or_nan(rank(TIED_X[i]), rank(TIED_Y[i])) for i in idx], 0.95)
    np.testing.assert_allclose((c.ci_low, c.ci_high), expected, rtol=1e-10)
    assert c.ci_low > 0.3
    # the same when the tied variable is the second one (a correlation is symmetric)
    swapped = correlate(TIED_Y, TIED_X, method=method, n_bootstrap=1000, seed=0)
    np.testing.assert_allclose((swapped.ci_low, swapped.ci_high), expected, rtol=1e-10)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_correlate_pc_ignores_resamples_with_a_constant_rating(method):
    """The same within a mask: resamples whose rated emotions of the mask all share one rating
    are left out of the interval."""
    x, _, full = _pc_data()
    mask = np.zeros(40, bool)
    mask[[3, 8, 13, 21, 30, 35]] = True
    rating = np.full(40, np.nan)
    rating[[3, 8, 13, 21, 30, 35]] = [6.86, 6.86, 6.86, 6.86, 2.5, 8.1]
    boot = pca_bootstrap(x, full.components, full.scores, n_bootstrap=400, seed=2)
    c, _ = correlate_pc(boot, 0, rating, mask, method=method)
    rs, flat = [], 0
    for b in range(400):
        keep = mask[boot.idx[b]] & np.isfinite(rating[boot.idx[b]])
        a, o = boot.scores[b, keep, 0], rating[boot.idx[b]][keep]
        flat += len(o) >= 3 and np.ptp(o) == 0
        if method == "spearman":
            a, o = sps.rankdata(a), sps.rankdata(o)
        rs.append(_pearson_or_nan(a, o))
    assert flat > 10  # the case at hand
    np.testing.assert_allclose((c.ci_low, c.ci_high), _percentile_ci(rs, 0.95), rtol=1e-10)


def test_masked_rowwise_pearson_of_a_constant_variable_is_nan():
    """A variable constant over the entries in the mask has no correlation (NaN), whichever
    of the two it is and whatever lies outside the mask; the entries in the mask alone count."""
    tied = np.array([[6.86, 6.86, np.nan, 6.86, 6.86, 1.0, 6.86, 6.86, 6.86, 6.86, 6.86, 6.86]])
    other = np.array([[5.5, 6.1, 2.0, 4.9, 7.2, 3.8, 5.0, 6.6, 6.4, 5.9, 4.4, 6.9]])
    mask = np.isfinite(tied) & (tied != 1.0)  # ten times 6.86, a mean with a rounding error
    assert np.isnan(_masked_rowwise_pearson(tied, other, mask)).all()
    assert np.isnan(_masked_rowwise_pearson(other, tied, mask)).all()
    mask[0, 5] = True  # one entry of another value: a correlation again
    expected = np.corrcoef(tied[0, mask[0]], other[0, mask[0]])[0, 1]
    assert _masked_rowwise_pearson(tied, other, mask)[0] == pytest.approx(expected)
    assert _masked_rowwise_pearson(other, tied, mask)[0] == pytest.approx(expected)


def test_degenerate_cases_give_nan_without_warnings():
    """Resamples without a correlation (a constant variable, fewer than 3 rated emotions of the
    mask, none at all) and a bootstrap without resamples give NaN silently: no RuntimeWarning
    (0/0, the median of nothing) in the logs of a run."""
    x, rating, full = _pc_data()
    boot = pca_bootstrap(x, full.components, full.scores, n_bootstrap=200, seed=1)
    boot0 = pca_bootstrap(x, full.components, full.scores, n_bootstrap=0, seed=1)
    mask = np.zeros(40, bool)
    mask[[10, 20, 30]] = True
    likert = np.array([4.0, 4, 4, 5, 4, 4, 2, 4])  # integer ratings: constant resamples
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in METHODS:
            c = correlate(likert, np.arange(8.0), method=method, n_bootstrap=300, seed=0)
            assert np.isfinite(c.ci_low)
            few, _ = correlate_pc(boot, 0, rating, mask, method=method)
            assert np.isfinite(few.r)
            none, align = correlate_pc(boot0, 0, rating, method=method)
            assert np.isnan(none.ci_low) and np.isnan(align)
    idx = np.random.default_rng(0).integers(0, 8, size=(300, 8))
    assert (np.ptp(likert[idx], axis=1) == 0).any()
    keep = mask[boot.idx] & np.isfinite(rating[boot.idx])
    assert (keep.sum(axis=1) == 0).any() and (keep.sum(axis=1) >= 3).any()


def test_pca_bootstrap_runs_blas_on_one_thread_and_restores_it(monkeypatch):
    """The per-resample eigenproblems run on one BLAS thread; the caller's setting is back
    afterwards."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    seen = []
    eigh = stats.sla.eigh

    def recording_eigh(*args, **kwargs):
        seen.append(blas_threads())
        return eigh(*args, **kwargs)

    monkeypatch.setattr(stats.sla, "eigh", recording_eigh)
    x, _, full = _pc_data()
    with threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() != [2] * len(blas_threads()) or not blas_threads():
            pytest.skip("this BLAS cannot be set to 2 threads")
        boot = pca_bootstrap(x, full.components, full.scores, n_bootstrap=5, seed=0)
        assert blas_threads() == [2] * len(blas_threads())
    assert len(seen) == 5 and all(t == [1] * len(t) for t in seen)
    assert np.isfinite(boot.scores).all()


def test_refit_of_identical_points_has_no_component():
    """Two emotions with the same vector (a word listed twice): a resample that draws only
    those two has no variance, so no PC (NaN), not a PC of zero scores. Integer vectors and
    n = 4 keep every sum exact."""
    rng = np.random.default_rng(3)
    x = rng.integers(-3, 4, size=(4, 6)).astype(float)
    x[1] = x[0]
    full = geometry.pca(x, 2)
    boot = pca_bootstrap(x, full.components, full.scores, n_bootstrap=200, seed=0)
    only = np.array([set(r.tolist()) == {0, 1} for r in boot.idx])
    assert only.sum() > 3
    assert np.isnan(boot.scores[only]).all() and np.isnan(boot.alignment[only]).all()
    others = np.array([len(set(r.tolist()) - {1}) >= 2 for r in boot.idx])
    assert np.isfinite(boot.scores[others, :, 0]).all()


def test_correlate_pc_float32_ratings_give_the_float64_interval():
    """Ratings stored as float32 on their 1-9 scale (far from 0, where float32 sums lose
    digits) give the interval of the same values in float64."""
    x, rating, full = _pc_data()
    r32 = (5 + 0.8 * rating).astype(np.float32)
    r64 = r32.astype(np.float64)
    boot = pca_bootstrap(x, full.components, full.scores, n_bootstrap=200, seed=5)
    for method in METHODS:
        c32, _ = correlate_pc(boot, 0, r32, method=method)
        c64, _ = correlate_pc(boot, 0, r64, method=method)
        assert (c32.r, c32.p, c32.ci_low, c32.ci_high) == (c64.r, c64.p, c64.ci_low, c64.ci_high)


def test_pvalue_adjustments_take_lists_with_none_and_float32():
    """p-values as read from JSON (a list, missing tests as None) are NaN; float32 p-values
    give the float64 adjustments."""
    p = [0.01, None, 0.04, 0.03, 0.005]
    as_nan = np.array([0.01, np.nan, 0.04, 0.03, 0.005])
    np.testing.assert_array_equal(holm(p), holm(as_nan))
    np.testing.assert_allclose(holm(p), [0.03, np.nan, 0.06, 0.06, 0.02])
    adj = adjust_pvalues(p)
    np.testing.assert_array_equal(adj["holm"], holm(as_nan))
    np.testing.assert_array_equal(adj["bh"], adjust_pvalues(as_nan)["bh"])
    q32 = (np.random.default_rng(1).uniform(0, 0.2, 50) ** 2).astype(np.float32)
    a32, a64 = adjust_pvalues(q32), adjust_pvalues(q32.astype(np.float64))
    np.testing.assert_array_equal(a32["bh"], a64["bh"])
    np.testing.assert_array_equal(a32["holm"], a64["holm"])
    np.testing.assert_array_equal(a64["bh"], sps.false_discovery_control(q32.astype(np.float64)))
