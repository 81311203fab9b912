"""PCA, sign convention, cosine and pairs: hand-checkable cases and the published vectors."""

from __future__ import annotations

import numpy as np
import pytest

from emotion_vectors.analysis import geometry
from emotion_vectors.analysis.norms import match_ratings
from emotion_vectors.analysis.run import orientation_references
from emotion_vectors.analysis.stats import correlate

from test_analysis_helpers import reference_matrix


def test_pca_matches_svd_and_is_centred():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 40)) @ np.diag(np.linspace(3, 0.1, 40)) + 5.0  # offset removed
    res = geometry.pca(x, n_components=5)
    xc = x - x.mean(0)
    s = np.linalg.svd(xc, compute_uv=False)
    np.testing.assert_allclose(res.explained_ratio, (s**2 / (s**2).sum())[:5], rtol=1e-10)
    # Scores are the projections on the components, components are orthonormal.
    np.testing.assert_allclose(res.scores, xc @ res.components.T, atol=1e-9)
    np.testing.assert_allclose(res.components @ res.components.T, np.eye(5), atol=1e-9)
    assert res.total_variance == pytest.approx((s**2).sum() / 11)


def test_pca_of_a_line_has_one_component():
    x = np.outer(np.arange(5.0), [1.0, 2.0, 2.0])  # points on one line
    res = geometry.pca(x, n_components=2)
    assert res.explained_ratio[0] == pytest.approx(1.0)
    assert res.explained_ratio[1] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(np.abs(res.components[0]), [1 / 3, 2 / 3, 2 / 3], atol=1e-12)


def test_orient_uses_references_then_largest_score():
    x = np.array([[2.0, 0.0], [-1.0, 0.1], [-1.0, -0.1], [0.0, 3.0]])
    res = geometry.pca(x, n_components=2)
    ref = -res.scores[:, 0]  # a reference anti-correlated with the SVD's PC1
    oriented = geometry.orient(res, (ref, None))
    assert np.corrcoef(oriented.scores[:, 0], ref)[0, 1] > 0
    np.testing.assert_allclose(oriented.scores[:, 0], -res.scores[:, 0])
    np.testing.assert_allclose(oriented.components[0], -res.components[0])
    assert oriented.sign_rules[0].startswith("positive correlation")
    j = int(np.argmax(np.abs(oriented.scores[:, 1])))
    assert oriented.scores[j, 1] > 0 and oriented.sign_rules[1] == "largest |score| positive"
    assert oriented.oriented_by == ["reference 1", "largest |score|"]
    named = geometry.orient(res, (ref, -res.scores[:, 1]), ("valence", "arousal"))
    assert named.oriented_by == ["valence", "arousal"]
    assert named.sign_rules[1] == "positive correlation with arousal"
    assert np.corrcoef(named.scores[:, 1], -res.scores[:, 1])[0, 1] > 0
    # Too few finite ratings: falls back to the largest-score rule.
    few = np.full(4, np.nan)
    few[:2] = [1.0, 2.0]
    assert geometry.orient(res, (few,)).sign_rules[0] == "largest |score| positive"


