"""The vector store loader, `analyze` end to end, the CLI, the benchmark and the rule."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from emotion_vectors.analysis import (
    FILES, LENS_FILES, analyze, default_main_layer, load_vectors, write_vector_store,
)
from emotion_vectors.analysis.store import VectorStoreError, store_from_reference_npz

from test_analysis_helpers import REFERENCE, REPO_ROOT, reference_matrix, structured_vectors

EMOTIONS = ["happy", "sad", "calm", "desperate", "proud", "ashamed", "excited", "bored",
            "loving", "hostile", "afraid", "scared", "grateful", "thankful", "at ease", "on edge"]
# Warriner et al. (2013) valence, typed from the published table (not read through the norms
# code under test): "loving" is rated as "love" and "at ease" as "ease" by the reviewed mapping;
# "on edge" has no rating.
VALENCE = {"happy": 8.47, "sad": 2.10, "calm": 6.89, "desperate": 3.19, "proud": 7.00,
           "ashamed": 2.52, "excited": 8.11, "bored": 2.95, "loving": 8.00, "hostile": 2.35,
           "afraid": 2.25, "scared": 2.80, "grateful": 7.50, "thankful": 7.76, "at ease": 6.15}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A 4-layer store (layers 3, 6, 9, 12 of a 15-block model) of 16 emotions, d = 48."""
    path = tmp_path_factory.mktemp("vectors") / "vectors.zarr"
    x = structured_vectors(EMOTIONS, 4, 48, valence=VALENCE)
    write_vector_store(path, x, EMOTIONS, [3, 6, 9, 12], chunk_layers=3,
                       provenance={"subject_model": {"path": "somewhere", "num_hidden_layers": 15}})
    return path, x


def test_load_vectors(store):
    path, x = store
    vs = load_vectors(path)
    assert vs.emotions == EMOTIONS and vs.layers == [3, 6, 9, 12] and vs.d == 48
    assert vs.kinds == ["raw", "denoised", "raw_unit", "denoised_unit"]
    np.testing.assert_array_equal(vs.layer("denoised", 9), x[:, 2])
    layers = list(vs.iter_layers("raw"))  # chunks of 3 layers: blocks [0:3], [3:4]
    assert [layer for layer, _ in layers] == [3, 6, 9, 12]
    np.testing.assert_array_equal(layers[3][1], x[:, 3])
    np.testing.assert_allclose(np.linalg.norm(vs.layer("raw_unit", 3), axis=1), 1.0, rtol=1e-6)
    # Synthetic vectors carry no residual norm: stored as unknown, not made up.
    assert vs.residual_norm is None and vs.residual_norm_status == "unknown"
    assert vs.n_neutral_pcs_removed.tolist() == [0, 0, 0, 0]
    assert vs.subject_model_path == "somewhere"
    with pytest.raises(VectorStoreError, match="layer 5"):
        vs.layer("raw", 5)
    with pytest.raises(VectorStoreError, match="kind"):
        vs.array("centred")
    with pytest.raises(VectorStoreError, match="does not exist"):
        load_vectors(path.parent / "missing.zarr")


def test_default_main_layer():
    """The analysis's main layer is extraction's two-thirds block (one definition)."""
    from emotion_vectors.extraction.extract import default_layers, main_layer

    assert default_main_layer(list(range(60)), 60) == 39  # the replication's "layer 40"
    assert default_main_layer(default_layers(60), 60) == 39
    assert default_main_layer(default_layers(30), 30) == 19  # SmolLM2
    assert default_main_layer([4, 9, 17, 24], 30) == 17  # 19 absent: the nearest stored
    assert default_main_layer([17, 21], 30) == 21  # 17 and 21 are both 2 away from 19
    assert default_main_layer([3, 6, 9, 12], 15) == 9
    assert default_main_layer([0, 1, 2]) == 1  # depth unknown: max + 1 = 3 -> round(2) - 1
    for n in range(1, 130):
        assert default_main_layer(list(range(n)), n) == main_layer(n)
        assert default_main_layer(default_layers(n), n) == main_layer(n)


