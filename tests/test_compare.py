"""The comparison statistics (emotion_vectors.analysis.compare) on constructed cases: identical
geometry up to a rotation and a scale gives RSA, CKA, neighbour and cluster agreement of 1 and an
exact Procrustes map, whatever the two hidden sizes; each measure against a hand computation;
independent geometries leave every permutation test calibrated (rejection rate at alpha in the
binomial band); the cross-fitted comparison removes agreement that comes from texts both models
read; the claims are Holm-corrected over the comparison family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from emotion_vectors.analysis import compare as C
from emotion_vectors.analysis.store import store_from_reference_npz, write_vector_store
from emotion_vectors.core.claims import ALPHA, draws_needed, rejection_band


def spiked(rng: np.random.Generator, n: int = 24, d: int = 40) -> np.ndarray:
    """Emotion-vector-like rows: a few dominant directions, the rest noise."""
    scale = np.ones(d)
    scale[:3] = [6.0, 3.0, 2.0]
    return rng.standard_normal((n, d)) * scale


def rotated(rng: np.random.Generator, x: np.ndarray, d_out: int, scale: float) -> np.ndarray:
    """``x`` mapped isometrically into ``d_out`` dimensions (random orthonormal rows), scaled and
    shifted by a common offset (centring removes it)."""
    q, _ = np.linalg.qr(rng.standard_normal((d_out, d_out)))
    return scale * x @ q[: x.shape[1]] + rng.standard_normal(d_out) * 10


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


# --------------------------------------------------------------------------- constructed cases


@pytest.mark.parametrize("d_b", [40, 64])  # same hidden size, and a wider model
def test_identical_geometry_up_to_rotation_and_scale_is_agreement_one(d_b):
    rng = np.random.default_rng(0)
    x = spiked(rng)
    y = rotated(rng, x, d_b, 3.7)
    assert C.rsa(x, y) == pytest.approx(1.0, abs=1e-12)
    assert C.linear_cka(x, y) == pytest.approx(1.0, abs=1e-12)
    assert C.nn_overlap(x, y, 3) == 1.0
    assert C.cluster_ari(x, y, 6) == pytest.approx(1.0)
    assert C.procrustes_holdout(x, y, n_pcs=5, n_splits=10) == pytest.approx(1.0, abs=1e-9)
    # projected to all training PCs the map is still exact
    assert C.procrustes_holdout(x, y, n_pcs=50, n_splits=3) == pytest.approx(1.0, abs=1e-9)
    tests = C.permutation_tests([(x, y)], n_permutations=99, seed=1)
    for m in C.MEASURES:
        assert tests[m].statistic == pytest.approx(1.0, abs=1e-9), m
        assert tests[m].p == pytest.approx(1 / 100), m  # nothing in the null reaches it
        assert tests[m].null_q95 < 0.9, m
    lo, hi = C.rsa_bootstrap([(x, y)], n_bootstrap=100)
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)


def test_measures_against_hand_computations():
    rng = np.random.default_rng(1)
    x, y = spiked(rng, n=9, d=7), spiked(rng, n=9, d=5)
    xc, yc = x - x.mean(0), y - y.mean(0)
    # RSA: Spearman of the upper triangles of the cosine matrices of the centred rows
    ux = xc / np.linalg.norm(xc, axis=1, keepdims=True)
    uy = yc / np.linalg.norm(yc, axis=1, keepdims=True)
    i, j = np.triu_indices(9, 1)
    assert C.rsa(x, y) == pytest.approx(sps.spearmanr((ux @ ux.T)[i, j], (uy @ uy.T)[i, j]).statistic)
    # CKA: the feature-space formula
    cka = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert C.linear_cka(x, y) == pytest.approx(cka)
    # neighbours: k nearest others by cosine, never oneself
    cx = ux @ ux.T
    nn = C.neighbours(cx, 2)
    assert nn.sum(axis=1).tolist() == [2] * 9 and not nn.diagonal().any()
    for r in range(9):
        others = [c for c in np.argsort(-cx[r]) if c != r][:2]
        assert set(np.flatnonzero(nn[r])) == set(others)
    ny = C.neighbours(uy @ uy.T, 2)
    assert C.nn_overlap(x, y, 2) == pytest.approx((nn & ny).sum() / 18)
    # Procrustes: one split by hand
    tr, te = C.half_splits(9, 1, 0)[0]
    k = 3
    za_tr, za_te = C._project(xc, tr, te, k)
    zb_tr, zb_te = C._project(yc, tr, te, k)
    u, s, vt = np.linalg.svd(za_tr.T @ zb_tr)
    pred = s.sum() / (za_tr**2).sum() * za_te @ (u @ vt)
    r2 = 1 - ((pred - zb_te) ** 2).sum() / (zb_te**2).sum()
    assert C.procrustes_holdout(x, y, n_pcs=3, n_splits=1, seed=0) == pytest.approx(r2)
    # the PC projection equals sklearn's PCA fitted on the training rows (up to each PC's sign)
    from sklearn.decomposition import PCA

    ref = PCA(k).fit(xc[tr])
    np.testing.assert_allclose(np.abs(za_te), np.abs(ref.transform(xc[te])), atol=1e-9)


def test_a_permutation_is_a_relabelling_of_b():
    """The fast permuted statistics equal the measure recomputed on B's rows permuted."""
    rng = np.random.default_rng(2)
    x, y = spiked(rng, n=12), spiked(rng, n=12, d=30)
    perms = C.permutations(12, 5, seed=3)
    scorers = {"rsa": C._RSA([(x, y)]), "cka": C._CKA([(x, y)]), "nn_overlap": C._NN([(x, y)], 3),
               "cluster_ari": C._ARI([(x, y)], 4), "procrustes": C._Procrustes([(x, y)], 4, 3, 0)}
    direct = {"rsa": C.rsa, "cka": C.linear_cka, "nn_overlap": lambda a, b: C.nn_overlap(a, b, 3),
              "cluster_ari": lambda a, b: C.cluster_ari(a, b, 4),
              "procrustes": lambda a, b: C.procrustes_holdout(a, b, n_pcs=4, n_splits=3, seed=0)}
    for p in perms:
        for m in C.MEASURES:
            assert scorers[m](p)[0] == pytest.approx(direct[m](x, y[p]), abs=1e-9), m


