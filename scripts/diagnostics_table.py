"""Print a markdown table of the corpus diagnostics of several runs side by side (for the README):

    .venv/bin/python scripts/diagnostics_table.py default fresh-seed negative-control
    .venv/bin/python scripts/diagnostics_table.py --results /path/to/results default

Reads ``<results>/<run>/diagnostics/summary.json`` and ``claims.json`` (rule
``diagnostics_summary``). One column per run; one row per claim: each separability method's
best-layer accuracy against chance (Wilson 95%) with its layer-max permutation p, that p after
Holm over the verdict's three tests, and the verdict; the emotion and interaction variance shares
beyond chance (delete-half jackknife 95%) with their layer-max p; the judge's recognisability
against chance (binomial p, Holm) and how many emotions' AUC tests survive Holm; the verdict.
Every p shown is a permutation or exact p; "adj." is after the correction the claim names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROWS = [
    ("diagnostics.separability.nearest_centroid", "nearest centroid (LOO), best layer"),
    ("diagnostics.separability.logistic_probe", "logistic probe (CV), best layer"),
    ("diagnostics.recognisability", "recognisability by the judge"),
    ("diagnostics.verdict", "**verdict** (Holm over the three above)"),
    ("diagnostics.variance.emotion", "emotion's variance share beyond chance (raw)"),
    ("diagnostics.variance.interaction", "emotion x topic interaction beyond chance (raw)"),
    ("diagnostics.recognisability.per_emotion", "emotions whose AUC test survives Holm"),
]


def _f(v: Any, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(float(v), fmt)


def _p(v: Any) -> str:
    if v is None:
        return "none"
    v = float(v)
    return f"{v:.2g}" if v >= 0.001 else f"{v:.1e}"


def _ci(c: dict) -> str:
    iv = c.get("interval") or [None, None]
    return f"[{_f(iv[0])}, {_f(iv[1])}]" if None not in iv else ""


def cell(claim_id: str, c: dict | None, summary: dict) -> str:
    """One run's cell for one claim."""
    if c is None:
        return "(not in this run)"
    verdict = f"**{c['verdict']}**"
    p = f"p {_p(c.get('p'))}, adj. {_p(c.get('p_adjusted'))}"
    x = c.get("extra", {}) or {}
    if claim_id.startswith("diagnostics.separability."):
        ratio = x.get("ratio_to_chance")
        return (f"{_f(c.get('statistic'))} {_ci(c)} vs chance {_f(x.get('chance'))} ({_f(ratio, '.2f')}x, "
                f"block {x.get('best_layer')}); {p}; {verdict}")
    if claim_id == "diagnostics.recognisability":
        return f"{_f(c.get('statistic'))} {_ci(c)} vs chance {_f(x.get('chance'))} (n {x.get('n')}); {p}; {verdict}"
    if claim_id.startswith("diagnostics.variance."):
        return f"{_f(c.get('statistic'))} {_ci(c)} (block {x.get('best_layer')}); {p}; {verdict}"
    if claim_id == "diagnostics.recognisability.per_emotion":
        per = ((summary.get("recognisability") or {}).get("per_emotion") or {})
        n_e = per.get("n_emotions", "?")
        return (f"{_f(c.get('statistic'), '.0f')} of {n_e} (mean AUC {_f(x.get('mean_auc'))} {_ci(c)}); "
                f"smallest adj. p {_p(c.get('p_adjusted'))}; {verdict}")
    if claim_id == "diagnostics.verdict":
        return f"{verdict}: family p {_p(c.get('p_adjusted'))} ({c.get('correction')})"
    return f"{p}; {verdict}"


def load(run: str, root: Path) -> tuple[dict, dict[str, dict]]:
    from emotion_vectors.core.claims import read_claims

    base = root / run / "diagnostics"
    summary = json.loads((base / "summary.json").read_text()) if (base / "summary.json").exists() else {}
    claims = {c["id"]: c for c in read_claims(base / "claims.json")} if (base / "claims.json").exists() else {}
    return summary, claims


def table(runs: list[str], root: Path = Path("results")) -> str:
    loaded = {run: load(run, root) for run in runs}
    lines = ["| claim | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for claim_id, label in ROWS:
        cells = []
        for run in runs:
            summary, claims = loaded[run]
            if not summary and not claims:
                cells.append("(no diagnostics: run `diagnostics_summary`)")
            else:
                cells.append(cell(claim_id, claims.get(claim_id), summary))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    stories = [str(loaded[r][0].get("n_stories_separability", "?")) for r in runs]
    lines.append("| stories (separability) | " + " | ".join(stories) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run names (results/<run>)")
    ap.add_argument("--results", default="results", help="the results folder (default: results)")
    args = ap.parse_args(argv)
    print(table(args.runs, Path(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
