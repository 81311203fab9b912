"""Snakemake script of rule `steering_eval` (emotion_vectors.steering.jobs.steering_eval_job)."""

from emotion_vectors.core.jobs import start_job
from emotion_vectors.steering.jobs import steering_eval_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
steering_eval_job(smk, log)
