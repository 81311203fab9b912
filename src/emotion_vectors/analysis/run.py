"""Per-layer analysis of a run's emotion vectors: tables, figures and a JSON summary.

``analyze(vectors_path, out_dir)`` writes these files into ``out_dir`` (names in ``FILES`` and
``LENS_FILES``; tables are tab-separated with a header row, layers are 0-based decoder block
indices, the output of block ``i``):

=========================  =====================================================================
``summary.json``           settings, coverage of the human norms, main-layer results, per-layer
                           headline numbers, layer agreement, logit-lens counts, timings
``norms_mapping.tsv``      emotion, headword, rule, reason, valence, arousal, dominance,
                           n_raters_valence (Warriner et al. 2013; see ``norms.MAPPING``)
``pca_variance.tsv``       layer, pc, explained_ratio, cumulative_ratio (PCs 1-10)
``pca_scores.tsv``         layer, emotion, valence, arousal, pc1..pc10 (oriented scores)
``pca_components.npy``     float32 ``(n_layers, 10, d)`` oriented unit PC directions
``rating_correlations.tsv`` layer, pc, rating, method, words (covered|exact),
                           sign_oriented_by, n, r, ci_low, ci_high, ci_method,
                           pc_alignment, p, p_holm, p_bh, level, n_bootstrap
                           (PCs 1-3 x valence, arousal; see ``correlation_table``)
``pairs.tsv``              layer, kind (synonym|opposite), rank, emotion_a, emotion_b, cosine
``cosine.npy``             float32 ``(n_layers, n, n)`` cosine similarity of the vectors
``cosine_main_layer.tsv``  the main layer's ``n x n`` cosine matrix, labelled
``clusters.tsv``           layer, cut (fixed|silhouette), k, emotion, cluster
``cluster_summary.tsv``    layer, cut, k, cluster, size, medoid, members
``silhouette.tsv``         layer, k, n_clusters, silhouette
``layer_agreement.tsv``    layer_a, layer_b, ari_fixed_k, ari_silhouette_k, cosine_r
``pc_scatter.png``         PC1 x PC2 at the main layer, coloured by human valence
``layer_profile.png``      variance shares and rating correlations by layer
``similarity_heatmap.png`` clustered cosine matrix with dendrogram at the main layer
``layer_agreement.png``    ARI and cosine-structure correlation between layers
``logit_lens_tokens.tsv``  (with a model) layer, emotion, direction, rank, token_id, token,
                           text, logit, is_own_word: top-k promoted and suppressed tokens
``logit_lens_summary.tsv`` (with a model) per emotion: own word in vocabulary / promoted
``logit_lens_pairs.tsv``   (with a model) opposite pairs: does each suppress the other's word
=========================  =====================================================================
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.claims import json_safe
from ..core.stats import adjust_pvalues
from . import clustering, geometry, logit_lens, norms, plots, stats
from .store import VectorSet, load_vectors

log = logging.getLogger(__name__)

FILES: dict[str, str] = {
    "summary": "summary.json",
    "norms_mapping": "norms_mapping.tsv",
    "pca_variance": "pca_variance.tsv",
    "pca_scores": "pca_scores.tsv",
    "pca_components": "pca_components.npy",
    "rating_correlations": "rating_correlations.tsv",
    "pairs": "pairs.tsv",
    "cosine": "cosine.npy",
    "cosine_main_layer": "cosine_main_layer.tsv",
    "clusters": "clusters.tsv",
    "cluster_summary": "cluster_summary.tsv",
    "silhouette": "silhouette.tsv",
    "layer_agreement": "layer_agreement.tsv",
    "pc_scatter": "pc_scatter.png",
    "layer_profile": "layer_profile.png",
    "similarity_heatmap": "similarity_heatmap.png",
    "layer_agreement_plot": "layer_agreement.png",
}
LENS_FILES: dict[str, str] = {
    "logit_lens_tokens": "logit_lens_tokens.tsv",
    "logit_lens_summary": "logit_lens_summary.tsv",
    "logit_lens_pairs": "logit_lens_pairs.tsv",
}
N_PCS = 10
N_PCS_RATED = 3
N_PAIRS = 20
CI_METHOD = "percentile bootstrap over emotions, PCA refitted per resample"


def default_main_layer(layers: list[int], n_model_layers: int | None = None) -> int:
    """The study's main layer: the block at two-thirds of the depth as extraction defines it
    (``emotion_vectors.extraction.extract.main_layer``: 0-based ``round(2 n / 3) - 1``, the layer that
    ``layers: auto`` always stores), or the stored layer nearest it (ties: the deeper).

    ``n_model_layers`` is the model's number of decoder blocks; unknown, it is taken as
    ``max(layers) + 1``.
    """
    from emotion_vectors.extraction.extract import main_stored_layer

    return main_stored_layer(layers, n_model_layers)


def orientation_references(
    valence: np.ndarray, arousal: np.ndarray, n_pcs: int
) -> tuple[list[np.ndarray], list[str]]:
    """The rating that fixes each PC's sign (``geometry.orient``): valence for PC1 (positive
    end = pleasant), arousal for PC2 and every later PC (positive end = aroused). One rule for
    all PCs past the first, so that no PC's arousal correlation is forced positive while
    another's is left free."""
    refs = [valence] + [arousal] * (n_pcs - 1)
    names = ["valence"] + ["arousal"] * (n_pcs - 1)
    return refs[:n_pcs], names[:n_pcs]