def test_cka_layers_finds_the_matching_layer():
    rng = np.random.default_rng(4)
    a = [spiked(rng, n=20) for _ in range(3)]
    # B's layer 7 is A's layer 1 rotated; its other layers are unrelated
    b = [spiked(rng, n=20, d=30), rotated(rng, a[1], 50, 2.0)[:, :50], spiked(rng, n=20, d=30)]
    heat = C.cka_layers([a], [b], [0, 1, 2], [5, 7, 9], n_permutations=99, seed=0)
    assert heat.cka.shape == (3, 3) and heat.cka[1, 1] == pytest.approx(1.0)
    assert heat.p[1, 1] == pytest.approx(0.01) and heat.p_fwe[1, 1] == pytest.approx(0.01)
    assert (heat.p_fwe >= heat.p - 1e-12).all()
    assert np.nanargmax(heat.cka[1]) == 1
    table = heat.table()
    assert len(table) == 9 and table.loc[(table.layer_a == 1) & (table.layer_b == 7), "cka"].item() == pytest.approx(1.0)
    # each cell's null is the same permutations as the measures' own CKA test
    tests = C.permutation_tests([(a[1], b[1])], n_permutations=99, seed=0, measures=["cka"])
    assert tests["cka"].null_mean == pytest.approx(heat.null_mean[1, 1])


