# Geometry of the emotion vectors: PCA, human ratings, clustering, layer agreement, logit lens.
# One job per run; every file it writes is named in emotion_vectors.analysis.run.FILES (and
# LENS_FILES when `analysis.logit_lens` is true); see that module's docstring for the columns.

ANALYSIS_DIR = f"{RESULTS}/analysis"
ANALYSIS_LENS = bool(config["analysis"]["logit_lens"])


rule analyze:
    """Per-layer PCA, cosine similarity, pairs, human-rating correlations, clustering, layer
    agreement and (with the subject model) the logit lens of the run's emotion vectors."""
    input:
        model_input(SUBJECT) if ANALYSIS_LENS else [],
        vectors=f"{RESULTS}/vectors/vectors.zarr",
    output:
        summary=f"{ANALYSIS_DIR}/summary.json",
        norms_mapping=report(
            f"{ANALYSIS_DIR}/norms_mapping.tsv",
            caption="../report/analysis_norms_mapping.rst",
            category="Geometry",
            subcategory="Human ratings",
        ),
        pca_variance=f"{ANALYSIS_DIR}/pca_variance.tsv",
        pca_scores=f"{ANALYSIS_DIR}/pca_scores.tsv",
        pca_components=f"{ANALYSIS_DIR}/pca_components.npy",
        rating_correlations=report(
            f"{ANALYSIS_DIR}/rating_correlations.tsv",
            caption="../report/analysis_rating_correlations.rst",
            category="Geometry",
            subcategory="Human ratings",
        ),
        pairs=report(
            f"{ANALYSIS_DIR}/pairs.tsv",
            caption="../report/analysis_pairs.rst",
            category="Geometry",
            subcategory="Similarity",
        ),
        cosine=f"{ANALYSIS_DIR}/cosine.npy",
        cosine_main_layer=f"{ANALYSIS_DIR}/cosine_main_layer.tsv",
        clusters=f"{ANALYSIS_DIR}/clusters.tsv",
        cluster_summary=report(
            f"{ANALYSIS_DIR}/cluster_summary.tsv",
            caption="../report/analysis_cluster_summary.rst",
            category="Geometry",
            subcategory="Clusters",
        ),
        silhouette=f"{ANALYSIS_DIR}/silhouette.tsv",
        layer_agreement=f"{ANALYSIS_DIR}/layer_agreement.tsv",
        pc_scatter=report(
            f"{ANALYSIS_DIR}/pc_scatter.png",
            caption="../report/analysis_pc_scatter.rst",
            category="Geometry",
            subcategory="Human ratings",
        ),
        layer_profile=report(
            f"{ANALYSIS_DIR}/layer_profile.png",
            caption="../report/analysis_layer_profile.rst",
            category="Geometry",
            subcategory="Across layers",
        ),
        similarity_heatmap=report(
            f"{ANALYSIS_DIR}/similarity_heatmap.png",
            caption="../report/analysis_similarity_heatmap.rst",
            category="Geometry",
            subcategory="Clusters",
        ),
        layer_agreement_plot=report(
            f"{ANALYSIS_DIR}/layer_agreement.png",
            caption="../report/analysis_layer_agreement.rst",
            category="Geometry",
            subcategory="Across layers",
        ),
        **(
            {
                "logit_lens_tokens": f"{ANALYSIS_DIR}/logit_lens_tokens.tsv",
                "logit_lens_summary": report(
                    f"{ANALYSIS_DIR}/logit_lens_summary.tsv",
                    caption="../report/analysis_logit_lens_summary.rst",
                    category="Geometry",
                    subcategory="Logit lens",
                ),
                "logit_lens_pairs": report(
                    f"{ANALYSIS_DIR}/logit_lens_pairs.tsv",
                    caption="../report/analysis_logit_lens_pairs.rst",
                    category="Geometry",
                    subcategory="Logit lens",
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

