"""Snakemake script of the comparison rules (workflow/rules/compare.smk): `compare_import` (an
external npz as a vector store), `compare_pair` (two stores compared:
emotion_vectors.analysis.compare.compare_stores) and `compare_summary` (the table and the claims,
Holm over the comparison family)."""
import json
from pathlib import Path

from threadpoolctl import threadpool_limits

from emotion_vectors.core.jobs import start_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)

if smk.rule == "compare_import":
    from emotion_vectors.analysis.store import store_from_reference_npz

    spec = smk.params.spec
    store_from_reference_npz(smk.input[0], smk.output[0], layer=int(spec["layer"]), n_model_layers=spec.get("n_blocks"))
    log.info("imported %s (layer %s, %s blocks) into %s", smk.input[0], spec["layer"], spec.get("n_blocks"), smk.output[0])

elif smk.rule == "compare_pair":
    from emotion_vectors.analysis.compare import compare_stores, open_side
    from emotion_vectors.core.provenance import provenance

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

elif smk.rule == "compare_summary":
    from emotion_vectors.analysis.compare import comparison_claims, comparison_table, comparison_markdown
    from emotion_vectors.core.claims import write_claims

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
else:  # pragma: no cover
    raise RuntimeError(f"compare.py does not serve rule {smk.rule}")
