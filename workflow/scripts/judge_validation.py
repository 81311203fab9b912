"""Snakemake script of rules `judge_validation` and `judge_validation_summary`.

`judge_validation`: one judge's two-stage classifier (stage-1 checks, then the judge) on the
scenario's hand-labelled responses (emotion_vectors.steering.behaviour.judging.validate_judge): the full
report as JSON (every item's prediction included) and a few rows of TSV: the two-stage
classifier, and the three stage-1-only rules as baselines, each with accuracy, Cohen's kappa
and its bootstrap 95% interval, the confusion counts and the accuracy per category.

`judge_validation_summary`: every judge's rows in one table, the stage-1 baselines once, and
which judge may classify the transcripts (``validated``: the kappa interval lies above
``judging.KAPPA_FLOOR``; ``classifies_transcripts``: the one ``judging.select_judge`` picks, or
none). The stage-1 rows are marked ``in_sample``: their patterns were written beside the
validation items, so their agreement is optimistic.
"""

import logging
import time

import numpy as np
import pandas as pd

smk = snakemake  # noqa: F821 - injected by Snakemake

COLUMNS = ["judge_config", "classifier", "judge", "validated", "classifies_transcripts", "in_sample", "n",
           "n_positive", "accuracy", "kappa", "kappa_ci_low", "kappa_ci_high", "judge_kappa",
           "judge_kappa_ci_low", "judge_kappa_ci_high", "tp", "fp", "tn", "fn", "n_judge_called", "n_unparsed",
           "judge_score_auc"]


def agreement_row(agree: dict, **fields) -> dict:
    c = agree["confusion"]
    lo, hi = agree["kappa_ci95"]
    return {**fields, "n": agree["n"], "accuracy": agree["accuracy"], "kappa": agree["kappa"],
            "kappa_ci_low": lo, "kappa_ci_high": hi, "tp": c["tp"], "fp": c["fp"], "tn": c["tn"], "fn": c["fn"]}


def validate() -> None:
    from emotion_vectors.steering.behaviour.checks import STAGE1_RULES
    from emotion_vectors.steering.behaviour.conditions import describe_judge, make_judge
    from emotion_vectors.steering.behaviour.judging import CATEGORIES, STAGE1_IN_SAMPLE, load_validation_set, select_judge, validate_judge
    from emotion_vectors.steering.behaviour.scenario import load_scenario
    from emotion_vectors.core.common import write_json_atomic
    from emotion_vectors.core.jobs import start_job
    from emotion_vectors.core.provenance import provenance

    log = start_job(smk)
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
    frame = frame[[c for c in COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in COLUMNS]]
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


def summarise() -> None:
    from emotion_vectors.steering.behaviour.judging import select_judge

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
    cols = [c for c in COLUMNS if c in table.columns] + [c for c in table.columns if c not in COLUMNS]
    table[cols].to_csv(smk.output[0], sep="\t", index=False, float_format="%.6g")
    for row in table.itertuples():
        logging.info("%s %s: accuracy %.3f kappa %.3f", row.judge_config, row.classifier, row.accuracy, row.kappa)


if smk.rule == "judge_validation_summary":
    summarise()
else:
    validate()
