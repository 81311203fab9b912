"""The steering stage's workflow job (``workflow/rules/steering.smk``), called by the rule's script
in ``workflow/scripts/`` with the job's Snakemake object and logger: ``steering_eval_job``, the
continuation test and the steering scores with their claims (rule ``steering_eval``). Rule
``behaviour``'s job is ``behaviour.jobs``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from emotion_vectors.core.claims import write_claims
from emotion_vectors.core.common import write_json_atomic, write_jsonl_atomic
from emotion_vectors.core.models import load_model
from emotion_vectors.core.provenance import provenance
from emotion_vectors.extraction.extract import main_stored_layer
from emotion_vectors.steering.evaluate import continuation_claims, continuation_figure, continuation_test, dose_claims
from emotion_vectors.steering.readout import store_valence_direction
from emotion_vectors.steering.scores import (
    ConceptJudge,
    ScoresError,
    concept_map,
    lexicon_concept,
    load_concept_validation,
    methods_figure,
    scores_claims,
    steering_scores,
    tradeoff_figure,
    validate_concept_scorer,
)
from emotion_vectors.vectors.build import shuffled_sets
from emotion_vectors.vectors.store_layout import read_store


def steering_eval_job(smk: Any, log: logging.Logger) -> None:
    """Rule `steering_eval`: the continuation test (against the other emotions'
    vectors, shuffled-label vectors and random directions) and steering judged against prompting
    (concept, fluency, relevance and their harmonic mean; strength chosen on one half of the prompts,
    reported on the other; KL on the neutral dialogues; shuffled-label and random controls; the
    masked-VADER dose claims from the same replies), with their claims
    (emotion_vectors.steering.evaluate, emotion_vectors.steering.scores; docs/steering.md).

    ``smk``: the job's Snakemake object (its ``input``, ``output``, ``params``, ``wildcards``);
    ``log``: its logger (``core.jobs.start_job``).
    """
    s = dict(smk.params.settings)
    c, sc = s["continuation"], s["scores"]
    inp = _steering_inputs(smk, s, log)
    store, null_store, sets, layer = inp.store, inp.null_store, inp.sets, inp.layer
    lm = load_model(smk.params.subject, smk.params.models_dir)
    log.info("subject %s loaded in %.1f s", lm.info["name"], lm.info["load_seconds"])
    started = time.perf_counter()

    # ---- the concept scorer: the lexicon always; a judge where configured, once it passes ---------
    judge, judge_note, validation = _concept_scorer(smk, s, inp, lm, log)

    # ---- the continuation test ---------------------------------------------------------------
    cont = continuation_test(
        lm.model, lm.tokenizer, store, store.emotions, prompts=c["prompts"], strengths=c["strengths"], layer=layer,
        null_store=null_store, shuffle_sets=sets, n_shuffled=c["n_shuffled"], n_random=c["n_random"],
        n_permutations=s["n_permutations"], seed=s["seed"], positions=s["positions"], batch_size=s["batch_size"],
        log=log.info)
    pd.DataFrame(cont.per_emotion).to_csv(smk.output.continuation, sep="\t", index=False, float_format="%.6g")
    pd.DataFrame(cont.per_strength).to_csv(smk.output.continuation_strengths, sep="\t", index=False, float_format="%.6g")
    continuation_figure(cont.per_strength, smk.output.continuation_figure, per_emotion=cont.per_emotion,
                        null_rows=cont.null_rows)
    seconds_continuation = time.perf_counter() - started

    # ---- steering against prompting ------------------------------------------------------------
    res = steering_scores(
        lm.model, lm.tokenizer, store, sc["emotions"], prompts=sc["prompts"], strengths=sc["strengths"],
        test_strength=sc["test_strength"], samples=sc["samples"], max_new_tokens=sc["max_new_tokens"],
        temperature=sc["temperature"], instruction=sc["instruction"], concept=sc.get("concept_map"),
        mask_words=store.emotions, neutral_texts=inp.neutral_texts, kl_tokens=sc["kl_tokens"], kl_null=sc["kl_null"], n_other=sc["n_other"],
        relevance_tokens=sc["relevance_tokens"],
        controls_prompts=sc["controls_prompts"], signs=inp.signs, layer=layer, null_store=null_store, shuffle_sets=sets,
        n_shuffled=sc["n_shuffled"], n_random=sc["n_random"], n_permutations=s["n_permutations"], seed=s["seed"],
        positions=s["positions"], batch_size=s["batch_size"], judge=judge, log=log.info)
    _write_scores(smk, sc, res, cont, log)

    claims = (continuation_claims(cont.summary, cont.per_emotion, figure=str(smk.output.continuation_figure))
              + scores_claims(res.summary, figure=str(smk.output.methods_figure))
              + dose_claims(res.dose, figure=str(smk.output.tradeoff_figure)))
    write_claims(claims, smk.output.claims)
    for cl in claims:
        log.info("claim %s: %s (p %s, adjusted %s, %s)", cl.id, cl.verdict, cl.p, cl.p_adjusted, cl.note)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    log.info("steering_eval: continuation %.0f s, scores %.0f s, %.0f s in all (CPU time %.0f s); load average %s",
             seconds_continuation, res.summary["seconds"], seconds, usage.ru_utime + usage.ru_stime,
             " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    write_json_atomic(
        {
            "layer": layer,
            "residual_norm": float(store.residual_norm[store.layers.index(layer)]) if store.residual_norm is not None else None,
            "n_shuffles_available": len(sets),
            "continuation": cont.summary,
            "scores": res.summary,
            "dose_response": res.dose,
            "concept_scorer": {"used": res.summary["concept_scorer"], "note": judge_note, "validation": validation},
            "claims": {cl.id: cl.verdict for cl in claims},
            "seconds": {"continuation": round(seconds_continuation, 1), "scores": res.summary["seconds"],
                        "total": round(seconds, 1), "cpu": round(usage.ru_utime + usage.ru_stime, 1),
                        "load_average": list(os.getloadavg())},
            "provenance": provenance(stage="steering_eval", config_section=s, model_info=lm.info),
        },
        smk.output.summary,
    )


@dataclass
class _Inputs:
    """What rule `steering_eval` reads and checks before the model is loaded."""

    store: Any
    null_store: Any
    sets: list
    layer: int
    cats: dict[str, str]
    validation_items: list
    neutral_texts: list[str]
    signs: dict[str, int]


def _steering_inputs(smk: Any, s: dict[str, Any], log: logging.Logger) -> _Inputs:
    """Read the stores, the neutral dialogues and the labelled concept sentences, and check the
    settings against them (``SystemExit`` naming the setting at fault): everything checked before
    the model is loaded."""
    c, sc = s["continuation"], s["scores"]
    store = read_store(smk.input.vectors)
    null_store = read_store(smk.input.shuffled)
    sets = shuffled_sets(null_store)
    # Everything checked before the model is loaded.
    missing = [e for e in sc["emotions"] if e not in store.emotions]
    if missing:
        raise SystemExit(f"steering.scores.emotions {missing} are not among the run's emotions {store.emotions}")
    for key, section in (("continuation", c), ("scores", sc)):
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
    try:
        cats = concept_map(sc["emotions"], sc.get("concept_map"))
        if float(sc["test_strength"]) not in [float(x) for x in sc["strengths"]]:
            raise ScoresError(f"steering.scores.test_strength {sc['test_strength']} is not one of the strengths "
                              f"{sc['strengths']}")
        validation_items = load_concept_validation(sc["validation"])
    except (ScoresError, OSError) as err:
        raise SystemExit(str(err)) from None
    neutral = json.loads(open(smk.input.neutral).read())
    neutral_texts = [d["text"] for d in neutral.get("dialogues", []) if d.get("text")][: sc["kl_texts"]]
    if not neutral_texts:
        raise SystemExit(f"{smk.input.neutral} holds no dialogue text for the KL divergence")
    direction = store_valence_direction(store, layer, pleasant=s["readout"]["pleasant"],
                                        unpleasant=s["readout"]["unpleasant"])
    pleasant, unpleasant = set(s["readout"]["pleasant"]), set(s["readout"]["unpleasant"])
    signs = {e: (1 if e in pleasant else -1 if e in unpleasant else 0) for e in sc["emotions"]}
    log.info("layer %d (residual norm %.1f); %d shuffled-label sets; concept categories %s; expected signs %s; "
             "load average %s", layer,
             store.residual_norm[store.layers.index(layer)] if store.residual_norm is not None else float("nan"),
             len(sets), cats, signs, " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    return _Inputs(store=store, null_store=null_store, sets=sets, layer=layer, cats=cats,
                   validation_items=validation_items, neutral_texts=neutral_texts, signs=signs)


def _concept_scorer(smk: Any, s: dict[str, Any], inp: _Inputs, lm: Any,
                    log: logging.Logger) -> tuple[ConceptJudge | None, str, list[dict]]:
    """The concept scorer: the lexicon always validated on the labelled sentences; a judge where
    configured, used once it passes. Writes the validation table; returns the judge (or ``None``),
    the note saying which scorer is used, and the validation results."""
    sc, store, cats, validation_items = s["scores"], inp.store, inp.cats, inp.validation_items
    validation = [validate_concept_scorer(lambda texts, e: lexicon_concept(texts, cats[e], mask_words=[]),
                                          validation_items, sc["emotions"], mask_words=store.emotions, threshold=0.5,
                                          name="nrc-lexicon", seed=s["seed"])]
    judge = None
    judge_note = "no judge configured: the concept score is the NRC lexicon's (masked)"
    if sc.get("judge"):
        from emotion_vectors.corpus.backends import HFChatBackend, make_backend
        from emotion_vectors.steering.behaviour.conditions import describe_judge, same_model

        spec = dict(sc["judge"])
        backend = (HFChatBackend(lm.model, lm.tokenizer, name=spec.get("name")) if same_model(spec, smk.params.subject)
                   else make_backend(spec, smk.params.models_dir))
        candidate = ConceptJudge(backend, max_tokens=int(spec.get("max_tokens", 256)), seed=s["seed"])
        res = validate_concept_scorer(candidate.score, validation_items, sc["emotions"], mask_words=store.emotions,
                                      threshold=0.5, name=candidate.name, seed=s["seed"])
        res["spec"] = describe_judge(spec)
        validation.append(res)
        if res["passed"]:
            judge = candidate
            judge_note = f"judge {candidate.name} validated ({res['reason']}): it scores the concept"
        else:
            judge_note = (f"judge {candidate.name} not validated ({res['reason']}): the concept score is the NRC "
                          "lexicon's (masked)")
    for v in validation:
        log.info("concept scorer %s on %d labelled pairs: accuracy %.2f, kappa %.2f [%.2f, %.2f], AUROC %.2f; %s",
                 v["scorer"], v["n_pairs"], v["accuracy"], v["kappa"], *v["kappa_ci95"], v["auroc"],
                 "passes" if v["passed"] else "does not pass")
    log.info("%s", judge_note)
    pd.DataFrame([{k: (json.dumps(x) if isinstance(x, (list, dict)) else x) for k, x in v.items()} for v in validation]
                 ).to_csv(smk.output.validation, sep="\t", index=False, float_format="%.4g")
    return judge, judge_note, validation


def _write_scores(smk: Any, sc: dict[str, Any], res: Any, cont: Any, log: logging.Logger) -> None:
    """Write the steering scores' generations, table (with the continuation test's line per
    emotion), trade-off curves, dose slopes and figures; log the methods' rows."""
    write_jsonl_atomic((g.record() for g in res.generations), smk.output.generations)
    # the continuation test, one line per emotion, with its corrected null
    cont_rows = [{"emotion": r["emotion"], "method": f"continuation (own word, {cont.summary['test_strength']:g})",
                  "strength": cont.summary["test_strength"], "n": cont.summary["n_shuffled"], "score": r["own_z"],
                  "p_vs_null": r["p_shuffled"], "p_vs_null_holm": r["p_shuffled_holm"],
                  "null": "shuffled-label vectors (own word's z within the vector's row)"}
                 for r in cont.per_emotion if r["emotion"] in sc["emotions"]]
    pd.DataFrame(res.table + cont_rows).to_csv(smk.output.scores, sep="\t", index=False, float_format="%.6g")
    pd.DataFrame(res.curves).to_csv(smk.output.tradeoff, sep="\t", index=False, float_format="%.6g")
    pd.DataFrame(res.dose["slopes"]).to_csv(smk.output.slopes, sep="\t", index=False, float_format="%.6g")
    tradeoff_figure(res.curves, smk.output.tradeoff_figure)
    methods_figure(res.table, smk.output.methods_figure)
    for row in res.table:
        if row["method"] in ("prompting", "steering", "both"):
            log.info("%-8s %-9s score %.3f [%.3f, %.3f] (concept %.3f, fluency %.3f, relevance %.3f) at %g%s", row["emotion"],
                     row["method"], row["score"], row["score_lo"], row["score_hi"], row["concept"], row["fluency"],
                     row["relevance"], row["strength"],
                     f"; vs prompting {row['vs_prompting']:+.3f}, p {row['p_vs_prompting']:.3g} (Holm "
                     f"{row['p_vs_prompting_holm']:.3g})" if "vs_prompting" in row else "")
