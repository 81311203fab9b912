# Reading emotion in real text (emotion_vectors.reading.score, emotion_vectors.reading.corpora; docs/scoring.md):
# each configured corpus is sampled once into a jsonl, scored on the run's vectors by the
# subject model, and reported (ranking with bootstrap intervals, top texts, token highlights,
# the labelled check); one job compares the rankings across corpora.

SCORING = config["scoring"]
CORPORA = SCORING["corpora"]
SCORING_DIR = f"{RESULTS}/scoring"
for _name in SCORING["labelled"]:
    if _name not in CORPORA:
        logger.warning(f"scoring.labelled.{_name}: no such corpus in scoring.corpora; not checked")
LABELLED = {k: v for k, v in SCORING["labelled"].items() if k in CORPORA}
for _name in SCORING["emotion_labelled"]:
    if _name not in CORPORA:
        logger.warning(f"scoring.emotion_labelled.{_name}: no such corpus in scoring.corpora; not checked")
EMOTION_LABELLED = {k: v for k, v in SCORING["emotion_labelled"].items() if k in CORPORA}
if EMOTION_LABELLED:  # a bad label map stops the run now, naming the emotion or category
    from emotion_vectors.reading.text_checks import check_label_map

    for _name, _spec in EMOTION_LABELLED.items():
        check_label_map(_spec.get("labels") or SCORING["emotion_labels"])


wildcard_constraints:
    corpus="|".join(re.escape(c) for c in CORPORA) or "(?!)",


def corpus_spec_json(wildcards):
    """The corpus spec as canonical JSON: the `corpus` job reruns exactly when it changes."""
    return json.dumps(CORPORA[wildcards.corpus], sort_keys=True)


def corpus_inputs(wildcards):
    """A chat corpus is rendered with the subject's chat template (its tokenizer); a file corpus
    reads its file."""
    spec = CORPORA[wildcards.corpus]
    files = []
    if spec["source"] == "hf" and spec.get("messages_column"):
        files += model_input(SUBJECT)
    if spec["source"] == "file":
        files.append(spec["path"])
    return files


rule corpus:
    """A seeded sample of one corpus as jsonl records (id, text, label, source, ...)."""
    input:
        corpus_inputs,
    output:
        f"{RESULTS}/corpora/{{corpus}}.jsonl",
    params:
        spec=corpus_spec_json,
        subject=SUBJECT,
        models_dir=MODELS_DIR,
    conda:
        "../../envs/activations.yaml"
    log:
        f"{LOGS}/scoring/corpus_{{corpus}}.log",
    benchmark:
        f"{BENCH}/scoring/corpus_{{corpus}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/corpus.py"


rule score_corpus:
    """Every text of a corpus projected on each emotion's unit vector and on the valence
    direction, at one layer (one row per text, in corpus order; metadata in the sidecar, with
    the check that the valence direction is valence for this run); and on every shuffled-label
    vector and each shuffle's valence direction (the claims' null, <corpus>.shuffled.npz)."""
    input:
        model_input(SUBJECT),
        vectors=f"{RESULTS}/vectors/vectors.zarr/zarr.json",
        shuffled=f"{RESULTS}/vectors/shuffled.zarr/zarr.json",
        neutral=NEUTRAL_SHARD,
        corpus=f"{RESULTS}/corpora/{{corpus}}.jsonl",
    output:
        scores=f"{RESULTS}/scores/{{corpus}}.parquet",
        meta=f"{RESULTS}/scores/{{corpus}}.parquet.json",
        shuffled=f"{RESULTS}/scores/{{corpus}}.shuffled.npz",
    params:
        settings={k: SCORING[k] for k in ("layer", "pool", "baseline", "max_tokens", "batch_size",
                                          "valence_check")},
        label_column=lambda wc: (LABELLED.get(wc.corpus) or EMOTION_LABELLED.get(wc.corpus) or {}).get(
            "label_column", "label"),
        server=EXTRACT_PARAMS,  # texts are read by the run's subject-model server (one model load)
    conda:
        "../../envs/activations.yaml"
    log:
        f"{LOGS}/scoring/score_{{corpus}}.log",
    benchmark:
        f"{BENCH}/scoring/score_{{corpus}}.tsv"
    # One thread: on a small CPU two 1-thread jobs side by side do more than one 2-thread job
    # (small batches; a model server's jobs wait on its own threads). More with --set-threads.
    threads: 1
    resources:
        gpu=wants_gpu(SUBJECT),
        mem_mb=4000,
    script:
        "../scripts/score_corpus.py"


