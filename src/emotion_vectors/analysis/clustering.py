"""Hierarchical clustering of emotion vectors, choice of k, and agreement across layers.

Linkages are used only with a distance they are valid for:

- ``average`` / ``complete``: cosine distance ``1 - cos`` between vectors;
- ``ward``: Euclidean distance between unit-normalised vectors (Ward's criterion needs
  Euclidean geometry; on unit vectors ``|u - v|^2 = 2 (1 - cos)``, so it is still a cosine
  clustering). The earlier replication ran Ward on cosine distances, which is not.

The silhouette used to choose k is computed with the same distance as the linkage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from sklearn.metrics import silhouette_score

from .geometry import cosine_matrix, upper_triangle

LINKAGES = ("average", "complete", "ward")


def distance_matrix(cosine: np.ndarray, method: str = "ward") -> np.ndarray:
    """Square distance matrix ``(n, n)`` that the linkage ``method`` is valid for.

    ``cosine`` is the ``(n, n)`` cosine-similarity matrix. Returns ``1 - cos`` for
    average/complete and ``sqrt(2 (1 - cos))`` (Euclidean between unit vectors) for ward.
    """
    if method not in LINKAGES:
        raise ValueError(f"linkage {method!r} is not one of {LINKAGES}")
    dist = np.clip(1.0 - np.asarray(cosine, dtype=np.float64), 0.0, 2.0)
    if method == "ward":
        dist = np.sqrt(2.0 * dist)
    dist = (dist + dist.T) / 2
    np.fill_diagonal(dist, 0.0)
    return dist


def linkage_tree(cosine: np.ndarray, method: str = "ward") -> np.ndarray:
    """SciPy linkage matrix ``(n - 1, 4)`` for the ``(n, n)`` cosine matrix (see module doc)."""
    dist = distance_matrix(cosine, method)
    return linkage(squareform(dist, checks=False), method=method)


def cut_tree(tree: np.ndarray, k: int) -> np.ndarray:
    """Cut a linkage tree into at most ``k`` clusters -> labels ``(n,)`` numbered 1..k."""
    return fcluster(tree, t=k, criterion="maxclust").astype(int)


@dataclass
class KChoice:
    """k chosen by the highest mean silhouette over a range.

    Attributes:
        best_k: the k with the highest silhouette (smallest k on ties).
        silhouette: table with columns k, n_clusters (clusters actually produced), silhouette.
    """

    best_k: int
    silhouette: pd.DataFrame


def choose_k(
    cosine: np.ndarray, tree: np.ndarray, k_range: tuple[int, int], method: str = "ward"
) -> KChoice:
    """Pick k in ``k_range`` (inclusive) maximising the mean silhouette of the tree's cut.

    The silhouette uses ``distance_matrix(cosine, method)``, the distance the tree was built on.
    k values outside ``[2, n - 1]`` are skipped.
    """
    n = cosine.shape[0]
    dist = distance_matrix(cosine, method)
    lo, hi = max(2, int(k_range[0])), min(n - 1, int(k_range[1]))
    rows = []
    for k in range(lo, hi + 1):
        labels = cut_tree(tree, k)
        n_clusters = len(np.unique(labels))
        sil = (
            float(silhouette_score(dist, labels, metric="precomputed"))
            if 2 <= n_clusters <= n - 1
            else float("nan")
        )
        rows.append((k, n_clusters, sil))
    table = pd.DataFrame(rows, columns=["k", "n_clusters", "silhouette"])
    if table["silhouette"].notna().any():
        best = int(table.loc[table["silhouette"].idxmax(), "k"])
    else:
        raise ValueError(f"no k in {k_range} can be scored for {n} emotions")
    return KChoice(best, table)


def describe_clusters(
    labels: np.ndarray, cosine: np.ndarray, emotions: Sequence[str]
) -> pd.DataFrame:
    """One row per cluster: cluster, size, medoid, members (comma-separated, by centrality).

    The medoid is the member with the highest mean cosine to the other members; members are
    listed from most to least central. Clusters are renumbered 1.. by decreasing size (ties by
    medoid name) so that numbering is stable across runs.
    """
    rows = []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        sub = cosine[np.ix_(idx, idx)]
        centrality = (sub.sum(axis=1) - 1.0) / max(len(idx) - 1, 1)
        order = idx[np.argsort(-centrality, kind="stable")]
        names = [emotions[i] for i in order]
        rows.append({"label": int(lab), "size": len(idx), "medoid": names[0],
                     "members": ", ".join(names)})
    table = pd.DataFrame(rows).sort_values(["size", "medoid"], ascending=[False, True])
    table.insert(0, "cluster", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)


def relabel(labels: np.ndarray, clusters: pd.DataFrame) -> np.ndarray:
    """Map raw fcluster labels to the ``cluster`` numbers of ``describe_clusters``."""
    mapping = dict(zip(clusters["label"], clusters["cluster"]))
    return np.array([mapping[int(x)] for x in labels], dtype=int)


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) of two labelings ``(n,)`` of the same items.

    1 = the same partition up to renaming; 0 = the agreement expected by chance. Two trivial
    partitions (all in one cluster, or all singletons) that are equal score 1.
    """
    _, a = np.unique(np.asarray(a), return_inverse=True)
    _, b = np.unique(np.asarray(b), return_inverse=True)
    n = a.size
    table = np.bincount(a * (b.max() + 1) + b, minlength=(a.max() + 1) * (b.max() + 1))

    def pairs(c: np.ndarray) -> float:
        c = c.astype(np.float64)
        return float((c * (c - 1) / 2).sum())

    index = pairs(table)
    rows, cols = pairs(np.bincount(a)), pairs(np.bincount(b))
    total = n * (n - 1) / 2
    expected = rows * cols / total if total else 0.0
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)