def test_bad_inputs_are_named():
    rng = np.random.default_rng(5)
    x = spiked(rng, n=8)
    with pytest.raises(C.CompareError, match="8 and 7 emotions"):
        C.rsa(x, x[:7])
    with pytest.raises(C.CompareError, match="k = 8 must be between 1 and n - 1 = 7"):
        C.nn_overlap(x, x, 8)
    with pytest.raises(C.CompareError, match="k = 1 must be between 2"):
        C.cluster_ari(x, x, 1)
    with pytest.raises(C.CompareError, match="unknown measures"):
        C.permutation_tests([(x, x)], measures=["mutual_information"])


# --------------------------------------------------------------------------- calibration


N_SIMS = 1000
N_PERM = 100  # p < 0.05 <=> at most 4 of 100 draws >= observed: exact size 5/101 = 0.0495


def _p_values(n_sims: int, measures, seed: int, crossfit: bool = False, **kw) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {m: [] for m in measures}
    for s in range(n_sims):
        if crossfit:
            views = [(spiked(rng, n=12), spiked(rng, n=12, d=30)), (spiked(rng, n=12), spiked(rng, n=12, d=30))]
        else:
            views = [(spiked(rng, n=12), spiked(rng, n=12, d=30))]
        tests = C.permutation_tests(views, n_permutations=N_PERM, seed=s, measures=measures, nn_k=2, k_clusters=3, **kw)
        for m in measures:
            out[m].append(tests[m].p)
    return {m: np.asarray(v) for m, v in out.items()}


def _assert_calibrated(name: str, p: np.ndarray) -> None:
    rate = float(np.mean(p < ALPHA))
    lo, hi = rejection_band(len(p))
    print(f"\n{name}: rejection rate {rate:.4f} over {len(p)} simulations, band [{lo:.4f}, {hi:.4f}]")
    assert lo <= rate <= hi, (name, rate, lo, hi)


@pytest.fixture(scope="module")
def null_p():
    """Independent geometries (12 emotions, hidden sizes 40 and 30), one view and two."""
    fast = ["rsa", "cka", "nn_overlap", "cluster_ari"]
    return {"one view": _p_values(N_SIMS, fast, 10), "two views": _p_values(400, fast, 11, crossfit=True)}


@pytest.mark.parametrize("measure", ["rsa", "cka"])
def test_continuous_measures_are_calibrated_under_independence(null_p, measure):
    _assert_calibrated(f"{measure} (one view)", null_p["one view"][measure])
    p = null_p["two views"][measure]
    rate = float(np.mean(p < ALPHA))
    lo, hi = rejection_band(len(p))
    assert lo <= rate <= hi, (measure, rate)


@pytest.mark.parametrize("measure", ["nn_overlap", "cluster_ari"])
def test_stepwise_measures_are_calibrated_under_independence(null_p, measure):
    """Their ties are broken by a continuous secondary statistic: exact, not conservative."""
    _assert_calibrated(f"{measure} (one view)", null_p["one view"][measure])
    p = null_p["two views"][measure]
    lo, hi = rejection_band(len(p))
    assert lo <= float(np.mean(p < ALPHA)) <= hi, measure


def test_ties_are_broken_by_the_secondary_statistic():
    null = np.array([0.5, 0.5, 0.5, 0.2, 0.7])
    sec_null = np.array([0.1, 0.3, 0.9, 0.0, 0.0])
    # observed 0.5 with secondary 0.3: counted are 0.7 (greater) and the ties at 0.3 and 0.9
    assert C._test("nn_overlap", 0.5, [0.5], null, (0.3, sec_null)).p == pytest.approx((1 + 3) / 6)
    assert C._test("nn_overlap", 0.5, [0.5], null).p == pytest.approx((1 + 4) / 6)  # no tie-break: all ties count


def test_procrustes_is_calibrated_under_independence():
    p = _p_values(N_SIMS, ["procrustes"], 12, procrustes_pcs=3, procrustes_splits=4)["procrustes"]
    _assert_calibrated("procrustes", p)