def test_cosine_matrix_and_pairs():
    x = np.array([[1.0, 0.0], [2.0, 0.1], [-1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    c = geometry.cosine_matrix(x)
    assert c.shape == (5, 5)
    np.testing.assert_allclose(np.diag(c), 1.0)
    assert c[0, 2] == pytest.approx(-1.0)
    assert c[0, 3] == pytest.approx(0.0)
    assert c[4, 0] == 0.0  # zero vector
    pairs = geometry.top_pairs(c, list("abcde"), n=2)
    syn = pairs[pairs.kind == "synonym"]
    opp = pairs[pairs.kind == "opposite"]
    assert tuple(syn.iloc[0][["emotion_a", "emotion_b"]]) == ("a", "b")
    assert set(opp.iloc[0][["emotion_a", "emotion_b"]]) in ({"a", "c"}, {"b", "c"})
    assert opp.iloc[0]["cosine"] == pytest.approx(-1.0)
    assert list(syn["rank"]) == [1, 2]
    assert len(geometry.upper_triangle(c)) == 10


# --- the published layer-40 vectors of gemma-4-31B-it -------------------------------------


def test_reference_pca_shares_as_published():
    """36.9 / 11.7 / 10.2 / 6.5 / 4.6 % (PCA of the centred 171 x 5376 matrix)."""
    _, x = reference_matrix()
    assert x.shape == (171, 5376)
    res = geometry.pca(x, n_components=5)
    np.testing.assert_allclose(100 * res.explained_ratio, [36.9, 11.7, 10.2, 6.5, 4.6], atol=0.05)


def test_reference_cosines_as_published():
    """grateful-thankful 0.967, disturbed-smug -0.797: the vectors as given. They are already
    centred (emotion mean minus grand mean), so re-centring changes nothing to 3 decimals."""
    emotions, x = reference_matrix()
    mean_ratio = np.linalg.norm(x.mean(0)) / np.linalg.norm(x, axis=1).mean()
    assert mean_ratio < 1e-3
    for centre in (False, True):
        c = geometry.cosine_matrix(x, centre=centre)
        i = {e: k for k, e in enumerate(emotions)}
        assert c[i["grateful"], i["thankful"]] == pytest.approx(0.967, abs=5e-4)
        assert c[i["disturbed"], i["smug"]] == pytest.approx(-0.797, abs=5e-4)
    pairs = geometry.top_pairs(geometry.cosine_matrix(x), emotions, n=1)
    assert set(pairs.iloc[0][["emotion_a", "emotion_b"]]) == {"grateful", "thankful"}
    assert set(pairs.iloc[1][["emotion_a", "emotion_b"]]) == {"disturbed", "smug"}


def test_reference_pc1_is_valence():
    """PC1 against Warriner valence on the 153 covered words: r = 0.83 (95% CI 0.76-0.88) here;
    the study reports 0.81 on 45 words. The floor 0.7 lies under the bootstrap interval's lower
    end: a broken mapping, sign or PCA would fall through it, sampling would not."""
    emotions, x = reference_matrix()
    ratings = match_ratings(emotions)
    refs, names = orientation_references(ratings.valence, ratings.arousal, 3)
    assert names == ["valence", "arousal", "arousal"]
    res = geometry.orient(geometry.pca(x, 3), refs, names)
    c = correlate(res.scores[:, 0], ratings.valence, n_bootstrap=1000, seed=0)
    assert c.n == 153
    assert c.r > 0.7 and c.ci_low > 0.6
    exact = correlate(res.scores[ratings.exact, 0], ratings.valence[ratings.exact], n_bootstrap=0)
    assert exact.n == 126 and exact.r > 0.7
    rho = correlate(res.scores[:, 0], ratings.valence, method="spearman", n_bootstrap=0)
    assert rho.r > 0.65
    # PCs 2 and 3 are both oriented by arousal (one rule past PC1), so both arousal r are >= 0:
    # the arousal-like axis is PC3 (r = 0.55), not PC2 (r = 0.24).
    arousal = [correlate(res.scores[:, k], ratings.arousal, n_bootstrap=0).r for k in (1, 2)]
    assert min(arousal) >= 0
    assert arousal[1] > 0.4 > arousal[0]


# --- each rule of pca, orient, cosine_matrix and top_pairs on its own (mutation testing) ----


def test_pca_is_float64_scale_free_and_sized_by_the_data():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 40)) * np.linspace(2, 0.2, 40) + 3.0
    res = geometry.pca(x, n_components=10)
    assert res.explained_ratio.shape == (5,) and res.scores.shape == (6, 5)  # n - 1 PCs
    assert res.components.shape == (5, 40)
    assert res.sign_rules == ["svd"] * 5 and res.oriented_by == ["svd"] * 5
    np.testing.assert_array_equal(res.signs, np.ones(5))
    assert geometry.pca(x[:, :3], n_components=10).explained_ratio.shape == (3,)  # d PCs
    assert geometry.pca(x, n_components=2).explained_ratio.shape == (2,)
    # computed in float64 whatever the input's precision
    res32 = geometry.pca(x.astype(np.float32), n_components=5)
    ref = geometry.pca(x.astype(np.float32).astype(np.float64), n_components=5)
    np.testing.assert_allclose(res32.explained_ratio, ref.explained_ratio, rtol=1e-12)
    np.testing.assert_allclose(np.abs(res32.scores), np.abs(ref.scores), rtol=1e-9, atol=1e-12)
    # a thousand times smaller: the same shares, unit components, scores scaled
    small = geometry.pca(x * 1e-3, n_components=5)
    np.testing.assert_allclose(small.explained_ratio, res.explained_ratio[:5], rtol=1e-9)
    np.testing.assert_allclose(small.components @ small.components.T, np.eye(5), atol=1e-9)
    np.testing.assert_allclose(np.abs(small.scores), np.abs(res.scores) * 1e-3, rtol=1e-6, atol=1e-15)
    # two emotions make one PC; one is refused
    two = geometry.pca(x[:2], n_components=3)
    assert two.explained_ratio.tolist() == [1.0]
    with pytest.raises(ValueError, match="^PCA needs at least two emotions$"):
        geometry.pca(x[:1])
    # ten components unless asked otherwise
    wide = rng.standard_normal((15, 30))
    assert geometry.pca(wide).explained_ratio.shape == (10,)


def test_pca_of_rank_deficient_or_identical_rows_stays_finite():
    # rank 1, all 7 PCs asked for: the 6 zero eigenvalues come out of eigh as +-1e-15 (some
    # negative), and must give zero shares and finite scores, not NaN
    line = np.outer(np.arange(8.0), np.ones(10))
    res = geometry.pca(line, n_components=7)
    assert np.isfinite(res.scores).all() and np.isfinite(res.components).all()
    np.testing.assert_allclose(res.explained_ratio, [1.0] + [0.0] * 6, atol=1e-12)
    assert (res.explained_ratio >= 0).all()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 2)) @ rng.standard_normal((2, 6))  # rank 2 (centred: rank 2)
    res = geometry.pca(x, n_components=5)
    assert np.isfinite(res.scores).all() and np.isfinite(res.components).all()
    np.testing.assert_allclose(res.explained_ratio[2:], 0, atol=1e-12)
    assert res.explained_ratio[:2].sum() == pytest.approx(1.0)
    same = geometry.pca(np.ones((4, 3)), n_components=2)  # no variance at all
    np.testing.assert_array_equal(same.explained_ratio, [0.0, 0.0])
    assert np.isfinite(same.scores).all() and np.isfinite(same.components).all()
    assert same.total_variance == 0.0


