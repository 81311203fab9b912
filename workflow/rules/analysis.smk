# Geometry of the emotion vectors: PCA, human ratings, clustering, layer agreement, logit lens.
# One job per run; every file it writes is named in emotion_vectors.analysis.run.FILES (and
# LENS_FILES when `analysis.logit_lens` is true); see that module's docstring for the columns.

ANALYSIS_DIR = f"{RESULTS}/analysis"
ANALYSIS_LENS = bool(config["analysis"]["logit_lens"])


def analysis_report(name, caption, subcategory):
    """An analysis output shown in the Snakemake report, under the Geometry category."""
    return report(
        f"{ANALYSIS_DIR}/{name}",
        caption=f"../report/analysis_{caption}.rst",
        category="Geometry",
        subcategory=subcategory,
    )


rule analyze:
    """Per-layer PCA, cosine similarity, pairs, human-rating correlations, clustering, layer
    agreement and (with the subject model) the logit lens of the run's emotion vectors."""
    input:
        model_input(SUBJECT) if ANALYSIS_LENS else [],
        vectors=f"{RESULTS}/vectors/vectors.zarr",
    output:
        summary=f"{ANALYSIS_DIR}/summary.json",
        norms_mapping=analysis_report("norms_mapping.tsv", "norms_mapping", "Human ratings"),
        pca_variance=f"{ANALYSIS_DIR}/pca_variance.tsv",
        pca_scores=f"{ANALYSIS_DIR}/pca_scores.tsv",
        pca_components=f"{ANALYSIS_DIR}/pca_components.npy",
        rating_correlations=analysis_report(
            "rating_correlations.tsv", "rating_correlations", "Human ratings"
        ),
        pairs=analysis_report("pairs.tsv", "pairs", "Similarity"),
        cosine=f"{ANALYSIS_DIR}/cosine.npy",
        cosine_main_layer=f"{ANALYSIS_DIR}/cosine_main_layer.tsv",
        clusters=f"{ANALYSIS_DIR}/clusters.tsv",
        cluster_summary=analysis_report("cluster_summary.tsv", "cluster_summary", "Clusters"),
        silhouette=f"{ANALYSIS_DIR}/silhouette.tsv",
        layer_agreement=f"{ANALYSIS_DIR}/layer_agreement.tsv",
        pc_scatter=analysis_report("pc_scatter.png", "pc_scatter", "Human ratings"),
        layer_profile=analysis_report("layer_profile.png", "layer_profile", "Across layers"),
        similarity_heatmap=analysis_report(
            "similarity_heatmap.png", "similarity_heatmap", "Clusters"
        ),
        layer_agreement_plot=analysis_report(
            "layer_agreement.png", "layer_agreement", "Across layers"
        ),
        **(
            {
                "logit_lens_tokens": f"{ANALYSIS_DIR}/logit_lens_tokens.tsv",
                "logit_lens_summary": analysis_report(
                    "logit_lens_summary.tsv", "logit_lens_summary", "Logit lens"
                ),
                "logit_lens_pairs": analysis_report(
                    "logit_lens_pairs.tsv", "logit_lens_pairs", "Logit lens"
                ),
            }
            if ANALYSIS_LENS
            else {}
        ),
    params:
        kind=config["analysis"]["vector_kind"],
        k_clusters=config["analysis"]["k_clusters"],
        k_range=config["analysis"]["k_range"],
        n_bootstrap=config["analysis"]["n_bootstrap"],
        seed=config["analysis"]["seed"],
        logit_lens=ANALYSIS_LENS,
        top_k_tokens=config["analysis"]["top_k_tokens"],
        subject=SUBJECT,
        models_dir=MODELS_DIR,
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


# The final outputs `rule all` requests (every output of `analyze`).
ANALYSIS_OUTPUTS = list(rules.analyze.output)
