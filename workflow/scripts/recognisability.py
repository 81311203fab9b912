"""Snakemake script of rule `recognisability` (emotion_vectors.vectors.jobs.recognisability_job)."""

from emotion_vectors.core.jobs import start_job
from emotion_vectors.vectors.jobs import recognisability_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
recognisability_job(smk, log)