def test_analyze_writes_every_file(store, tmp_path):
    path, _ = store
    summary = analyze(path, tmp_path, k_clusters=4, k_range=(2, 6), n_bootstrap=50)
    for name in FILES.values():
        assert (tmp_path / name).exists(), name
    for name in LENS_FILES.values():
        assert not (tmp_path / name).exists()
    assert json.loads((tmp_path / FILES["summary"]).read_text()) == json.loads(
        json.dumps(summary, default=float))
    assert summary["main_layer"] == 9 and "15 blocks" in summary["main_layer_rule"]
    assert summary["norms"]["covered"] == 15 and summary["norms"]["unmapped"] == ["on edge"]
    # PC1-valence r at every layer, recomputed here from the stored vectors and the typed
    # ratings: PC1 of the centred rows (SVD), Pearson r over the 15 rated emotions, oriented so
    # that valence correlates positively.
    _, x = store
    rated = [i for i, e in enumerate(EMOTIONS) if e in VALENCE]
    expected = []
    for li in range(4):
        xc = x[:, li].astype(np.float64) - x[:, li].astype(np.float64).mean(axis=0)
        u, s, _ = np.linalg.svd(xc, full_matrices=False)
        pc1 = (u[:, 0] * s[0])[rated]
        expected.append(abs(np.corrcoef(pc1, [VALENCE[EMOTIONS[i]] for i in rated])[0, 1]))
    np.testing.assert_allclose(summary["pc1_valence_r_by_layer"], expected, rtol=1e-5)
    assert min(expected) > 0.8  # the data were built along valence
    assert summary["logit_lens"] is None

    var = pd.read_csv(tmp_path / FILES["pca_variance"], sep="\t")
    assert list(var.columns) == ["layer", "pc", "explained_ratio", "cumulative_ratio"]
    assert len(var) == 4 * 10
    scores = pd.read_csv(tmp_path / FILES["pca_scores"], sep="\t", keep_default_na=False,
                         na_values=[""])
    assert len(scores) == 4 * 16 and scores["emotion"].tolist()[:2] == ["happy", "sad"]
    corr = pd.read_csv(tmp_path / FILES["rating_correlations"], sep="\t")
    assert len(corr) == 4 * 3 * 2 * 2 * 2
    assert list(corr.columns) == [
        "layer", "pc", "rating", "method", "words", "sign_oriented_by", "n", "r", "ci_low",
        "ci_high", "ci_method", "pc_alignment", "p", "p_holm", "p_bh", "level", "n_bootstrap"]
    # PC1 oriented by valence, every later PC by arousal; that rating's r is >= 0 there.
    assert (corr.loc[corr["pc"] == 1, "sign_oriented_by"] == "valence").all()
    assert (corr.loc[corr["pc"] > 1, "sign_oriented_by"] == "arousal").all()
    forced = corr[(corr["sign_oriented_by"] == corr["rating"]) & (corr["words"] == "covered")
                  & (corr["method"] == "pearson")]
    assert len(forced) == 4 * 3 and (forced["r"] >= 0).all()
    # Holm and BH over the whole table (one family of 96 tests).
    from emotion_vectors.core.stats import adjust_pvalues

    adj = adjust_pvalues(corr["p"].to_numpy())
    np.testing.assert_allclose(corr["p_holm"], adj["holm"], rtol=1e-5)
    np.testing.assert_allclose(corr["p_bh"], adj["bh"], rtol=1e-5)
    assert (corr["p_holm"] >= corr["p"] - 1e-12).all() and (corr["p_bh"] <= corr["p_holm"]).all()
    assert summary["multiple_comparisons"]["n_tests"] == 96
    assert corr["pc_alignment"].between(0, 1).all()
    assert (corr["ci_low"] <= corr["ci_high"]).all()
    pc1 = forced[forced["pc"] == 1]
    assert ((pc1["ci_low"] <= pc1["r"]) & (pc1["r"] <= pc1["ci_high"])).all()
    assert summary["pca"]["sign_oriented_by"][:3] == ["valence", "arousal", "arousal"]
    assert set(corr["words"]) == {"covered", "exact"}
    assert set(corr["method"]) == {"pearson", "spearman"}
    assert (corr.loc[corr["words"] == "covered", "n"] == 15).all()
    assert (corr.loc[corr["words"] == "exact", "n"] == 13).all()  # "loving", "at ease" mapped
    comps = np.load(tmp_path / FILES["pca_components"])
    assert comps.shape == (4, 10, 48) and comps.dtype == np.float32
    cos = np.load(tmp_path / FILES["cosine"])
    assert cos.shape == (4, 16, 16)
    clusters = pd.read_csv(tmp_path / FILES["clusters"], sep="\t")
    assert set(clusters["cut"]) == {"fixed", "silhouette"}
    assert clusters[clusters["cut"] == "fixed"].groupby("layer")["cluster"].nunique().eq(4).all()
    summ = pd.read_csv(tmp_path / FILES["cluster_summary"], sep="\t")
    assert summ.groupby(["layer", "cut"])["size"].sum().eq(16).all()
    agree = pd.read_csv(tmp_path / FILES["layer_agreement"], sep="\t")
    assert len(agree) == 6 and agree["cosine_r"].between(-1, 1).all()
    pairs = pd.read_csv(tmp_path / FILES["pairs"], sep="\t")
    assert len(pairs) == 4 * 2 * 20
    sil = pd.read_csv(tmp_path / FILES["silhouette"], sep="\t")
    assert list(sil["k"].unique()) == [2, 3, 4, 5, 6]
    cm = pd.read_csv(tmp_path / FILES["cosine_main_layer"], sep="\t", index_col=0)
    assert cm.shape == (16, 16)
    np.testing.assert_allclose(cm.to_numpy(), cos[2], atol=1e-5)


