"""Claims: what an evidence step says, with its test, its null, its corrected p and its interval.

Every step of the workflow that claims an effect (the corpus diagnostics, the steering evidence,
the behaviour experiment, the real-text checks, the validation battery) writes a list of
:class:`Claim` records to ``claims.json`` beside its outputs; the ``findings`` rule gathers them
into the report's first page. A claim names

- ``test``: the statistic and how its p-value is computed,
- ``null``: what the p-value is computed under (a permutation, shuffled-label vectors, …),
- ``p`` and ``p_adjusted`` (after ``correction`` over ``family``; equal to ``p`` for a single test),
- ``interval``: the effect's interval (what it is of, in ``interval_of``),
- ``verdict``: :data:`EFFECT` only when ``p_adjusted < alpha``; :data:`NO_EFFECT` otherwise;
  :data:`NOT_TESTABLE` when the test cannot reject at ``alpha`` at all (a Monte-Carlo null with
  too few draws: its smallest attainable p is not below ``alpha``), or when the claim's
  precondition failed (e.g. no validated judge) — then ``p`` is ``None`` and ``note`` says why.

Monte-Carlo p-values are ``(1 + #{null >= observed}) / (1 + n)``; they are valid (reject at
``alpha`` at most ``alpha`` of the time) when the observed statistic and the null draws are
exchangeable under the null. ``tests/test_calibration_*.py`` simulate every test the report
uses under its null and check the rejection rate.

Nothing here needs torch: it is imported by the evidence steps and by the report's table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ALPHA = 0.05
EFFECT = "effect"
NO_EFFECT = "no effect"
NOT_TESTABLE = "not testable"
VERDICTS = (EFFECT, NO_EFFECT, NOT_TESTABLE)


def mc_p(observed: float, null: Sequence[float] | np.ndarray, *, alternative: str = "greater") -> float:
    """Monte-Carlo p-value of ``observed`` against exchangeable null draws.

    ``greater``: ``(1 + #{null >= observed}) / (1 + n)``; ``less``: the mirror; ``two-sided``:
    on absolute values. Non-finite null draws are dropped; NaN when nothing is left or the
    observed value is not finite.
    """
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if null.size == 0 or not math.isfinite(float(observed)):
        return float("nan")
    if alternative == "greater":
        hits = np.sum(null >= observed)
    elif alternative == "less":
        hits = np.sum(null <= observed)
    elif alternative == "two-sided":
        hits = np.sum(np.abs(null) >= abs(observed))
    else:
        raise ValueError(f"alternative must be greater, less or two-sided, not {alternative!r}")
    return float((1 + hits) / (1 + null.size))


def min_attainable_p(n_null: int) -> float:
    """The smallest p a Monte-Carlo test with ``n_null`` draws can give: ``1 / (1 + n_null)``."""
    return 1.0 / (1 + max(int(n_null), 0))


def draws_needed(alpha: float = ALPHA, family: int = 1) -> int:
    """Fewest null draws for which a Monte-Carlo p can fall below ``alpha / family`` (the
    Bonferroni/Holm threshold of the smallest p in a family of ``family`` tests)."""
    return int(math.floor(family / alpha))  # 1 / (1 + n) < alpha / family  <=>  n > family / alpha - 1


def holm(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error under any dependence; NaN kept)."""
    from .stats import holm as _holm

    return _holm(np.asarray(p, dtype=float))


def bh(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate; NaN kept)."""
    from .stats import adjust_pvalues

    return adjust_pvalues(np.asarray(p, dtype=float))["bh"]


def binomial_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a rate ``k / n`` (``(nan, nan)`` when ``n == 0``)."""
    from scipy.stats import binomtest

    if n <= 0:
        return float("nan"), float("nan")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def rejection_band(n_sims: int, alpha: float = ALPHA, level: float = 0.99) -> tuple[float, float]:
    """Binomial ``level`` interval of the rejection rate of a calibrated test over ``n_sims``
    simulations (its rate is ``alpha``): a calibration check passes when the observed rate lies
    in it."""
    from scipy.stats import binom

    lo = binom.ppf((1 - level) / 2, n_sims, alpha) / n_sims
    hi = binom.ppf(1 - (1 - level) / 2, n_sims, alpha) / n_sims
    return float(lo), float(hi)


@dataclass
class Claim:
    """One claim of an evidence step (see the module docstring)."""

    id: str
    stage: str
    claim: str
    test: str
    null: str
    statistic: float | None = None
    p: float | None = None
    p_adjusted: float | None = None
    correction: str = "none (single test)"
    family: int = 1
    interval: list[float] | None = None
    interval_of: str = ""
    n_null: int | None = None
    alpha: float = ALPHA
    verdict: str = NOT_TESTABLE
    figure: str | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"claim {self.id}: verdict must be one of {VERDICTS}, not {self.verdict!r}")

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def decide(p_adjusted: float | None, *, alpha: float = ALPHA, n_null: int | None = None,
           family: int = 1) -> str:
    """The verdict for an adjusted p: :data:`NOT_TESTABLE` when it is missing or when a
    Monte-Carlo null of ``n_null`` draws cannot go below ``alpha / family`` (so the family's
    smallest p could never be significant after Holm), else effect / no effect at ``alpha``."""
    if n_null is not None and min_attainable_p(n_null) >= alpha / max(family, 1):
        return NOT_TESTABLE
    if p_adjusted is None or not math.isfinite(float(p_adjusted)):
        return NOT_TESTABLE
    return EFFECT if p_adjusted < alpha else NO_EFFECT


