"""Snakemake script of rule `diagnostics_summary` (emotion_vectors.vectors.jobs.diagnostics_summary_job)."""

from emotion_vectors.core.jobs import start_job
from emotion_vectors.vectors.jobs import diagnostics_summary_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
diagnostics_summary_job(smk, log)
