"""Snakemake script of rule `steering_eval`: continuation test (against the other emotions'
vectors, shuffled-label vectors and random directions) and dose-response of steered generation
(masked VADER against shuffled-label pseudo vectors), with their claims (emotion_vectors.steer_eval)."""

import time

import pandas as pd

from emotion_vectors.claims import write_claims
from emotion_vectors.extract import main_stored_layer
from emotion_vectors.generate import write_json_atomic, write_jsonl_atomic
from emotion_vectors.jobs import start_job
from emotion_vectors.models import load_model
from emotion_vectors.provenance import provenance
from emotion_vectors.readout import store_valence_direction
from emotion_vectors.steer_eval import (
    continuation_claims,
    continuation_figure,
    continuation_test,
    dose_claims,
    dose_response,
    dose_response_figure,
)
from emotion_vectors.store_layout import read_store
from emotion_vectors.vectors import shuffled_sets

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
s = dict(smk.params.settings)
c, d = s["continuation"], s["dose_response"]
store = read_store(smk.input.vectors)
null_store = read_store(smk.input.shuffled)
sets = shuffled_sets(null_store)
# Everything checked before the model is loaded.
missing = [e for e in d["emotions"] if e not in store.emotions]
if missing:
    raise SystemExit(f"steering.dose_response.emotions {missing} are not among the run's emotions "
                     f"{store.emotions}")
for key, section in (("continuation", c), ("dose_response", d)):
    if section.get("n_shuffled") is not None and section["n_shuffled"] > len(sets):
        raise SystemExit(f"steering.{key}.n_shuffled = {section['n_shuffled']} but {smk.input.shuffled} holds "
                         f"{len(sets)} shuffles (vectors.n_shuffles): lower one or raise the other")
if s["positions"] == "generated":
    raise SystemExit("steering.positions = generated steers nothing in the continuation test (its words are "
                     "scored from the prompt): use all or an int")
layer = s["layer"] if s["layer"] is not None else main_stored_layer(store.layers, store.attrs.get("num_hidden_layers"))
if layer not in store.layers:
    raise SystemExit(f"steering.layer {layer} is not a stored layer {store.layers}")
if layer not in null_store.layers:
    raise SystemExit(f"steering.layer {layer} is not a layer of the shuffled-label store {null_store.layers}")
direction = store_valence_direction(store, layer, pleasant=s["readout"]["pleasant"],
                                    unpleasant=s["readout"]["unpleasant"])
pleasant, unpleasant = set(s["readout"]["pleasant"]), set(s["readout"]["unpleasant"])
signs = {e: (1 if e in pleasant else -1 if e in unpleasant else 0) for e in d["emotions"]}
log.info("layer %d (residual norm %.1f); %d shuffled-label sets; valence readout (descriptive): PC1 explains "
         "%.2f, anchors %s vs %s; expected signs %s",
         layer, store.residual_norm[store.layers.index(layer)] if store.residual_norm is not None else float("nan"),
         len(sets), direction.explained, direction.pleasant, direction.unpleasant, signs)
lm = load_model(smk.params.subject, smk.params.models_dir)
log.info("subject %s loaded in %.1f s", lm.info["name"], lm.info["load_seconds"])
started = time.perf_counter()
cont = continuation_test(
    lm.model, lm.tokenizer, store, store.emotions, prompts=c["prompts"], strengths=c["strengths"], layer=layer,
    null_store=null_store, shuffle_sets=sets, n_shuffled=c["n_shuffled"], n_random=c["n_random"],
    n_permutations=s["n_permutations"], seed=s["seed"], positions=s["positions"], batch_size=s["batch_size"],
    log=log.info)
pd.DataFrame(cont.per_emotion).to_csv(smk.output.continuation, sep="\t", index=False, float_format="%.6g")
pd.DataFrame(cont.per_strength).to_csv(smk.output.continuation_strengths, sep="\t", index=False, float_format="%.6g")
continuation_figure(cont.per_strength, smk.output.continuation_figure, per_emotion=cont.per_emotion,
                    null_rows=cont.null_rows)
dose = dose_response(
    lm.model, lm.tokenizer, store, d["emotions"], prompts=d["prompts"], strengths=d["strengths"],
    samples=d["samples"], max_new_tokens=d["max_new_tokens"], temperature=d["temperature"],
    direction=direction, signs=signs, mask_words=store.emotions, layer=layer, null_store=null_store,
    shuffle_sets=sets, n_shuffled=d["n_shuffled"], n_random=d["n_random"], n_permutations=s["n_permutations"],
    seed=s["seed"], positions=s["positions"], batch_size=s["batch_size"], log=log.info)
write_jsonl_atomic((g.__dict__ for g in dose.generations), smk.output.generations)
pd.DataFrame(dose.curves).to_csv(smk.output.dose, sep="\t", index=False, float_format="%.6g")
pd.DataFrame(dose.slopes).to_csv(smk.output.slopes, sep="\t", index=False, float_format="%.6g")
dose_response_figure(dose.curves, smk.output.dose_figure)
for row in dose.slopes:
    log.info("dose-response %s: masked VADER slope %.3f [%.3f, %.3f] (generations resampled, direction fixed); "
             "shuffled-label p %.3g (Holm %.3g); random p %.3g (weak null); unmasked slope %.3f",
             row["emotion"], row["vader_slope"], row["vader_slope_lo"], row["vader_slope_hi"], row["p_shuffled"],
             row["p_shuffled_holm"], row["p_random"], row["vader_unmasked_slope"])
claims = (continuation_claims(cont.summary, cont.per_emotion, figure=str(smk.output.continuation_figure))
          + dose_claims(dose.summary, figure=str(smk.output.dose_figure)))
write_claims(claims, smk.output.claims)
for cl in claims:
    log.info("claim %s: %s (p %s, adjusted %s, %s)", cl.id, cl.verdict, cl.p, cl.p_adjusted, cl.note)
write_json_atomic(
    {
        "layer": layer,
        "residual_norm": float(store.residual_norm[store.layers.index(layer)]) if store.residual_norm is not None else None,
        "n_shuffles_available": len(sets),
        "valence_direction": {"layer": layer, "explained": direction.explained,
                              "pleasant": list(direction.pleasant), "unpleasant": list(direction.unpleasant),
                              "anchor_gap": direction.anchor_gap,
                              "use": "descriptive only (PC1 of these same vectors): no claim is made from it"},
        "continuation": cont.summary,
        "dose_response": dose.summary,
        "claims": {cl.id: cl.verdict for cl in claims},
        "seconds": round(time.perf_counter() - started, 1),
        "provenance": provenance(stage="steering_eval", config_section=s, model_info=lm.info),
    },
    smk.output.summary,
)