def adjusted_rand_matrix(labels_by_layer: Sequence[np.ndarray]) -> np.ndarray:
    """Adjusted Rand index between the clusterings of every pair of layers -> ``(L, L)``.

    Each entry of ``labels_by_layer`` is ``(n_emotions,)`` labels for the same emotions.
    1 = identical partitions (up to renaming), about 0 = chance agreement.
    """
    n_layers = len(labels_by_layer)
    out = np.eye(n_layers)
    for a in range(n_layers):
        for b in range(a + 1, n_layers):
            out[a, b] = out[b, a] = adjusted_rand(labels_by_layer[a], labels_by_layer[b])
    return out


def structure_agreement(
    cosines: Sequence[np.ndarray] | np.ndarray, method: str = "pearson"
) -> np.ndarray:
    """Correlation of the cosine matrices' upper triangles between layers -> ``(L, L)``.

    ``cosines`` is ``(L, n, n)``. ``method`` is ``pearson`` or ``spearman`` (ranks of the
    ``n (n - 1) / 2`` pair similarities). Memory ``O(L n^2)``.
    """
    tri = np.stack([upper_triangle(np.asarray(c)) for c in cosines])
    if method == "spearman":
        from scipy.stats import rankdata

        tri = rankdata(tri, axis=1)
    elif method != "pearson":
        raise ValueError(f"method {method!r} is not pearson or spearman")
    if tri.shape[0] == 1:
        return np.ones((1, 1))
    return np.corrcoef(tri)


def cluster_layer(
    vectors: np.ndarray, emotions: Sequence[str], *, method: str = "ward",
    k_fixed: int = 15, k_range: tuple[int, int] = (4, 20), cosine: np.ndarray | None = None,
) -> dict:
    """Cluster one layer's vectors ``(n, d)`` at ``k_fixed`` and at the silhouette-best k.

    Returns a dict with ``tree``, ``choice`` (``KChoice``), and for ``"fixed"`` and
    ``"silhouette"``: ``labels`` ``(n,)`` (cluster numbers of the summary) and ``clusters``
    (``describe_clusters`` table).
    """
    cos = cosine_matrix(vectors) if cosine is None else cosine
    tree = linkage_tree(cos, method)
    choice = choose_k(cos, tree, k_range, method)
    out: dict = {"tree": tree, "choice": choice}
    for name, k in (("fixed", min(k_fixed, len(emotions))), ("silhouette", choice.best_k)):
        raw = cut_tree(tree, k)
        clusters = describe_clusters(raw, cos, emotions)
        out[name] = {"k": k, "labels": relabel(raw, clusters), "clusters": clusters}
    return out
