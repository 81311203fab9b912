import pandas as pd

from emotion_vectors.core.jobs import start_job
from emotion_vectors.core.provenance import provenance
from emotion_vectors.vectors.build import build_vector_store

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
shards = dict(zip(smk.params.emotions, smk.input.emotions))
rows = build_vector_store(
    shards,
    smk.input.neutral,
    smk.output.store,
    denoise_variance=smk.params.denoise_variance,
    provenance=provenance(stage="vectors", config_section={"denoise_variance": smk.params.denoise_variance}),
)
pd.DataFrame(rows).to_csv(smk.output.table, sep="\t", index=False, float_format="%.6g")
log.info("wrote vectors for %d emotions", len(shards))
