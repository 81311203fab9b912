"""Snakemake script of rule `findings` (emotion_vectors.findings)."""

import json
from pathlib import Path

from emotion_vectors.findings import analysis_claims, collect, compare, read_table, to_html, to_markdown, write_table
from emotion_vectors.core.jobs import start_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
summary = json.loads(Path(smk.input.analysis_summary).read_text())
geometry = analysis_claims(smk.input.rating_correlations, main_layer=summary.get("main_layer"),
                           figure="analysis/pc_scatter.png")
df = collect(smk.input.claims, geometry)
write_table(df, smk.output.table)
control = None
if smk.params.control and Path(smk.params.control).exists():
    control = read_table(smk.params.control)
    log.info("control run %s: %d claims (%s)", smk.params.control_run, len(control), smk.params.control)
elif smk.params.control:
    log.info("control run %s has no findings yet (%s): run it to see its verdicts here",
             smk.params.control_run, smk.params.control)
shown = compare(read_table(smk.output.table), control)
Path(smk.output.markdown).write_text(to_markdown(shown, control_name=smk.params.control_run))
Path(smk.output.html).write_text(to_html(shown, run=smk.params.run, control_name=smk.params.control_run))
for _, r in df.iterrows():
    log.info("%s: %s (p adjusted %s)", r["id"], r["verdict"], r["p_adjusted"])
