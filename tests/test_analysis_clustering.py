"""Clustering, choice of k and layer agreement on small hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from emotion_vectors.analysis import clustering
from emotion_vectors.analysis.geometry import cosine_matrix


def three_groups(seed: int = 0, noise: float = 0.05) -> tuple[np.ndarray, list[str], np.ndarray]:
    """9 vectors in 3 tight groups along 3 orthogonal axes (scaled differently)."""
    rng = np.random.default_rng(seed)
    truth = np.repeat([0, 1, 2], 3)
    x = np.eye(6)[truth] * rng.uniform(0.5, 5, size=(9, 1)) + noise * rng.standard_normal((9, 6))
    return x, [f"e{i}" for i in range(9)], truth


def test_distances_per_linkage():
    c = np.array([[1.0, 0.5], [0.5, 1.0]])
    assert clustering.distance_matrix(c, "average")[0, 1] == pytest.approx(0.5)
    assert clustering.distance_matrix(c, "ward")[0, 1] == pytest.approx(1.0)  # sqrt(2 * 0.5)
    # Ward's distance is the Euclidean distance between the unit vectors.
    x = np.array([[3.0, 4.0], [1.0, 0.0]])
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = clustering.distance_matrix(cosine_matrix(x), "ward")
    assert d[0, 1] == pytest.approx(np.linalg.norm(u[0] - u[1]))
    with pytest.raises(ValueError):
        clustering.distance_matrix(c, "single")


@pytest.mark.parametrize("method", clustering.LINKAGES)
def test_three_groups_are_found_and_k_chosen(method):
    x, names, truth = three_groups()
    c = cosine_matrix(x)
    tree = clustering.linkage_tree(c, method)
    choice = clustering.choose_k(c, tree, (2, 6), method)
    assert choice.best_k == 3
    assert list(choice.silhouette["k"]) == [2, 3, 4, 5, 6]
    assert clustering.adjusted_rand(clustering.cut_tree(tree, 3), truth) == 1.0
    out = clustering.cluster_layer(x, names, method=method, k_fixed=2, k_range=(2, 6))
    assert out["fixed"]["k"] == 2 and len(out["fixed"]["clusters"]) == 2
    assert out["silhouette"]["k"] == 3
    summary = out["silhouette"]["clusters"]
    assert list(summary["size"]) == [3, 3, 3] and list(summary["cluster"]) == [1, 2, 3]
    for row in summary.itertuples():
        members = row.members.split(", ")
        assert row.medoid == members[0]
        assert len({truth[names.index(m)] for m in members}) == 1


def test_describe_clusters_medoid_and_order():
    c = np.array([
        [1.0, 0.9, 0.8, 0.0],
        [0.9, 1.0, 0.95, 0.0],
        [0.8, 0.95, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ])
    table = clustering.describe_clusters(np.array([5, 5, 5, 2]), c, ["a", "b", "c", "d"])
    assert list(table["cluster"]) == [1, 2]
    assert table.loc[0, "medoid"] == "b" and table.loc[0, "members"] == "b, c, a"
    assert table.loc[1, "members"] == "d"
    assert list(clustering.relabel(np.array([5, 5, 5, 2]), table)) == [1, 1, 1, 2]


def test_adjusted_rand():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert clustering.adjusted_rand(a, a) == 1.0
    assert clustering.adjusted_rand(a, np.array([7, 7, 3, 3, 9, 9])) == 1.0  # renamed
    b = np.array([0, 1, 0, 1, 0, 1])
    # Hand count: a has 3 within-cluster pairs, b has 3 + 3 = 6, none shared; of 15 pairs the
    # expected shared count is 3 * 6 / 15 = 1.2 and the maximum (3 + 6) / 2 = 4.5.
    assert clustering.adjusted_rand(a, b) == pytest.approx((0 - 1.2) / (4.5 - 1.2))
    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y = rng.integers(0, 4, 20), rng.integers(0, 5, 20)
        assert clustering.adjusted_rand(x, y) == pytest.approx(adjusted_rand_score(x, y))
    m = clustering.adjusted_rand_matrix([a, a, b])
    assert m.shape == (3, 3) and m[0, 1] == 1.0 and m[0, 2] == m[2, 0] < 0
    np.testing.assert_allclose(np.diag(m), 1.0)


def test_structure_agreement():
    x, _, _ = three_groups()
    c1 = cosine_matrix(x)
    c2 = cosine_matrix(x * np.array([1, 1, 1, -1, 1, 1]))  # unchanged: axis 3 unused
    rng = np.random.default_rng(1)
    c3 = cosine_matrix(rng.standard_normal((9, 6)))
    m = clustering.structure_agreement([c1, c2, c3])
    assert m.shape == (3, 3)
    assert m[0, 1] == pytest.approx(1.0)
    assert abs(m[0, 2]) < 0.9
    # Similarities that are an affine function of each other correlate perfectly.
    m2 = clustering.structure_agreement(np.stack([c1, 0.5 * c1 + 0.1]))
    assert m2[0, 1] == pytest.approx(1.0)
    s = clustering.structure_agreement(np.stack([c1, c1**3]), method="spearman")
    assert s[0, 1] == pytest.approx(1.0)
    # The hand case: 3 items, upper triangles (1, 2, 3) and (3, 2, 1) -> r = -1.
    a = np.array([[1, 1, 2], [1, 1, 3], [2, 3, 1]], float)
    b = np.array([[1, 3, 2], [3, 1, 1], [2, 1, 1]], float)
    assert clustering.structure_agreement([a, b])[0, 1] == pytest.approx(-1.0)
