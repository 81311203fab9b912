"""Snakemake script of rule `stories` (emotion_vectors.corpus.jobs.stories_job)."""

from emotion_vectors.core.jobs import start_job
from emotion_vectors.corpus.jobs import stories_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
stories_job(smk, log)
