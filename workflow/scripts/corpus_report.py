"""Snakemake script of rule `corpus_report` (emotion_vectors.reading.jobs.corpus_report_job)."""

from emotion_vectors.core.jobs import start_job
from emotion_vectors.reading.jobs import corpus_report_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk, claim_gpus=False)  # reads through the run's model server, which claims its GPU
corpus_report_job(smk, log)
