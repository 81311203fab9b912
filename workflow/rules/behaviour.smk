# Behaviour experiment (emotion_vectors.steering.behaviour; docs/behaviour.md): does steering with an
# emotion vector change what the subject does in a scenario where a harmful action (blackmail)
# is available? One job per scenario: one load of the subject, every condition sampled (the
# baseline, each emotion at +m and -m, random directions of the same norm), every transcript
# classified in two stages, rates with Wilson intervals and Fisher's tests against the baseline.
# Every judge is validated on the scenario's hand-labelled responses (one job per judge); the
# behaviour job reads that validation and classifies with a validated judge only (kappa interval
# above 0.2, judging.select_judge). With none, it reports stage-1 facts, no rates, and claims
# nothing ("not testable").

from emotion_vectors.steering.behaviour.conditions import same_model

BEHAVIOUR = config["behaviour"]
BEH_DIR = f"{RESULTS}/behaviour"
BEH_SCENARIOS = BEHAVIOUR["scenarios"]  # name -> scenario file
BEH_VALIDATION = BEHAVIOUR["validation"]  # scenario name -> labelled responses
BEH_JUDGES = {j["name"]: j for j in BEHAVIOUR_JUDGES}  # the validated one classifies (judging.select_judge)
BEH_EMOTION_SLUGS = [slug(e) for e in BEHAVIOUR["emotions"]]


def _behaviour_checks():
    """What the schema cannot say, checked before any job (errors name the key)."""
    problems = []
    if len(BEH_JUDGES) != len(BEHAVIOUR_JUDGES):
        problems.append(f"behaviour.judges: names must be unique, got {[j['name'] for j in BEHAVIOUR_JUDGES]}")
    for j in BEHAVIOUR_JUDGES:
        for role, m in (("generator", GEN), ("subject", SUBJECT), ("selector", SELECTOR), ("judge", JUDGE)):
            if j.get("gguf") and m.get("gguf") and m["name"] == j["name"] and m["gguf"] != j["gguf"]:
                problems.append(
                    f"behaviour.judges: {j['name']!r} is also the name of models.{role} with another "
                    "GGUF file; a packaged model is prepared into results/models/<name>: rename one"
                )
                break
    unknown = sorted(set(BEH_VALIDATION) - set(BEH_SCENARIOS))
    if unknown:
        problems.append(f"behaviour.validation: {unknown} are not scenarios (behaviour.scenarios: {sorted(BEH_SCENARIOS)})")
    for key, files in (("scenarios", BEH_SCENARIOS), ("validation", BEH_VALIDATION)):
        for name, path in files.items():
            if not (Path(workflow.basedir) / path).is_file() and not Path(path).is_file():
                problems.append(f"behaviour.{key}.{name}: file {path} does not exist")
    if problems:
        raise WorkflowError("Invalid configuration: " + "; ".join(problems))
    missing = [e for e in BEHAVIOUR["emotions"] if e not in config["emotion_list"]]
    if missing:
        logger.warning(
            f"behaviour.emotions {missing} are not among the run's emotions: the behaviour job "
            "will stop before loading any model; set behaviour.emotions to emotions of the run"
        )


_behaviour_checks()


wildcard_constraints:
    scenario="|".join(re.escape(s) for s in BEH_SCENARIOS),
    judge="|".join(re.escape(j) for j in BEH_JUDGES),


def _behaviour_validation(wc):
    """The scenario's judge validation table (none when the scenario has no labelled set: then no
    judge is validated and no rate is produced)."""
    return [f"{BEH_DIR}/{wc.scenario}/judge_validation.tsv"] if wc.scenario in BEH_VALIDATION else []


