"""The comparison's workflow jobs (``workflow/rules/compare.smk``; docs/compare.md), called by
``workflow/scripts/compare.py`` with the job's Snakemake object and logger.

- ``compare_import_job``: an external npz as a vector store (rule ``compare_import``);
- ``compare_pair_job``: two stores compared (rule ``compare_pair``, ``compare.compare_stores``);
- ``compare_summary_job``: the table and the claims, Holm over the comparison family (rule
  ``compare_summary``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from emotion_vectors.analysis.compare import (
    compare_stores,
    comparison_claims,
    comparison_markdown,
    comparison_table,
    open_side,
)
from emotion_vectors.analysis.store import store_from_reference_npz
from emotion_vectors.core.claims import write_claims
from emotion_vectors.core.provenance import provenance


def compare_import_job(smk: Any, log: logging.Logger) -> None:
    """Rule ``compare_import``: the external npz ``smk.input[0]`` as a vector store.

    ``smk``: the job's Snakemake object (its ``input``, ``output``, ``params``, ``wildcards``);
    ``log``: its logger (``core.jobs.start_job``).
    """
    spec = smk.params.spec
    store_from_reference_npz(smk.input[0], smk.output[0], layer=int(spec["layer"]), n_model_layers=spec.get("n_blocks"))
    log.info("imported %s (layer %s, %s blocks) into %s", smk.input[0], spec["layer"], spec.get("n_blocks"), smk.output[0])


def compare_pair_job(smk: Any, log: logging.Logger) -> None:
    """Rule ``compare_pair``: stores ``a`` and ``b`` compared (``compare.compare_stores``), across
    their split halves when ``smk.params.crossfit``.

    ``smk``: the job's Snakemake object (its ``input``, ``output``, ``params``, ``wildcards``);
    ``log``: its logger (``core.jobs.start_job``).
    """
    s = dict(smk.params.settings)
    kind = s.pop("vector_kind")
    cross = bool(smk.params.crossfit)
    a = open_side(smk.wildcards.a, smk.input.a, kind=kind, halves=smk.input.halves_a if cross else None)
    b = open_side(smk.wildcards.b, smk.input.b, kind=kind, halves=smk.input.halves_b if cross else None)
    log.info("comparing %s (layer %s, %s) with %s (layer %s, %s)%s", a.name, a.main_layer, a.kind, b.name,
             b.main_layer, b.kind, " across split halves" if cross else "")
    with threadpool_limits(limits=1):  # many small problems: BLAS threads only contend
        summary = compare_stores(
            a, b, Path(smk.output.summary).parent, crossfit=cross,
            n_permutations=int(s["n_permutations"]), n_bootstrap=int(s["n_bootstrap"]), nn_k=int(s["nn_k"]),
            k_clusters=int(s["k_clusters"]), procrustes_pcs=int(s["procrustes_pcs"]),
            procrustes_splits=int(s["procrustes_splits"]), seed=int(s["seed"]),
            provenance=provenance(stage="compare", config_section={**s, "vector_kind": kind, "crossfit": cross}),
        )
    log.info("%s vs %s on %d emotions: %s (%.1f s)", a.name, b.name, summary["n_shared"],
             {m: round(t["statistic"], 3) for m, t in summary["tests"].items()}, summary["timings_s"]["total"])


def compare_summary_job(smk: Any, log: logging.Logger) -> None:
    """Rule ``compare_summary``: every pair's summary in one table, the comparison's claims (Holm
    over the family) and a summary JSON.

    ``smk``: the job's Snakemake object (its ``input``, ``output``, ``params``, ``wildcards``);
    ``log``: its logger (``core.jobs.start_job``).
    """
    summaries = [json.loads(Path(p).read_text()) for p in smk.input.summaries]
    claims = comparison_claims(summaries)
    table = comparison_table(summaries, claims)
    table.to_csv(smk.output.table, sep="\t", index=False, float_format="%.6g")
    Path(smk.output.markdown).write_text(comparison_markdown(table, summaries, skipped=dict(smk.params.skipped)))
    write_claims(claims, smk.output.claims)
    Path(smk.output.summary).write_text(json.dumps({
        "pairs": [[s["a"]["name"], s["b"]["name"]] for s in summaries],
        "skipped_external": dict(smk.params.skipped),
        "family": len([c for c in claims if c.p is not None]),
        "verdicts": {c.id: c.verdict for c in claims},
        "crossfit": {f"{s['a']['name']}~{s['b']['name']}": s["crossfit"] for s in summaries},
    }, indent=2))
    for name, why in dict(smk.params.skipped).items():
        log.info("external store %s skipped: %s", name, why)
    log.info("%d comparisons, %d claims", len(summaries), len(claims))
