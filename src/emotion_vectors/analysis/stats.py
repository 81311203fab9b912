"""Correlations with percentile-bootstrap confidence intervals (seeded, vectorised)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
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
