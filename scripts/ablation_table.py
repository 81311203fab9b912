"""Print the README's ablation table from finished runs: one row per ``results/<run>``.

    .venv/bin/python scripts/ablation_table.py default abl-vivid ...

Columns: best-layer separability (nearest centroid and probe) against chance with the
layer-max permutation p, recognisability by the run's judge (Wilson 95% CI), PC1-valence r at
the main layer (bootstrap 95% CI with the PCA refitted; evaluation only, never used to choose),
and the summed wall time of the run's jobs from ``benchmarks/`` (jobs ran two at a time, so the
workflow's wall time is lower).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def row(run: str) -> str:
    root = Path("results") / run
    diag = json.loads((root / "diagnostics" / "summary.json").read_text())
    analysis = json.loads((root / "analysis" / "summary.json").read_text())
    nc, probe = diag["separability"]["nearest_centroid"], diag["separability"]["logistic_probe"]
    rec = diag["recognisability"]
    r = next(
        x for x in analysis["rating_correlations_main_layer"]
        if x["pc"] == 1 and x["rating"] == "valence" and x["method"] == "pearson" and x["words"] == "covered"
    )
    seconds = sum(float(pd.read_csv(f, sep="\t")["s"].sum()) for f in (root / "benchmarks").rglob("*.tsv"))
    return (
        f"| {run} | {nc['accuracy']:.3f} (L{nc['best_layer']}, {nc['ratio_to_chance']:.1f}x, p_max {nc['p_perm_max_layer']:.2f}) "
        f"| {probe['accuracy']:.3f} (L{probe['best_layer']}, {probe['ratio_to_chance']:.1f}x, p_max {probe['p_perm_max_layer']:.2f}) "
        f"| {rec['share']:.3f} ({rec['ci_low']:.2f}-{rec['ci_high']:.2f}; {rec['ratio_to_chance']:.2f}x; AUC {rec['auc']:.2f}) "
        f"| {r['r']:.2f} ({r['ci_low']:.2f}..{r['ci_high']:.2f}) | {seconds / 60:.1f} min |"
    )


if __name__ == "__main__":
    print("| run | nearest centroid (best layer) | logistic probe (best layer) | recognisability (chance 0.25) | PC1-valence r (95% CI) | job time |")
    print("|---|---|---|---|---|---|")
    for run in sys.argv[1:]:
        print(row(run))