def _result(scores):
    scores = np.asarray(scores, dtype=float)
    k = scores.shape[1]
    return geometry.PCAResult(np.linspace(0.5, 0.1, k), scores, np.eye(k, 4), 7.5, np.ones(k), ["svd"] * k)


def test_orient_largest_score_rule_by_hand():
    res = _result([[1.0, 0.5, 0.0], [-5.0, 0.2, 0.0], [2.0, -0.1, 0.0]])
    o = geometry.orient(res)
    # PC1: largest |score| is -5 (row 2) -> flipped; PC2: 0.5 >= 0 (a score below 1) -> kept;
    # PC3: all zero -> kept.
    np.testing.assert_array_equal(o.signs, [-1.0, 1.0, 1.0])
    np.testing.assert_array_equal(o.scores, [[-1.0, 0.5, 0.0], [5.0, 0.2, 0.0], [-2.0, -0.1, 0.0]])
    np.testing.assert_array_equal(o.components, np.eye(3, 4) * [[-1], [1], [1]])
    np.testing.assert_array_equal(o.explained_ratio, res.explained_ratio)
    assert o.total_variance == 7.5 and o.oriented_by == ["largest |score|"] * 3
    # orienting again composes the signs
    again = geometry.orient(o, (np.array([1.0, -1.0, 0.0]),))
    np.testing.assert_array_equal(again.signs, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(again.scores[:, 0], res.scores[:, 0])


def test_orient_with_three_ratings_and_fewer_names_than_pcs():
    res = _result([[1.0, 0.5], [-5.0, 0.2], [2.0, -0.1], [0.5, 0.3]])
    ref = np.array([np.nan, 9.0, 1.0, 2.0])  # three finite ratings: enough; anti-correlated
    o = geometry.orient(res, (ref, ref), ("valence",))
    assert o.oriented_by == ["valence", "reference 2"]
    assert o.sign_rules == ["positive correlation with valence", "positive correlation with reference 2"]
    assert o.signs[0] == -1.0


def test_cosine_matrix_values_centring_and_bounds():
    x = np.array([[0.1, 0.0], [0.2, 0.01], [-3.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    c = geometry.cosine_matrix(x)
    assert c[0, 1] == pytest.approx(0.2 / np.hypot(0.2, 0.01))
    assert c[1, 3] == pytest.approx(0.01 / np.hypot(0.2, 0.01))
    assert c[1, 2] == pytest.approx(-0.2 / np.hypot(0.2, 0.01))
    assert c[4, 1] == 0.0 and c[4, 4] == 1.0
    rng = np.random.default_rng(1)
    off = rng.standard_normal((5, 3)) + [10.0, -4.0, 2.0]
    xc = off - off.mean(axis=0)
    unit = xc / np.linalg.norm(xc, axis=1, keepdims=True)
    np.testing.assert_allclose(geometry.cosine_matrix(off, centre=True), unit @ unit.T, atol=1e-12)
    assert not np.allclose(geometry.cosine_matrix(off), unit @ unit.T)
    assert geometry.cosine_matrix(off.astype(np.float32)).dtype == np.float64  # computed in float64
    np.testing.assert_allclose(geometry.cosine_matrix(off.astype(np.float32)),
                               geometry.cosine_matrix(off.astype(np.float32).astype(np.float64)), rtol=0, atol=1e-15)
    # parallel rows: exactly +-1 after rounding, never beyond
    for _ in range(50):
        v = rng.standard_normal(7)
        p = geometry.cosine_matrix(np.array([v, 3 * v, -v]))
        assert p.max() <= 1.0 and p.min() >= -1.0
        assert p[0, 1] == pytest.approx(1.0) and p[0, 2] == pytest.approx(-1.0)


def test_top_pairs_order_and_ties():
    c = np.array([[1.0, 0.9, -0.8, 0.3], [0.9, 1.0, 0.1, -0.2], [-0.8, 0.1, 1.0, 0.5], [0.3, -0.2, 0.5, 1.0]])
    pairs = geometry.top_pairs(c, list("abcd"), n=3)
    syn = pairs[pairs.kind == "synonym"]
    opp = pairs[pairs.kind == "opposite"]
    assert list(zip(syn.emotion_a, syn.emotion_b)) == [("a", "b"), ("c", "d"), ("a", "d")]
    assert list(zip(opp.emotion_a, opp.emotion_b)) == [("a", "c"), ("b", "d"), ("b", "c")]
    assert syn.cosine.tolist() == [0.9, 0.5, 0.3] and list(opp["rank"]) == [1, 2, 3]
    eight = np.eye(8) + 0.01 * np.arange(64).reshape(8, 8)
    default = geometry.top_pairs((eight + eight.T) / 2, list("abcdefgh"))  # 28 pairs, 20 of each kind
    assert (default.kind == "synonym").sum() == 20 and (default.kind == "opposite").sum() == 20
    # 12 emotions whose 66 pair cosines take three values: ties follow input order.
    names = [f"e{i}" for i in range(12)]
    rng = np.random.default_rng(1)
    i, j = np.triu_indices(12, k=1)
    tied = np.eye(12)
    tied[i, j] = tied[j, i] = rng.choice([-0.5, 0.0, 0.5], size=len(i))
    t = geometry.top_pairs(tied, names, n=66)
    pos = {(names[a], names[b]): k for k, (a, b) in enumerate(zip(i, j))}
    for kind, descending in (("opposite", False), ("synonym", True)):
        rows = t[t.kind == kind]
        keys = [(cos if not descending else -cos, pos[(a, b)] if not descending else -pos[(a, b)])
                for a, b, cos in zip(rows.emotion_a, rows.emotion_b, rows.cosine)]
        assert keys == sorted(keys), kind


def test_orient_ignores_a_reference_without_covariance():
    """A rating with zero covariance with a PC's scores says nothing about its sign: the
    largest-|score| rule fixes it. Here the ratings are symmetric to the scores (PC1: the two
    emotions rated 0 and 2 both score 5; PC2: the two rated 5 score 0 and 2, around 1), or the
    same for every emotion; the fourth emotion has no rating."""
    res = _result([[5.0, 0.0], [0.0, 1.0], [5.0, 2.0], [-10.0, -3.0]])
    symmetric = (np.array([0.0, 1.0, 2.0, np.nan]), np.array([5.0, 0.0, 5.0, np.nan]))
    constant = np.array([5.0, 5.0, 5.0, np.nan])
    for refs in (symmetric, (constant, constant)):
        o = geometry.orient(res, refs, ("valence", "arousal"))
        assert o.sign_rules == ["largest |score| positive"] * 2, refs
        assert o.oriented_by == ["largest |score|"] * 2
        np.testing.assert_array_equal(o.signs, [-1.0, -1.0])  # -10 and -3 made positive
    # the same ratings made asymmetric do fix the sign
    o = geometry.orient(res, (np.array([0.0, 1.0, 3.0, np.nan]),), ("valence",))
    assert o.sign_rules[0] == "positive correlation with valence" and o.signs[0] == 1.0


def test_orient_takes_ratings_as_plain_lists_with_none_for_missing():
    """References are array-likes: a list of ratings with None for an emotion without a rating
    orients exactly like the float array with NaN there."""
    res = _result([[1.0, 0.5], [-5.0, 0.2], [2.0, -0.1], [0.5, 0.3]])
    as_list = geometry.orient(res, ([None, 9, 1, 2], [4.0, 1.0, None, 2.0]))
    as_array = geometry.orient(res, (np.array([np.nan, 9.0, 1.0, 2.0]), np.array([4.0, 1.0, np.nan, 2.0])))
    np.testing.assert_array_equal(as_list.signs, as_array.signs)
    np.testing.assert_array_equal(as_list.scores, as_array.scores)
    assert as_list.sign_rules == as_array.sign_rules == ["positive correlation with reference 1",
                                                         "positive correlation with reference 2"]
    assert as_list.signs.tolist() == [-1.0, 1.0]