rule corpus_report:
    """One corpus: emotions ranked by mean score (from the neutral dialogues) with bootstrap 95%
    intervals, the top texts per emotion, token highlights, and the labelled check."""
    input:
        model_input(SUBJECT),
        vectors=f"{RESULTS}/vectors/vectors.zarr/zarr.json",
        neutral=NEUTRAL_SHARD,
        scores=f"{RESULTS}/scores/{{corpus}}.parquet",
        meta=f"{RESULTS}/scores/{{corpus}}.parquet.json",
        shuffled=f"{RESULTS}/scores/{{corpus}}.shuffled.npz",
    output:
        ranking=report(
            f"{SCORING_DIR}/{{corpus}}/ranking.tsv",
            caption="../report/scoring_ranking_table.rst",
            category="Real text",
            subcategory="{corpus}",
        ),
        ranking_figure=report(
            f"{SCORING_DIR}/{{corpus}}/ranking.png",
            caption="../report/scoring_ranking.rst",
            category="Real text",
            subcategory="{corpus}",
        ),
        top_texts=report(
            f"{SCORING_DIR}/{{corpus}}/top_texts.tsv",
            caption="../report/scoring_top_texts.rst",
            category="Real text",
            subcategory="{corpus}",
        ),
        highlights=report(
            f"{SCORING_DIR}/{{corpus}}/highlights.html",
            caption="../report/scoring_highlights.rst",
            category="Real text",
            subcategory="{corpus}",
        ),
        labelled=f"{SCORING_DIR}/{{corpus}}/labelled_check.json",
        ranking_null=f"{SCORING_DIR}/{{corpus}}/ranking_null.tsv",
        emotion_tsv=report(
            f"{SCORING_DIR}/{{corpus}}/emotion_check.tsv",
            caption="../report/scoring_emotion_check.rst",
            category="Real text",
            subcategory="{corpus}",
        ),
        emotion_json=f"{SCORING_DIR}/{{corpus}}/emotion_check.json",
        summary=f"{SCORING_DIR}/{{corpus}}/summary.json",
    params:
        # not the corpora: adding a corpus does not rerun the others' reports
        settings={k: v for k, v in SCORING.items()
                  if k not in ("corpora", "labelled", "emotion_labelled", "emotion_labels")},
        labelled=lambda wc: LABELLED.get(wc.corpus),
        emotion_labelled=lambda wc: EMOTION_LABELLED.get(wc.corpus),
        emotion_labels=lambda wc: SCORING["emotion_labels"] if wc.corpus in EMOTION_LABELLED else None,
        server=EXTRACT_PARAMS,  # the token view is read by the run's subject-model server
    conda:
        "../../envs/activations.yaml"
    log:
        f"{LOGS}/scoring/report_{{corpus}}.log",
    benchmark:
        f"{BENCH}/scoring/report_{{corpus}}.tsv"
    # One thread: on a small CPU two 1-thread jobs side by side do more than one 2-thread job
    # (small batches; a model server's jobs wait on its own threads). More with --set-threads.
    threads: 1
    resources:
        gpu=wants_gpu(SUBJECT),
        mem_mb=4000,
    script:
        "../scripts/corpus_report.py"


rule corpora_comparison:
    """Where the corpora's emotion rankings differ (Spearman between their mean-score vectors,
    tested against the shuffled-label vectors; per-emotion ranks), the labelled checks side by
    side, and the stage's claims (claims.json: emotion_vectors.reading.text_checks)."""
    input:
        rankings=expand(f"{SCORING_DIR}/{{corpus}}/ranking.tsv", corpus=list(CORPORA)),
        ranking_null=expand(f"{SCORING_DIR}/{{corpus}}/ranking_null.tsv", corpus=list(CORPORA)),
        labelled=expand(f"{SCORING_DIR}/{{corpus}}/labelled_check.json", corpus=list(CORPORA)),
        emotion=expand(f"{SCORING_DIR}/{{corpus}}/emotion_check.json", corpus=list(CORPORA)),
    output:
        spearman=report(
            f"{SCORING_DIR}/corpora_spearman.tsv",
            caption="../report/scoring_spearman.rst",
            category="Real text",
        ),
        ranks=f"{SCORING_DIR}/corpora_ranks.tsv",
        figure=report(
            f"{SCORING_DIR}/corpora_comparison.png",
            caption="../report/scoring_comparison.rst",
            category="Real text",
        ),
        labelled=report(
            f"{SCORING_DIR}/labelled_check.tsv",
            caption="../report/scoring_labelled_check.rst",
            category="Real text",
        ),
        labelled_json=f"{SCORING_DIR}/labelled_check.json",
        claims=f"{SCORING_DIR}/claims.json",
    params:
        corpora=list(CORPORA),
        n_boot=SCORING["n_boot"],
        seed=SCORING["seed"],
    conda:
        "../../envs/activations.yaml"
    log:
        f"{LOGS}/scoring/corpora_comparison.log",
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/corpora_comparison.py"


# Every file of the real-text scoring (for `rule all`); nothing without corpora.
SCORING_OUTPUTS = (
    [
        *expand(rules.score_corpus.output, corpus=list(CORPORA)),
        *expand(rules.corpus_report.output, corpus=list(CORPORA)),
        *rules.corpora_comparison.output,
    ]
    if CORPORA
    else []
)
