"""Snakemake script of rule `corpus` (emotion_vectors.reading.jobs.corpus_job)."""

from emotion_vectors.core.jobs import start_job
from emotion_vectors.reading.jobs import corpus_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
corpus_job(smk, log)
