"""Snakemake script of rule `battery` (emotion_vectors.reading.jobs.battery_job)."""

from emotion_vectors.core.jobs import start_job
from emotion_vectors.reading.jobs import battery_job

smk = snakemake  # noqa: F821 - injected by Snakemake
# through the run's model server (which claims its own GPU), or a model loaded here (claim one)
log = start_job(smk, claim_gpus=not getattr(smk.params, "server", None))
battery_job(smk, log)
