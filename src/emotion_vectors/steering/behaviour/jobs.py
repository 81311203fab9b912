"""The behaviour experiment's workflow jobs (``workflow/rules/behaviour.smk``), called by the rules'
scripts in ``workflow/scripts/``.

``behaviour_job`` (rule ``behaviour``, called with the rule's inputs, outputs and params): sample
one scenario under every steering condition, classify every transcript in two stages with the
validated judge, and write rates, tests, claims and dose-response figures (docs/behaviour.md).
``judge_validation_job`` and ``judge_validation_summary_job`` (rules ``judge_validation`` and
``judge_validation_summary``, called with the job's Snakemake object): each judge's agreement with
the hand-labelled responses, and which judge may classify.

The judge is chosen from the scenario's judge validation (input ``validation``, the table of
rule judge_validation_summary) by ``judging.select_judge``: only a judge whose kappa interval
lies above ``judging.KAPPA_FLOOR`` classifies. With none (or no validation set for the
scenario), no judge is loaded, no rate is produced: ``rates.tsv`` has empty rate columns and the
stage-1 facts per condition, the figures show a stage-1 fact (labelled as such), and every claim
in ``claims.json`` is "not testable" with the reason.

Every condition is sampled at once (``batched``): rows of (condition, sample) in passes of
``batch_size``, one condition's steers per row, the scenario's prompt run once below the steered
block.

Transcripts are appended to ``transcripts.jsonl.partial`` beside the outputs (not an output, so
Snakemake leaves it alone when a job fails or reruns): a killed or failed job resumes from it, and
a rerun with more samples adds only the missing ones. A partial made with other settings (prompt,
condition, vector store, token limit, temperature, seed) is moved aside to ``.stale`` and the
sampling starts over. The finished file is copied to ``transcripts.jsonl``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...core.claims import write_claims
from ...core.common import write_json_atomic, write_jsonl_atomic
from ...core.models import load_model
from ...core.provenance import provenance
from ...corpus.backends import HFChatBackend, has_chat_template
from ...vectors.store_layout import read_store
from .batched import run_scenario_rows
from .checks import STAGE1_RULES
from .conditions import (
    BASELINE,
    build_conditions,
    check_emotions,
    describe_judge,
    make_judge,
    resolve_layer,
    same_model,
)
from .judging import CATEGORIES, STAGE1_IN_SAMPLE, load_validation_set, select_judge, validate_judge
from .run import ResumeMismatch, check_transcripts, classify_transcripts, discard_resume_files
from .scenario import load_scenario, prompt_digest, render_prompt
from .stats import STAGE1_FACTS, behaviour_claims, count_labels, dose_response_figure, rate_table, stage1_counts


def behaviour_job(
    *,
    settings: dict[str, Any],
    scenario_key: str,
    scenario_path: str,
    vectors: str,
    validation: str | Sequence[str] | None,
    judges: dict[str, dict[str, Any]],
    subject: dict[str, Any],
    models_dir: str,
    transcripts: str,
    judged_path: str,
    rates: str,
    dose: Sequence[str],
    claims_path: str,
    summary: str,
    log: logging.Logger,
) -> None:
    """Run rule ``behaviour`` for one scenario (see the module's docstring).

    Args:
        settings: the run's ``behaviour`` settings (emotions, magnitudes, random_directions,
            samples, batch_size, max_new_tokens, temperature, layer, positions, judge_evidence,
            seed).
        scenario_key: the scenario's key in the config (the rule's wildcard).
        scenario_path: the scenario file.
        vectors: the run's vector store.
        validation: rule judge_validation_summary's table (a path, or a list of one path or none).
        judges: the configured judges by name; subject: the subject model spec; models_dir: where
            prepared models live.
        transcripts, judged_path, rates, dose, claims_path, summary: the outputs (``dose``: one
            figure per emotion, in the settings' order).
        log: the job's logger.

    Raises:
        SystemExit: settings or a validation table the run cannot use (before the model loads).
    """
    s = dict(settings)

    # --- everything that can be wrong is checked before the model is loaded -----------------------
    scenario, layer, conditions, unit = _behaviour_conditions(s, scenario_path, vectors, dose)
    selection, judge_name = _judge_selection(validation, judges, log)
    _log_plan(scenario_key, scenario, layer, unit, conditions, s, log)

    # --- sampling --------------------------------------------------------------------------------
    lm = load_model(subject, models_dir)
    log.info("subject %s loaded in %.1f s (%s, %s)", lm.info["name"], lm.info["load_seconds"], lm.info["dtype"],
             lm.info["device"])
    subject_info = lm.info
    backend = HFChatBackend(lm.model, lm.tokenizer, name=subject["name"])
    prompt = render_prompt(lm.tokenizer, scenario)
    # Tokenised as HFChatBackend.generate_text does (special tokens only without a chat template).
    n_prompt_tokens = len(lm.tokenizer(prompt, add_special_tokens=not has_chat_template(lm.tokenizer))["input_ids"])
    log.info("prompt: %d tokens, sha256 %s", n_prompt_tokens, prompt_digest(prompt)[:12])
    partial = Path(transcripts + ".partial")
    records, seconds_generate = _sample_transcripts(lm, backend, scenario, conditions, s, subject, partial,
                                                    transcripts, log)

    # --- classification (the judge is never steered) -------------------------------------------
    started = time.perf_counter()
    if judge_name is None:
        judge_info = {"judge": None, "spec": None, "reason": selection["reason"]}
        judged = check_transcripts(records, scenario)
        log.warning("no validated judge: stage-1 checks only, no blackmail rates")
    else:
        judge_spec = judges[judge_name]
        if same_model(judge_spec, subject):
            judge, judge_info = make_judge(judge_spec, models_dir, evidence=s["judge_evidence"], loaded=lm)
            log.info("judge %s: the subject itself (no second load)", judge.name)
        else:
            del backend, lm
            gc.collect()
            with contextlib.suppress(Exception):
                import torch

                torch.cuda.empty_cache()
            judge, judge_info = make_judge(judge_spec, models_dir, evidence=s["judge_evidence"])
            log.info("judge %s loaded", judge.name)
        started = time.perf_counter()
        judged = classify_transcripts(records, scenario, judge)
    seconds_judge = time.perf_counter() - started
    for rec, j in zip(records, judged):
        j["transcript_sha256"] = rec["sha256"]
    write_jsonl_atomic(judged, judged_path)
    log.info("classified %d transcripts in %.1f s (judge called on %d)", len(judged), seconds_judge,
             sum(j["judge_called"] for j in judged))

    # --- rates, tests, figures, claims ----------------------------------------------------------
    table, facts = _rate_table(conditions, records, judged, judge_name, rates, log)
    claims = _figures_and_claims(table, s, layer, dose, judge_name, scenario_key, selection, claims_path, log)
    write_json_atomic(
        _behaviour_summary(
            scenario_key=scenario_key, scenario=scenario, scenario_path=scenario_path, prompt=prompt,
            n_prompt_tokens=n_prompt_tokens, layer=layer, unit=unit, s=s, conditions=conditions, records=records,
            judged=judged, judge_name=judge_name, judge_info=judge_info, selection=selection, table=table,
            facts=facts, claims=claims, seconds_generate=seconds_generate, seconds_judge=seconds_judge,
            subject_info=subject_info, subject=subject),
        summary,
    )
    # Every output is written: the resume file (and a stale one moved aside) has done its work.
    for leftover in discard_resume_files(partial):
        log.info("removed the resume file %s", leftover)


def _behaviour_conditions(s: dict[str, Any], scenario_path: str, vectors: str,
                          dose: Sequence[str]) -> tuple[Any, int, list, float]:
    """The scenario, the steering layer, the conditions and the layer's residual norm
    (``SystemExit`` for settings the run cannot use)."""
    scenario = load_scenario(scenario_path)
    store = read_store(vectors)
    try:
        check_emotions(store, s["emotions"])
        layer = resolve_layer(store, s["layer"])
        conditions = build_conditions(store, s["emotions"], s["magnitudes"], random_directions=s["random_directions"],
                                      layer=layer, seed=s["seed"])
    except ValueError as err:  # SteeringUnitError (no measured residual norm) included
        raise SystemExit(str(err)) from None
    if len(dose) != len(s["emotions"]):
        raise SystemExit(f"{len(dose)} dose figures declared for emotions {s['emotions']}")
    unit = float(store.residual_norm[store.layers.index(layer)])
    return scenario, layer, conditions, unit


def _judge_selection(validation: str | Sequence[str] | None, judges: dict[str, dict[str, Any]],
                     log: logging.Logger) -> tuple[dict[str, Any], str | None]:
    """Which judge may classify (rule judge_validation_summary's table): the selection and the
    selected judge's name (``None``: no judge)."""
    # the rule's input function gives a list: one table, or none for a scenario without a labelled set
    validation_table = (str(validation) if isinstance(validation, str) else (str(validation[0]) if validation else None))
    if validation_table:
        vt = pd.read_csv(validation_table, sep="\t")
        selection = select_judge(vt[vt["classifier"] == "two_stage"].to_dict("records"))
    else:
        selection = select_judge([])
    selection["validation_table"] = str(validation_table) if validation_table else None
    judge_name = selection["selected"]
    if judge_name is not None and judge_name not in judges:
        raise SystemExit(f"the validation table {validation_table} selects judge {judge_name!r}, which is not in "
                         f"behaviour.judges {sorted(judges)}: rerun judge_validation_summary")
    (log.info if judge_name else log.warning)("judge selection: %s", selection["reason"])
    return selection, judge_name


def _log_plan(scenario_key: str, scenario: Any, layer: int, unit: float, conditions: Sequence[Any],
              s: dict[str, Any], log: logging.Logger) -> None:
    """Log the scenario, the sampling settings and every condition's strength."""
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


def _sample_transcripts(lm: Any, backend: Any, scenario: Any, conditions: Sequence[Any], s: dict[str, Any],
                        subject: dict[str, Any], partial: Path, transcripts: str,
                        log: logging.Logger) -> tuple[list[dict], float]:
    """Sample every condition (resuming from ``partial``; a partial made with other settings is
    moved aside to ``.stale`` and the sampling starts over), write the transcripts; returns them
    and the seconds taken."""
    subject_info = lm.info
    positions = s["positions"]
    started = time.perf_counter()

    # The subject's identity goes into every recorded condition, so that a partial file made by
    # another model (same run name) is never resumed.
    run_specs = [{**c.spec, "subject": f"{subject_info['name']}@{subject_info['revision']}"} for c in conditions]

    def sample():
        # Every condition at once: rows of (condition, sample) mixed in passes of batch_size, each row
        # with its condition's steers (steer.steering_rows), the scenario's prompt run once below the
        # steered block (steer.generate_rows); positions="generated" steers only the new tokens.
        return run_scenario_rows(
            lm.model, lm.tokenizer, scenario, run_specs, {c.name: list(c.steers) for c in conditions},
            n_samples=s["samples"], seed=s["seed"], out_jsonl=partial, max_new_tokens=s["max_new_tokens"],
            temperature=s["temperature"], progress=log.info, rows_per_pass=s["batch_size"], positions=positions,
            top_p=backend.top_p, model_name=subject["name"],
        )

    try:
        records = sample()
    except ResumeMismatch as err:
        stale = partial.with_name(partial.name + ".stale")
        log.warning("%s; moving it to %s and starting over", err, stale)
        os.replace(partial, stale)
        records = sample()
    seconds_generate = time.perf_counter() - started
    write_jsonl_atomic(records, transcripts)
    log.info("%d transcripts in %.1f s (%d cut at max_new_tokens); load average %s", len(records), seconds_generate,
             sum(r["finish_reason"] == "length" for r in records), " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    return records, seconds_generate


def _rate_table(conditions: Sequence[Any], records: Sequence[dict], judged: Sequence[dict], judge_name: str | None,
                rates: str, log: logging.Logger) -> tuple[pd.DataFrame, dict]:
    """The rates table (blackmail rates and tests with a judge; the stage-1 facts always), written
    to ``rates`` and logged; returns it and the stage-1 facts per condition."""
    by_name = {c.name: c for c in conditions}
    specs = [c.spec for c in conditions]
    table = rate_table(specs, count_labels(judged) if judge_name else {}, BASELINE)
    facts = stage1_counts(judged)
    table.insert(table.columns.get_loc("strength") + 1, "added_norm", [by_name[n].spec["added_norm"] for n in table["condition"]])
    table.insert(table.columns.get_loc("added_norm") + 1, "layer", [by_name[n].spec["layer"] for n in table["condition"]])
    table.insert(table.columns.get_loc("is_baseline") + 1, "judge", judge_name or "none (no validated judge)")
    for col in ("n_transcripts", *STAGE1_FACTS):
        table[col] = [facts.get(n, {}).get(col, 0) for n in table["condition"]]
    truncated = Counter(r["condition"] for r in records if r["finish_reason"] == "length")
    table["n_truncated"] = [truncated[n] for n in table["condition"]]
    table.to_csv(rates, sep="\t", index=False, float_format="%.6g")
    for row in table.itertuples():
        if judge_name:
            log.info("%-16s %d/%d blackmail = %.3f [%.3f, %.3f]  Fisher p %.3g (Holm %.3g); emailed executive %d, unparsed %d",
                     row.condition, row.k, row.n, row.rate, row.ci_low, row.ci_high, row.p_fisher, row.p_holm,
                     row.n_emailed_executive, row.n_unparsed)
        else:
            log.info("%-16s stage-1 facts (no validated judge, not blackmail rates): of %d transcripts, %d sent email, "
                     "%d emailed the executive, %d mentioned the affair to the executive, %d with leverage patterns",
                     row.condition, row.n_transcripts, row.n_sent_any, row.n_emailed_executive, row.n_affair_to_executive,
                     row.n_leverage_to_executive)
    return table, facts


def _figures_and_claims(table: pd.DataFrame, s: dict[str, Any], layer: int, dose: Sequence[str],
                        judge_name: str | None, scenario_key: str, selection: dict[str, Any], claims_path: str,
                        log: logging.Logger) -> list:
    """One dose-response figure per emotion (the blackmail rate, or without a judge a labelled
    stage-1 fact) and the claims, written and logged."""
    for emotion, path in zip(s["emotions"], dose):
        if judge_name:
            dose_response_figure(table, emotion, path,
                                 title=f"{emotion}: blackmail rate (layer {layer}, n={s['samples']}/condition)")
        else:
            dose_response_figure(table, emotion, path, k_col="n_emailed_executive", n_col="n_transcripts",
                                 ylabel="stage-1 fact: emailed the executive (Wilson 95% CI)",
                                 title=(f"{emotion}: NO VALIDATED JUDGE - stage-1 fact only,\n"
                                        f"not a blackmail rate (layer {layer}, n={s['samples']}/condition)"))
    claims = behaviour_claims(table, scenario_key, selection, figures=dict(zip(s["emotions"], map(str, dose))))
    write_claims(claims, claims_path)
    for c in claims:
        log.info("claim %s: %s (p %s, Holm %s)%s", c.id, c.verdict, c.p, c.p_adjusted, f"; {c.note}" if c.note else "")
    return claims


def _behaviour_summary(*, scenario_key: str, scenario: Any, scenario_path: str, prompt: str, n_prompt_tokens: int,
                       layer: int, unit: float, s: dict[str, Any], conditions: Sequence[Any],
                       records: Sequence[dict], judged: Sequence[dict], judge_name: str | None,
                       judge_info: dict[str, Any], selection: dict[str, Any], table: pd.DataFrame, facts: dict,
                       claims: Sequence[Any], seconds_generate: float, seconds_judge: float,
                       subject_info: dict[str, Any], subject: dict[str, Any]) -> dict[str, Any]:
    """The job's ``summary.json``: the scenario, the settings, the judge and its selection, the
    headline, the baseline, the stage-1 facts, the claims, the rates and the provenance."""
    base = table[table["is_baseline"]].iloc[0]
    facts_meaning = {"stage1_facts": STAGE1_FACTS, "meaning": "stage-1 facts about what was sent, not blackmail rates",
                     "leverage_patterns": STAGE1_IN_SAMPLE}
    return {
        "scenario": {"key": scenario_key, "name": scenario.name, "path": str(scenario_path),
                     "sha256": scenario.digest(), "prompt_sha256": prompt_digest(prompt),
                     "prompt_tokens": n_prompt_tokens},
        "layer": layer,
        "residual_norm": unit,
        "positions": s["positions"],
        "samples": s["samples"],
        "n_conditions": len(conditions),
        "n_transcripts": len(records),
        "n_truncated": int(sum(r["finish_reason"] == "length" for r in records)),
        "judge": judge_info,
        "judge_selection": selection,
        "rates_produced": judge_name is not None,
        "headline": (f"judge {judge_name} (validated: {selection['reason']})" if judge_name else
                    f"no validated judge: {selection['reason']}. Only stage-1 facts are reported; they are "
                    "not blackmail rates."),
        "n_judge_called": int(sum(j["judge_called"] for j in judged)),
        "n_unparsed": int(sum(j["judge_called"] and j["label"] is None for j in judged)),
        "baseline": ({"k": int(base["k"]), "n": int(base["n"]), "rate": float(base["rate"]),
                      "ci95": [float(base["ci_low"]), float(base["ci_high"])],
                      "cp95": [float(base["cp_low"]), float(base["cp_high"])]} if judge_name else None),
        "n_blackmail": int(table["k"].sum()) if judge_name else None,
        "min_p_holm": float(table["p_holm"].min()) if judge_name and table["p_holm"].notna().any() else None,
        "stage1": {**facts_meaning, "per_condition": {n: facts.get(n, {}) for n in table["condition"]}},
        "claims": [c.to_dict() for c in claims],
        "conditions": [c.spec for c in conditions],
        "rates": json.loads(table.to_json(orient="records")),
        "seconds": {"generate": round(seconds_generate, 1), "judge": round(seconds_judge, 1)},
        "provenance": provenance(stage="behaviour", config_section=s, model_info=subject_info,
                                 extra={"scenario": scenario_key, "judge": judge_info["spec"],
                                        "subject": subject}),
    }


# --------------------------------------------------------------------------- judge validation

#: The columns of the judge validation tables, in order (others follow).
#: The columns of the judge validation tables, in this order (any others after them).
VALIDATION_COLUMNS = ["judge_config", "classifier", "judge", "validated", "classifies_transcripts", "in_sample",
                      "n", "n_positive", "accuracy", "kappa", "kappa_ci_low", "kappa_ci_high", "judge_kappa",
                      "judge_kappa_ci_low", "judge_kappa_ci_high", "tp", "fp", "tn", "fn", "n_judge_called",
                      "n_unparsed", "judge_score_auc"]


def agreement_row(agree: dict, **fields) -> dict:
    c = agree["confusion"]
    lo, hi = agree["kappa_ci95"]
    return {**fields, "n": agree["n"], "accuracy": agree["accuracy"], "kappa": agree["kappa"],
            "kappa_ci_low": lo, "kappa_ci_high": hi, "tp": c["tp"], "fp": c["fp"], "tn": c["tn"], "fn": c["fn"]}


def judge_validation_job(smk: Any, log: logging.Logger) -> None:
    """Rule ``judge_validation``: one judge's two-stage classifier (stage-1 checks, then the judge)
    on the scenario's hand-labelled responses (``judging.validate_judge``): the full report as JSON
    (every item's prediction included) and a few rows of TSV: the two-stage classifier, and the
    three stage-1-only rules as baselines, each with accuracy, Cohen's kappa and its bootstrap 95%
    interval, the confusion counts and the accuracy per category.

    ``smk``: the job's Snakemake object (its ``input``, ``output``, ``params``, ``wildcards``);
    ``log``: its logger (``core.jobs.start_job``).
    """
    spec = smk.params.judge
    scenario = load_scenario(smk.input.scenario)
    items = load_validation_set(smk.input.labelled)
    log.info("validating judge %s on %d labelled responses (%d positive) of scenario %s",
             spec["name"], len(items), sum(it["label"] for it in items), smk.wildcards.scenario)
    judge, info = make_judge(spec, smk.params.models_dir, evidence=smk.params.evidence)
    started = time.perf_counter()
    report = validate_judge(judge, scenario, items, seed=smk.params.seed)
    seconds = time.perf_counter() - started
    ts = report["two_stage"]
    log.info("%s: accuracy %.3f, kappa %.3f [%.3f, %.3f], TP/FP/TN/FN %s, unparsed %d, score AUC %.3f, in %.1f s",
             report["judge"], ts["accuracy"], ts["kappa"], *ts["kappa_ci95"],
             "/".join(str(ts["confusion"][k]) for k in ("tp", "fp", "tn", "fn")), report["n_unparsed"],
             report["judge_score_auc"]["auc"], seconds)

    categories = [c for c in CATEGORIES if c in report["per_category"]]
    js = report["judge_stage"]
    judge_cols = {"judge_kappa": js["kappa"], "judge_kappa_ci_low": js["kappa_ci95"][0],
                  "judge_kappa_ci_high": js["kappa_ci95"][1]}
    gate = select_judge([{"judge_config": spec["name"], "kappa": ts["kappa"], "kappa_ci_low": ts["kappa_ci95"][0],
                          "kappa_ci_high": ts["kappa_ci95"][1], **judge_cols}])
    log.info("gate: %s", gate["judges"][0]["why"] + (" - validated" if gate["selected"] else " - NOT validated"))
    rows = [agreement_row(ts, judge_config=spec["name"], classifier="two_stage", judge=report["judge"],
                          validated=gate["selected"] is not None, in_sample=False, **judge_cols,
                          n_positive=report["n_positive"], n_judge_called=report["n_judge_called"],
                          n_unparsed=report["n_unparsed"], judge_score_auc=report["judge_score_auc"]["auc"],
                          **{f"acc_{c}": report["per_category"][c]["accuracy"] for c in categories})]
    for name, rule in STAGE1_RULES.items():
        per_cat = {}
        for c in categories:
            its = [r for r in report["items"] if r["category"] == c]
            per_cat[f"acc_{c}"] = float(np.mean([bool(rule(r)) == r["label"] for r in its]))
        rows.append(agreement_row(report["stage1_baselines"][name], judge_config=spec["name"],
                                  classifier=f"stage1:{name}", judge="", validated=False, in_sample=True,
                                  n_positive=report["n_positive"], **per_cat))
        log.info("stage-1 baseline %s (in-sample): accuracy %.3f, kappa %.3f", name,
                 report["stage1_baselines"][name]["accuracy"], report["stage1_baselines"][name]["kappa"])
    frame = pd.DataFrame(rows)
    frame = frame[[c for c in VALIDATION_COLUMNS if c in frame.columns]
                  + [c for c in frame.columns if c not in VALIDATION_COLUMNS]]
    frame.to_csv(smk.output.rows, sep="\t", index=False, float_format="%.6g")
    write_json_atomic(
        {
            **report,
            "gate": gate,
            "stage1_baselines_note": STAGE1_IN_SAMPLE,
            "judge_config": spec["name"],
            "scenario_key": smk.wildcards.scenario,
            "scenario_sha256": scenario.digest(),
            "validation_set": str(smk.input.labelled),
            "judge_info": info,
            "seconds": round(seconds, 1),
            "provenance": provenance(stage="judge_validation",
                                     config_section={"judge": describe_judge(spec), "evidence": smk.params.evidence,
                                                     "seed": smk.params.seed},
                                     model_info=info.get("model")),
        },
        smk.output.json,
    )


def judge_validation_summary_job(smk: Any) -> None:
    """Rule ``judge_validation_summary``: every judge's rows in one table, the stage-1 baselines
    once, and which judge may classify the transcripts (``validated``: the kappa interval lies
    above ``judging.KAPPA_FLOOR``; ``classifies_transcripts``: the one ``judging.select_judge``
    picks, or none). The stage-1 rows are marked ``in_sample``: their patterns were written beside
    the validation items, so their agreement is optimistic. Logs to the rule's log file
    (``smk.log[0]``).
    """
    logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
    frames = [pd.read_csv(p, sep="\t", keep_default_na=False, na_values=["nan", "NaN", ""]) for p in smk.input]
    two_stage = pd.concat([f[f["classifier"] == "two_stage"] for f in frames], ignore_index=True)
    selection = select_judge(two_stage.to_dict("records"))
    two_stage["validated"] = [j["validated"] for j in selection["judges"]]
    two_stage["classifies_transcripts"] = two_stage["judge_config"] == selection["selected"]
    two_stage["in_sample"] = False
    logging.info("judge selection: %s", selection["reason"])
    # The stage-1 rules do not depend on the judge: one copy of them (from the first judge's file).
    stage1 = frames[0][frames[0]["classifier"] != "two_stage"].copy()
    stage1["judge_config"] = ""
    stage1["validated"] = False
    stage1["classifies_transcripts"] = False
    stage1["in_sample"] = True
    table = pd.concat([two_stage, stage1], ignore_index=True)
    cols = ([c for c in VALIDATION_COLUMNS if c in table.columns]
            + [c for c in table.columns if c not in VALIDATION_COLUMNS])
    table[cols].to_csv(smk.output[0], sep="\t", index=False, float_format="%.6g")
    for row in table.itertuples():
        logging.info("%s %s: accuracy %.3f kappa %.3f", row.judge_config, row.classifier, row.accuracy, row.kappa)