def test_the_tests_detect_shared_geometry_with_noise():
    """Power: B = A rotated plus noise as large as A's own spread in most directions."""
    rng = np.random.default_rng(13)
    x = spiked(rng, n=24)
    y = rotated(rng, x, 50, 1.0) + rng.standard_normal((24, 50)) * 1.5
    tests = C.permutation_tests([(x, y)], n_permutations=199, seed=0)
    for m in ("rsa", "cka", "procrustes"):
        assert tests[m].p < 0.01, (m, tests[m])
    assert tests["rsa"].statistic < 0.95  # noisy, not identical


def test_cross_fitting_removes_agreement_from_shared_texts():
    """Two models read the same stories; the labels carry no emotion (a negative control): each
    emotion's vector is the mean of its own stories, which both models encode alike. The full
    vectors then "agree" far beyond the label-permutation null; vectors from disjoint halves of
    the stories, crossed, do not."""
    rng = np.random.default_rng(14)
    n_emotions, per, d = 12, 8, 30
    texts = rng.standard_normal((n_emotions, per, d)) * np.r_[5.0, 3.0, np.ones(d - 2)]  # no label effect
    qa, _ = np.linalg.qr(rng.standard_normal((d, d)))
    read_a = texts @ qa + rng.standard_normal(texts.shape) * 0.3
    read_b = np.tanh(texts / 4) @ rng.standard_normal((d, 40)) + rng.standard_normal((n_emotions, per, 40)) * 0.3
    full = C.permutation_tests([(read_a.mean(1), read_b.mean(1))], n_permutations=199, measures=["rsa", "cka"])
    assert full["rsa"].p < 0.01 and full["cka"].p < 0.01  # the shared texts pass for shared geometry
    h0, h1 = slice(0, per, 2), slice(1, per, 2)
    views = [(read_a[:, h0].mean(1), read_b[:, h1].mean(1)), (read_a[:, h1].mean(1), read_b[:, h0].mean(1))]
    cross = C.permutation_tests(views, n_permutations=199, measures=["rsa", "cka"])
    assert cross["rsa"].p > 0.05 and cross["cka"].p > 0.05, cross


# --------------------------------------------------------------------------- two stores, claims


def _store(path: Path, x: np.ndarray, emotions, layers, n_blocks: int) -> Path:
    write_vector_store(path, x, emotions, layers)
    import zarr

    zarr.open_group(str(path), mode="r+").attrs["num_hidden_layers"] = n_blocks
    return path


def _halves_store(path: Path, halves: list[np.ndarray], emotions, layers, n_blocks: int) -> Path:
    names = [f"{e}{C.HALF_SEP}{h}" for e in emotions for h in (0, 1)]
    x = np.stack([halves[h][i] for i in range(len(emotions)) for h in (0, 1)])
    return _store(path, x, names, layers, n_blocks)


EMO = ["happy", "sad", "afraid", "calm", "angry", "proud", "ashamed", "lonely", "excited", "bored", "grateful",
       "hostile", "serene", "desperate"]


