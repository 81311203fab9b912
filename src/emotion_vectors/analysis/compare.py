"""Do two models share their emotion geometry? Statistics that compare two sets of emotion vectors.

Every measure takes two matrices ``xa`` ``(n, d_a)`` and ``xb`` ``(n, d_b)`` whose rows are the
same ``n`` emotions in the same order (the hidden sizes may differ), centred on their mean over
those emotions (:func:`centre`: vectors are "emotion mean minus the mean over the emotions", and
two stores rarely hold the same emotions, so both are re-centred on the shared ones):

==================  =================================================================================
``rsa``             representational similarity: Spearman correlation of the upper triangles of the
                    two ``n x n`` cosine matrices (:func:`rsa`)
``cka``             linear centred kernel alignment of the two matrices (:func:`linear_cka`); also
                    layer by layer for both models (:func:`cka_layers`, the heatmap)
``nn_overlap``      mean share of each emotion's ``k`` nearest neighbours (by cosine) that are the same
                    in both (:func:`nn_overlap`); chance is ``k / (n - 1)``
``cluster_ari``     adjusted Rand index of the two Ward clusterings into ``k`` clusters (unit vectors,
                    as the analysis clusters; :func:`cluster_ari`)
``procrustes``      held-out R^2 of an orthogonal map with scale from A to B fitted on half of the
                    emotions and tested on the other half, both models first projected to their
                    top principal components fitted on the training half (so different hidden sizes
                    are compared in one space), averaged over random halves (:func:`procrustes_holdout`)
==================  =================================================================================

**The null** of every test is the same: B's emotion labels permuted (rows of B permuted
relative to A; for RSA this is the Mantel test). Under "B's geometry is unrelated to A's labels"
the observed statistic and the permuted ones are exchangeable, so the Monte-Carlo p
``(1 + #{null >= observed}) / (1 + K)`` rejects at ``alpha`` at most ``alpha`` of the time
(``tests/test_compare.py`` simulates it). One set of ``K`` permutations serves every measure of
a comparison. The two measures that move in steps break ties with a continuous secondary
statistic fixed in advance (draws equal to the observed value count only when their secondary is
at least the observed one), so their tests are exact rather than conservative: for the
neighbour overlap, the mean cosine in B of each emotion with A's neighbours of it; for the
cluster agreement, the Spearman correlation of the two trees' cophenetic distances. The CKA heatmap gives each cell its own permutation p and a family-wise one (the
maximum over all cells in each permutation).

**Views.** A comparison is computed on one or more *views* ``(xa, xb)``, its statistic being the
mean over views, and the permutation applies to B in every view. Two stores read from different
texts (a run's subject and the published 31B vectors) are compared on one view, their vectors.
Two subjects of one run read the *same* stories, so each emotion's vector carries, besides the
emotion, the idiosyncrasies of its particular stories, and both models see those: agreement that
the label permutation cannot tell from shared emotion geometry (a run whose stories carry no
emotion would "agree" as well). They are therefore **cross-fitted**: vectors from two disjoint
halves of each emotion's stories (``emotion_vectors.vectors.split_vectors``), compared across halves —
``(A half 0, B half 1)`` and ``(A half 1, B half 0)`` — so no text is read by both sides of a
view. The within-model agreement of the two halves (``reliability``) bounds what cross-fitted
agreement can reach.

**Each model's own geometry** (:func:`valence_arousal`): PC1-valence and PC2-arousal correlations
on the shared emotions with the analysis's bootstrap (PCA refitted in every resample), side by
side, with a paired interval of their difference (the same resamples of emotions for both).

:func:`compare_stores` runs everything for two vector stores and writes ``FILES``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import clustering, geometry, norms, stats
from .store import VectorSet, load_vectors

MEASURES = ("rsa", "cka", "nn_overlap", "cluster_ari", "procrustes")
MEASURE_TEXT = {
    "rsa": "Spearman correlation of the upper triangles of the two emotion x emotion cosine matrices (RSA)",
    "cka": "linear CKA of the two emotion-vector matrices at the main layers",
    "nn_overlap": "mean share of each emotion's k nearest neighbours (cosine) shared by both models",
    "cluster_ari": "adjusted Rand index of the two Ward clusterings (unit vectors) into k clusters",
    "procrustes": ("held-out R^2 of an orthogonal map with scale, A to B, fitted on half of the emotions and "
                   "tested on the other half, both projected to top principal components fitted on the "
                   "training half; mean over random halves"),
}
NULL_TEXT = ("B's emotion labels permuted relative to A's (rows of B permuted; the Mantel test for RSA); "
             "Monte-Carlo p = (1 + #{null >= observed}) / (1 + K), one-sided; neighbour and cluster agreement "
             "break ties with a continuous secondary statistic fixed in advance")
#: Rows of a split-half store (``split_vectors``): ``f"{emotion}{HALF_SEP}{h}"``, h in (0, 1).
HALF_SEP = "@half"
#: Fewest shared emotions a comparison accepts.
MIN_SHARED = 5
FILES: dict[str, str] = {
    "summary": "summary.json",
    "measures": "measures.tsv",
    "cka": "cka.tsv",
    "valence": "valence.tsv",
    "heatmap": "cka.png",
}


class CompareError(ValueError):
    """Two stores that cannot be compared (too few shared emotions, a bad setting)."""


# --------------------------------------------------------------------------- basic measures


def centre(x: np.ndarray) -> np.ndarray:
    """Rows minus their mean, float64."""
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=0, keepdims=True)


def cosine(x: np.ndarray) -> np.ndarray:
    """Cosine matrix of the centred rows (``geometry.cosine_matrix(x, centre=True)``)."""
    return geometry.cosine_matrix(x, centre=True)


def _tri(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, k=1)


def rsa(xa: np.ndarray, xb: np.ndarray) -> float:
    """Spearman correlation of the upper triangles of the cosine matrices of ``xa`` and ``xb``."""
    _check_pair(xa, xb)
    i, j = _tri(len(xa))
    a, b = cosine(xa)[i, j], cosine(xb)[i, j]
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(sps.spearmanr(a, b).statistic)


def _centred_gram(x: np.ndarray) -> np.ndarray:
    xc = centre(x)
    return xc @ xc.T


def linear_cka(xa: np.ndarray, xb: np.ndarray) -> float:
    """Linear CKA: ``<K_a, K_b>_F / (|K_a|_F |K_b|_F)`` of the Gram matrices of the centred rows
    (equal to ``|X_b^T X_a|_F^2 / (|X_a^T X_a|_F |X_b^T X_b|_F)``); invariant to orthogonal maps
    and isotropic scaling of either side; NaN when a side is constant."""
    _check_pair(xa, xb)
    ka, kb = _centred_gram(xa), _centred_gram(xb)
    den = np.linalg.norm(ka) * np.linalg.norm(kb)
    return float(np.sum(ka * kb) / den) if den > 0 else float("nan")


def neighbours(cos: np.ndarray, k: int) -> np.ndarray:
    """``(n, n)`` boolean: ``[i, j]`` true when ``j`` is one of ``i``'s ``k`` nearest other rows
    by cosine (ties broken by row order)."""
    n = cos.shape[0]
    if not 1 <= k <= n - 1:
        raise CompareError(f"nearest neighbours: k = {k} must be between 1 and n - 1 = {n - 1}")
    c = np.array(cos, dtype=np.float64)
    np.fill_diagonal(c, -np.inf)
    order = np.argsort(-c, axis=1, kind="stable")[:, :k]
    out = np.zeros((n, n), dtype=bool)
    out[np.arange(n)[:, None], order] = True
    return out


def nn_overlap(xa: np.ndarray, xb: np.ndarray, k: int) -> float:
    """Mean over emotions of ``|NN_a(e) & NN_b(e)| / k`` (``k`` nearest others by cosine)."""
    _check_pair(xa, xb)
    na, nb = neighbours(cosine(xa), k), neighbours(cosine(xb), k)
    return float((na & nb).sum() / (len(xa) * k))


def cluster_labels(x: np.ndarray, k: int) -> np.ndarray:
    """Ward clustering of the centred rows as unit vectors (``analysis.clustering``), cut into
    ``k`` clusters."""
    n = len(x)
    if not 2 <= k <= n - 1:
        raise CompareError(f"clusters: k = {k} must be between 2 and n - 1 = {n - 1}")
    cos = cosine(x)
    return clustering.cut_tree(clustering.linkage_tree(cos, "ward"), k)


def _ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labellings (Hubert and Arabie; equal to scikit-learn's
    ``adjusted_rand_score``, without its input checks, which cost 100x the index itself)."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1.0)
    n = float(len(ai))

    def pairs(x):
        return float(np.sum(x * (x - 1.0))) / 2.0

    index, sa, sb = pairs(table), pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    total = n * (n - 1.0) / 2.0
    expected = sa * sb / total if total else 0.0
    best = (sa + sb) / 2.0
    if best == expected:  # both labellings trivial (one cluster, or all singletons): identical
        return 1.0
    return (index - expected) / (best - expected)


def cluster_ari(xa: np.ndarray, xb: np.ndarray, k: int) -> float:
    """Adjusted Rand index of the two models' Ward clusterings into ``k`` clusters."""
    _check_pair(xa, xb)
    return _ari(cluster_labels(xa, k), cluster_labels(xb, k))


