"""What the scorer (``score``), the corpora of real text (``corpora``) and the checks
(``text_checks``) share: the scoring error, the subject model a vector store was built with
(``store_model_spec``), and AUROCs with stratified bootstrap intervals (``bootstrap_auroc``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from emotion_vectors.vectors.store_layout import Store


class ScoreError(ValueError):
    """A scoring request that cannot be carried out as asked."""


def store_model_spec(store: Store, model_path: str | Path | None = None, *,
                     device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    """The subject model spec for ``models.load_model``: the store's provenance
    ``subject_model`` (path, revision, dtype, device), or ``model_path`` if given.

    A relative recorded path is looked up from the working directory, then from the project
    root. Raises :class:`ScoreError` when neither is known.
    """
    from emotion_vectors.core.config import REPO_ROOT

    prov = store.attrs.get("provenance") or {}
    sm = prov.get("subject_model") if isinstance(prov, Mapping) else None
    sm = dict(sm) if isinstance(sm, Mapping) else {}
    if model_path is None:
        recorded = sm.get("path")
        if not recorded:
            raise ScoreError(f"{store.path}: the store records no subject model path "
                             "(provenance.subject_model.path); pass --model-path")
        path = Path(recorded)
        if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
            path = REPO_ROOT / path
        model_path = path if path.exists() else recorded  # else: a hub id
    spec = {
        "name": sm.get("name") or Path(str(model_path)).name,
        "path": str(model_path),
        "dtype": dtype or sm.get("dtype") or "float32",
        "device": device or sm.get("device") or "cpu",
        "quantization": sm.get("quantization") or "none",
    }
    rev = sm.get("revision")
    if rev and not str(rev).startswith("local-") and not Path(str(model_path)).exists():
        spec["revision"] = rev
    return spec


def _num(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def auroc_fast(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC by the rank (Mann-Whitney) formula, ties counted half: equals
    ``sklearn.metrics.roc_auc_score(y, s)``."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def bootstrap_auroc(y: np.ndarray, s: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """AUROC (``roc_auc_score``) with a stratified percentile bootstrap 95% interval (positives
    and negatives resampled separately, so every resample has both). NaN scores are dropped
    first and counted."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=float)
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    out: dict[str, Any] = {"n": int(len(y)), "n_positive": int(y.sum()),
                           "n_negative": int((~y).sum()), "n_nan": int((~ok).sum())}
    if out["n_positive"] == 0 or out["n_negative"] == 0:
        return {**out, "auroc": None, "ci95": [None, None]}
    auc = float(roc_auc_score(y, s))
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    yb = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    boots = np.empty(n_boot)
    for b in range(n_boot):
        pick = np.r_[pos[rng.integers(0, len(pos), len(pos))], neg[rng.integers(0, len(neg), len(neg))]]
        boots[b] = auroc_fast(yb, s[pick])
    lo, hi = np.quantile(boots, [0.025, 0.975]) if n_boot else (np.nan, np.nan)
    return {**out, "auroc": auc, "ci95": [_num(lo), _num(hi)]}
