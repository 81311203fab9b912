"""Snakemake script of rule `score_corpus`: one corpus scored on the run's emotion vectors
(emotion_vectors.score.score_texts): one row per text, in corpus order, metadata in the sidecar.
The texts are read by the run's subject-model server (emotion_vectors.reading.ServerReader), the
one the activation jobs use: started if none is up, shared by every corpus and the battery."""

from pathlib import Path

from emotion_vectors.corpora import read_table, table_rows
from emotion_vectors.jobs import start_job
from emotion_vectors.provenance import provenance
from emotion_vectors.reading import ServerReader
from emotion_vectors.score import default_layer, score_texts, sidecar_path, write_scores
from emotion_vectors.serve_subject import server_from_params
from emotion_vectors.store_layout import read_store

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk, claim_gpus=False)  # reads through the run's model server, which claims its GPU
s = dict(smk.params.settings)
store = read_store(smk.input.vectors)
layer = default_layer(store) if s["layer"] is None else int(s["layer"])
if layer not in store.layers:
    raise SystemExit(f"scoring.layer {layer} is not a stored layer {store.layers}")
table = read_table(smk.input.corpus, fmt="jsonl")
label_column = smk.params.label_column if smk.params.label_column in table.columns else None
texts, labels, ids, problems = table_rows(table, "text", label_column=label_column, id_column="id")
reader = ServerReader(server_from_params(smk.params.server))
log.info("subject %s on the model server pid %s; scoring %d texts at layer %d, pool %s, baseline %s",
         reader.info.get("name"), reader.info["server"]["pid"], len(texts), layer, s["pool"], s["baseline"])
df = score_texts(store, texts, layer=layer, pool=s["pool"], baseline=s["baseline"], reader=reader,
                 ids=ids, labels=labels, skip=problems, max_tokens=s["max_tokens"],
                 batch_size=s["batch_size"], neutral_path=smk.input.neutral)
meta = dict(df.attrs["scoring"])
meta["corpus"] = smk.wildcards.corpus
meta["input"] = {"path": str(Path(smk.input.corpus)), "format": "jsonl", "text_column": "text",
                 "label_column": label_column, "id_column": "id"}
meta["provenance"] = provenance(stage="score", config_section=s | {"layer": layer},
                                model_info=reader.info,
                                extra={"vectors": str(smk.input.vectors), "input": meta["input"]})
write_scores(df, smk.output.scores, meta)
assert sidecar_path(smk.output.scores) == Path(smk.output.meta)
log.info("wrote %s (%d rows, %d scored, %d skipped, %d truncated) in %.1f s", smk.output.scores,
         meta["n_rows"], meta["n_scored"], meta["n_skipped"], meta["n_truncated"], meta["seconds"])
