"""Snakemake script of rule `behaviour`: one scenario sampled under every steering condition,
classified with the validated judge, rates, tests, claims and dose-response figures
(emotion_vectors.steering.behaviour.jobs; docs/behaviour.md)."""

from emotion_vectors.core.jobs import start_job
from emotion_vectors.steering.behaviour.jobs import behaviour_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
behaviour_job(
    settings=smk.params.settings, scenario_key=smk.wildcards.scenario, scenario_path=smk.input.scenario,
    vectors=smk.input.vectors, validation=getattr(smk.input, "validation", None), judges=smk.params.judges,
    subject=smk.params.subject, models_dir=smk.params.models_dir, transcripts=smk.output.transcripts,
    judged_path=smk.output.judged, rates=smk.output.rates, dose=smk.output.dose, claims_path=smk.output.claims,
    summary=smk.output.summary, log=log,
)
