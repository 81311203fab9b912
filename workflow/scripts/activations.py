"""Shard job: have the shared subject-model server extract one corpus into one Zarr shard.

The first activation job of a run starts the server (it loads the model once); later jobs reuse
it (see emotion_vectors.service). The server is keyed by host, model spec and settings.
"""
import hashlib
import json
import socket
import time
from pathlib import Path

from emotion_vectors.jobs import start_job
from emotion_vectors.service import ServiceError, ensure_server, python_command, request

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
p = smk.params
corpus = json.loads(Path(smk.input.texts).read_text(encoding="utf-8"))
items = corpus.get("stories") or corpus.get("dialogues") or []
if not items:
    raise ValueError(f"{smk.input.texts}: no texts to extract (the corpus is empty)")

spec, settings = json.dumps(p.subject, sort_keys=True), json.dumps(p.extraction, sort_keys=True)
key = hashlib.sha256(f"{spec}|{settings}|{Path(p.models_dir).resolve()}".encode()).hexdigest()[:12]
server_dir = Path(p.server_dir)
address = server_dir / f"{socket.gethostname()}-{key}.json"
command = python_command(
    "emotion_vectors.serve_subject", str(address), "--subject", spec, "--extraction", settings,
    "--models-dir", p.models_dir, "--idle-timeout", str(p.idle_timeout), "--threads", str(p.server_threads),
)
payload = {
    "name": p.name,
    "texts": [x["text"] for x in items],
    "ids": [x["id"] for x in items],
    "texts_file": smk.input.texts,
    "texts_provenance": {k: corpus.get("provenance", {}).get(k) for k in ("model", "config_hash")},
    "output": smk.output[0],
}
for attempt in range(3):
    info = ensure_server(address, command, log_file=server_dir / f"{address.stem}.log")
    log.info("model server pid %s (attempt %d); asking for %d texts of %s", info["pid"], attempt + 1, len(items), p.name)
    try:
        summary = request(address, payload)
        break
    except ServiceError as err:
        if "cannot reach" not in str(err) or attempt == 2:
            raise
        log.warning("%s; retrying", err)  # the server stopped as we connected (idle timeout)
        time.sleep(1)
log.info("done: %s", summary)
