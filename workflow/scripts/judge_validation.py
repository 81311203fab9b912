"""Snakemake script of rules `judge_validation` and `judge_validation_summary`
(emotion_vectors.steering.behaviour.jobs.judge_validation_job, .judge_validation_summary_job)."""

from emotion_vectors.steering.behaviour.jobs import judge_validation_job, judge_validation_summary_job

smk = snakemake  # noqa: F821 - injected by Snakemake
if smk.rule == "judge_validation_summary":
    judge_validation_summary_job(smk)
else:
    from emotion_vectors.core.jobs import start_job

    judge_validation_job(smk, start_job(smk))