def test_analyze_is_deterministic(store, tmp_path):
    path, _ = store
    analyze(path, tmp_path / "a", k_clusters=4, k_range=(2, 6), n_bootstrap=30, seed=1)
    analyze(path, tmp_path / "b", k_clusters=4, k_range=(2, 6), n_bootstrap=30, seed=1)
    for name in ("rating_correlations.tsv", "clusters.tsv", "pca_scores.tsv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_analyze_with_logit_lens(tiny_llama, tmp_path):
    model, tok = tiny_llama
    w = model.get_output_embeddings().weight.detach().numpy()
    emotions = ["happy", "sad", "calm", "desperate", "proud", "ashamed"]
    rows = [tok(" " + e, add_special_tokens=False)["input_ids"][0] for e in emotions]
    x = np.stack([w[rows], w[rows] * 0.9], axis=1)  # 2 layers
    path = write_vector_store(tmp_path / "v.zarr", x, emotions, [2, 4],
                              residual_norm=np.array([7.0, 9.0]))
    summary = analyze(path, tmp_path / "out", k_clusters=3, k_range=(2, 4), n_bootstrap=20,
                      model=model, tokenizer=tok, top_k_tokens=10)
    for name in LENS_FILES.values():
        assert (tmp_path / "out" / name).exists()
    lens = summary["logit_lens"]
    assert summary["main_layer"] == 2  # 5 blocks in the model: main_layer(5) = round(3.3) - 1
    assert lens["layer"] == 2 and lens["scale_rule"].startswith("residual_norm")
    assert lens["scale"] == 7.0
    assert lens["n_emotions"] == 6 and lens["opposite_pairs"] == 3
    tokens = pd.read_csv(tmp_path / "out" / LENS_FILES["logit_lens_tokens"], sep="\t",
                         keep_default_na=False)
    assert len(tokens) == 6 * 2 * 10


def test_reference_store_analysis(tmp_path):
    """The published vectors (the replication's "layer 40" = output of block 39) through the
    whole stage (one layer)."""
    reference_matrix()  # skips if absent
    path = store_from_reference_npz(REFERENCE, tmp_path / "ref.zarr")
    vs = load_vectors(path)
    assert vs.layers == [39] and vs.residual_norm is None and vs.kinds == [
        "denoised", "denoised_unit"]
    s = analyze(path, tmp_path / "out", n_bootstrap=200)
    assert s["main_layer"] == 39 and "60 blocks" in s["main_layer_rule"]
    np.testing.assert_allclose(s["pca"]["main_layer_explained_ratio"][:5],
                               [0.369, 0.117, 0.102, 0.065, 0.046], atol=5e-4)
    assert s["pca"]["grand_mean_norm_ratio"] < 1e-3  # already centred
    assert s["pairs_main_layer"]["synonym"][0][:2] == ["grateful", "thankful"]
    assert s["pairs_main_layer"]["opposite"][0][:2] == ["disturbed", "smug"]
    pc1 = [c for c in s["rating_correlations_main_layer"]
           if (c["pc"], c["rating"], c["method"], c["words"])
           == (1, "valence", "pearson", "covered")]
    assert pc1[0]["n"] == 153 and pc1[0]["r"] > 0.7
    assert pc1[0]["sign_oriented_by"] == "valence" and pc1[0]["ci_low"] > 0.6
    assert pc1[0]["p_holm"] < 1e-10 and pc1[0]["p_bh"] <= pc1[0]["p_holm"]
    pc3 = [c for c in s["rating_correlations_main_layer"]
           if (c["pc"], c["rating"], c["method"], c["words"])
           == (3, "arousal", "pearson", "covered")]
    assert pc3[0]["sign_oriented_by"] == "arousal" and pc3[0]["r"] > 0.4
    assert s["norms"]["coverage"] == pytest.approx(153 / 171)
    assert s["clustering"]["k_fixed"] == 15
    assert 4 <= s["clustering"]["main_layer_silhouette_k"] <= 20
    assert sum(s["clustering"]["main_layer_fixed_sizes"]) == 171


def test_cli(store, tmp_path, capsys):
    from emotion_vectors.analysis.__main__ import main

    path, _ = store
    assert main([str(path), str(tmp_path), "--n-bootstrap", "10", "--k-clusters", "3",
                 "--k-range", "2", "5", "--main-layer", "12", "--linkage", "average"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["main_layer"] == 12
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["clustering"]["linkage"] == "average"
    assert summary["clustering"]["distance"] == "cosine"


def test_bench_smoke(capsys):
    from emotion_vectors.bench.analysis import main

    rc = main(["--n-emotions", "12", "--n-layers", "3", "--d", "32", "--n-bootstrap", "20",
               "--source", "random"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["shape"] == [12, 3, 32] and result["peak_rss_mib"] > 0


# --- the Snakemake rule -------------------------------------------------------------------

SMK = REPO_ROOT / "workflow" / "rules" / "analysis.smk"


def test_rule_outputs_match_the_package():
    """The rule's outputs come from the package's FILES / LENS_FILES; every item it puts in the
    report is one of them and has its caption."""
    text = SMK.read_text()
    assert "from emotion_vectors.analysis.run import FILES, LENS_FILES" in text
    reported = dict(re.findall(r'"(\w+)": \("(\w+\.rst)", "[^"]+"\)', text))
    assert len(reported) == 10
    for key, caption in reported.items():
        assert key in FILES or key in LENS_FILES, key
        assert (SMK.parent.parent / "report" / caption).exists(), caption


@pytest.mark.slow
@pytest.mark.parametrize("lens", [False, True])
def test_rule_runs_in_snakemake(tmp_path, lens, tiny_llama):
    """The rule in a minimal workflow (common.smk's globals stubbed), then the report."""
    venv_bin = str(REPO_ROOT / ".venv" / "bin")
    snakemake = shutil.which("snakemake", path=venv_bin) or shutil.which("snakemake")
    if snakemake is None:
        pytest.skip("snakemake is not installed")
    emotions = ["happy", "sad", "calm", "desperate", "afraid", "scared", "grateful", "thankful"]
    subject = {"name": "tiny", "path": str(tmp_path / "tiny"), "device": "cpu", "dtype": "float32"}
    if lens:
        model, tok = tiny_llama
        model.save_pretrained(tmp_path / "tiny")
        tok.save_pretrained(tmp_path / "tiny")
        d = model.config.hidden_size
    else:
        d = 16
    write_vector_store(tmp_path / "results/t/vectors/vectors.zarr",
                       structured_vectors(emotions, 3, d), emotions, [1, 2, 3])
    (tmp_path / "Snakefile").write_text(f'''
config.setdefault("run", "t")
config["analysis"] = {{"vector_kind": "denoised", "k_clusters": 3, "k_range": [2, 5],
    "n_bootstrap": 20, "seed": 0, "logit_lens": {lens}, "top_k_tokens": 5}}
RESULTS = "results/t"
LOGS = RESULTS + "/logs"
BENCH = RESULTS + "/benchmarks"
MODELS_DIR = "results/models"
SUBJECT = {subject!r}
SUBJECT_DIR = RESULTS + "/subjects/{{subject}}"
SUBJECT_LOGS = LOGS + "/subjects/{{subject}}"
SUBJECT_BENCH = BENCH + "/subjects/{{subject}}"
EXTRA_SUBJECTS = {{}}
def subject_spec(wildcards):
    return SUBJECT
def model_input(spec):
    return []
def wants_gpu(spec):
    return 0
include: {str(SMK)!r}
rule all:
    input: rules.analyze.output
''')
    run = subprocess.run([snakemake, "--cores", "1", "--quiet"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    out = tmp_path / "results/t/analysis"
    expected = set(FILES.values()) | (set(LENS_FILES.values()) if lens else set())
    assert expected <= {p.name for p in out.iterdir()}
    log_text = (tmp_path / "results/t/logs/analyze.log").read_text()
    if lens:  # only the final norm and the unembedding were read from the checkpoint
        assert "'files_read': ['model.safetensors']" in log_text
        assert "'loaded_bytes'" in log_text and "load_model" not in log_text
    assert (tmp_path / "results/t/benchmarks/analyze.tsv").exists()
    rep = subprocess.run([snakemake, "--report", "report.html"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert "Geometry" in html and "pc_scatter.png" in html
