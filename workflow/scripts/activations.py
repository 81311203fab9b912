"""Shard job: have the run's subject-model server extract one corpus into one Zarr shard.

The first activation job of a run starts the server (it loads the model once); later jobs reuse
it. The server writes the shard aside and this job renames it into its output (see
emotion_vectors.extraction.serve_subject.extract_shard and emotion_vectors.extraction.service).
"""
import json
from pathlib import Path

from emotion_vectors.core.jobs import start_job
from emotion_vectors.extraction.serve_subject import extract_shard
from emotion_vectors.core.devices import allocation_server_dir

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk, claim_gpus=False)  # the server claims its own GPU (service.ensure_server)
p = smk.params
corpus = json.loads(Path(smk.input.texts).read_text(encoding="utf-8"))
items = corpus.get("stories") or corpus.get("dialogues") or []
if not items:
    raise ValueError(f"{smk.input.texts}: no texts to extract (the corpus is empty)")
log.info("asking the subject server for %d texts of %s", len(items), p.name)
summary = extract_shard(
    name=p.name,
    texts=[x["text"] for x in items],
    ids=[x["id"] for x in items],
    output=smk.output[0],
    subject=p.subject,
    extraction=p.extraction,
    models_dir=p.models_dir,
    root=p.results_dir,
    server_dir=allocation_server_dir(p.server_dir),  # one server per Slurm allocation (docs/cluster.md)
    idle_timeout=p.idle_timeout,
    threads=p.server_threads,
    texts_file=smk.input.texts,
    texts_provenance={k: corpus.get("provenance", {}).get(k) for k in ("model", "config_hash")},
)
log.info("done: %s", summary)