rule behaviour:
    """Sample the scenario under every condition, classify each transcript with the validated
    judge (none: stage-1 facts only), rates, tests and claims."""
    input:
        # Every judge's weights (which one classifies is decided by the validation), except a
        # judge that is the subject (then the loaded subject is reused).
        sorted(set(model_input(SUBJECT) + [f for j in BEHAVIOUR_JUDGES if not same_model(j, SUBJECT)
                                           for f in model_input(j)])),
        vectors=f"{RESULTS}/vectors/vectors.zarr/zarr.json",
        scenario=lambda wc: BEH_SCENARIOS[wc.scenario],
        validation=_behaviour_validation,
    output:
        transcripts=f"{BEH_DIR}/{{scenario}}/transcripts.jsonl",
        judged=f"{BEH_DIR}/{{scenario}}/judged.jsonl",
        rates=report(
            f"{BEH_DIR}/{{scenario}}/rates.tsv",
            caption="../report/behaviour_rates.rst",
            category="Behaviour",
            subcategory="{scenario}",
        ),
        dose=[
            report(
                f"{BEH_DIR}/{{scenario}}/dose_{s}.png",
                caption="../report/behaviour_dose.rst",
                category="Behaviour",
                subcategory="{scenario}",
            )
            for s in BEH_EMOTION_SLUGS
        ],
        summary=f"{BEH_DIR}/{{scenario}}/summary.json",
        claims=f"{BEH_DIR}/{{scenario}}/claims.json",
    params:
        # Only what the job uses (validation sets and other scenarios do not rerun it).
        settings={k: v for k, v in BEHAVIOUR.items() if k not in ("scenarios", "judges", "validation")},
        emotion_slugs=BEH_EMOTION_SLUGS,
        subject=SUBJECT,
        judges=BEH_JUDGES,
        models_dir=MODELS_DIR,
    conda:
        "../../envs/activations.yaml"
    log:
        f"{LOGS}/behaviour/{{scenario}}.log",
    benchmark:
        f"{BENCH}/behaviour/{{scenario}}.tsv"
    # One thread: on a small CPU two 1-thread jobs side by side do more than one 2-thread job
    # (small batches; a model server's jobs wait on its own threads). More with --set-threads.
    threads: 1
    priority: 1  # with steering_eval, the longest job after the vectors: started first
    resources:
        gpu=wants_gpu(SUBJECT),
        mem_mb=4000,
    script:
        "../scripts/behaviour.py"


rule judge_validation:
    """One judge's two-stage classifier on the scenario's hand-labelled responses."""
    input:
        lambda wc: model_input(BEH_JUDGES[wc.judge]),
        scenario=lambda wc: BEH_SCENARIOS[wc.scenario],
        labelled=lambda wc: BEH_VALIDATION[wc.scenario],
    output:
        json=f"{BEH_DIR}/{{scenario}}/judge_validation/{{judge}}.json",
        rows=f"{BEH_DIR}/{{scenario}}/judge_validation/{{judge}}.tsv",
    params:
        judge=lambda wc: BEH_JUDGES[wc.judge],
        evidence=BEHAVIOUR["judge_evidence"],
        seed=BEHAVIOUR["seed"],
        models_dir=MODELS_DIR,
    conda:
        "../../envs/activations.yaml"
    log:
        f"{LOGS}/behaviour/judge_validation/{{scenario}}/{{judge}}.log",
    benchmark:
        f"{BENCH}/behaviour/judge_validation/{{scenario}}/{{judge}}.tsv"
    # One thread: on a small CPU two 1-thread jobs side by side do more than one 2-thread job
    # (small batches; a model server's jobs wait on its own threads). More with --set-threads.
    threads: 1
    resources:
        gpu=lambda wc: wants_gpu(BEH_JUDGES[wc.judge]),
        mem_mb=4000,
    script:
        "../scripts/judge_validation.py"


rule judge_validation_summary:
    """Every judge's agreement with the labels, beside the stage-1-only rules, in one table."""
    localrule: True
    input:
        lambda wc: expand(f"{BEH_DIR}/{wc.scenario}/judge_validation/{{judge}}.tsv", judge=list(BEH_JUDGES)),
    output:
        report(
            f"{BEH_DIR}/{{scenario}}/judge_validation.tsv",
            caption="../report/behaviour_judge_validation.rst",
            category="Behaviour",
            subcategory="{scenario}",
        ),
    log:
        f"{LOGS}/behaviour/judge_validation/{{scenario}}/summary.log",
    threads: 1
    script:
        "../scripts/judge_validation.py"


# Every file of the behaviour experiment (for `rule all`).
BEHAVIOUR_OUTPUTS = [
    *(f for s in BEH_SCENARIOS for f in expand(rules.behaviour.output, scenario=s)),
    *expand(rules.judge_validation_summary.output, scenario=list(BEH_VALIDATION)),
]