def make_claim(id: str, stage: str, claim: str, *, test: str, null: str, statistic: float | None,
               p: float | None, n_null: int | None = None, p_adjusted: float | None = None,
               correction: str = "none (single test)", family: int = 1,
               interval: Sequence[float] | None = None, interval_of: str = "",
               alpha: float = ALPHA, figure: str | None = None, note: str = "",
               extra: dict[str, Any] | None = None) -> Claim:
    """A :class:`Claim` with its verdict decided by :func:`decide`; a Monte-Carlo null too small
    to reject gets ``p = None`` and a note saying how many draws it would need."""
    p_adj = p if p_adjusted is None else p_adjusted
    verdict = decide(p_adj, alpha=alpha, n_null=n_null, family=family)
    if n_null is not None and verdict == NOT_TESTABLE and min_attainable_p(n_null) >= alpha / max(family, 1):
        need = draws_needed(alpha, family)
        note = (f"{note} " if note else "") + (
            f"the null has {n_null} draws: its smallest p, {min_attainable_p(n_null):.3g}, cannot go "
            f"below {alpha / max(family, 1):.3g}; at least {need} draws are needed, so no p-value is given")
        p = p_adj = None
    return Claim(id=id, stage=stage, claim=claim, test=test, null=null, statistic=statistic, p=p,
                 p_adjusted=p_adj, correction=correction, family=family,
                 interval=list(interval) if interval is not None else None,
                 interval_of=interval_of, n_null=n_null, alpha=alpha, verdict=verdict,
                 figure=figure, note=note, extra=dict(extra or {}))


def family_claims(claims: Sequence[Claim], *, method: str = "holm") -> list[Claim]:
    """The same claims with ``p_adjusted`` over their family (Holm, or ``bh``), ``family`` and
    ``correction`` set and each verdict decided again. Claims without a p stay as they are
    (and do not count in the family)."""
    p = np.array([c.p if c.p is not None else np.nan for c in claims], dtype=float)
    m = int(np.isfinite(p).sum())
    adj = holm(p) if method == "holm" else bh(p)
    name = {"holm": "Holm", "bh": "Benjamini-Hochberg"}[method]
    out = []
    for c, a in zip(claims, adj):
        if c.p is None:
            out.append(c)
            continue
        d = asdict(c)
        d.update(p_adjusted=float(a), family=m, correction=f"{name} over {m} tests")
        d["verdict"] = decide(float(a), alpha=c.alpha, n_null=c.n_null, family=m if method == "holm" else 1)
        out.append(Claim(**d))
    return out


def write_claims(claims: Iterable[Claim | dict], path: str | Path) -> None:
    """``claims.json``: a list of claim dicts (atomic write)."""
    from .common import write_json_atomic

    rows = [c.to_dict() if isinstance(c, Claim) else json_safe(dict(c)) for c in claims]
    write_json_atomic({"claims": rows}, path)


def read_claims(path: str | Path) -> list[dict]:
    """The claim dicts of one ``claims.json``."""
    data = json.loads(Path(path).read_text())
    rows = data["claims"] if isinstance(data, dict) else data
    for r in rows:
        if r.get("verdict") not in VERDICTS:
            raise ValueError(f"{path}: claim {r.get('id')!r} has no valid verdict ({r.get('verdict')!r})")
    return rows


def json_safe(obj: Any) -> Any:
    """The same structure as valid JSON: NaN/inf as ``None``, numpy scalars as Python's, tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    return obj


__all__ = ["ALPHA", "Claim", "EFFECT", "NOT_TESTABLE", "NO_EFFECT", "VERDICTS", "bh", "json_safe",
           "binomial_interval", "decide", "draws_needed", "family_claims", "holm", "make_claim",
           "mc_p", "min_attainable_p", "read_claims", "rejection_band", "write_claims"]
