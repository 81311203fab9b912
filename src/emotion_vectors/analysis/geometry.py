"""Geometry of one layer's emotion vectors: PCA, cosine similarity, synonym/opposite pairs.

All functions take the vectors of one layer as an ``(n_emotions, d)`` array and never form a
``d x d`` matrix: PCA is the thin SVD of the centred ``n x d`` matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class PCAResult:
    """PCA of the emotion vectors of one layer (rows centred on the mean vector).

    Attributes:
        explained_ratio: ``(n_components,)`` share of the total variance of each PC (0-1).
        scores: ``(n_emotions, n_components)`` coordinates of each emotion on each PC
            (the emotions' loadings on the PCs, in the vectors' units).
        components: ``(n_components, d)`` unit directions of the PCs in the residual stream.
        total_variance: sum of squared singular values / (n - 1).
        signs: ``(n_components,)`` the sign applied to each PC by ``orient``, and
        sign_rules: how each PC's sign was fixed (see ``orient``);
        oriented_by: per PC, the name of the reference that fixed its sign, or
            ``"largest |score|"`` (``"svd"`` before ``orient``).
    """

    explained_ratio: np.ndarray
    scores: np.ndarray
    components: np.ndarray
    total_variance: float
    signs: np.ndarray
    sign_rules: list[str]
    oriented_by: list[str] | None = None


def pca(vectors: np.ndarray, n_components: int = 10) -> PCAResult:
    """PCA of ``vectors`` ``(n_emotions, d)`` after centring the rows on their mean.

    Computed in float64 from the eigendecomposition of the ``n x n`` Gram matrix of the centred
    rows (equivalent to their thin SVD; cost ``O(n^2 d)``, memory ``O(n d)``; no ``d x d``
    matrix). ``explained_ratio`` is over all components, so the first ``n_components`` shares
    need not sum to 1. Signs are arbitrary (as an SVD gives them): call ``orient``.
    """
    x = np.asarray(vectors, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        raise ValueError("PCA needs at least two emotions")
    xc = x - x.mean(axis=0, keepdims=True)
    gram = xc @ xc.T
    power, u = np.linalg.eigh(gram)  # ascending; power = squared singular values
    power, u = np.clip(power[::-1], 0.0, None), u[:, ::-1]
    k = min(n_components, n - 1, x.shape[1])
    total = float(power.sum())
    ratio = power[:k] / total if total > 0 else np.zeros(k)
    s = np.sqrt(power[:k])
    comps = u[:, :k].T @ xc
    comps /= np.where(s > 0, s, 1.0)[:, None]
    return PCAResult(
        explained_ratio=ratio,
        scores=u[:, :k] * s,
        components=comps,
        total_variance=total / (n - 1),
        signs=np.ones(k),
        sign_rules=["svd"] * k,
        oriented_by=["svd"] * k,
    )


def orient(
    result: PCAResult,
    references: Sequence[np.ndarray | None] = (),
    names: Sequence[str] | None = None,
) -> PCAResult:
    """Fix each PC's sign; returns a new ``PCAResult``.

    PC ``i`` is flipped so that its scores correlate positively with ``references[i]``
    ``(n_emotions,)`` (NaN = no rating) when that reference has at least 3 finite values and a
    non-zero covariance with the scores; ``names[i]`` names that reference in ``sign_rules`` and
    ``oriented_by`` (default ``"reference i+1"``). The analysis passes valence for PC1 and
    arousal for every later PC (``run.orientation_references``), so that PC1's positive end is
    the pleasant end and every other PC's the aroused end. PCs without a usable reference are
    flipped so that the emotion with the largest absolute score has a positive score.

    A PC oriented by a rating correlates with that rating with ``r >= 0`` by construction: the
    sign of that correlation carries no information (its size and two-sided p-value do).
    """
    scores = result.scores.copy()
    comps = result.components.copy()
    k = scores.shape[1]
    signs = np.ones(k)
    rules: list[str] = []
    by: list[str] = []
    for i in range(k):
        ref = references[i] if i < len(references) else None
        name = names[i] if names is not None and i < len(names) else f"reference {i + 1}"
        sign, rule, source = 0.0, "", ""
        if ref is not None:
            ref = np.asarray(ref, dtype=float)
            ok = np.isfinite(ref)
            if ok.sum() >= 3:
                a = scores[ok, i] - scores[ok, i].mean()
                b = ref[ok] - ref[ok].mean()
                sign = float(np.sign(a @ b))
                rule, source = f"positive correlation with {name}", name
        if sign == 0.0:
            j = int(np.argmax(np.abs(scores[:, i])))
            sign = 1.0 if scores[j, i] >= 0 else -1.0
            rule, source = "largest |score| positive", "largest |score|"
        signs[i] = sign
        scores[:, i] *= sign
        comps[i] *= sign
        rules.append(rule)
        by.append(source)
    return PCAResult(result.explained_ratio, scores, comps, result.total_variance,
                     signs * result.signs, rules, by)


def cosine_matrix(vectors: np.ndarray, *, centre: bool = False) -> np.ndarray:
    """Cosine similarity between rows of ``vectors`` ``(n, d)`` -> ``(n, n)`` float64.

    With ``centre=True`` the mean vector is subtracted first. A zero row has cosine 0 with
    every row (and 1 with itself). The diagonal is exactly 1.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if centre:
        x = x - x.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(x, axis=1)
    unit = x / np.where(norms > 0, norms, 1.0)[:, None]
    c = np.clip(unit @ unit.T, -1.0, 1.0)
    np.fill_diagonal(c, 1.0)
    return c


def upper_triangle(matrix: np.ndarray) -> np.ndarray:
    """Entries above the diagonal of a square ``(n, n)`` matrix -> ``(n (n - 1) / 2,)``."""
    i, j = np.triu_indices(matrix.shape[0], k=1)
    return matrix[i, j]


def top_pairs(cosine: np.ndarray, emotions: Sequence[str], n: int = 20) -> pd.DataFrame:
    """The ``n`` most similar (``synonym``) and ``n`` most opposite (``opposite``) pairs.

    Returns columns kind, rank (1 = most extreme), emotion_a, emotion_b, cosine; each unordered
    pair appears once (``emotion_a`` before ``emotion_b`` in input order). Equal cosines are
    ranked by a stable sort of the pairs in input order: among opposites the earlier pair ranks
    first, among synonyms (the same order reversed) the later one.
    """
    i, j = np.triu_indices(cosine.shape[0], k=1)
    values = cosine[i, j]
    order = np.argsort(values, kind="stable")
    rows = []
    for kind, picks in (("synonym", order[::-1][:n]), ("opposite", order[:n])):
        for rank, p in enumerate(picks, start=1):
            rows.append((kind, rank, emotions[i[p]], emotions[j[p]], float(values[p])))
    return pd.DataFrame(rows, columns=["kind", "rank", "emotion_a", "emotion_b", "cosine"])
