"""Snakemake script of rule `score_corpus`: one corpus scored on the run's emotion vectors
(emotion_vectors.reading.score.score_texts): one row per text, in corpus order, metadata in the sidecar.
The texts are read by the run's subject-model server (emotion_vectors.extraction.reading.ServerReader), the
one the activation jobs use: started if none is up, shared by every corpus and the battery.

With the run's shuffled-label vectors (input ``shuffled``), every text is also projected on each
shuffle's emotion vectors and on each shuffle's valence direction (PC1 of that shuffle's vectors,
oriented by the same anchors): ``<corpus>.shuffled.npz`` holds those raw projections (``x . w``,
no baseline), the null of the real-text claims (emotion_vectors.reading.text_checks)."""

from pathlib import Path

import numpy as np

from emotion_vectors.reading.corpora import read_table, table_rows
from emotion_vectors.core.jobs import start_job
from emotion_vectors.core.provenance import provenance
from emotion_vectors.extraction.reading import ServerReader
from emotion_vectors.reading.score import default_layer, score_texts, sidecar_path, write_scores
from emotion_vectors.extraction.serve_subject import server_from_params
from emotion_vectors.vectors.store_layout import read_store

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
valence_check = dict(s.get("valence_check") or {})
extra_basis, extra_names, n_shuffles = None, [], None
shuffled_path = getattr(smk.input, "shuffled", None)
if shuffled_path:
    from emotion_vectors.steering.readout import ReadoutError, valence_direction
    from emotion_vectors.vectors.build import shuffled_sets

    sh = read_store(shuffled_path)
    if layer not in sh.layers:
        raise SystemExit(f"{shuffled_path} holds layers {sh.layers}, not the scoring layer {layer}")
    kind = "denoised_unit" if "denoised_unit" in sh.kinds else "raw_unit"
    sets = shuffled_sets(sh)
    if [n.split("@", 1)[0] for n in sets[0]] != list(store.emotions):
        raise SystemExit(f"{shuffled_path}: its emotions are not the run's {store.emotions}")
    arr = np.asarray(sh.array(kind)[:, sh.layers.index(layer), :], dtype=np.float64)
    rows, vdirs = [], []
    for k, names in enumerate(sets):
        vk = arr[[sh.emotions.index(n) for n in names]]
        rows.append(vk)
        extra_names += names
        try:
            vdirs.append(valence_direction(vk, list(store.emotions), layer).direction)
        except ReadoutError as err:  # anchors that do not separate: that shuffle's valence is NaN
            log.warning("shuffle %d: no valence direction (%s)", k, err)
            vdirs.append(np.full(arr.shape[1], np.nan))
    extra_basis = np.vstack(rows + [np.vstack(vdirs)])
    extra_names += [f"valence@shuffle{k}" for k in range(len(sets))]
    n_shuffles = len(sets)
    log.info("also projecting on %d shuffled-label vector sets (%s)", n_shuffles, kind)
reader = ServerReader(server_from_params(smk.params.server))
log.info("subject %s on the model server pid %s; scoring %d texts at layer %d, pool %s, baseline %s",
         reader.info.get("name"), reader.info["server"]["pid"], len(texts), layer, s["pool"], s["baseline"])
df = score_texts(store, texts, layer=layer, pool=s["pool"], baseline=s["baseline"], reader=reader,
                 ids=ids, labels=labels, skip=problems, max_tokens=s["max_tokens"],
                 batch_size=s["batch_size"], neutral_path=smk.input.neutral,
                 extra_basis=None if extra_basis is None else np.nan_to_num(extra_basis),
                 valence_check=valence_check)
meta = dict(df.attrs["scoring"])
meta["corpus"] = smk.wildcards.corpus
meta["input"] = {"path": str(Path(smk.input.corpus)), "format": "jsonl", "text_column": "text",
                 "label_column": label_column, "id_column": "id"}
meta["provenance"] = provenance(stage="score", config_section=s | {"layer": layer},
                                model_info=reader.info,
                                extra={"vectors": str(smk.input.vectors), "input": meta["input"]})
write_scores(df, smk.output.scores, meta)
out_null = getattr(smk.output, "shuffled", None)
if out_null:
    if extra_basis is None:
        np.savez(out_null + ".tmp.npz", names=np.array([], dtype=str), projections=np.zeros((len(df), 0)),
                 neutral_projections=np.zeros(0), n_shuffles=-1, emotions=np.array(meta["emotions"], dtype=str), ids=df["id"].to_numpy(str))
    else:
        from emotion_vectors.reading.score import neutral_baseline

        proj = np.asarray(df.attrs["extra_projections"], dtype=np.float64)
        bad = ~np.isfinite(extra_basis).all(axis=1)  # a shuffle without a valence direction
        proj[:, bad] = np.nan
        neutral_vec, _ = neutral_baseline(store, layer, smk.input.neutral)
        neutral_proj = np.nan_to_num(extra_basis) @ neutral_vec
        neutral_proj[bad] = np.nan
        np.savez(out_null + ".tmp.npz", names=np.array(extra_names, dtype=str), projections=proj,
                 neutral_projections=neutral_proj,
                 n_shuffles=n_shuffles, emotions=np.array(meta["emotions"], dtype=str),
                 ids=df["id"].to_numpy(str))
    Path(out_null + ".tmp.npz").replace(out_null)
assert sidecar_path(smk.output.scores) == Path(smk.output.meta)
log.info("wrote %s (%d rows, %d scored, %d skipped, %d truncated) in %.1f s", smk.output.scores,
         meta["n_rows"], meta["n_scored"], meta["n_skipped"], meta["n_truncated"], meta["seconds"])
