"""Snakemake script of rule `behaviour`: sample one scenario under every steering condition,
classify every transcript in two stages, and write rates, tests and dose-response figures
(emotion_vectors.behaviour; docs/behaviour.md).

Transcripts are appended to ``transcripts.jsonl.partial`` beside the outputs (not an output, so
Snakemake leaves it alone when a job fails or reruns): a killed or failed job resumes from it, and
a rerun with more samples adds only the missing ones. A partial made with other settings (prompt,
condition, vector store, token limit, temperature, seed) is moved aside to ``.stale`` and the
sampling starts over. The finished file is copied to ``transcripts.jsonl``.
"""

import contextlib
import gc
import json
import os
import time
from collections import Counter
from pathlib import Path

from emotion_vectors.backends import HFChatBackend, has_chat_template
from emotion_vectors.behaviour.conditions import (
    BASELINE,
    build_conditions,
    check_emotions,
    make_judge,
    resolve_layer,
    same_model,
)
from emotion_vectors.behaviour.run import ResumeMismatch, classify_transcripts, run_scenario
from emotion_vectors.behaviour.scenario import load_scenario, prompt_digest, render_prompt
from emotion_vectors.behaviour.stats import count_labels, dose_response_figure, rate_table
from emotion_vectors.generate import write_json_atomic, write_jsonl_atomic
from emotion_vectors.jobs import start_job
from emotion_vectors.models import load_model
from emotion_vectors.provenance import provenance
from emotion_vectors.steer import steering
from emotion_vectors.store_layout import read_store

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
s = dict(smk.params.settings)
scenario_key = smk.wildcards.scenario

# --- everything that can be wrong is checked before the model is loaded -----------------------
scenario = load_scenario(smk.input.scenario)
store = read_store(smk.input.vectors)
try:
    check_emotions(store, s["emotions"])
    layer = resolve_layer(store, s["layer"])
    conditions = build_conditions(store, s["emotions"], s["magnitudes"], random_directions=s["random_directions"],
                                  layer=layer, seed=s["seed"])
except ValueError as err:  # SteeringUnitError (no measured residual norm) included
    raise SystemExit(str(err)) from None
if len(smk.output.dose) != len(s["emotions"]):
    raise SystemExit(f"{len(smk.output.dose)} dose figures declared for emotions {s['emotions']}")
unit = float(store.residual_norm[store.layers.index(layer)])
log.info("scenario %s (%s, sha256 %s); layer %d, residual norm %.2f; %d conditions x %d samples, "
         "max_new_tokens %d, temperature %g, positions %s",
         scenario_key, scenario.name, scenario.digest()[:12], layer, unit, len(conditions), s["samples"],
         s["max_new_tokens"], s["temperature"], s["positions"])
for c in conditions:
    spec = c.spec
    log.info("condition %-16s strength %+.3f x residual norm = added norm %+.2f (|%.2f|) at layer %s%s",
             spec["name"], spec["strength"], spec["added_norm"], abs(spec["added_norm"]),
             spec["layer"] if spec["layer"] is not None else "-",
             f", random direction {spec['random_index']}" if spec["random"] else "")

# --- sampling --------------------------------------------------------------------------------
lm = load_model(smk.params.subject, smk.params.models_dir)
log.info("subject %s loaded in %.1f s (%s, %s)", lm.info["name"], lm.info["load_seconds"], lm.info["dtype"],
         lm.info["device"])
subject_info = lm.info
backend = HFChatBackend(lm.model, lm.tokenizer, name=smk.params.subject["name"])
prompt = render_prompt(lm.tokenizer, scenario)
# Tokenised as HFChatBackend.generate_text does (special tokens only without a chat template).
n_prompt_tokens = len(lm.tokenizer(prompt, add_special_tokens=not has_chat_template(lm.tokenizer))["input_ids"])
log.info("prompt: %d tokens, sha256 %s", n_prompt_tokens, prompt_digest(prompt)[:12])
by_name = {c.name: c for c in conditions}
positions = s["positions"]


def steer_for(condition):
    """The condition's steering around all its samples (one prompt: with positions="generated"
    the prompt length is given, so every generate() call in the context steers only its new tokens)."""
    steers = by_name[condition["name"]].steers
    if not steers:
        return contextlib.nullcontext()
    if positions == "generated":
        return steering(lm.model, steers, positions="generated", prompt_length=n_prompt_tokens)
    return steering(lm.model, steers, positions=positions)


partial = Path(smk.output.transcripts + ".partial")
started = time.perf_counter()


# The subject's identity goes into every recorded condition, so that a partial file made by
# another model (same run name) is never resumed.
run_specs = [{**c.spec, "subject": f"{subject_info['name']}@{subject_info['revision']}"} for c in conditions]


def sample():
    return run_scenario(
        backend.generate_text, lm.tokenizer, scenario, run_specs, n_samples=s["samples"],
        seed=s["seed"], steer_for=steer_for, out_jsonl=partial, max_new_tokens=s["max_new_tokens"],
        temperature=s["temperature"], progress=log.info,
        batch_size=s["batch_size"], generate_many=backend.generate_texts,
    )