#: The family over which ``p_holm`` and ``p_bh`` adjust: every row of rating_correlations.tsv.
P_FAMILY = ("every test in rating_correlations.tsv: PCs 1-3 x ratings (valence, arousal) x "
            "methods (Pearson, Spearman) x word sets (covered, exact) x stored layers")


def _n_model_layers(vs: VectorSet, model: Any) -> int | None:
    """Number of decoder blocks, from the model's config or the store, if known."""
    if model is not None:
        cfg = getattr(model.config, "text_config", None) or model.config
        n = getattr(cfg, "num_hidden_layers", None)
        if n:
            return int(n)
    return vs.n_model_layers


def correlation_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The rating-correlation table with Holm and BH adjusted p-values beside ``p``.

    Columns: layer, pc, rating, method, words, sign_oriented_by (the rating that fixed the
    PC's sign; where it equals ``rating``, ``r >= 0`` on the covered words by construction),
    n, r, ci_low, ci_high (percentile bootstrap: emotions resampled, PCA refitted and each
    refitted PC sign-aligned with the full-sample PC), ci_method, pc_alignment (median |cos|
    between the resamples' PC and the full-sample PC), p (two-sided test of no correlation),
    p_holm, p_bh (adjusted over the whole table: ``P_FAMILY``), level, n_bootstrap.
    """
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    adj = adjust_pvalues(df["p"].to_numpy(dtype=float))
    at = df.columns.get_loc("p") + 1
    df.insert(at, "p_holm", adj["holm"])
    df.insert(at + 1, "p_bh", adj["bh"])
    return df


def _tsv(df: pd.DataFrame, path: Path) -> None:
    df.to_csv(path, sep="\t", index=False, float_format="%.6g")


def analyze(
    vectors_path: str | Path | VectorSet,
    out_dir: str | Path,
    *,
    kind: str = "denoised",
    k_clusters: int = 15,
    k_range: tuple[int, int] = (4, 20),
    n_bootstrap: int = 1000,
    seed: int = 0,
    model: Any = None,
    tokenizer: Any = None,
    main_layer: int | None = None,
    linkage: str = "ward",
    top_k_tokens: int = 20,
    n_model_layers: int | None = None,
) -> dict[str, Any]:
    """Analyse every stored layer of a vector store and write ``FILES`` (and ``LENS_FILES``
    when ``model`` and ``tokenizer`` are given) into ``out_dir``; returns the JSON summary.

    Args:
        vectors_path: the vectors rule's Zarr store (see ``store``), or that store already
            opened (``load_vectors``).
        out_dir: output directory (created).
        kind: which vectors: ``raw``, ``denoised``, ``raw_unit`` or ``denoised_unit``.
        k_clusters: fixed number of clusters, cut at every layer (15 = the replication's).
        k_range: inclusive range of k over which the silhouette picks the best cut.
        n_bootstrap: resamples for the 95% intervals of the rating correlations.
        seed: seed of the bootstrap.
        model, tokenizer: the subject model for the logit lens (main layer only), or None.
        main_layer: block index shown in the figures and used by the logit lens; default the
            stored layer nearest two-thirds of the model's depth.
        linkage: ``ward`` (on unit vectors), ``average`` or ``complete`` (cosine distance).
        top_k_tokens: promoted / suppressed tokens listed per emotion by the logit lens.
        n_model_layers: the subject model's number of decoder blocks, for the default main
            layer; else taken from ``model``, then the store, then ``max(layers) + 1``.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(vectors_path, VectorSet):
        vs, where = vectors_path, vectors_path.path
    else:
        vs, where = load_vectors(vectors_path), vectors_path
    emotions, layers = vs.emotions, vs.layers
    n = len(emotions)
    if n < 3:
        raise ValueError(f"{where}: the analysis needs at least 3 emotions, found {n}")
    n_model_layers = n_model_layers or _n_model_layers(vs, model)
    main_layer, main_rule = _main_layer_choice(vs, main_layer, n_model_layers)

    ratings = norms.match_ratings(emotions)
    _tsv(ratings.table, out / FILES["norms_mapping"])
    timings["load_and_norms"] = time.perf_counter() - t_start

    lp = _layer_pass(vs, kind, ratings, main_layer=main_layer, n_bootstrap=n_bootstrap, seed=seed,
                     linkage=linkage, k_clusters=k_clusters, k_range=k_range)
    main = lp.main
    timings.update(pca_cosine=lp.t_pca, correlations=lp.t_corr, clustering=lp.t_cluster)

    t0 = time.perf_counter()
    variance, correlations, pairs, ari_fixed, structure = _write_tables(out, lp, emotions, layers)
    timings["agreement_and_tables"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mres = main["pca"]
    mcl = main["clusters"]
    plots.pc_scatter(mres.scores, emotions, ratings.valence, mres.explained_ratio,
                     out / FILES["pc_scatter"],
                     title=f"Emotion vectors ({kind}), layer {main_layer}: PC1 x PC2")
    plots.layer_profile(variance, correlations, out / FILES["layer_profile"],
                        main_layer=main_layer)
    plots.similarity_heatmap(main["cosine"], emotions, mcl["tree"], mcl["fixed"]["labels"],
                             out / FILES["similarity_heatmap"],
                             title=f"Cosine similarity, layer {main_layer}, {linkage} linkage, "
                                   f"colour strip: k = {mcl['fixed']['k']}")
    plots.layer_agreement(layers, ari_fixed, structure, out / FILES["layer_agreement_plot"],
                          k=min(k_clusters, n))
    timings["figures"] = time.perf_counter() - t0

    lens_summary = None
    if model is not None and tokenizer is not None:
        t0 = time.perf_counter()
        lens_summary = _lens(vs, main, emotions, model, tokenizer, out, main_layer=main_layer,
                             top_k_tokens=top_k_tokens)
        timings["logit_lens"] = time.perf_counter() - t0

    summary = _summary(
        vs=vs, kind=kind, main_layer=main_layer, main_rule=main_rule, ratings=ratings,
        variance=variance, correlations=correlations, pairs=pairs, silhouette_k=lp.best_ks,
        main=main, linkage=linkage, k_clusters=k_clusters, k_range=k_range,
        n_bootstrap=n_bootstrap, seed=seed, ari_fixed=ari_fixed, structure=structure,
        lens_summary=lens_summary,
    )
    timings["total"] = time.perf_counter() - t_start
    summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    summary = json_safe(summary)
    (out / FILES["summary"]).write_text(
        json.dumps(summary, indent=2, default=_json_default, allow_nan=False)
    )
    return summary


def _main_layer_choice(vs: VectorSet, main_layer: int | None, n_model_layers: int | None) -> tuple[int, str]:
    """``analyze``'s main layer and the rule that chose it (the caller's, else the stored layer
    nearest two-thirds of the depth)."""
    if main_layer is None:
        from emotion_vectors.extraction.extract import main_layer as two_thirds

        layers = vs.layers
        depth = n_model_layers or max(layers) + 1
        main_layer = default_main_layer(layers, n_model_layers)
        main_rule = (f"block at 2/3 of {depth} blocks (extract.main_layer: "
                     f"round(2 * {depth} / 3) - 1 = {two_thirds(depth)}), or the stored layer "
                     "nearest it" + ("" if n_model_layers else "; depth unknown, taken as "
                                     "max stored layer + 1"))
    else:
        vs.layer_position(main_layer)  # raises if absent
        main_rule = "set by the caller"
    return main_layer, main_rule


@dataclass
class _LayerPass:
    """What ``analyze``'s pass over the stored layers gathers (rows of the tables, per-layer
    arrays and labels, the main layer's results, seconds spent per step)."""

    var_rows: list = field(default_factory=list)
    score_frames: list = field(default_factory=list)
    corr_rows: list = field(default_factory=list)
    pair_frames: list = field(default_factory=list)
    cluster_rows: list = field(default_factory=list)
    summary_frames: list = field(default_factory=list)
    sil_frames: list = field(default_factory=list)
    components: np.ndarray | None = None
    cosines: np.ndarray | None = None
    labels_fixed: list = field(default_factory=list)
    labels_sil: list = field(default_factory=list)
    best_ks: list = field(default_factory=list)
    main: dict[str, Any] = field(default_factory=dict)
    t_pca: float = 0.0
    t_corr: float = 0.0
    t_cluster: float = 0.0


def _layer_pass(vs: VectorSet, kind: str, ratings: Any, *, main_layer: int, n_bootstrap: int, seed: int,
                linkage: str, k_clusters: int, k_range: tuple[int, int]) -> _LayerPass:
    """Every stored layer in turn: oriented PCA, cosines and top pairs; bootstrapped rating
    correlations of the first PCs; the fixed and silhouette clusterings."""
    emotions = vs.emotions
    n, n_layers = len(emotions), len(vs.layers)
    valence, arousal = ratings.valence, ratings.arousal
    exact = ratings.exact
    refs = {"valence": valence, "arousal": arousal}
    n_pcs = min(N_PCS, n - 1, vs.d)
    lp = _LayerPass(components=np.zeros((n_layers, n_pcs, vs.d), dtype=np.float32),
                    cosines=np.zeros((n_layers, n, n), dtype=np.float32))
    orient_refs, orient_names = orientation_references(valence, arousal, n_pcs)
    n_rated = min(N_PCS_RATED, n_pcs)
    for li, (layer, x) in enumerate(vs.iter_layers(kind)):
        t0 = time.perf_counter()
        res = geometry.orient(geometry.pca(x, n_pcs), orient_refs, orient_names)
        ratio = res.explained_ratio
        for pc in range(n_pcs):
            lp.var_rows.append((layer, pc + 1, ratio[pc], ratio[: pc + 1].sum()))
        sf = pd.DataFrame(res.scores, columns=[f"pc{i + 1}" for i in range(n_pcs)])
        sf.insert(0, "arousal", arousal)
        sf.insert(0, "valence", valence)
        sf.insert(0, "emotion", emotions)
        sf.insert(0, "layer", layer)
        lp.score_frames.append(sf)
        lp.components[li] = res.components.astype(np.float32)
        cos = geometry.cosine_matrix(x)
        lp.cosines[li] = cos
        pf = geometry.top_pairs(cos, emotions, N_PAIRS)
        pf.insert(0, "layer", layer)
        lp.pair_frames.append(pf)
        t1 = time.perf_counter()
        lp.t_pca += t1 - t0
        boot = stats.pca_bootstrap(x, res.components[:n_rated], res.scores[:, :n_rated],
                                   n_bootstrap=n_bootstrap, seed=seed)
        for pc in range(n_rated):
            for rating, ref in refs.items():
                for method in stats.METHODS:
                    for words, mask in (("covered", np.ones(n, bool)), ("exact", exact)):
                        c, align = stats.correlate_pc(boot, pc, ref, mask, method=method)
                        lp.corr_rows.append({
                            "layer": layer, "pc": pc + 1, "rating": rating, "method": method,
                            "words": words, "sign_oriented_by": res.oriented_by[pc],
                            "n": c.n, "r": c.r, "ci_low": c.ci_low, "ci_high": c.ci_high,
                            "ci_method": CI_METHOD, "pc_alignment": align, "p": c.p,
                            "level": c.level, "n_bootstrap": c.n_bootstrap,
                        })
        t2 = time.perf_counter()
        lp.t_corr += t2 - t1
        cl = clustering.cluster_layer(x, emotions, method=linkage, k_fixed=k_clusters,
                                      k_range=k_range, cosine=cos)
        for cut in ("fixed", "silhouette"):
            part = cl[cut]
            for e, lab in zip(emotions, part["labels"]):
                lp.cluster_rows.append((layer, cut, part["k"], e, int(lab)))
            cs = part["clusters"].drop(columns=["label"])
            cs.insert(0, "k", part["k"])
            cs.insert(0, "cut", cut)
            cs.insert(0, "layer", layer)
            lp.summary_frames.append(cs)
        sil = cl["choice"].silhouette.copy()
        sil.insert(0, "layer", layer)
        lp.sil_frames.append(sil)
        lp.labels_fixed.append(cl["fixed"]["labels"])
        lp.labels_sil.append(cl["silhouette"]["labels"])
        lp.best_ks.append(cl["choice"].best_k)
        lp.t_cluster += time.perf_counter() - t2
        if layer == main_layer:
            mean_norm = float(np.linalg.norm(x, axis=1).mean())
            lp.main = {"pca": res, "cosine": cos, "clusters": cl, "x": x,
                       "mean_vector_norm": mean_norm,
                       "grand_mean_norm_ratio": float(np.linalg.norm(x.mean(axis=0)) / mean_norm)
                       if mean_norm > 0 else float("nan")}
        log.info("layer %s: PC1 %.1f%%", layer, 100 * ratio[0])
    return lp


def _write_tables(out: Path, lp: _LayerPass, emotions: list[str], layers: list[int]) -> tuple[
        pd.DataFrame, pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    """The per-layer tables and arrays, and the agreement between layers, written into ``out``;
    returns the variance, correlation and pair tables, the fixed-k ARI and cosine-structure
    matrices."""
    n_layers = len(layers)
    variance = pd.DataFrame(
        lp.var_rows, columns=["layer", "pc", "explained_ratio", "cumulative_ratio"]
    )
    correlations = correlation_table(lp.corr_rows)
    pairs = pd.concat(lp.pair_frames, ignore_index=True)
    cluster_table = pd.DataFrame(lp.cluster_rows, columns=["layer", "cut", "k", "emotion", "cluster"])
    cluster_summary = pd.concat(lp.summary_frames, ignore_index=True)
    silhouette = pd.concat(lp.sil_frames, ignore_index=True)
    _tsv(variance, out / FILES["pca_variance"])
    _tsv(pd.concat(lp.score_frames, ignore_index=True), out / FILES["pca_scores"])
    np.save(out / FILES["pca_components"], lp.components)
    _tsv(correlations, out / FILES["rating_correlations"])
    _tsv(pairs, out / FILES["pairs"])
    np.save(out / FILES["cosine"], lp.cosines)
    _tsv(pd.DataFrame(lp.main["cosine"], index=emotions, columns=emotions).rename_axis("emotion")
         .reset_index(), out / FILES["cosine_main_layer"])
    _tsv(cluster_table, out / FILES["clusters"])
    _tsv(cluster_summary, out / FILES["cluster_summary"])
    _tsv(silhouette, out / FILES["silhouette"])

    ari_fixed = clustering.adjusted_rand_matrix(lp.labels_fixed)
    ari_sil = clustering.adjusted_rand_matrix(lp.labels_sil)
    structure = clustering.structure_agreement(lp.cosines)
    ia, ib = np.triu_indices(n_layers, k=1)
    agreement = pd.DataFrame({
        "layer_a": np.asarray(layers)[ia], "layer_b": np.asarray(layers)[ib],
        "ari_fixed_k": ari_fixed[ia, ib], "ari_silhouette_k": ari_sil[ia, ib],
        "cosine_r": structure[ia, ib],
    })
    _tsv(agreement, out / FILES["layer_agreement"])
    return variance, correlations, pairs, ari_fixed, structure


def _lens(vs: VectorSet, main: dict[str, Any], emotions: list[str], model: Any, tokenizer: Any, out: Path, *,
          main_layer: int, top_k_tokens: int) -> dict[str, Any]:
    """The logit lens at the main layer, its tables written into ``out``; returns its summary."""
    rn = vs.residual_norm
    if rn is not None and np.isfinite(rn[vs.layer_position(main_layer)]):
        scale = float(rn[vs.layer_position(main_layer)])
        scale_rule = "residual_norm of the store at the main layer (measured)"
    else:
        scale = main["mean_vector_norm"]
        scale_rule = ("residual norm unknown to the store: the main layer's mean vector "
                      "norm (matters only through the final norm's epsilon)")
    lens = logit_lens.logit_lens(main["x"], emotions, model, tokenizer, scale=scale,
                                 layer=main_layer, top_k=top_k_tokens)
    _tsv(lens.tokens, out / LENS_FILES["logit_lens_tokens"])
    _tsv(lens.summary, out / LENS_FILES["logit_lens_summary"])
    _tsv(lens.pairs, out / LENS_FILES["logit_lens_pairs"])
    return {**logit_lens.summarise(lens, top_k_tokens), "layer": main_layer,
            "scale": scale, "scale_rule": scale_rule}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _adjacent_mean(matrix: np.ndarray, adjacent: list[tuple[int, int]]) -> float | None:
    """Mean of ``matrix[a, b]`` over consecutive stored layers, or None with one layer."""
    return float(np.mean([matrix[a, b] for a, b in adjacent])) if adjacent else None


def _summary(*, vs, kind, main_layer, main_rule, ratings, variance, correlations, pairs,
             silhouette_k, main, linkage, k_clusters, k_range, n_bootstrap, seed, ari_fixed,
             structure, lens_summary) -> dict[str, Any]:
    """The JSON summary (see ``analyze``)."""
    layers = vs.layers
    mres = main["pca"]
    mc = correlations[correlations["layer"] == main_layer]
    corr_main = [
        {k: (_nan_to_none(v) if isinstance(v, float) else v) for k, v in row.items()
         if k != "layer"}
        for row in mc.to_dict("records")
    ]
    head = correlations[
        (correlations["method"] == "pearson") & (correlations["words"] == "covered")
    ]

    def by_layer(pc: int, rating: str) -> list[float | None]:
        sel = head[(head["pc"] == pc) & (head["rating"] == rating)].set_index("layer")["r"]
        return [_nan_to_none(sel.get(layer, float("nan"))) for layer in layers]

    mp = pairs[pairs["layer"] == main_layer]
    unmapped = ratings.table.loc[ratings.table["rule"] == "unmapped", "emotion"].tolist()
    adjacent = [(a, a + 1) for a in range(len(layers) - 1)]
    mcl = main["clusters"]
    return {
        "vectors": str(vs.path),
        "kind": kind,
        "n_emotions": len(vs.emotions),
        "layers": layers,
        "d": vs.d,
        "main_layer": main_layer,
        "main_layer_rule": main_rule,
        "subject_model": vs.provenance.get("subject_model"),
        "norms": {"source": "labMTsimple/data/WK/BRM-emot-submit.csv", "citation": norms.CITATION,
                  **ratings.coverage(),
                  "unmapped": unmapped},
        "pca": {
            "centred": True,
            "sign_rules": mres.sign_rules[:3],
            "sign_oriented_by": mres.oriented_by,
            "main_layer_explained_ratio": [float(v) for v in mres.explained_ratio],
            "pc1_ratio_by_layer": [
                float(v)
                for v in variance[variance["pc"] == 1].sort_values("layer")["explained_ratio"]
            ],
            "grand_mean_norm_ratio": main["grand_mean_norm_ratio"],
        },
        "rating_correlations_main_layer": corr_main,
        "pc1_valence_r_by_layer": by_layer(1, "valence"),
        "pc2_arousal_r_by_layer": by_layer(2, "arousal"),
        "pc3_arousal_r_by_layer": by_layer(3, "arousal"),
        "pairs_main_layer": {
            kind_: [[r.emotion_a, r.emotion_b, float(r.cosine)]
                    for r in mp[mp["kind"] == kind_].head(10).itertuples()]
            for kind_ in ("synonym", "opposite")
        },
        "clustering": {
            "linkage": linkage,
            "distance": "euclidean on unit vectors" if linkage == "ward" else "cosine",
            "k_fixed": mcl["fixed"]["k"],
            "k_range": list(k_range),
            "k_criterion": "highest mean silhouette (same distance as the linkage)",
            "silhouette_k_by_layer": silhouette_k,
            "main_layer_silhouette_k": mcl["choice"].best_k,
            "main_layer_fixed_sizes": mcl["fixed"]["clusters"]["size"].tolist(),
        },
        "layer_agreement": {
            "ari_fixed_k_adjacent_mean": _adjacent_mean(ari_fixed, adjacent),
            "cosine_r_adjacent_mean": _adjacent_mean(structure, adjacent),
            "ari_fixed_k_with_main": [float(v) for v in ari_fixed[layers.index(main_layer)]],
            "cosine_r_with_main": [float(v) for v in structure[layers.index(main_layer)]],
        },
        "bootstrap": {"n": n_bootstrap, "seed": seed, "level": 0.95, "interval": "percentile",
                      "method": CI_METHOD,
                      "sign_alignment": "each refitted PC j is flipped to a positive cosine "
                                        "with full-sample PC j (as oriented for the point "
                                        "estimate); PCs are matched by rank"},
        "multiple_comparisons": {
            "family": P_FAMILY,
            "n_tests": int(np.isfinite(correlations["p"].to_numpy(dtype=float)).sum())
            if len(correlations) else 0,
            "p_holm": "Holm step-down (family-wise error rate; valid under any dependence)",
            "p_bh": "Benjamini-Hochberg (false discovery rate; scipy false_discovery_control)",
        },
        "logit_lens": lens_summary,
        "files": {**FILES, **(LENS_FILES if lens_summary else {})},
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "scipy", "scikit-learn", "pandas", "matplotlib", "zarr", "labMTsimple"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
