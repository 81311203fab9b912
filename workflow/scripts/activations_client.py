"""Shard job: ask the subject-model service to extract one corpus into one Zarr shard."""
import json

from emotion_vectors.jobs import start_job
from emotion_vectors.service import request

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
corpus = json.loads(open(smk.input.texts, encoding="utf-8").read())
items = corpus.get("stories") or corpus.get("dialogues") or []
if not items:
    raise ValueError(f"{smk.input.texts}: no texts to extract")
log.info("asking the service for %d texts of %s", len(items), smk.params.name)
summary = request(
    smk.input.server,
    {
        "name": smk.params.name,
        "texts": [x["text"] for x in items],
        "ids": [x["id"] for x in items],
        "texts_file": smk.input.texts,
        "texts_provenance": {k: corpus.get("provenance", {}).get(k) for k in ("model", "config_hash")},
        "output": smk.output[0],
    },
)
log.info("done: %s", summary)
