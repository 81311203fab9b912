"""Statistics of a behaviour experiment: rates per condition, tests against the baseline, plots.

For each condition (``k`` blackmail labels out of ``n`` judged samples):

- ``rate = k / n`` with a Wilson 95% interval (:func:`emotion_vectors.diagnostics.wilson_interval`);
- Fisher's exact test (two-sided) of the 2x2 table ``[[k, n - k], [k0, n0 - k0]]`` against the
  baseline condition, with the sample odds ratio ``scipy.stats.fisher_exact`` reports;
- Holm-adjusted p over all non-baseline conditions (one family; valid under any dependence).

Samples whose judge reply was unparsed (label ``None``) are left out of ``n`` and counted in
``n_unparsed``, so a judge that fails more in one condition shows up instead of being silently
counted as "no".

:func:`dose_response_figure` draws one emotion's rates against the signed steering strength,
with the baseline as a horizontal line and band and the random-direction controls as grey
points.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.stats import holm
from ..diagnostics import wilson_interval

TABLE_COLUMNS = [
    "condition", "emotion", "strength", "random", "is_baseline", "n", "k", "n_unparsed", "rate",
    "ci_low", "ci_high", "odds_ratio", "p_fisher", "p_holm",
]


def count_labels(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """``{condition: {"k", "n", "n_unparsed"}}`` from classified records (``condition``, ``label``)."""
    out: dict[str, dict[str, int]] = {}
    for r in records:
        c = out.setdefault(r["condition"], {"k": 0, "n": 0, "n_unparsed": 0})
        if r["label"] is None:
            c["n_unparsed"] += 1
        else:
            c["n"] += 1
            c["k"] += int(bool(r["label"]))
    return out


def fisher_vs_baseline(k: int, n: int, k0: int, n0: int) -> tuple[float, float]:
    """Two-sided Fisher's exact test of ``k/n`` against ``k0/n0``: ``(odds_ratio, p)``;
    ``(nan, nan)`` when either group is empty."""
    from scipy.stats import fisher_exact

    if n <= 0 or n0 <= 0:
        return float("nan"), float("nan")
    res = fisher_exact([[k, n - k], [k0, n0 - k0]], alternative="two-sided")
    return float(res.statistic), float(res.pvalue)


def rate_table(
    conditions: Sequence[Mapping[str, Any]],
    counts: Mapping[str, Mapping[str, int]],
    baseline: str,
) -> Any:
    """Tidy table (pandas DataFrame, one row per condition, columns :data:`TABLE_COLUMNS`).

    Args:
        conditions: the condition dicts (``name``, and ``emotion``, ``strength``, ``random``
            where known) in the order the rows should take.
        counts: ``{name: {"k", "n", "n_unparsed"?}}`` (e.g. from :func:`count_labels`); a
            condition without counts gets ``n = 0`` and NaN statistics.
        baseline: the name of the baseline condition (no steering).
    """
    import pandas as pd

    names = [c["name"] for c in conditions]
    if baseline not in names:
        raise ValueError(f"baseline condition {baseline!r} is not among the conditions {names}")
    b = counts.get(baseline, {})
    k0, n0 = int(b.get("k", 0)), int(b.get("n", 0))
    rows = []
    for c in conditions:
        cnt = counts.get(c["name"], {})
        k, n = int(cnt.get("k", 0)), int(cnt.get("n", 0))
        lo, hi = wilson_interval(k, n)
        is_base = c["name"] == baseline
        odds, p = (float("nan"), float("nan")) if is_base else fisher_vs_baseline(k, n, k0, n0)
        rows.append(
            {
                "condition": c["name"],
                "emotion": c.get("emotion"),
                "strength": float(c.get("strength", 0.0) or 0.0),
                "random": bool(c.get("random", False)),
                "is_baseline": is_base,
                "n": n,
                "k": k,
                "n_unparsed": int(cnt.get("n_unparsed", 0)),
                "rate": k / n if n else float("nan"),
                "ci_low": lo,
                "ci_high": hi,
                "odds_ratio": odds,
                "p_fisher": p,
            }
        )
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS[:-1])
    table["p_holm"] = holm(table["p_fisher"].to_numpy(dtype=float))
    return table[TABLE_COLUMNS]


def condition_table(records: Iterable[Mapping[str, Any]], conditions: Sequence[Mapping[str, Any]], baseline: str) -> Any:
    """:func:`rate_table` straight from classified records."""
    return rate_table(conditions, count_labels(records), baseline)


def dose_response_figure(table: Any, emotion: str, path: str | Path, title: str | None = None) -> Path:
    """One emotion's blackmail rate against signed steering strength (Wilson 95% bars), with the
    baseline (line and band) and the random-direction controls (grey squares: those without an
    emotion, or tied to this one) for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = table[(table["emotion"] == emotion) & ~table["random"] & ~table["is_baseline"]].sort_values("strength")
    rand = table[table["random"] & ~table["is_baseline"]]
    rand = rand[rand["emotion"].isna() | (rand["emotion"] == emotion)].sort_values("strength")
    base = table[table["is_baseline"]]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if len(base):
        b = base.iloc[0]
        if np.isfinite(b["rate"]):
            ax.axhline(b["rate"], color="black", lw=1, label=f"baseline ({int(b['k'])}/{int(b['n'])})")
            ax.axhspan(b["ci_low"], b["ci_high"], color="black", alpha=0.08)
    strengths = table["strength"].to_numpy(dtype=float)
    span = float(np.nanmax(strengths) - np.nanmin(strengths)) if len(strengths) else 0.0
    # the random directions sit at the emotion's positive strengths: shift them a little to the
    # right (hollow squares) so that neither hides the other
    for frame, shift, style in ((rows, 0.0, dict(fmt="o-", color="tab:red", label=emotion)),
                                (rand, 0.02 * span, dict(fmt="s", color="grey", mfc="none", alpha=0.9,
                                                         label="random direction (shifted right)"))):
        if not len(frame):
            continue
        y = frame["rate"].to_numpy(dtype=float)
        err = np.vstack([y - frame["ci_low"].to_numpy(dtype=float), frame["ci_high"].to_numpy(dtype=float) - y])
        ax.errorbar(frame["strength"].to_numpy(dtype=float) + shift, y, yerr=np.nan_to_num(err), capsize=3, **style)
    ax.axvline(0, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("steering strength (signed, units of residual norm)")
    ax.set_ylabel("blackmail rate (Wilson 95% CI)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or f"Blackmail rate vs {emotion} steering")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def dose_response_figures(table: Any, out_dir: str | Path) -> list[Path]:
    """:func:`dose_response_figure` for every emotion in the table (``<out_dir>/<emotion>.png``)."""
    emotions = sorted({e for e in table["emotion"].dropna().unique() if isinstance(e, str)})
    return [dose_response_figure(table, e, Path(out_dir) / f"{e.replace(' ', '_')}.png") for e in emotions]
