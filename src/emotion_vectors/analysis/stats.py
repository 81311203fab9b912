"""Correlations with percentile-bootstrap confidence intervals (seeded, vectorised) and a
bootstrap that refits the PCA in every resample.

- ``correlate``: correlation of two fixed variables, resampling pairs.
- ``PCABootstrap`` / ``pca_bootstrap`` + ``correlate_pc``: correlation of a principal
  component's scores with a rating, where every resample of emotions refits the PCA (so the
  interval includes the uncertainty of the component itself) and aligns each refitted PC's sign
  with the full-sample PC (positive cosine between the two directions).

The multiple-comparison adjustments (Holm, Benjamini-Hochberg) are in ``core.stats``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import linalg as sla
from scipy import stats as sps

METHODS = ("pearson", "spearman")


@dataclass
class Correlation:
    """A correlation over ``n`` complete pairs with a bootstrap interval.

    Attributes:
        method: ``pearson`` or ``spearman``.
        n: pairs used (rows where both values are finite).
        r: the correlation on all ``n`` pairs.
        ci_low, ci_high: percentile bootstrap interval (``level``), resampling pairs.
        p: two-sided p-value of the test of no correlation (scipy).
        level: coverage of the interval, e.g. 0.95.
        n_bootstrap: resamples drawn.
    """

    method: str
    n: int
    r: float
    ci_low: float
    ci_high: float
    p: float
    level: float
    n_bootstrap: int

    def as_dict(self) -> dict:
        """Plain dict (for tables and JSON)."""
        return asdict(self)


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of ``x`` and ``y`` ``(B, n)`` -> ``(B,)`` (NaN if constant)."""
    # Each row shifted by its first value: a constant row becomes exactly 0, so it is centred
    # to exactly 0 too (the computed mean of n copies of a value need not equal it, which would
    # leave rounding noise with a correlation of about 0 instead of NaN).
    x = x - x[:, :1]
    y = y - y[:, :1]
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(axis=1) / den, np.nan)


def resampled_ranks(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Average ranks within each resample: ``rankdata(values[idx], axis=1)`` in ``O(B n)``.

    ``values`` is ``(n,)``, ``idx`` ``(B, m)`` indices into it. Ranks (1-based, ties share their
    mean rank) are read from counts of each value in each resample, so no row is sorted.
    """
    values = np.asarray(values)
    n_boot = idx.shape[0]
    n = values.shape[0]
    counts = np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(),
                         minlength=n_boot * n).reshape(n_boot, n)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    group = np.empty(n, dtype=np.int64)
    group[order] = np.cumsum(np.r_[True, sorted_values[1:] != sorted_values[:-1]]) - 1
    per_group = np.add.reduceat(counts[:, order], starts, axis=1).astype(float)
    below = np.cumsum(per_group, axis=1) - per_group
    rank_of_value = (below + (per_group + 1) / 2)[:, group]
    return np.take_along_axis(rank_of_value, idx, axis=1)


def correlate(
    x: np.ndarray,
    y: np.ndarray,
    *,
    method: str = "pearson",
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Correlation:
    """Correlation of ``x`` and ``y`` ``(n,)`` with a percentile bootstrap interval.

    Pairs with a NaN in either are dropped. Resamples draw ``n`` pairs with replacement from a
    generator seeded with ``seed`` (the same seed gives the same resamples for any pair of
    variables of the same ``n``: paired comparisons share their resamples). Spearman ranks are
    recomputed in every resample. Degenerate resamples (a constant variable) are ignored.
    With fewer than 3 pairs every number is NaN.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {METHODS}")
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(ok.sum())
    nan = float("nan")
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(method, n, nan, nan, nan, nan, level, 0)
    if method == "pearson":
        res = sps.pearsonr(x, y)
    else:
        res = sps.spearmanr(x, y)
    r, p = float(res.statistic), float(res.pvalue)
    lo = hi = nan
    if n_bootstrap > 0:
        idx = np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))
        if method == "spearman":
            xb, yb = resampled_ranks(x, idx), resampled_ranks(y, idx)
        else:
            xb, yb = x[idx], y[idx]
        rb = _rowwise_pearson(xb, yb)
        rb = rb[np.isfinite(rb)]
        if rb.size:
            alpha = (1 - level) / 2
            lo, hi = (float(v) for v in np.quantile(rb, [alpha, 1 - alpha]))
    return Correlation(method, n, r, lo, hi, p, level, int(n_bootstrap))


