"""Small statistics that every stage uses.

- ``holm``, ``adjust_pvalues``: Holm (family-wise) and Benjamini-Hochberg (false discovery rate)
  adjusted p-values over a family of tests (the claims' corrections, the analysis's tables).
- ``wilson_interval``: the Wilson score interval of a proportion.
- ``stratified_subsample``: at most ``cap`` items spread evenly over groups (e.g. topics).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); ``(nan, nan)`` for ``n = 0``."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def stratified_subsample(groups: Sequence[int], cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``cap`` items, spread over ``groups`` (e.g. topics) as evenly as possible.

    Items are shuffled within each group and taken round-robin over the groups (one of each group,
    then a second of each, ...), so a cap below the count keeps every group it can. Returned sorted.
    """
    groups = np.asarray(groups)
    n = len(groups)
    if cap is None or cap >= n:
        return np.arange(n)
    rank = np.empty(n, dtype=np.int64)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        rank[rng.permutation(members)] = np.arange(len(members))
    tiebreak = rng.permutation(n)
    order = np.lexsort((tiebreak, rank))
    return np.sort(order[:cap])


# --- multiple comparisons --------------------------------------------------------------------


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error, valid under any dependence).

    ``p_(i)`` sorted ascending over the ``m`` finite values gets
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``; NaN stays NaN and is not counted in ``m``.
    """
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    vals = p[ok]
    order = np.argsort(vals, kind="stable")
    scaled = (m - np.arange(m)) * vals[order]
    adj = np.minimum(1.0, np.maximum.accumulate(scaled))
    res = np.empty(m)
    res[order] = adj
    out[ok] = res
    return out


def adjust_pvalues(p: np.ndarray) -> dict[str, np.ndarray]:
    """Holm and Benjamini-Hochberg adjusted p-values over the finite entries of ``p`` (one
    family); NaN entries stay NaN. BH is ``scipy.stats.false_discovery_control``."""
    p = np.asarray(p, dtype=float)
    bh = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        bh[ok] = sps.false_discovery_control(p[ok], method="bh")
    return {"holm": holm(p), "bh": bh}
