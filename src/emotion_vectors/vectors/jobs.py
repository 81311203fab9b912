"""The corpus diagnostics' workflow jobs (``workflow/rules/diagnostics.smk``), called by the rule's
script in ``workflow/scripts/`` with the job's Snakemake object and logger.

- ``separability_job``: can the stories' activations tell their emotions apart, and how much of
  their variance follows emotion versus topic (rule ``separability``);
- ``recognisability_job``: a judge model picks each story's emotion among distractors (rule
  ``recognisability``);
- ``diagnostics_summary_job``: the headline numbers and their claims (rule
  ``diagnostics_summary``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

# Loaded before threadpool_limits, which limits only the BLAS/OpenMP libraries already loaded:
# scipy's own OpenBLAS and sklearn's OpenMP would otherwise run unlimited (4-6x slower when the
# cores are shared).
import scipy.optimize  # noqa: F401
import sklearn.decomposition  # noqa: F401
import sklearn.linear_model  # noqa: F401
from threadpoolctl import threadpool_limits

from emotion_vectors.core.claims import draws_needed, json_safe, write_claims
from emotion_vectors.core.common import write_json_atomic, write_jsonl_atomic
from emotion_vectors.core.models import load_model
from emotion_vectors.core.provenance import provenance
from emotion_vectors.corpus.judge import (
    RECOGNISABILITY_COLUMNS,
    clear_checkpoint,
    judge_prompt,
    recognisability,
    uses_chat_template,
)
from emotion_vectors.vectors.diagnostics import (
    SEPARABILITY_COLUMNS,
    VARIANCE_COLUMNS,
    diagnostics_claims,
    headline,
    load_corpus,
    separability,
    separability_figure,
    variance_analysis,
)


def separability_job(smk: Any, log: logging.Logger) -> None:
    """Rule `separability`: can the stories' activations tell their emotions apart,
    and how much of their variance follows emotion versus topic (emotion_vectors.vectors.diagnostics)?

    ``smk``: the job's Snakemake object (its ``input``, ``output``, ``params``, ``wildcards``);
    ``log``: its logger (``core.jobs.start_job``).
    """
    p = smk.params
    s = dict(p.settings)
    started = time.perf_counter()
    need = draws_needed(0.05, 3)  # the verdict Holm-corrects three tests
    for key in ("nc_permutations", "probe_permutations"):
        if int(s[key]) < need:
            log.warning("diagnostics.separability.%s = %s: its smallest p, 1/%d, cannot go below 0.05/3 (Holm over "
                        "the verdict's three tests): its claim will be 'not testable'; use at least %d",
                        key, s[key], int(s[key]) + 1, need)
    with threadpool_limits(limits=max(1, int(smk.threads))):
        corpus = load_corpus(
            dict(zip(p.emotions, smk.input.emotions)),
            dict(zip(p.emotions, smk.input.stories)),
            max_per_emotion=s["max_per_emotion"],
            seed=int(s["seed"]),
        )
        n, n_layers, d = corpus.activations.shape
        log.info("%d stories (of %d), %d emotions, %d layers, width %d", n, sum(corpus.available.values()),
                 len(corpus.emotions), n_layers, d)
        sep_rows, sep_extra = separability(
            corpus,
            nc_permutations=int(s["nc_permutations"]),
            probe_permutations=int(s["probe_permutations"]),
            probe_folds=int(s["probe_folds"]),
            probe_C=float(s["probe_C"]),
            probe_max_dim=int(s["probe_max_dim"]),
            seed=int(s["seed"]),
            log=log.info,
        )
        sep_seconds = time.perf_counter() - started
        var_rows, var_extra = variance_analysis(corpus, n_permutations=int(s["variance_permutations"]), seed=int(s["seed"]))
    pd.DataFrame(sep_rows, columns=SEPARABILITY_COLUMNS).to_csv(smk.output.table, sep="\t", index=False, float_format="%.6g")
    pd.DataFrame(var_rows, columns=VARIANCE_COLUMNS).to_csv(smk.output.variance, sep="\t", index=False, float_format="%.6g")
    separability_figure(sep_rows, var_rows, smk.output.figure, title=f"run {smk.config['run']}: {n} stories, {len(corpus.emotions)} emotions")
    meta = {
        "n_stories": n,
        "n_available": corpus.available,
        "n_layers": n_layers,
        "hidden_size": d,
        "layers": corpus.layers,
        "max_layer_test": sep_extra,
        "variance_max_layer": var_extra,
        "seconds": round(time.perf_counter() - started, 2),
        "seconds_separability": round(sep_seconds, 2),
        "provenance": provenance(stage="separability", config_section=s),
    }
    Path(smk.output.meta).write_text(json.dumps(json_safe(meta), indent=1))
    log.info("separability done in %.1f s: %s", meta["seconds"], sep_extra)


def recognisability_job(smk: Any, log: logging.Logger) -> None:
    """Rule `recognisability`: a judge model picks each story's emotion among
    distractors (emotion_vectors.corpus.judge); one model load for the whole run, checkpointed per emotion.

    ``smk``: the job's Snakemake object (its ``input``, ``output``, ``params``, ``wildcards``);
    ``log``: its logger (``core.jobs.start_job``).
    """
    p = smk.params
    s = dict(p.settings)
    shards = {e: json.loads(Path(f).read_text(encoding="utf-8")) for e, f in zip(p.emotions, smk.input.stories)}
    lm = load_model(p.judge, p.models_dir)
    log.info("judge %s loaded in %.1f s (%s, %s)", lm.info["name"], lm.info["load_seconds"], lm.info["dtype"], lm.info["device"])
    started = time.perf_counter()
    checkpoint = Path(smk.output.stories).with_name(Path(smk.output.stories).name + ".progress")
    records, table = recognisability(
        lm.model, lm.tokenizer, shards, s, checkpoint_dir=checkpoint, judge_info=lm.info, log=log.info
    )
    seconds = time.perf_counter() - started
    pd.DataFrame(table, columns=RECOGNISABILITY_COLUMNS).to_csv(smk.output.table, sep="\t", index=False, float_format="%.6g")
    write_jsonl_atomic(records, smk.output.stories)
    chat = uses_chat_template(lm.tokenizer, s["chat_template"])
    write_json_atomic(
        {
            "judge": lm.info,
            "chat_template": chat,
            "example_prompt": judge_prompt(lm.tokenizer, "<story>", ["<a>", "<b>", "<c>", "<d>"], chat=chat, list_options=s["list_options"]) + " <candidate>",
            "n_stories": len(records),
            "seconds": round(seconds, 2),
            "overall": table[-1],
            "provenance": provenance(stage="recognisability", config_section=s, model_info=lm.info),
        },
        smk.output.meta,
    )
    clear_checkpoint(checkpoint)
    log.info("recognisability: %s/%s stories recognised (%.3f vs chance %.3f) in %.0f s",
             table[-1]["correct"], table[-1]["n"], table[-1]["share"], table[-1]["chance"], seconds)


def diagnostics_summary_job(smk: Any, log: logging.Logger) -> None:
    """Rule `diagnostics_summary`: the headline numbers of the corpus diagnostics
    (``summary.json``) and their claims (``claims.json``): each separability method and the judge's
    recognisability, Holm-corrected together, the verdict that follows, the variance shares and the
    per-emotion recognisability family (emotion_vectors.vectors.diagnostics).

    ``smk``: the job's Snakemake object (its ``input``, ``output``, ``params``, ``wildcards``);
    ``log``: its logger (``core.jobs.start_job``).
    """
    sep_meta = json.loads(Path(smk.input.separability_meta).read_text())
    recog_meta = json.loads(Path(smk.input.recognisability_meta).read_text())

    def records(path):
        return pd.read_csv(path, sep="\t").to_dict("records")

    summary = headline(
        records(smk.input.separability),
        sep_meta["max_layer_test"],
        records(smk.input.variance),
        records(smk.input.recognisability),
        var_extra=sep_meta.get("variance_max_layer"),
    )
    summary["run"] = smk.config["run"]
    summary["n_stories_separability"] = sep_meta["n_stories"]
    summary["judge"] = {k: recog_meta["judge"].get(k) for k in ("name", "path", "revision", "dtype")}
    claims = diagnostics_claims(summary)
    write_json_atomic(summary, smk.output.summary)
    write_claims(claims, smk.output.claims)
    log.info("corpus diagnostics: %s", summary["verdict"])
    for c in claims:
        log.info("claim %s: %s (p %s, adjusted %s, %s)", c.id, c.verdict, c.p, c.p_adjusted, c.correction)