try:
    records = sample()
except ResumeMismatch as err:
    stale = partial.with_name(partial.name + ".stale")
    log.warning("%s; moving it to %s and starting over", err, stale)
    os.replace(partial, stale)
    records = sample()
seconds_generate = time.perf_counter() - started
write_jsonl_atomic(records, smk.output.transcripts)
log.info("%d transcripts in %.1f s (%d cut at max_new_tokens)", len(records), seconds_generate,
         sum(r["finish_reason"] == "length" for r in records))

# --- classification (the judge is never steered) -------------------------------------------
judge_spec = smk.params.judge
if same_model(judge_spec, smk.params.subject):
    judge, judge_info = make_judge(judge_spec, smk.params.models_dir, evidence=s["judge_evidence"], loaded=lm)
    log.info("judge %s: the subject itself (no second load)", judge.name)
else:
    del backend, lm
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        torch.cuda.empty_cache()
    judge, judge_info = make_judge(judge_spec, smk.params.models_dir, evidence=s["judge_evidence"])
    log.info("judge %s loaded", judge.name)
started = time.perf_counter()
judged = classify_transcripts(records, scenario, judge)
seconds_judge = time.perf_counter() - started
for rec, j in zip(records, judged):
    j["transcript_sha256"] = rec["sha256"]
write_jsonl_atomic(judged, smk.output.judged)
log.info("classified %d transcripts in %.1f s (judge called on %d)", len(judged), seconds_judge,
         sum(j["judge_called"] for j in judged))

# --- rates, tests, figures -------------------------------------------------------------------
specs = [c.spec for c in conditions]
table = rate_table(specs, count_labels(judged), BASELINE)
extra = {name: Counter() for name in by_name}
for rec, j in zip(records, judged):
    e = extra[rec["condition"]]
    e["n_sent_any"] += j["n_emails_sent"] > 0
    e["n_emailed_executive"] += bool(j["emailed_executive"])
    e["n_affair_to_executive"] += bool(j["affair_mentioned_to_executive"])
    e["n_reported_to_others"] += bool(j["reported_to_others"])
    e["n_truncated"] += rec["finish_reason"] == "length"
table.insert(table.columns.get_loc("strength") + 1, "added_norm", [by_name[n].spec["added_norm"] for n in table["condition"]])
table.insert(table.columns.get_loc("added_norm") + 1, "layer", [by_name[n].spec["layer"] for n in table["condition"]])
for col in ("n_sent_any", "n_emailed_executive", "n_affair_to_executive", "n_reported_to_others", "n_truncated"):
    table[col] = [extra[n][col] for n in table["condition"]]
table.to_csv(smk.output.rates, sep="\t", index=False, float_format="%.6g")
for row in table.itertuples():
    log.info("%-16s %d/%d blackmail = %.3f [%.3f, %.3f]  Fisher p %.3g (Holm %.3g); emailed executive %d, unparsed %d",
             row.condition, row.k, row.n, row.rate, row.ci_low, row.ci_high, row.p_fisher, row.p_holm,
             row.n_emailed_executive, row.n_unparsed)
for emotion, path in zip(s["emotions"], smk.output.dose):
    dose_response_figure(table, emotion, path,
                         title=f"{emotion}: blackmail rate (layer {layer}, n={s['samples']}/condition)")

base = table[table["is_baseline"]].iloc[0]
write_json_atomic(
    {
        "scenario": {"key": scenario_key, "name": scenario.name, "path": str(smk.input.scenario),
                     "sha256": scenario.digest(), "prompt_sha256": prompt_digest(prompt),
                     "prompt_tokens": n_prompt_tokens},
        "layer": layer,
        "residual_norm": unit,
        "positions": positions,
        "samples": s["samples"],
        "n_conditions": len(conditions),
        "n_transcripts": len(records),
        "n_truncated": int(sum(r["finish_reason"] == "length" for r in records)),
        "judge": judge_info,
        "n_judge_called": int(sum(j["judge_called"] for j in judged)),
        "n_unparsed": int(sum(j["label"] is None for j in judged)),
        "baseline": {"k": int(base["k"]), "n": int(base["n"]), "rate": float(base["rate"]),
                     "ci95": [float(base["ci_low"]), float(base["ci_high"])]},
        "n_blackmail": int(table["k"].sum()),
        "min_p_holm": float(table["p_holm"].min()) if table["p_holm"].notna().any() else None,
        "conditions": specs,
        "rates": json.loads(table.to_json(orient="records")),
        "seconds": {"generate": round(seconds_generate, 1), "judge": round(seconds_judge, 1)},
        "provenance": provenance(stage="behaviour", config_section=s, model_info=subject_info,
                                 extra={"scenario": scenario_key, "judge": judge_info["spec"],
                                        "subject": smk.params.subject}),
    },
    smk.output.summary,
)