def test_compare_stores_writes_its_files_and_claims(tmp_path):
    from emotion_vectors.vectors.split_vectors import HALF_SEP

    assert HALF_SEP == C.HALF_SEP
    rng = np.random.default_rng(20)
    n = len(EMO)
    base = [spiked(rng, n=n, d=24) for _ in range(3)]  # the emotions' geometry at three depths
    a_layers = [x + 0.3 * rng.standard_normal(x.shape) for x in base]
    b_layers = [rotated(rng, x, 32, 2.0) + 0.3 * rng.standard_normal((n, 32)) for x in base]
    # A holds two emotions B lacks, in another order
    extra = spiked(rng, n=2, d=24)
    a_rows = np.concatenate([np.stack(a_layers, 1), np.stack([extra] * 3, 1)])
    sa = _store(tmp_path / "a.zarr", a_rows, EMO + ["smug", "nostalgic"], [1, 3, 5], 9)  # main layer: 5 (2/3 of 9 - 1)
    order = rng.permutation(n)
    sb = _store(tmp_path / "b.zarr", np.stack(b_layers, 1)[order], [EMO[i] for i in order], [2, 4, 6], 10)  # main: 6
    ha = _halves_store(tmp_path / "ha.zarr", [np.stack(a_layers, 1) + 0.2 * rng.standard_normal((n, 3, 24)) for _ in range(2)],
                       EMO, [1, 3, 5], 9)
    hb = _halves_store(tmp_path / "hb.zarr", [np.stack(b_layers, 1) + 0.2 * rng.standard_normal((n, 3, 32)) for _ in range(2)],
                       EMO, [2, 4, 6], 6)
    a = C.open_side("small", sa, halves=ha)
    b = C.open_side("wide", sb, halves=hb)
    assert (a.main_layer, b.main_layer) == (5, 6)
    out = tmp_path / "pair"
    summary = C.compare_stores(a, b, out, crossfit=True, n_permutations=299, n_bootstrap=100, nn_k=3, k_clusters=4,
                               procrustes_pcs=4, procrustes_splits=5)
    assert sorted(p.name for p in out.iterdir()) == sorted(C.FILES.values())
    assert summary["shared_emotions"] == EMO and summary["n_shared"] == n and summary["crossfit"]
    # layer l of A and layer l + 1 of B hold the same depth of the geometry: the heatmap finds it
    heat = pd.read_csv(out / "cka.tsv", sep="\t")
    assert len(heat) == 9
    best = {r["layer_a"]: r["best_layer_b"] for r in summary["cka_best_layer_b"]}
    assert best == {1: 2, 3: 4, 5: 6}
    main = summary["cka_main_layers"]
    assert (main["layer_a"], main["layer_b"]) == (5, 6)
    assert main["cka"] == pytest.approx(heat.loc[(heat.layer_a == 5) & (heat.layer_b == 6), "cka"].item(), rel=1e-5)
    assert main["cka"] > heat.loc[(heat.layer_a == 5) & (heat.layer_b == 4), "cka"].item()
    measures = pd.read_csv(out / "measures.tsv", sep="\t")
    assert measures["measure"].tolist() == list(C.MEASURES) and (measures["views"] == "cross-fitted halves").all()
    assert measures["statistic_same_stories"].notna().all()
    assert set(summary["reliability_split_half_rsa"]) == {"small", "wide"}
    assert all(v > 0.8 for v in summary["reliability_split_half_rsa"].values())
    val = pd.read_csv(out / "valence.tsv", sep="\t")
    assert len(val) == 6 and {"r_small", "r_wide", "r_difference", "difference_ci_low"} <= set(val.columns)
    assert (val["r_difference"] - (val["r_small"] - val["r_wide"])).abs().max() < 1e-5  # 6 significant digits
    assert json.loads((out / "summary.json").read_text())["tests"]["rsa"]["n_permutations"] == 299

    # a second pair without halves (an external store): one view
    ref = {e: rng.standard_normal(16).astype(np.float32) for e in EMO[:10] + ["zealous"]}
    np.savez(tmp_path / "ref.npz", **ref)
    store_from_reference_npz(tmp_path / "ref.npz", tmp_path / "ref.zarr")
    r = C.open_side("published", tmp_path / "ref.zarr", kind="raw")  # denoised only: falls back
    assert r.kind == "denoised" and r.main_layer == 39
    s2 = C.compare_stores(a, r, tmp_path / "pair2", n_permutations=299, n_bootstrap=50, nn_k=2, k_clusters=3)
    assert s2["n_shared"] == 10 and not s2["crossfit"] and s2["same_stories"] is None

    claims = C.comparison_claims([summary, s2])
    assert [c.id for c in claims][:2] == ["compare.small~wide.rsa", "compare.small~wide.cka"]
    assert len(claims) == 10 and all(c.family == 10 and c.correction == "Holm over 10 tests" for c in claims)
    ps = np.array([c.p for c in claims])
    from emotion_vectors.core.claims import holm

    np.testing.assert_allclose([c.p_adjusted for c in claims], holm(ps))
    assert claims[0].interval is not None and "bootstrap" in claims[0].interval_of
    assert "same stories" in claims[0].note and "reliability" in claims[0].note
    # shared geometry (A and B are one geometry rotated): the cross-fitted RSA and CKA are effects;
    # the unrelated reference is not
    verdicts = {c.id: c.verdict for c in claims}
    assert verdicts["compare.small~wide.rsa"] == "effect" and verdicts["compare.small~wide.procrustes"] == "effect"
    assert verdicts["compare.small~published.rsa"] == "no effect"
    table = C.comparison_table([summary, s2], claims)
    assert len(table) == 10 and table["p_holm"].notna().all()
    md = C.comparison_markdown(table, [summary, s2], skipped={"gone": "x.npz does not exist"})
    assert "cross-fitted" in md and "External store gone skipped: x.npz does not exist." in md
    assert "| PC1 | valence |" in md
    assert "| verdict (comparison family) |" in md and "run-wide verdicts" in md