# --- bootstrap with the PCA refitted in every resample -----------------------------------


@dataclass
class PCABootstrap:
    """Resamples of emotions with the PCA refitted in each (see ``pca_bootstrap``).

    Attributes:
        full_scores: ``(n, k)`` scores of the full-sample (oriented) PCs.
        idx: ``(B, n)`` the emotions drawn in each resample (indices into the n emotions).
        scores: ``(B, n, k)`` score of each drawn emotion on the resample's own PC ``j``,
            sign-aligned with full-sample PC ``j``; NaN where the resample has no such PC.
        alignment: ``(B, k)`` ``|cos|`` between the resample's PC ``j`` and full-sample PC
            ``j`` (1 = the same direction; low values mean the PC's identity changes across
            resamples, e.g. two PCs of similar variance trading places).
        seed: the generator's seed.
    """

    full_scores: np.ndarray
    idx: np.ndarray
    scores: np.ndarray
    alignment: np.ndarray
    seed: int

    @property
    def n_bootstrap(self) -> int:
        return int(self.idx.shape[0])


def pca_bootstrap(
    x: np.ndarray,
    components: np.ndarray,
    full_scores: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> PCABootstrap:
    """Resample the emotions (rows of ``x`` ``(n, d)``) with replacement and refit the PCA.

    ``components`` ``(k, d)`` are the full-sample PCs as oriented for the point estimate (unit
    rows) and ``full_scores`` ``(n, k)`` their scores. In each resample the rows are re-centred
    on the resample's mean and the top ``k`` PCs are recomputed; resample PC ``j`` (by rank) is
    flipped when the cosine between its direction and full-sample PC ``j`` is negative, the
    only sign rule that keeps the point estimate's orientation without looking at the ratings.

    Computed without any ``d``-sized work per resample: with ``G = x x^T`` formed once, a
    resample with counts ``c`` over its ``m`` distinct rows has the PCs of the ``m x m`` matrix
    ``C^1/2 (centred G) C^1/2``; a distinct row's score is ``s_j v_j / sqrt(c)`` (equal to the
    PCA of the resampled matrix itself, duplicates included; tested). Resamples draw from
    ``numpy.random.default_rng(seed)`` as in ``correlate``.
    """
    x = np.asarray(x, dtype=np.float64)
    # Every resample re-centres on its own mean, so a common shift of the rows changes nothing in
    # exact arithmetic; centring once here keeps the Gram matrix's rounding error that of the
    # data's spread, not of its distance from the origin.
    x = x - x.mean(axis=0)
    comps = np.asarray(components, dtype=np.float64)
    full_scores = np.asarray(full_scores, dtype=np.float64)
    n = x.shape[0]
    k = comps.shape[0]
    gram = x @ x.T
    proj = x @ comps.T  # (n, k) projections on the full-sample PCs (uncentred)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))
    scores = np.full((n_bootstrap, n, k), np.nan)
    alignment = np.full((n_bootstrap, k), np.nan)
    pos = np.empty(n, dtype=np.int64)
    with _one_blas_thread():
        for b in range(n_bootstrap):
            _refit_one(b, idx, gram, proj, k, scores, alignment, pos)
    return PCABootstrap(full_scores, idx, scores, alignment, int(seed))


def _one_blas_thread():
    """Context limiting BLAS/LAPACK to one thread: the per-resample eigenproblems are small
    (~n x n), and a multi-threaded BLAS runs them up to 20x slower on a busy machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on threadpoolctl
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _refit_one(b: int, idx: np.ndarray, gram: np.ndarray, proj: np.ndarray, k: int,
               scores: np.ndarray, alignment: np.ndarray, pos: np.ndarray) -> None:
    """Refit the PCA of resample ``b`` (rows ``idx[b]``) and write ``scores[b]`` and
    ``alignment[b]``; ``gram`` is ``x x^T``, ``proj`` ``x`` projected on the full-sample PCs,
    ``pos`` scratch space ``(n,)``."""
    n = idx.shape[1]
    counts = np.bincount(idx[b], minlength=n).astype(np.float64)
    rows = np.flatnonzero(counts)
    m = rows.size
    kk = min(k, m - 1)
    if kk < 1:
        return
    c = counts[rows]
    w = c / n
    g = gram[np.ix_(rows, rows)]
    a = g @ w  # x_i . mean
    gc = g - a[:, None] - a[None, :] + w @ a
    sq = np.sqrt(c)
    kmat = sq[:, None] * gc * sq[None, :]
    lam, v = sla.eigh(kmat, subset_by_index=[m - kk, m - 1], driver="evx")
    lam, v = lam[::-1], v[:, ::-1]
    tol = 1e-12 * max(float(np.trace(kmat)), 0.0)
    good = lam > tol
    if not good.any():
        return
    s = np.sqrt(np.where(good, lam, 1.0))
    pc = proj[rows] - w @ proj[rows]  # centred projections on the full-sample PCs
    cos = np.einsum("mj,mj->j", pc[:, :kk] * sq[:, None], v) / s
    sign = np.where(cos < 0, -1.0, 1.0)
    sc = (v * s / sq[:, None]) * sign
    sc[:, ~good] = np.nan
    pos[rows] = np.arange(m)
    scores[b, :, :kk] = sc[pos[idx[b]]]
    alignment[b, :kk] = np.where(good, np.abs(cos), np.nan)


def _masked_rowwise_pearson(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pearson r per row over the entries where ``mask`` is true; NaN with fewer than 3
    entries or a constant variable."""
    mf = mask.astype(np.float64)
    cnt = mf.sum(axis=1)
    # Each row shifted by its first entry in the mask, so that a constant row is exactly 0 (see
    # _rowwise_pearson); entries outside the mask may be NaN.
    pick = np.arange(x.shape[0]), mask.argmax(axis=1)
    x0 = np.where(mask, x - x[pick][:, None], 0.0)
    y0 = np.where(mask, y - y[pick][:, None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        xc = (x0 - (x0.sum(axis=1) / cnt)[:, None]) * mf
        yc = (y0 - (y0.sum(axis=1) / cnt)[:, None]) * mf
        den = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
        r = (xc * yc).sum(axis=1) / den
    return np.where((cnt >= 3) & (den > 1e-300), r, np.nan)


def correlate_pc(
    boot: PCABootstrap,
    pc: int,
    ref: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    method: str = "pearson",
    level: float = 0.95,
) -> tuple[Correlation, float]:
    """Correlation of PC ``pc`` (0-based) with ``ref`` ``(n,)`` over the emotions in ``mask``
    that have a rating, with a percentile interval from the refitted-PCA resamples.

    ``r`` and ``p`` are those of the full sample (scipy). In each resample the correlation is
    taken over the drawn emotions that are in ``mask`` and rated (Spearman ranks recomputed
    within them); resamples with fewer than 3 such emotions or a constant variable are
    ignored. Returns the ``Correlation`` and the median ``|cos|`` alignment of the resample PCs
    with the full-sample PC (see ``PCABootstrap``).
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {METHODS}")
    ref = np.asarray(ref, dtype=float)
    n = ref.shape[0]
    mask = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
    point = correlate(boot.full_scores[mask, pc], ref[mask], method=method, n_bootstrap=0)
    align = boot.alignment[:, pc]
    median_align = float(np.nanmedian(align)) if np.isfinite(align).any() else float("nan")
    if not np.isfinite(point.r) or boot.n_bootstrap == 0:
        return Correlation(method, point.n, point.r, float("nan"), float("nan"), point.p,
                           level, boot.n_bootstrap), median_align
    xb = boot.scores[:, :, pc]
    yb = ref[boot.idx]
    keep = mask[boot.idx] & np.isfinite(yb) & np.isfinite(xb)
    if method == "spearman":
        xb = sps.rankdata(np.where(keep, xb, np.nan), axis=1, nan_policy="omit")
        yb = sps.rankdata(np.where(keep, yb, np.nan), axis=1, nan_policy="omit")
    rb = _masked_rowwise_pearson(xb, yb, keep)
    rb = rb[np.isfinite(rb)]
    lo = hi = float("nan")
    if rb.size:
        alpha = (1 - level) / 2
        lo, hi = (float(v) for v in np.quantile(rb, [alpha, 1 - alpha]))
    return Correlation(method, point.n, point.r, lo, hi, point.p, level,
                       boot.n_bootstrap), median_align
