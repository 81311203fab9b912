"""Snakemake script of rule `neutral` (emotion_vectors.corpus.jobs.neutral_job)."""

from emotion_vectors.core.jobs import start_job
from emotion_vectors.corpus.jobs import neutral_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
neutral_job(smk, log)
