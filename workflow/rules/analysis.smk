# Geometry of the emotion vectors: PCA, human ratings, clustering, layer agreement, logit lens.
# One job per run; every file it writes is named in emotion_vectors.analysis.run.FILES (and
# LENS_FILES when `analysis.logit_lens` is true); see that module's docstring for the columns.

ANALYSIS_DIR = f"{RESULTS}/analysis"
ANALYSIS_LENS = bool(config["analysis"]["logit_lens"])


#: Outputs of the analysis shown in the report: key (run.FILES / LENS_FILES) -> caption, subcategory.
ANALYSIS_REPORT = {
    "norms_mapping": ("analysis_norms_mapping.rst", "Human ratings"),
    "rating_correlations": ("analysis_rating_correlations.rst", "Human ratings"),
    "pairs": ("analysis_pairs.rst", "Similarity"),
    "cluster_summary": ("analysis_cluster_summary.rst", "Clusters"),
    "pc_scatter": ("analysis_pc_scatter.rst", "Human ratings"),
    "layer_profile": ("analysis_layer_profile.rst", "Across layers"),
    "similarity_heatmap": ("analysis_similarity_heatmap.rst", "Clusters"),
    "layer_agreement_plot": ("analysis_layer_agreement.rst", "Across layers"),
    "logit_lens_summary": ("analysis_logit_lens_summary.rst", "Logit lens"),
    "logit_lens_pairs": ("analysis_logit_lens_pairs.rst", "Logit lens"),
}


def analysis_outputs(directory, in_report=True):
    """The analysis's outputs in ``directory`` (emotion_vectors.analysis.run.FILES, and LENS_FILES
    with the logit lens), the report's items wrapped for the report (the primary subject's)."""
    from emotion_vectors.analysis.run import FILES, LENS_FILES

    out = {}
    for key, name in {**FILES, **(LENS_FILES if ANALYSIS_LENS else {})}.items():
        path = f"{directory}/{name}"
        if in_report and key in ANALYSIS_REPORT:
            caption, sub = ANALYSIS_REPORT[key]
            path = report(path, caption=f"../report/{caption}", category="Geometry", subcategory=sub)
        out[key] = path
    return out


ANALYSIS_PARAMS = dict(
    kind=config["analysis"]["vector_kind"],
    k_clusters=config["analysis"]["k_clusters"],
    k_range=config["analysis"]["k_range"],
    n_bootstrap=config["analysis"]["n_bootstrap"],
    seed=config["analysis"]["seed"],
    logit_lens=ANALYSIS_LENS,
    top_k_tokens=config["analysis"]["top_k_tokens"],
)


rule analyze:
    """Per-layer PCA, cosine similarity, pairs, human-rating correlations, clustering, layer
    agreement and (with the subject model) the logit lens of the run's emotion vectors."""
    input:
        model_input(SUBJECT) if ANALYSIS_LENS else [],
        vectors=f"{RESULTS}/vectors/vectors.zarr/zarr.json",
    output:
        **analysis_outputs(ANALYSIS_DIR),
    params:
        **ANALYSIS_PARAMS,
        subject=SUBJECT,
        models_dir=MODELS_DIR,
    conda:
        "../../envs/analysis.yaml"
    log:
        f"{LOGS}/analyze.log",
    benchmark:
        f"{BENCH}/analyze.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        gpu=wants_gpu(SUBJECT) if ANALYSIS_LENS else 0,
    script:
        "../scripts/analyze.py"


# The other subjects' analyses (results/<run>/subjects/<name>/analysis/): the same step on their
# vectors, with their own logit lens; not in the report (the comparison is).
use rule analyze as analyze_subject with:
    input:
        lambda wildcards: model_input(subject_spec(wildcards)) if ANALYSIS_LENS else [],
        vectors=f"{SUBJECT_DIR}/vectors/vectors.zarr/zarr.json",
    output:
        **analysis_outputs(f"{SUBJECT_DIR}/analysis", in_report=False),
    params:
        **ANALYSIS_PARAMS,
        subject=subject_spec,
        models_dir=MODELS_DIR,
    log:
        f"{SUBJECT_LOGS}/analyze.log",
    benchmark:
        f"{SUBJECT_BENCH}/analyze.tsv"
    resources:
        mem_mb=4000,
        gpu=lambda wildcards: wants_gpu(subject_spec(wildcards)) if ANALYSIS_LENS else 0,


#: What the other subjects add to the run (all_targets): their vectors and analyses.
SUBJECT_OUTPUTS = [
    path
    for name in EXTRA_SUBJECTS
    for path in (f"{RESULTS}/subjects/{name}/vectors/vectors.zarr/zarr.json", f"{RESULTS}/subjects/{name}/analysis/summary.json")
]
