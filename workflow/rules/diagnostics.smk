# Corpus diagnostics: does the corpus carry its emotions? Computed in every run, beside the
# vectors: separability of the stories' activations by emotion (nearest centroid and a logistic
# probe, against chance and a permutation null), the variance shares of emotion and topic, and
# the recognisability of each story's emotion to a judge model (emotion_vectors.vectors.diagnostics,
# emotion_vectors.corpus.judge). The judge is JUDGE (common.smk): models.judge, or the generator when it
# is absent; a packaged GGUF judge is prepared by `prepare_model` like the other models.

DIAG_DIR = f"{RESULTS}/diagnostics"
DIAG = config["diagnostics"]


rule separability:
    """Cross-validated accuracy of telling the stories' emotions apart from their activations,
    per layer, and the share of activation variance explained by emotion and by topic."""
    input:
        emotions=[emotion_shard(s) for s in EMOTIONS],
        stories=[story_shard(s) for s in EMOTIONS],
    output:
        table=report(
            f"{DIAG_DIR}/separability.tsv",
            caption="../report/diagnostics_separability_table.rst",
            category="Corpus diagnostics",
        ),
        variance=report(
            f"{DIAG_DIR}/variance_shares.tsv",
            caption="../report/diagnostics_variance_shares.rst",
            category="Corpus diagnostics",
        ),
        figure=report(
            f"{DIAG_DIR}/separability.png",
            caption="../report/diagnostics_separability.rst",
            category="Corpus diagnostics",
        ),
        meta=f"{DIAG_DIR}/separability.json",
    params:
        emotions=list(EMOTIONS.values()),
        settings=DIAG["separability"],
    conda:
        "../../envs/analysis.yaml"
    log:
        f"{LOGS}/diagnostics/separability.log",
    benchmark:
        f"{BENCH}/diagnostics/separability.tsv"
    # One thread: small dense problems; on a bigger machine raise it with --set-threads.
    threads: 1
    resources:
        mem_mb=8000,
    script:
        "../scripts/separability.py"


rule recognisability:
    """A judge model reads each story and picks its emotion among distractors (log-probabilities
    of the candidates, calibrated by a content-free prompt); one job, one model load."""
    input:
        model_input(JUDGE),
        stories=[story_shard(s) for s in EMOTIONS],
    output:
        table=report(
            f"{DIAG_DIR}/recognisability.tsv",
            caption="../report/diagnostics_recognisability.rst",
            category="Corpus diagnostics",
        ),
        stories=f"{DIAG_DIR}/recognisability_stories.jsonl",
        meta=f"{DIAG_DIR}/recognisability.json",
    params:
        emotions=list(EMOTIONS.values()),
        settings=DIAG["recognisability"],
        judge=JUDGE,
        models_dir=MODELS_DIR,
    conda:
        "../../envs/activations.yaml"
    log:
        f"{LOGS}/diagnostics/recognisability.log",
    benchmark:
        f"{BENCH}/diagnostics/recognisability.tsv"
    # One thread: on a small CPU two 1-thread jobs side by side do more than one 2-thread job
    # (small batches; a model server's jobs wait on its own threads). More with --set-threads.
    threads: 1
    resources:
        gpu=wants_gpu(JUDGE),
        mem_mb=4000,
    script:
        "../scripts/recognisability.py"


rule diagnostics_summary:
    """The headline numbers (best-layer separability and recognisability against chance, the
    variance shares) and their claims: the verdict's tests Holm-corrected together."""
    input:
        separability=f"{DIAG_DIR}/separability.tsv",
        separability_meta=f"{DIAG_DIR}/separability.json",
        variance=f"{DIAG_DIR}/variance_shares.tsv",
        recognisability=f"{DIAG_DIR}/recognisability.tsv",
        recognisability_meta=f"{DIAG_DIR}/recognisability.json",
    output:
        summary=report(
            f"{DIAG_DIR}/summary.json",
            caption="../report/diagnostics_summary.rst",
            category="Corpus diagnostics",
        ),
        claims=f"{DIAG_DIR}/claims.json",
    conda:
        "../../envs/analysis.yaml"
    log:
        f"{LOGS}/diagnostics/summary.log",
    threads: 1
    script:
        "../scripts/diagnostics_summary.py"


# Every file of the corpus diagnostics (for `rule all`).
DIAGNOSTICS_OUTPUTS = [
    *rules.separability.output,
    *rules.recognisability.output,
    *rules.diagnostics_summary.output,
]
