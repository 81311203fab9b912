"""Snakemake script of rule `shuffled_vectors` (emotion_vectors.vectors.build.build_shuffled_store)."""

from emotion_vectors.core.common import write_json_atomic
from emotion_vectors.core.jobs import start_job
from emotion_vectors.core.provenance import provenance
from emotion_vectors.vectors.build import build_shuffled_store

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
emotions = list(smk.params.emotions)
section = {"denoise_variance": smk.params.denoise_variance, "n_shuffles": smk.params.n_shuffles,
           "shuffle_seed": smk.params.seed}
summary = build_shuffled_store(
    dict(zip(emotions, smk.input.emotions)),
    dict(zip(emotions, smk.input.stories)),
    smk.input.neutral,
    smk.output.store,
    n_shuffles=smk.params.n_shuffles,
    seed=smk.params.seed,
    denoise_variance=smk.params.denoise_variance,
    provenance=provenance(stage="shuffled_vectors", config_section=section),
)
write_json_atomic(dict(summary, provenance=provenance(stage="shuffled_vectors", config_section=section)),
                  smk.output.summary)
log.info("wrote %d shuffled-label vector sets of %d emotions (%.0f%% of stories relabelled)",
         summary["n_shuffles"], summary["n_emotions"], 100 * summary["share_relabelled"])
