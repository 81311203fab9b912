# The run's findings (emotion_vectors.findings): every claim of every evidence step — its test,
# null, corrected p, interval and verdict — in one table, the report's first page; beside the
# negative control's verdicts when that run (findings.control_run) has its own findings.

FINDINGS_DIR = f"{RESULTS}/findings"
FINDINGS_TSV = f"{FINDINGS_DIR}/findings.tsv"
CONTROL_RUN = config["findings"]["control_run"]


def claims_files():
    """The claims.json of every evidence step of this run (each step's rule names it `claims`)."""
    steps = [rules.diagnostics_summary, rules.steering_eval, rules.behaviour, rules.battery, rules.corpora_comparison]
    if PAIRS:  # the subjects' comparison (compare.smk), when the run has anything to compare
        steps.append(rules.compare_summary)
    files = []
    for step in steps:
        if not hasattr(step.output, "claims"):
            continue
        pattern = step.output.claims
        files += [pattern.format(scenario=s) for s in BEH_SCENARIOS] if "{scenario}" in pattern else [pattern]
    return files


rule findings:
    """Gather every step's claims (and the geometry's, from the analysis tables) into the
    findings table; compare with the control run's table where it exists."""
    input:
        claims=claims_files(),
        rating_correlations=f"{ANALYSIS_DIR}/rating_correlations.tsv",
        analysis_summary=f"{ANALYSIS_DIR}/summary.json",
    output:
        table=f"{FINDINGS_DIR}/findings.tsv",
        markdown=f"{FINDINGS_DIR}/findings.md",
        html=report(
            f"{FINDINGS_DIR}/findings.html",
            caption="../report/findings.rst",
            category="0 Findings",
        ),
    params:
        run=RUN,
        control=(f"results/{CONTROL_RUN}/findings/findings.tsv"
                 if CONTROL_RUN and CONTROL_RUN != RUN else None),
        control_run=CONTROL_RUN if CONTROL_RUN != RUN else None,
    log:
        f"{LOGS}/findings.log",
    threads: 1
    script:
        "../scripts/findings.py"


FINDINGS_OUTPUTS = [*rules.findings.output]

# The report's first page shows the findings table (workflow/report/workflow.rst reads it from
# the config, the only data Snakemake hands the page); read only when the table exists.
if Path(FINDINGS_TSV).exists():
    from emotion_vectors.findings import read_table as _read_findings

    config["findings_rows"] = _read_findings(FINDINGS_TSV).fillna("").to_dict("records")
