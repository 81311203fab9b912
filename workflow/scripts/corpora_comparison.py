"""Snakemake script of rule `corpora_comparison` (emotion_vectors.reading.jobs.corpora_comparison_job)."""

from emotion_vectors.core.jobs import start_job
from emotion_vectors.reading.jobs import corpora_comparison_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
corpora_comparison_job(smk, log)
