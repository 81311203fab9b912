"""Snakemake script of rule `steering_eval`: continuation test and dose-response of steered
generation against random directions (emotion_vectors.steer_eval)."""

import time

import pandas as pd

from emotion_vectors.extract import main_stored_layer
from emotion_vectors.generate import write_json_atomic, write_jsonl_atomic
from emotion_vectors.jobs import start_job
from emotion_vectors.models import load_model
from emotion_vectors.provenance import provenance
from emotion_vectors.readout import store_valence_direction
from emotion_vectors.steer_eval import (
    continuation_figure,
    continuation_test,
    dose_response,
    dose_response_figure,
)
from emotion_vectors.store_layout import read_store

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
s = dict(smk.params.settings)
store = read_store(smk.input.vectors)
missing = [e for e in s["dose_response"]["emotions"] if e not in store.emotions]
if missing:
    raise SystemExit(f"steering.dose_response.emotions {missing} are not among the run's emotions "
                     f"{store.emotions}")
layer = s["layer"] if s["layer"] is not None else main_stored_layer(store.layers, store.attrs.get("num_hidden_layers"))
if layer not in store.layers:
    raise SystemExit(f"steering.layer {layer} is not a stored layer {store.layers}")
direction = store_valence_direction(store, layer, pleasant=s["readout"]["pleasant"],
                                    unpleasant=s["readout"]["unpleasant"])
log.info("layer %d (residual norm %.1f); valence direction: PC1 explains %.2f, anchors %s vs %s",
         layer, store.residual_norm[store.layers.index(layer)] if store.residual_norm is not None else float("nan"),
         direction.explained, direction.pleasant, direction.unpleasant)
lm = load_model(smk.params.subject, smk.params.models_dir)
log.info("subject %s loaded in %.1f s", lm.info["name"], lm.info["load_seconds"])
started = time.perf_counter()
c = s["continuation"]
cont = continuation_test(lm.model, lm.tokenizer, store, store.emotions, prompts=c["prompts"],
                         strengths=c["strengths"], layer=layer, n_random=c["n_random"],
                         seed=s["seed"], positions=s["positions"], log=log.info)
pd.DataFrame(cont.per_emotion).to_csv(smk.output.continuation, sep="\t", index=False, float_format="%.6g")
pd.DataFrame(cont.per_strength).to_csv(smk.output.continuation_strengths, sep="\t", index=False, float_format="%.6g")
continuation_figure(cont.per_strength, smk.output.continuation_figure)
d = s["dose_response"]
gens, curves, slopes, dsum = dose_response(
    lm.model, lm.tokenizer, store, d["emotions"], prompts=d["prompts"], strengths=d["strengths"],
    samples=d["samples"], max_new_tokens=d["max_new_tokens"], temperature=d["temperature"],
    direction=direction, layer=layer, n_random=d["n_random"], seed=s["seed"],
    positions=s["positions"], log=log.info)
write_jsonl_atomic((g.__dict__ for g in gens), smk.output.generations)
pd.DataFrame(curves).to_csv(smk.output.dose, sep="\t", index=False, float_format="%.6g")
pd.DataFrame(slopes).to_csv(smk.output.slopes, sep="\t", index=False, float_format="%.6g")
dose_response_figure(curves, smk.output.dose_figure)
for row in slopes:
    log.info("dose-response %s: VADER slope %.3f [%.3f, %.3f] (random |slope| p95 %.3f); readout slope %.3f [%.3f, %.3f] (random p95 %.3f)",
             row["emotion"], row["vader_slope"], row["vader_slope_lo"], row["vader_slope_hi"], row["vader_null_abs_p95"],
             row["readout_slope"], row["readout_slope_lo"], row["readout_slope_hi"], row["readout_null_abs_p95"])
write_json_atomic(
    {
        "layer": layer,
        "residual_norm": float(store.residual_norm[store.layers.index(layer)]) if store.residual_norm is not None else None,
        "valence_direction": {"layer": layer, "explained": direction.explained,
                              "pleasant": list(direction.pleasant), "unpleasant": list(direction.unpleasant),
                              "anchor_gap": direction.anchor_gap},
        "continuation": cont.summary,
        "dose_response": {k: v for k, v in dsum.items()},
        "seconds": round(time.perf_counter() - started, 1),
        "provenance": provenance(stage="steering_eval", config_section=s, model_info=lm.info),
    },
    smk.output.summary,
)
