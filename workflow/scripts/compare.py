"""Snakemake script of the comparison rules (workflow/rules/compare.smk): `compare_import`,
`compare_pair` and `compare_summary` (emotion_vectors.analysis.jobs)."""
from emotion_vectors.analysis.jobs import compare_import_job, compare_pair_job, compare_summary_job
from emotion_vectors.core.jobs import start_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
JOBS = {"compare_import": compare_import_job, "compare_pair": compare_pair_job, "compare_summary": compare_summary_job}
if smk.rule not in JOBS:  # pragma: no cover
    raise RuntimeError(f"compare.py does not serve rule {smk.rule}")
JOBS[smk.rule](smk, log)