def half_splits(n: int, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_splits`` random (train, test) halves of ``range(n)`` (train = the first ``n // 2`` of a
    seeded permutation, sorted)."""
    if n < 4:
        raise CompareError(f"Procrustes needs at least 4 emotions, got {n}")
    rng = np.random.default_rng([int(seed), 7])
    out = []
    for _ in range(int(n_splits)):
        p = rng.permutation(n)
        out.append((np.sort(p[: n // 2]), np.sort(p[n // 2:])))
    return out


def _pcs_dims(n_pcs: int, n_train: int, da: int, db: int) -> int:
    return max(1, min(int(n_pcs), n_train - 1, da, db))


def _project(x: np.ndarray, train: np.ndarray, test: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the train and test rows on the top ``k`` PCs of the train rows (centred on the
    train mean)."""
    xt = x[train]
    mu = xt.mean(axis=0)
    xc = xt - mu
    # PCs from the small Gram matrix (train rows x train rows), never d x d
    w, u = np.linalg.eigh(xc @ xc.T)
    w, u = w[::-1][:k], u[:, ::-1][:, :k]
    s = np.sqrt(np.clip(w, 0.0, None))
    comps = (u.T @ xc) / np.where(s > 0, s, 1.0)[:, None]
    return xc @ comps.T, (x[test] - mu) @ comps.T


def _procrustes_r2(za_tr: np.ndarray, za_te: np.ndarray, zb_tr: np.ndarray, zb_te: np.ndarray) -> float:
    """Fit ``zb ~ s za R`` (R orthogonal, s > 0) on the train rows; R^2 on the test rows relative
    to B's train mean (0 in these coordinates)."""
    u, sv, vt = np.linalg.svd(za_tr.T @ zb_tr)
    rot = u @ vt
    ssa = float(np.sum(za_tr * za_tr))
    scale = float(sv.sum()) / ssa if ssa > 0 else 0.0
    pred = scale * (za_te @ rot)
    den = float(np.sum(zb_te * zb_te))
    return 1.0 - float(np.sum((pred - zb_te) ** 2)) / den if den > 0 else float("nan")


def procrustes_holdout(xa: np.ndarray, xb: np.ndarray, *, n_pcs: int = 5, n_splits: int = 20,
                       seed: int = 0) -> float:
    """Mean over ``n_splits`` random halves of the held-out R^2 of the orthogonal map with scale
    from A to B (see the module docstring). 1 when B is A rotated and scaled."""
    _check_pair(xa, xb)
    xa, xb = centre(xa), centre(xb)
    splits = half_splits(len(xa), n_splits, seed)
    k = _pcs_dims(n_pcs, len(splits[0][0]), xa.shape[1], xb.shape[1])
    vals = [_procrustes_r2(*_project(xa, tr, te, k), *_project(xb, tr, te, k)) for tr, te in splits]
    return float(np.mean(vals))


def _check_pair(xa: np.ndarray, xb: np.ndarray) -> None:
    if np.ndim(xa) != 2 or np.ndim(xb) != 2:
        raise CompareError("each side must be a 2-D (emotions x hidden size) matrix")
    if len(xa) != len(xb):
        raise CompareError(f"the two sides hold {len(xa)} and {len(xb)} emotions: rows must be the same emotions")
    if len(xa) < 3:
        raise CompareError(f"a comparison needs at least 3 emotions, got {len(xa)}")


# --------------------------------------------------------------------------- permutation tests


@dataclass
class PermutationTest:
    """One measure on a comparison's views against B's labels permuted.

    Attributes:
        measure: one of ``MEASURES``.
        statistic: the mean over views of the measure.
        per_view: the measure on each view.
        p: Monte-Carlo p, ``(1 + #{null >= statistic}) / (1 + n_permutations)``.
        n_permutations: null draws.
        null_mean, null_q95: the null's mean and 95th percentile (chance level and the bar).
        null: the null draws (not written to JSON).
    """

    measure: str
    statistic: float
    per_view: list[float]
    p: float
    n_permutations: int
    null_mean: float
    null_q95: float
    null: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("null")
        return d


def permutations(n: int, n_permutations: int, seed: int) -> np.ndarray:
    """``(K, n)`` seeded random permutations of ``range(n)`` (the null draws of a comparison)."""
    rng = np.random.default_rng([int(seed), 11])
    return np.stack([rng.permutation(n) for _ in range(int(n_permutations))]) if n_permutations else np.zeros((0, n), int)


class _RankCorrelation:
    """Spearman correlation of the upper triangles of two symmetric matrices per view, B's
    relabelled by a permutation: a relabelling moves B's ranks, never changes them, so the
    permuted triangle's ranks are a gather of B's rank matrix (their mean and norm unchanged)."""

    def __init__(self, mats):
        n = len(mats[0][0])
        self.i, self.j = _tri(n)
        self.a, self.rb = [], []
        for ma, mb in mats:
            ra = sps.rankdata(ma[self.i, self.j])
            ra = ra - ra.mean()
            nrm = np.linalg.norm(ra)
            self.a.append(ra / nrm if nrm > 0 else np.full_like(ra, np.nan))
            rb = np.zeros((n, n))
            rb[self.i, self.j] = sps.rankdata(mb[self.i, self.j])
            rb = rb + rb.T
            vals = rb[self.i, self.j]
            mean, nrm = vals.mean(), np.linalg.norm(vals - vals.mean())
            self.rb.append((rb, mean, nrm))

    def __call__(self, p: np.ndarray) -> list[float]:
        out = []
        for a, (rb, mean, nrm) in zip(self.a, self.rb):
            b = rb[p[self.i], p[self.j]] - mean
            out.append(float(a @ b / nrm) if nrm > 0 else float("nan"))
        return out


class _RSA(_RankCorrelation):
    def __init__(self, views):
        super().__init__([(cosine(xa), cosine(xb)) for xa, xb in views])


class _CKA:
    def __init__(self, views):
        self.pairs = []
        for xa, xb in views:
            ka, kb = _centred_gram(xa), _centred_gram(xb)
            na, nb = np.linalg.norm(ka), np.linalg.norm(kb)
            self.pairs.append((ka / na if na > 0 else ka * np.nan, kb / nb if nb > 0 else kb * np.nan))

    def __call__(self, p: np.ndarray) -> list[float]:
        return [float(np.sum(ka * kb[np.ix_(p, p)])) for ka, kb in self.pairs]


class _NN:
    """Neighbour overlap; ties (it moves in steps of 1 / (n k)) are broken by a continuous
    secondary statistic fixed in advance: the mean cosine, in B, of each emotion with A's
    neighbours of it."""

    def __init__(self, views, k: int):
        self.k = k
        self.pairs = []
        for xa, xb in views:
            cb = cosine(xb)
            self.pairs.append((neighbours(cosine(xa), k), neighbours(cb, k), cb))

    def __call__(self, p: np.ndarray) -> list[float]:
        n = len(p)
        return [float((na & nb[np.ix_(p, p)]).sum() / (n * self.k)) for na, nb, _ in self.pairs]

    def secondary(self, p: np.ndarray) -> list[float]:
        n = len(p)
        return [float(np.sum(na * cb[np.ix_(p, p)]) / (n * self.k)) for na, _, cb in self.pairs]


class _ARI:
    """Cluster agreement; ties (the index takes few values) are broken by a continuous secondary
    statistic fixed in advance: the Spearman correlation of the two trees' cophenetic distances."""

    def __init__(self, views, k: int):
        from scipy.cluster.hierarchy import cophenet
        from scipy.spatial.distance import squareform

        self.pairs, mats = [], []
        for xa, xb in views:
            ta = clustering.linkage_tree(cosine(xa), "ward")
            tb = clustering.linkage_tree(cosine(xb), "ward")
            self.pairs.append((clustering.cut_tree(ta, k), clustering.cut_tree(tb, k)))
            mats.append((squareform(cophenet(ta)), squareform(cophenet(tb))))
        self.trees = _RankCorrelation(mats)

    def __call__(self, p: np.ndarray) -> list[float]:
        return [_ari(la, lb[p]) for la, lb in self.pairs]

    def secondary(self, p: np.ndarray) -> list[float]:
        return self.trees(p)


class _Procrustes:
    def __init__(self, views, n_pcs: int, n_splits: int, seed: int):
        n = len(views[0][0])
        self.splits = half_splits(n, n_splits, seed)
        self.views = [(centre(xa), centre(xb)) for xa, xb in views]
        da = min(v[0].shape[1] for v in self.views)
        db = min(v[1].shape[1] for v in self.views)
        self.k = _pcs_dims(n_pcs, len(self.splits[0][0]), da, db)
        self.a = [[_project(xa, tr, te, self.k) for tr, te in self.splits] for xa, _ in self.views]

    def __call__(self, p: np.ndarray) -> list[float]:
        return [float(v) for v in self.batch(np.asarray(p)[None])[0]]

    def batch(self, perms: np.ndarray) -> np.ndarray:
        """``(K, n_views)``: the statistic for every permutation at once (stacked linear algebra:
        the same arithmetic as ``_project`` and ``_procrustes_r2``, per permutation)."""
        out = np.zeros((len(perms), len(self.views)))
        for v, (a_proj, (_, xb)) in enumerate(zip(self.a, self.views)):
            xbp = xb[perms]  # (K, n, r)
            for (za_tr, za_te), (tr, te) in zip(a_proj, self.splits):
                zb_tr, zb_te = _project_many(xbp, tr, te, self.k)
                u, sv, vt = np.linalg.svd(np.einsum("ik,bil->bkl", za_tr, zb_tr))
                rot = u @ vt
                ssa = float(np.sum(za_tr * za_tr))
                scale = sv.sum(axis=1) / ssa if ssa > 0 else np.zeros(len(perms))
                pred = scale[:, None, None] * np.einsum("ik,bkl->bil", za_te, rot)
                den = np.sum(zb_te * zb_te, axis=(1, 2))
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[:, v] += np.where(den > 0, 1.0 - np.sum((pred - zb_te) ** 2, axis=(1, 2)) / den, np.nan)
        return out / len(self.splits)


def _project_many(x: np.ndarray, train: np.ndarray, test: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``_project`` for a stack of matrices ``x`` ``(K, n, d)``."""
    xt = x[:, train]
    mu = xt.mean(axis=1, keepdims=True)
    xc = xt - mu
    w, u = np.linalg.eigh(xc @ np.swapaxes(xc, 1, 2))
    w, u = w[:, ::-1][:, :k], u[:, :, ::-1][:, :, :k]
    s = np.sqrt(np.clip(w, 0.0, None))
    comps = (np.swapaxes(u, 1, 2) @ xc) / np.where(s > 0, s, 1.0)[:, :, None]
    ct = np.swapaxes(comps, 1, 2)
    return xc @ ct, (x[:, test] - mu) @ ct


def reduce_rows(x: np.ndarray) -> np.ndarray:
    """The centred rows in an orthonormal basis of their span: ``(n, r)``, ``r <= min(n, d)``.
    Every measure here depends on the rows only through the inner products of their differences,
    which this keeps exactly (a 5376-wide model's rows become at most ``n`` numbers each)."""
    xc = centre(x)
    if xc.shape[1] <= xc.shape[0]:
        return xc
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    keep = s > s[0] * 1e-12 if s.size and s[0] > 0 else np.zeros(s.shape, bool)
    return u[:, keep] * s[keep] if keep.any() else xc[:, :1] * 0.0


def permutation_tests(
    views: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    n_permutations: int = 999,
    seed: int = 0,
    nn_k: int = 3,
    k_clusters: int = 6,
    procrustes_pcs: int = 5,
    procrustes_splits: int = 20,
    measures: Sequence[str] = MEASURES,
) -> dict[str, PermutationTest]:
    """Every measure on ``views`` (pairs ``(xa, xb)``, rows the same emotions in the same order;
    statistic = mean over views) with its permutation null: the same ``n_permutations`` seeded
    permutations of B's rows (all views at once) for every measure."""
    if not views:
        raise CompareError("no views to compare")
    for xa, xb in views:
        _check_pair(xa, xb)
    n = len(views[0][0])
    if any(len(xa) != n for xa, _ in views):
        raise CompareError("every view must hold the same emotions")
    unknown = [m for m in measures if m not in MEASURES]
    if unknown:
        raise CompareError(f"unknown measures {unknown}; known: {MEASURES}")
    views = [(reduce_rows(xa), reduce_rows(xb)) for xa, xb in views]
    makers = {
        "rsa": lambda: _RSA(views),
        "cka": lambda: _CKA(views),
        "nn_overlap": lambda: _NN(views, nn_k),
        "cluster_ari": lambda: _ARI(views, k_clusters),
        "procrustes": lambda: _Procrustes(views, procrustes_pcs, procrustes_splits, seed),
    }
    perms = permutations(n, n_permutations, seed)
    ident = np.arange(n)
    out = {}
    for m in measures:
        score = makers[m]()
        per_view = score(ident)
        stat = float(np.mean(per_view))
        if hasattr(score, "batch") and len(perms):
            null = np.mean(score.batch(perms), axis=1)
        else:
            null = np.array([np.mean(score(p)) for p in perms], dtype=np.float64)
        ties = None
        if hasattr(score, "secondary"):
            ties = (float(np.mean(score.secondary(ident))),
                    np.array([np.mean(score.secondary(p)) for p in perms], dtype=np.float64))
        out[m] = _test(m, stat, per_view, null, ties)
    return out


def _test(measure: str, stat: float, per_view: list[float], null: np.ndarray,
          ties: tuple[float, np.ndarray] | None = None) -> PermutationTest:
    """The Monte-Carlo p of ``stat`` against ``null``; with ``ties`` (a secondary statistic and its
    null draws), draws equal to ``stat`` count only when their secondary is at least the
    observed one (lexicographic order: the test is exact, not conservative, for a statistic
    that moves in steps)."""
    # the statistic and the null rounded alike: a permutation that reproduces the observed
    # labelling (or an equivalent one) must count as ">=", not fall below by rounding
    ok = np.isfinite(null)
    finite = null[ok]
    if not finite.size or not math.isfinite(stat):
        p = float("nan")
    else:
        obs, drawn = round(stat, 12), np.round(finite, 12)
        if ties is None:
            hits = int(np.sum(drawn >= obs))
        else:
            sec_obs, sec_null = ties[0], np.asarray(ties[1])[ok]
            hits = int(np.sum(drawn > obs) + np.sum((drawn == obs) & (np.round(sec_null, 12) >= round(sec_obs, 12))))
        p = (1 + hits) / (1 + finite.size)
    return PermutationTest(
        measure=measure, statistic=stat, per_view=[float(v) for v in per_view], p=p,
        n_permutations=int(null.size),
        null_mean=float(finite.mean()) if finite.size else float("nan"),
        null_q95=float(np.quantile(finite, 0.95)) if finite.size else float("nan"),
        null=null,
    )


def rsa_bootstrap(views: Sequence[tuple[np.ndarray, np.ndarray]], *, n_bootstrap: int = 1000, seed: int = 0,
                  level: float = 0.95, chunk: int = 64) -> tuple[float, float]:
    """Percentile interval of the (view-averaged) RSA with the emotions resampled with
    replacement; pairs of two copies of one emotion are left out of a resample's triangles (their
    cosine is 1 on both sides by construction). Resamples are computed ``chunk`` at a time."""
    if n_bootstrap <= 0:
        return float("nan"), float("nan")
    n = len(views[0][0])
    cos = [(cosine(xa), cosine(xb)) for xa, xb in views]
    i, j = _tri(n)
    rng = np.random.default_rng([int(seed), 13])
    idx = rng.integers(0, n, (int(n_bootstrap), n))
    vals = []
    for start in range(0, len(idx), chunk):
        block = idx[start:start + chunk]
        bi, bj = block[:, i], block[:, j]
        keep = bi != bj
        rs = []
        for ca, cb in cos:
            a = np.where(keep, ca[bi, bj], np.nan)
            b = np.where(keep, cb[bi, bj], np.nan)
            ra = sps.rankdata(a, axis=1, nan_policy="omit")
            rb = sps.rankdata(b, axis=1, nan_policy="omit")
            rs.append(_masked_pearson_rows(np.nan_to_num(ra), np.nan_to_num(rb), keep & (keep.sum(1) >= 3)[:, None]))
        vals.append(np.mean(rs, axis=0))
    vals = np.concatenate(vals)
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(vals, [alpha, 1 - alpha])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- CKA layer x layer


@dataclass
class CKALayers:
    """Linear CKA of every layer of A with every layer of B (mean over views).

    Attributes:
        layers_a, layers_b: block indices.
        cka: ``(La, Lb)`` observed CKA.
        p: ``(La, Lb)`` each cell's own permutation p.
        p_fwe: ``(La, Lb)`` family-wise p over all cells (the null of the cell-wise maximum).
        null_mean: ``(La, Lb)`` mean CKA under the null.
        n_permutations: null draws.
    """

    layers_a: list[int]
    layers_b: list[int]
    cka: np.ndarray
    p: np.ndarray
    p_fwe: np.ndarray
    null_mean: np.ndarray
    n_permutations: int

    def table(self) -> pd.DataFrame:
        rows = []
        for ia, la in enumerate(self.layers_a):
            for ib, lb in enumerate(self.layers_b):
                rows.append({"layer_a": la, "layer_b": lb, "cka": self.cka[ia, ib], "null_mean": self.null_mean[ia, ib],
                             "p": self.p[ia, ib], "p_fwe": self.p_fwe[ia, ib]})
        return pd.DataFrame(rows)


def cka_layers(views_a: Sequence[Sequence[np.ndarray]], views_b: Sequence[Sequence[np.ndarray]],
               layers_a: Sequence[int], layers_b: Sequence[int], *, n_permutations: int = 999,
               seed: int = 0) -> CKALayers:
    """CKA of every layer pair. ``views_a[v][l]`` is A's ``(n, d_a)`` matrix at its ``l``-th layer in
    view ``v`` (likewise B); B's rows are permuted in every layer and view at once, with the same
    permutations :func:`permutation_tests` uses for the same ``seed`` and ``n``."""
    if len(views_a) != len(views_b) or not views_a:
        raise CompareError("views_a and views_b must list the same number of views")

    def grams(view):
        out = []
        for x in view:
            g = _centred_gram(x)
            nrm = np.linalg.norm(g)
            out.append(g / nrm if nrm > 0 else g * np.nan)
        return np.stack(out)

    ga = [grams(v).reshape(len(layers_a), -1) for v in views_a]  # (La, n*n)
    gb = [grams(v) for v in views_b]  # (Lb, n, n)
    n = gb[0].shape[1]
    nv = len(views_a)
    obs = sum(a @ b.reshape(len(layers_b), -1).T for a, b in zip(ga, gb)) / nv
    perms = permutations(n, n_permutations, seed)
    ge = np.zeros_like(obs)
    ge_max = np.zeros_like(obs)
    total = np.zeros_like(obs)
    for p in perms:
        null = sum(a @ b[:, p][:, :, p].reshape(len(layers_b), -1).T for a, b in zip(ga, gb)) / nv
        ge += np.round(null, 12) >= np.round(obs, 12)
        ge_max += np.round(np.nanmax(null), 12) >= np.round(obs, 12)
        total += null
    k = len(perms)
    p = (1 + ge) / (1 + k) if k else np.full_like(obs, np.nan)
    p_fwe = (1 + ge_max) / (1 + k) if k else np.full_like(obs, np.nan)
    return CKALayers([int(x) for x in layers_a], [int(x) for x in layers_b], obs, p, p_fwe,
                     total / k if k else np.full_like(obs, np.nan), k)


# --------------------------------------------------------------------------- each model's own geometry


def _masked_pearson_rows(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask.astype(float)
    cnt = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        x0 = np.where(mask, x, 0.0)
        y0 = np.where(mask, y, 0.0)
        xc = (x0 - (x0.sum(axis=1) / cnt)[:, None]) * m
        yc = (y0 - (y0.sum(axis=1) / cnt)[:, None]) * m
        den = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
        r = (xc * yc).sum(axis=1) / den
    return np.where((cnt >= 3) & (den > 1e-300), r, np.nan)


@dataclass
class RatingFit:
    """One model's PC ``pc`` against one human rating on the shared emotions."""

    pc: int
    rating: str
    n: int
    r: float
    ci_low: float
    ci_high: float
    p: float
    explained_ratio: float
    resampled: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


def valence_arousal(x: np.ndarray, emotions: Sequence[str], *, n_bootstrap: int = 1000, seed: int = 0,
                    level: float = 0.95) -> list[RatingFit]:
    """PCs 1-3 of ``x`` (oriented as the analysis orients them: PC1 by valence, the others by
    arousal) against Warriner valence and arousal (Pearson, the emotions with a rating), each
    with the analysis's bootstrap interval (emotions resampled, PCA refitted and sign-aligned in
    every resample). Resamples are drawn from ``seed`` exactly as in ``stats.pca_bootstrap``, so
    two models compared on the same emotions share them (paired differences)."""
    from .run import orientation_references

    x = centre(x)
    n = len(x)
    ratings = norms.match_ratings(list(emotions))
    n_pcs = min(3, n - 1, x.shape[1])
    refs, names = orientation_references(ratings.valence, ratings.arousal, n_pcs)
    res = geometry.orient(geometry.pca(x, n_pcs), refs, names)
    boot = stats.pca_bootstrap(x, res.components, res.scores, n_bootstrap=n_bootstrap, seed=seed)
    out = []
    for pc in range(n_pcs):
        for rating, ref in (("valence", ratings.valence), ("arousal", ratings.arousal)):
            c, _ = stats.correlate_pc(boot, pc, ref, method="pearson", level=level)
            if boot.n_bootstrap:
                yb = ref[boot.idx]
                xb = boot.scores[:, :, pc]
                keep = np.isfinite(yb) & np.isfinite(xb)
                rb = _masked_pearson_rows(np.where(keep, xb, 0.0), np.where(keep, yb, 0.0), keep)
            else:
                rb = np.zeros(0)
            out.append(RatingFit(pc + 1, rating, c.n, c.r, c.ci_low, c.ci_high, c.p,
                                 float(res.explained_ratio[pc]), rb))
    return out


def _paired_interval(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    if a.size == 0 or a.size != b.size:
        return float("nan"), float("nan")
    d = a - b
    d = d[np.isfinite(d)]
    if not d.size:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(d, [alpha, 1 - alpha])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- two stores


@dataclass
class Side:
    """One side of a comparison: a store, its name, the layer compared and its vectors."""

    name: str
    store: VectorSet
    kind: str
    main_layer: int
    halves: VectorSet | None = None


def open_side(name: str, path: str | Path, *, kind: str = "denoised", halves: str | Path | None = None) -> Side:
    """A store opened for comparison at its main layer (``analysis.run.default_main_layer`` with
    the store's recorded depth); ``kind`` falls back to ``denoised`` for a store without it (the
    published reference vectors are denoised only)."""
    vs = load_vectors(path)
    use = kind if kind in vs.kinds else "denoised"
    if use not in vs.kinds:
        raise CompareError(f"{path}: no {kind} or denoised vectors (has {vs.kinds})")
    hv = load_vectors(halves) if halves else None
    return Side(name, vs, use, main_layer_of(vs), hv)


def main_layer_of(vs: VectorSet) -> int:
    """The store's main layer as the analysis picks it (``analysis.run.default_main_layer`` with the
    depth the store records): the block at two-thirds of the depth, or the stored layer nearest."""
    from .run import default_main_layer

    return int(default_main_layer(vs.layers, vs.n_model_layers))


def shared_emotions(a: Sequence[str], b: Sequence[str]) -> list[str]:
    """The emotions both hold, in ``a``'s order."""
    bs = set(b)
    return [e for e in a if e in bs]


def _rows(vs: VectorSet, names: Sequence[str]) -> np.ndarray:
    pos = {e: i for i, e in enumerate(vs.emotions)}
    missing = [e for e in names if e not in pos]
    if missing:
        raise CompareError(f"{vs.path}: no rows {missing[:3]}")
    return np.asarray([pos[e] for e in names])


def _layer(vs: VectorSet, kind: str, layer: int, rows: np.ndarray) -> np.ndarray:
    return np.asarray(vs.array(kind)[:, vs.layer_position(layer), :], dtype=np.float64)[rows]


def _all_layers(vs: VectorSet, kind: str, rows: np.ndarray) -> list[np.ndarray]:
    return [x[rows].astype(np.float64) for _, x in vs.iter_layers(kind)]


def compare_stores(
    a: Side,
    b: Side,
    out_dir: str | Path,
    *,
    crossfit: bool = False,
    n_permutations: int = 999,
    n_bootstrap: int = 1000,
    nn_k: int = 3,
    k_clusters: int = 6,
    procrustes_pcs: int = 5,
    procrustes_splits: int = 20,
    seed: int = 0,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare two stores on their shared emotions and write ``FILES`` into ``out_dir``.

    ``crossfit`` (two subjects of one run, which read the same stories): the measures and the CKA
    heatmap are computed across disjoint story halves (both sides need ``halves``); the full
    vectors' figures are reported beside them as ``statistic_same_stories`` (not tested: they
    include the shared texts). Returns the summary (also ``summary.json``).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    emotions = _shared_checked(a, b, k_clusters=k_clusters, nn_k=nn_k)
    n = len(emotions)
    ra, rb = _rows(a.store, emotions), _rows(b.store, emotions)
    xa = _layer(a.store, a.kind, a.main_layer, ra)
    xb = _layer(b.store, b.kind, b.main_layer, rb)
    settings = dict(n_permutations=n_permutations, seed=seed, nn_k=nn_k, k_clusters=k_clusters,
                    procrustes_pcs=procrustes_pcs, procrustes_splits=procrustes_splits)
    full = permutation_tests([(xa, xb)], **{**settings, "n_permutations": 0})
    reliability: dict[str, Any] = {}
    if crossfit:
        views, layer_views_a, layer_views_b, layers_a, layers_b, reliability = _crossfit_views(a, b, emotions)
    else:
        views = [(xa, xb)]
        layer_views_a = [_all_layers(a.store, a.kind, ra)]
        layer_views_b = [_all_layers(b.store, b.kind, rb)]
        layers_a, layers_b = a.store.layers, b.store.layers
    tests = permutation_tests(views, **settings)
    rsa_ci = rsa_bootstrap(views, n_bootstrap=n_bootstrap, seed=seed)
    heat = cka_layers(layer_views_a, layer_views_b, layers_a, layers_b, n_permutations=n_permutations, seed=seed)
    t_tests = time.perf_counter() - t0

    valence = _valence_table(a, b, xa, xb, emotions, n_bootstrap=n_bootstrap, seed=seed)
    measures = _measure_table(tests, full, rsa_ci, crossfit=crossfit, nn_k=nn_k, n=n)
    _tsv(measures, out / FILES["measures"])
    _tsv(heat.table(), out / FILES["cka"])
    _tsv(valence, out / FILES["valence"])
    _heatmap(heat, a, b, crossfit, out / FILES["heatmap"])
    best = [{"layer_a": la, "best_layer_b": heat.layers_b[int(np.nanargmax(heat.cka[i]))] if np.isfinite(heat.cka[i]).any() else None,
             "cka": float(np.nanmax(heat.cka[i])) if np.isfinite(heat.cka[i]).any() else None}
            for i, la in enumerate(heat.layers_a)]
    ia, ib = heat.layers_a.index(a.main_layer), heat.layers_b.index(b.main_layer)
    summary = {
        "a": _side_info(a), "b": _side_info(b),
        "shared_emotions": emotions, "n_shared": n,
        "crossfit": bool(crossfit),
        "views": ("cross-fitted: (A half 0, B half 1) and (A half 1, B half 0), vectors from disjoint halves of "
                  "each emotion's stories" if crossfit else "the stores' vectors at each main layer"),
        "reliability_split_half_rsa": reliability,
        "tests": {m: tests[m].as_dict() for m in MEASURES},
        "same_stories": {m: full[m].statistic for m in MEASURES} if crossfit else None,
        "rsa_interval": {"ci_low": rsa_ci[0], "ci_high": rsa_ci[1], "level": 0.95, "n_bootstrap": n_bootstrap,
                         "method": "percentile bootstrap over emotions (pairs of one emotion with itself left out)"},
        "cka_main_layers": {"layer_a": a.main_layer, "layer_b": b.main_layer, "cka": float(heat.cka[ia, ib]),
                            "p": float(heat.p[ia, ib]), "p_fwe": float(heat.p_fwe[ia, ib])},
        "cka_best_layer_b": best,
        "valence_arousal": valence.to_dict("records"),
        "settings": {**settings, "n_bootstrap": n_bootstrap,
                     "procrustes_dims": _pcs_dims(procrustes_pcs, n // 2, min(v[0].shape[1] for v in views),
                                                  min(v[1].shape[1] for v in views))},
        "null": NULL_TEXT,
        "measures_text": MEASURE_TEXT,
        "files": FILES,
        "provenance": provenance or {},
        "timings_s": {"tests": round(t_tests, 3), "total": round(time.perf_counter() - t0, 3)},
    }
    summary = _json_safe(summary)
    (out / FILES["summary"]).write_text(json.dumps(summary, indent=2, allow_nan=False))
    return summary


def _shared_checked(a: Side, b: Side, *, k_clusters: int, nn_k: int) -> list[str]:
    """The emotions both sides hold, checked to be enough for ``k_clusters`` and ``nn_k``."""
    emotions = shared_emotions(a.store.emotions, b.store.emotions)
    if len(emotions) < MIN_SHARED:
        raise CompareError(f"{a.name} and {b.name} share {len(emotions)} emotions ({emotions}); "
                           f"a comparison needs at least {MIN_SHARED}")
    n = len(emotions)
    if not 2 <= k_clusters <= n - 1:
        raise CompareError(f"compare.k_clusters = {k_clusters} must be between 2 and {n - 1} "
                           f"(the {n} emotions {a.name} and {b.name} share)")
    if not 1 <= nn_k <= n - 2:
        raise CompareError(f"compare.nn_k = {nn_k} must be between 1 and {n - 2} "
                           f"(the {n} emotions {a.name} and {b.name} share)")
    return emotions


def _crossfit_views(a: Side, b: Side, emotions: list[str]) -> tuple[list, list, list, list[int], list[int], dict[str, Any]]:
    """The cross-fitted views of ``compare_stores``: (A half 0, B half 1) and (A half 1, B half 0)
    at the main layers, the same halves at every layer (for the CKA heatmap), the halves' layers,
    and each side's split-half RSA."""
    if a.halves is None or b.halves is None:
        raise CompareError(f"cross-fitting {a.name} and {b.name} needs both split-half stores")
    h = {}
    for side, tag in ((a, "a"), (b, "b")):
        for half in (0, 1):
            names = [f"{e}{HALF_SEP}{half}" for e in emotions]
            h[tag, half] = (_layer(side.halves, side.kind if side.kind in side.halves.kinds else "denoised",
                                   side.main_layer, _rows(side.halves, names)), names)
    views = [(h["a", 0][0], h["b", 1][0]), (h["a", 1][0], h["b", 0][0])]
    reliability = {side.name: rsa(h[tag, 0][0], h[tag, 1][0]) for side, tag in ((a, "a"), (b, "b"))}
    half_layers = {}
    for side, tag in ((a, "a"), (b, "b")):
        kind = side.kind if side.kind in side.halves.kinds else "denoised"
        half_layers[tag] = [_all_layers(side.halves, kind, _rows(side.halves, h[tag, half][1])) for half in (0, 1)]
    layer_views_a = [half_layers["a"][0], half_layers["a"][1]]
    layer_views_b = [half_layers["b"][1], half_layers["b"][0]]
    return views, layer_views_a, layer_views_b, a.halves.layers, b.halves.layers, reliability


def _valence_table(a: Side, b: Side, xa: np.ndarray, xb: np.ndarray, emotions: list[str], *, n_bootstrap: int,
                   seed: int) -> pd.DataFrame:
    """Each side's PC-rating correlations (``valence_arousal``) side by side, with the interval of
    their difference."""
    va = valence_arousal(xa, emotions, n_bootstrap=n_bootstrap, seed=seed)
    vb = valence_arousal(xb, emotions, n_bootstrap=n_bootstrap, seed=seed)
    val_rows = []
    for fa, fb in zip(va, vb):
        lo, hi = _paired_interval(fa.resampled, fb.resampled)
        val_rows.append({"pc": fa.pc, "rating": fa.rating, "n": fa.n,
                         f"r_{a.name}": fa.r, f"ci_low_{a.name}": fa.ci_low, f"ci_high_{a.name}": fa.ci_high,
                         f"explained_{a.name}": fa.explained_ratio,
                         f"r_{b.name}": fb.r, f"ci_low_{b.name}": fb.ci_low, f"ci_high_{b.name}": fb.ci_high,
                         f"explained_{b.name}": fb.explained_ratio,
                         "r_difference": fa.r - fb.r, "difference_ci_low": lo, "difference_ci_high": hi})
    return pd.DataFrame(val_rows)


def _measure_table(tests: dict[str, Any], full: dict[str, Any], rsa_ci: Any, *, crossfit: bool, nn_k: int,
                   n: int) -> pd.DataFrame:
    """One row per measure: its statistic, per-view values, permutation null and p (the RSA with
    its bootstrap interval, the neighbour overlap with its chance level)."""
    measure_rows = []
    for m in MEASURES:
        t = tests[m]
        measure_rows.append({
            "measure": m, "statistic": t.statistic, "views": "cross-fitted halves" if crossfit else "vectors",
            "per_view": ";".join(f"{v:.6g}" for v in t.per_view),
            "statistic_same_stories": full[m].statistic if crossfit else None,
            "null_mean": t.null_mean, "null_q95": t.null_q95, "p": t.p, "n_permutations": t.n_permutations,
            "ci_low": rsa_ci[0] if m == "rsa" else None, "ci_high": rsa_ci[1] if m == "rsa" else None,
            "chance": (nn_k / (n - 1)) if m == "nn_overlap" else None,
        })
    return pd.DataFrame(measure_rows)


def _side_info(s: Side) -> dict[str, Any]:
    subject = s.store.provenance.get("subject_model") or {}
    return {"name": s.name, "store": str(s.store.path), "kind": s.kind, "main_layer": s.main_layer,
            "layers": s.store.layers, "d": s.store.d, "n_emotions": len(s.store.emotions),
            "n_model_layers": s.store.n_model_layers,
            "model": {k: subject.get(k) for k in ("name", "path", "revision", "dtype", "quantization")
                      if isinstance(subject, dict)},
            "halves": str(s.halves.path) if s.halves is not None else None}


def _heatmap(heat: CKALayers, a: Side, b: Side, crossfit: bool, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    la, lb = len(heat.layers_a), len(heat.layers_b)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * lb, 1.2 + 0.45 * la))
    im = ax.imshow(heat.cka, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(la):
        for j in range(lb):
            star = "*" if heat.p_fwe[i, j] < 0.05 else ""
            ax.text(j, i, f"{heat.cka[i, j]:.2f}{star}", ha="center", va="center", fontsize=7,
                    color="white" if heat.cka[i, j] < 0.6 else "black")
    ax.set_xticks(range(lb), [str(x) for x in heat.layers_b], fontsize=7)
    ax.set_yticks(range(la), [str(x) for x in heat.layers_a], fontsize=7)
    ax.set_xlabel(f"{b.name}: layer (block)")
    ax.set_ylabel(f"{a.name}: layer (block)")
    ax.set_title(("cross-fitted " if crossfit else "") + "linear CKA (* family-wise p < 0.05)", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _tsv(df: pd.DataFrame, path: Path) -> None:
    df.to_csv(path, sep="\t", index=False, float_format="%.6g")


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    return obj


# --------------------------------------------------------------------------- claims over pairs


def comparison_claims(summaries: Sequence[dict[str, Any]], *, alpha: float = 0.05) -> list:
    """The claims of every comparison (one per pair and measure), Holm-corrected over all of
    them (the comparison family). A Monte-Carlo null too small for the family gives no p."""
    from emotion_vectors.core.claims import family_claims, make_claim

    claims = []
    family = len(summaries) * len(MEASURES)
    for s in summaries:
        a, b = s["a"]["name"], s["b"]["name"]
        cross = s["crossfit"]
        where = (f"{a} layer {s['a']['main_layer']} vs {b} layer {s['b']['main_layer']}, "
                 f"{s['n_shared']} shared emotions")
        views = ("vectors from disjoint halves of the stories, crossed (both models read the same stories)"
                 if cross else "the two stores' vectors")
        for m in MEASURES:
            t = s["tests"][m]
            interval = None
            interval_of = ""
            if m == "rsa" and s["rsa_interval"]["ci_low"] is not None:
                interval = [s["rsa_interval"]["ci_low"], s["rsa_interval"]["ci_high"]]
                interval_of = "RSA, 95% percentile bootstrap over emotions"
            note = f"null mean {_fmt(t['null_mean'])}, 95th percentile {_fmt(t['null_q95'])}"
            if cross and s.get("same_stories"):
                note += f"; on the full vectors (same stories, not tested) {_fmt(s['same_stories'][m])}"
            if m == "rsa" and s.get("reliability_split_half_rsa"):
                rel = ", ".join(f"{k} {_fmt(v)}" for k, v in s["reliability_split_half_rsa"].items())
                note += f"; split-half reliability (RSA of a model's two halves): {rel}"
            claims.append(make_claim(
                f"compare.{a}~{b}.{m}", "compare",
                f"{a} and {b} share emotion geometry: {MEASURE_TEXT[m]} ({where})",
                test=f"{MEASURE_TEXT[m]}; on {views}; permutation test with {t['n_permutations']} permutations",
                # the family's size decides testability first: a null too small for Holm over the
                # whole family gives no p (and its note says how many permutations it needs)
                null=NULL_TEXT, statistic=t["statistic"], p=t["p"], n_null=t["n_permutations"], family=family,
                interval=interval, interval_of=interval_of, alpha=alpha, note=note,
                extra={"pair": [a, b], "measure": m, "crossfit": cross},
            ))
    return family_claims(claims)


def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.3g}"


def comparison_table(summaries: Sequence[dict[str, Any]], claims: Sequence[Any]) -> pd.DataFrame:
    """One row per pair and measure: statistic, null mean and 95th percentile, p, Holm p over the
    comparison family, verdict; the RSA interval; the same-stories figure for cross-fitted pairs."""
    by_id = {c.id: c for c in claims}
    rows = []
    for s in summaries:
        a, b = s["a"]["name"], s["b"]["name"]
        for m in MEASURES:
            t = s["tests"][m]
            c = by_id.get(f"compare.{a}~{b}.{m}")
            rows.append({
                "a": a, "b": b, "layer_a": s["a"]["main_layer"], "layer_b": s["b"]["main_layer"],
                "n_shared": s["n_shared"], "crossfit": s["crossfit"], "measure": m,
                "statistic": t["statistic"],
                "ci_low": s["rsa_interval"]["ci_low"] if m == "rsa" else None,
                "ci_high": s["rsa_interval"]["ci_high"] if m == "rsa" else None,
                "null_mean": t["null_mean"], "null_q95": t["null_q95"], "p": t["p"],
                "p_holm": c.p_adjusted if c is not None else None,
                "verdict": c.verdict if c is not None else None,
                "same_stories": (s.get("same_stories") or {}).get(m),
            })
    return pd.DataFrame(rows)


def comparison_markdown(table: pd.DataFrame, summaries: Sequence[dict[str, Any]],
                        skipped: dict[str, str] | None = None) -> str:
    """The comparison as Markdown: one table of every pair's measures (statistic [interval],
    chance = the null's mean, the null's 95th percentile, p, Holm p and verdict within the
    comparison's family), then each pair's PC-rating correlations side by side, then the external
    stores that were skipped. The run-wide verdicts (Holm with every other claim of the run) are the
    findings table's."""
    lines = ["| pair | measure | statistic [95% CI] | null mean (95th pct) | p | p (Holm, comparison) "
             "| verdict (comparison family) |",
             "|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        stat = _fmt(r["statistic"])
        if r["measure"] == "rsa" and r.get("ci_low") is not None and pd.notna(r.get("ci_low")):
            stat += f" [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        if r["crossfit"] and r.get("same_stories") is not None and pd.notna(r.get("same_stories")):
            stat += f" (same stories: {_fmt(r['same_stories'])})"
        pair = f"{r['a']} (L{r['layer_a']}) vs {r['b']} (L{r['layer_b']}), n = {r['n_shared']}" + (
            ", cross-fitted" if r["crossfit"] else "")
        lines.append(f"| {pair} | {r['measure']} | {stat} | {_fmt(r['null_mean'])} ({_fmt(r['null_q95'])}) | "
                     f"{_fmt(r['p'])} | {_fmt(r['p_holm'])} | {r['verdict']} |")
    out = "\n".join(lines) + "\n"
    out += ("\nHolm within the comparison's family; the run-wide verdicts, corrected with every other "
            "claim of the run, are in the findings table.\n")
    for s in summaries:
        a, b = s["a"]["name"], s["b"]["name"]
        out += (f"\n**{a} vs {b}**: each model's PCs against human ratings on the {s['n_shared']} shared emotions "
                f"(Pearson r [95% bootstrap CI, PCA refitted], difference with a paired interval)\n\n"
                f"| PC | rating | n | {a} | {b} | difference |\n|---|---|---|---|---|---|\n")
        for r in s["valence_arousal"]:
            def cell(name):
                return f"{_fmt(r[f'r_{name}'])} [{_fmt(r[f'ci_low_{name}'])}, {_fmt(r[f'ci_high_{name}'])}]"
            out += (f"| PC{r['pc']} | {r['rating']} | {r['n']} | {cell(a)} | {cell(b)} | "
                    f"{_fmt(r['r_difference'])} [{_fmt(r['difference_ci_low'])}, {_fmt(r['difference_ci_high'])}] |\n")
        if s.get("reliability_split_half_rsa"):
            out += ("\nSplit-half reliability (RSA of each model's two halves): "
                    + ", ".join(f"{k} {_fmt(v)}" for k, v in s["reliability_split_half_rsa"].items()) + "\n")
    for name, why in (skipped or {}).items():
        out += f"\nExternal store {name} skipped: {why}.\n"
    return out