def test_too_few_permutations_for_the_family_give_no_p(tmp_path):
    rng = np.random.default_rng(21)
    sa = _store(tmp_path / "a.zarr", spiked(rng, n=8)[:, None, :], EMO[:8], [3], 6)
    sb = _store(tmp_path / "b.zarr", spiked(rng, n=8)[:, None, :], EMO[:8], [3], 6)
    s = C.compare_stores(C.open_side("a", sa), C.open_side("b", sb), tmp_path / "o", n_permutations=19,
                         n_bootstrap=0, nn_k=2, k_clusters=3, procrustes_pcs=2, procrustes_splits=2)
    claims = C.comparison_claims([s])
    assert draws_needed(ALPHA, 5) > 19
    assert all(c.verdict == "not testable" and c.p is None and "draws" in c.note for c in claims)
    with pytest.raises(C.CompareError, match="share 4 emotions"):
        sc = _store(tmp_path / "c.zarr", spiked(rng, n=4)[:, None, :], EMO[:4], [3], 6)
        C.compare_stores(C.open_side("a", sa), C.open_side("c", sc), tmp_path / "o2")
    with pytest.raises(C.CompareError, match="compare.k_clusters = 8 must be between 2 and 7"):
        C.compare_stores(C.open_side("a", sa), C.open_side("b", sb), tmp_path / "o3", k_clusters=8)
    with pytest.raises(C.CompareError, match="needs both split-half stores"):
        C.compare_stores(C.open_side("a", sa), C.open_side("b", sb), tmp_path / "o4", crossfit=True, nn_k=2, k_clusters=3)


def test_adjusted_rand_index_equals_scikit_learns():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(30)
    for _ in range(200):
        n = int(rng.integers(2, 30))
        a, b = rng.integers(0, rng.integers(1, 6), n), rng.integers(0, rng.integers(1, 6), n)
        assert C._ari(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    assert C._ari(np.zeros(5), np.zeros(5)) == adjusted_rand_score(np.zeros(5), np.zeros(5)) == 1.0
    assert C._ari(np.arange(5), np.arange(5)) == 1.0


def test_reducing_the_rows_changes_no_measure():
    rng = np.random.default_rng(31)
    x, y = spiked(rng, n=10, d=300), spiked(rng, n=10, d=7)
    z = C.reduce_rows(x)
    assert z.shape == (10, 9)  # centred rows span at most n - 1 dimensions
    np.testing.assert_allclose(z @ z.T, C.centre(x) @ C.centre(x).T, atol=1e-8)
    for f in (C.rsa, C.linear_cka, lambda a, b: C.nn_overlap(a, b, 2), lambda a, b: C.cluster_ari(a, b, 3),
              lambda a, b: C.procrustes_holdout(a, b, n_pcs=3, n_splits=4)):
        assert f(z, y) == pytest.approx(f(x, y), abs=1e-9)
