import json

from emotion_vectors.core.jobs import start_job
from emotion_vectors.core.models import prepare_gguf_model

log = start_job(snakemake)  # noqa: F821 - injected by Snakemake
path = prepare_gguf_model(json.loads(snakemake.params.spec), snakemake.output[0])  # noqa: F821
log.info("prepared %s", path)
