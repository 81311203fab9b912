"""Snakemake script of rule `separability` (emotion_vectors.vectors.jobs.separability_job)."""

from emotion_vectors.core.jobs import start_job
from emotion_vectors.vectors.jobs import separability_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
separability_job(smk, log)
