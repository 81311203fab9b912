"""Snakemake script of rule `score_corpus` (emotion_vectors.reading.jobs.score_corpus_job)."""

from emotion_vectors.core.jobs import start_job
from emotion_vectors.reading.jobs import score_corpus_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk, claim_gpus=False)  # reads through the run's model server, which claims its GPU
score_corpus_job(smk, log)
