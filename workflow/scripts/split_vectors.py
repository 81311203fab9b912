"""Snakemake script of rules `split_vectors` and `split_vectors_subject`: a subject's emotion
vectors from each half of every emotion's stories (emotion_vectors.vectors.split_vectors)."""
import json
from pathlib import Path

from emotion_vectors.core.jobs import start_job
from emotion_vectors.core.provenance import provenance
from emotion_vectors.vectors.split_vectors import build_split_store

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
emotions = list(smk.params.emotions)
summary = build_split_store(
    dict(zip(emotions, smk.input.emotions)),
    dict(zip(emotions, smk.input.stories)),
    smk.input.neutral,
    smk.output.store,
    denoise_variance=smk.params.denoise_variance,
    provenance=provenance(stage="split_vectors", config_section={"denoise_variance": smk.params.denoise_variance}),
)
Path(smk.output.summary).write_text(json.dumps(summary, indent=2))
log.info("split-half vectors: %s", summary)
