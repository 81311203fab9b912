"""Emotion-vector maths on hand-checkable examples, and the store built from real shards."""

import numpy as np
import pytest

from emotion_vectors.vectors.build import emotion_vectors, neutral_components, project_out, unit


def test_raw_is_emotion_mean_minus_mean_over_emotions():
    means = np.array([[3.0, 0.0, 1.0], [1.0, 2.0, 1.0], [2.0, 4.0, 1.0]])
    res = emotion_vectors(means, np.zeros((4, 3)), share=0.0)
    np.testing.assert_allclose(res["raw"], [[1, -2, 0], [-1, 0, 0], [0, 2, 0]], atol=1e-6)
    assert res["k"] == 0
    np.testing.assert_allclose(res["denoised"], res["raw"])
    np.testing.assert_allclose(res["raw_unit"][0], np.array([1, -2, 0]) / np.sqrt(5), atol=1e-6)


def test_neutral_pc_is_projected_out():
    # Neutral dialogues vary along x (large) and y (small): the top component is x.
    neutral = np.array([[10.0, 1.0, 0.0], [-10.0, -1.0, 0.0], [10.0, -1.0, 0.0], [-10.0, 1.0, 0.0]])
    pcs = neutral_components(neutral, 0.5)
    assert pcs.k == 1
    np.testing.assert_allclose(np.abs(pcs.components[0]), [1, 0, 0], atol=1e-9)
    np.testing.assert_allclose(pcs.explained_ratio[:2], [100 / 101, 1 / 101])
    means = np.array([[3.0, 1.0, 2.0], [1.0, 3.0, 0.0]])
    res = emotion_vectors(means, neutral, share=0.5)
    # raw = [[1,-1,1],[-1,1,-1]]; removing x leaves [[0,-1,1],[0,1,-1]].
    np.testing.assert_allclose(res["denoised"], [[0, -1, 1], [0, 1, -1]], atol=1e-6)
    # Asking for 99.5% of the variance takes both components.
    assert neutral_components(neutral, 0.995).k == 2


def test_neutral_components_are_centred():
    # Off-centre neutral data: a large constant offset along z, variance along x only. Without
    # centring, the offset would dominate the first singular vector and z would be projected out.
    neutral = np.array([[10.0, 0.0, 50.0], [-10.0, 0.0, 50.0], [9.0, 0.0, 50.0], [-9.0, 0.0, 50.0]])
    pcs = neutral_components(neutral, 0.5)
    assert pcs.k == 1
    np.testing.assert_allclose(np.abs(pcs.components[0]), [1, 0, 0], atol=1e-9)
    np.testing.assert_allclose(pcs.explained_ratio[0], 1.0, atol=1e-12)
    res = emotion_vectors(np.array([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]]), neutral, share=0.5)
    np.testing.assert_allclose(res["denoised"], [[0, 2, 3], [0, -2, -3]], atol=1e-6)


def test_project_out_and_unit():
    comps = np.array([[0.0, 1.0, 0.0]])
    np.testing.assert_allclose(project_out(np.array([[1.0, 5.0, 2.0]]), comps), [[1, 0, 2]])
    u = unit(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(u, [[0.6, 0.8], [0, 0]])


def test_store_from_real_shards(tmp_path, tiny_llama):
    import zarr

    from emotion_vectors.extraction.shards import write_shard
    from emotion_vectors.vectors.build import build_vector_store

    model, tok = tiny_llama
    rng = np.random.default_rng(0)
    words = "the fence rain letter garden window quiet road light morning".split()
    settings = {"pool_start": 3, "short_text_policy": "skip", "batch_size": 4, "max_batch_tokens": None, "storage_dtype": "float32"}
    info = {"path": "tiny-llama", "revision": "test", "dtype": "float32", "quantization": "none"}
    shards = {}
    for name in ("joy", "fear", "neutral"):
        texts = [" ".join(rng.choice(words, size=rng.integers(6, 20))) for _ in range(5)]
        ids = [f"{name}-{i}" for i in range(5)]
        out = tmp_path / f"{name}.zarr"
        write_shard(model, tok, texts, ids, [0, 2], out, settings, name=name, model_info=info)
        shards[name] = out
    rows = build_vector_store({"joy": shards["joy"], "fear": shards["fear"]}, shards["neutral"], tmp_path / "v.zarr", denoise_variance=0.5, provenance={"stage": "test"})
    store = zarr.open_group(str(tmp_path / "v.zarr"), mode="r")
    raw = store["raw"][:]
    assert raw.shape == (2, 2, model.config.hidden_size)
    # Two emotions: the vectors are opposite (mean minus grand mean).
    np.testing.assert_allclose(raw[0], -raw[1], atol=1e-5)
    joy = zarr.open_group(str(shards["joy"]), mode="r")["activations"][:]
    fear = zarr.open_group(str(shards["fear"]), mode="r")["activations"][:]
    np.testing.assert_allclose(raw[0], (joy.mean(0) - fear.mean(0)) / 2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(store["denoised_unit"][:], axis=-1), 1, atol=1e-5)
    assert store.attrs["emotions"] == ["joy", "fear"] and store.attrs["layers"] == [0, 2]
    assert (store["residual_norm"][:] > 0).all()
    assert len(rows) == 4
    # The PCs removed are exactly the fewest neutral components reaching half the variance.
    neutral_acts = zarr.open_group(str(shards["neutral"]), mode="r")["activations"][:]
    for li, row in enumerate(rows[::2]):
        assert row["neutral_pcs_removed"] == neutral_components(neutral_acts[:, li], 0.5).k
    np.testing.assert_array_equal(store["n_neutral_pcs_removed"][:], [r["neutral_pcs_removed"] for r in rows[::2]])


@pytest.mark.parametrize(
    "change, setting",
    [
        ({"model_info": {"dtype": "bfloat16"}}, "model.dtype"),
        ({"model_info": {"revision": "other"}}, "model.revision"),
        ({"model_info": {"quantization": "nf4"}}, "model.quantization"),
        ({"model_info": {"path": "another-model"}}, "model.path"),
        ({"settings": {"pool_start": 2}}, "pool_start"),
        ({"layers": [0, 1]}, "layers"),
    ],
)
def test_store_refuses_shards_of_other_origin(tmp_path, tiny_llama, change, setting):
    from emotion_vectors.extraction.shards import write_shard
    from emotion_vectors.vectors.build import ShardMismatchError, build_vector_store

    model, tok = tiny_llama
    settings = {"pool_start": 3, "short_text_policy": "skip", "batch_size": 4, "max_batch_tokens": None, "storage_dtype": "float32"}
    info = {"path": "tiny-llama", "revision": "test", "dtype": "float32", "quantization": "none"}
    texts = ["the fence rain letter garden window quiet road light morning"] * 3
    paths = {}
    for name in ("joy", "fear", "neutral"):
        kwargs = {"settings": dict(settings), "model_info": dict(info), "layers": [0, 2]}
        if name == "fear":  # the odd one out
            for key, value in change.items():
                kwargs[key] = {**kwargs[key], **value} if isinstance(value, dict) else value
        paths[name] = tmp_path / f"{name}.zarr"
        write_shard(model, tok, texts, [f"{name}-{i}" for i in range(3)], kwargs["layers"], paths[name], kwargs["settings"], name=name, model_info=kwargs["model_info"])
    with pytest.raises(ShardMismatchError) as err:
        build_vector_store({"joy": paths["joy"], "fear": paths["fear"]}, paths["neutral"], tmp_path / "v.zarr", denoise_variance=0.5, provenance={})
    assert str(paths["fear"]) in str(err.value) and setting in str(err.value)
    assert f"than {paths['neutral']}:" in str(err.value)  # the reference shard is named too
    assert not (tmp_path / "v.zarr").exists()


# --- the rules of neutral_components and emotion_vectors at their edges (mutation testing) ---


def test_neutral_components_edges():
    # Two directions of exactly equal variance: half the variance is reached by one of them.
    two = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert neutral_components(two, 0.5).k == 1
    assert neutral_components(two, 0.51).k == 2
    # share 0 removes nothing, even from data with variance
    assert neutral_components(two, 0.0).k == 0
    # no variance at all (identical or zero rows): nothing to remove, shares are 0, never NaN
    for flat in (np.zeros((4, 3)), np.ones((4, 3))):
        pcs = neutral_components(flat, 0.5)
        assert pcs.k == 0 and pcs.components.shape == (0, 3)
        np.testing.assert_array_equal(pcs.explained_ratio, np.zeros(3))
        res = emotion_vectors(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]), flat, 0.5)
        assert res["k"] == 0 and np.array_equal(res["denoised"], res["raw"])
    # scale-free: the same shares and k for data a thousand times smaller
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 6)) * [5.0, 3.0, 1.0, 0.5, 0.2, 0.1]
    big, small = neutral_components(x, 0.8), neutral_components(x * 1e-3, 0.8)
    assert small.k == big.k == 2
    np.testing.assert_allclose(small.explained_ratio, big.explained_ratio, rtol=1e-9)


def test_vectors_are_computed_in_float64_from_float16_shards():
    """Shards may store float16; the maths runs in float64 (the result is stored as float32)."""
    rng = np.random.default_rng(4)
    means = (rng.standard_normal((5, 8)) * 30 + 100).astype(np.float16)
    neutral = (rng.standard_normal((12, 8)) * 30 + 100).astype(np.float16)
    low = emotion_vectors(means, neutral, 0.5)
    high = emotion_vectors(means.astype(np.float64), neutral.astype(np.float64), 0.5)
    for key in ("raw", "denoised", "raw_unit", "denoised_unit"):
        np.testing.assert_array_equal(low[key], high[key])
    assert low["k"] == high["k"]
    pcs = neutral_components(neutral, 0.5)
    assert pcs.explained_ratio.dtype == np.float64
    np.testing.assert_array_equal(pcs.explained_ratio, neutral_components(neutral.astype(np.float64), 0.5).explained_ratio)


def test_unit_rows_and_result_dtypes():
    np.testing.assert_allclose(unit(np.array([[0.3, 0.4], [0.0, 0.0], [30.0, 40.0]])), [[0.6, 0.8], [0, 0], [0.6, 0.8]])
    np.testing.assert_allclose(unit(np.ones((2, 3, 4))), np.full((2, 3, 4), 0.5))  # rows = last axis
    rng = np.random.default_rng(5)
    res = emotion_vectors(rng.standard_normal((4, 15)), rng.standard_normal((20, 15)), 0.5)
    for key in ("raw", "denoised", "raw_unit", "denoised_unit", "neutral_explained"):
        assert res[key].dtype == np.float32, key
    assert res["k"] <= 10 and res["neutral_explained"].shape == (10,)  # the first 10 shares


def _shards(tmp_path, model, tok, n_texts, storage_dtype="float32", min_words=6):
    from emotion_vectors.extraction.shards import write_shard

    rng = np.random.default_rng(0)
    words = "the fence rain letter garden window quiet road light morning".split()
    settings = {"pool_start": 3, "short_text_policy": "skip", "batch_size": 4, "max_batch_tokens": None, "storage_dtype": storage_dtype}
    info = {"path": "tiny-llama", "revision": "test", "dtype": "float32", "quantization": "none"}
    paths = {}
    for name, n in n_texts.items():
        texts = [" ".join(rng.choice(words, size=rng.integers(min_words, 20))) if min_words else "the" for _ in range(n)]
        paths[name] = tmp_path / f"{name}.zarr"
        write_shard(model, tok, texts, [f"{name}-{i}" for i in range(n)], [0, 2], paths[name], settings, name=name,
                    model_info=info, attrs={"num_hidden_layers": 5})  # as the model server records it
    return paths, info


def test_store_numbers_by_hand_from_float16_shards(tmp_path, tiny_llama):
    """Means in float64 from float16 shards, stories counted per emotion, the residual norm as
    the mean token norm over every emotion story, the subject model in the provenance."""
    import zarr

    from emotion_vectors.extraction.shards import open_shard
    from emotion_vectors.vectors.build import build_vector_store

    model, tok = tiny_llama
    paths, info = _shards(tmp_path, model, tok, {"joy": 3, "fear": 5, "calm": 1, "neutral": 6}, "float16")
    emotions = ["joy", "fear", "calm"]
    rows = build_vector_store({e: paths[e] for e in emotions}, paths["neutral"], tmp_path / "v.zarr",
                              denoise_variance=0.5, provenance={"stage": "test"})
    store = zarr.open_group(str(tmp_path / "v.zarr"), mode="r")
    acts = {e: np.asarray(open_shard(paths[e])["activations"][:], dtype=np.float64) for e in emotions}
    assert all(a.dtype == np.float64 and open_shard(paths[e])["activations"].dtype == np.float16 for e, a in acts.items())
    means = np.stack([acts[e].mean(axis=0) for e in emotions])  # (E, L, d)
    np.testing.assert_allclose(store["raw"][:], means - means.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(store["n_stories"][:], [3, 5, 1])
    assert [r["n_stories"] for r in rows[:3]] == [3, 5, 1]
    norms = np.concatenate([np.asarray(open_shard(paths[e])["token_norm"][:], dtype=np.float64) for e in emotions])
    assert norms.shape == (9, 2)
    np.testing.assert_allclose(store["residual_norm"][:], norms.mean(axis=0), rtol=1e-6)
    assert store.attrs["provenance"] == {"stage": "test", "subject_model": info}
    neutral = open_shard(paths["neutral"])
    assert store.attrs["layer_convention"] == neutral.attrs["layer_convention"]
    assert store.attrs["num_hidden_layers"] == neutral.attrs["num_hidden_layers"] == 5
    assert store.attrs["pool_start"] == 3 and store.attrs["denoise_variance"] == 0.5
    assert store.attrs["n_neutral"] == 6
    assert store.attrs["definition"] == (
        "raw = emotion mean - mean over emotions; denoised = raw with the top neutral PCs "
        "(denoise_variance of neutral variance) projected out; *_unit = L2-normalised rows")
    assert store.attrs["residual_norm_definition"] == (
        "mean over emotion stories of the mean per-token L2 norm of the residual stream over "
        "the pooled window")
    # The table: one row per emotion and layer, its numbers from the stored vectors.
    assert [(r["emotion"], r["layer"]) for r in rows] == [(e, layer) for layer in (0, 2) for e in emotions]
    raw, den = store["raw"][:], store["denoised"][:]
    for r in rows:
        e, li = emotions.index(r["emotion"]), [0, 2].index(r["layer"])
        assert set(r) == {"emotion", "layer", "n_stories", "raw_norm", "denoised_norm", "cos_raw_denoised",
                          "neutral_pcs_removed", "neutral_variance_removed"}
        assert r["raw_norm"] == pytest.approx(np.linalg.norm(raw[e, li]), rel=1e-5)
        assert r["denoised_norm"] == pytest.approx(np.linalg.norm(den[e, li]), rel=1e-5)
        cos = raw[e, li] @ den[e, li] / np.linalg.norm(raw[e, li]) / np.linalg.norm(den[e, li])
        assert r["cos_raw_denoised"] == pytest.approx(cos, rel=1e-5)
        pcs = neutral_components(np.asarray(neutral["activations"][:, li], dtype=np.float64), 0.5)
        assert r["neutral_pcs_removed"] == pcs.k
        assert r["neutral_variance_removed"] == pytest.approx(pcs.explained_ratio[: pcs.k].sum(), rel=1e-5)
    # One emotion with one story: the residual norm is that story's token norm.
    build_vector_store({"calm": paths["calm"]}, paths["neutral"], tmp_path / "one.zarr", denoise_variance=0.5, provenance={})
    one = zarr.open_group(str(tmp_path / "one.zarr"), mode="r")
    np.testing.assert_allclose(one["residual_norm"][:], open_shard(paths["calm"])["token_norm"][0], rtol=1e-6)


def test_store_refuses_an_emotion_without_stories(tmp_path, tiny_llama):
    from emotion_vectors.vectors.build import build_vector_store

    model, tok = tiny_llama
    paths, _ = _shards(tmp_path, model, tok, {"joy": 2, "neutral": 3})
    empty, _ = _shards(tmp_path / "e", model, tok, {"fear": 2}, min_words=0)  # every text too short
    with pytest.raises(ValueError, match="emotion 'fear': no stories survived extraction"):
        build_vector_store({"joy": paths["joy"], "fear": empty["fear"]}, paths["neutral"], tmp_path / "v.zarr",
                           denoise_variance=0.5, provenance={})


def test_mismatch_message_names_every_setting_and_the_fix():
    from emotion_vectors.vectors.build import ShardMismatchError, check_same_origin

    ref = {"model": {"path": "m", "dtype": "float32"}, "layers": [0, 2], "pool_start": 3}
    other = {"model": {"path": "m", "dtype": "bfloat16"}, "layers": [0, 2], "pool_start": 5}
    with pytest.raises(ShardMismatchError) as err:
        check_same_origin(("neutral.zarr", ref), ("fear.zarr", other))
    assert str(err.value) == (
        "shard fear.zarr was made with other settings than neutral.zarr: "
        "model.dtype: 'bfloat16' (vs 'float32'); pool_start: 5 (vs 3). Rebuild it with the "
        "run's model and extraction settings (snakemake --force <shard>)."
    )
    check_same_origin(("neutral.zarr", ref), ("joy.zarr", dict(ref)))  # same origin: no error


def test_residual_norm_is_summed_in_float64(tmp_path, tiny_llama):
    """Token norms of very different sizes (stored float32) are averaged in float64: a float32
    sum would lose the small ones next to a large one."""
    import zarr

    from emotion_vectors.vectors.build import build_vector_store

    model, tok = tiny_llama
    paths, _ = _shards(tmp_path, model, tok, {"joy": 3, "fear": 3, "neutral": 3})
    for name, values in (("joy", [2.0**24, 1.0, 1.0]), ("fear", [1.0, 1.0, 1.0])):
        group = zarr.open_group(str(paths[name]), mode="r+")
        group["token_norm"][:] = np.repeat(np.array(values, dtype=np.float32)[:, None], 2, axis=1)
    build_vector_store({"joy": paths["joy"], "fear": paths["fear"]}, paths["neutral"], tmp_path / "v.zarr",
                       denoise_variance=0.5, provenance={})
    expected = np.float32((2.0**24 + 5.0) / 6.0)
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "v.zarr"), mode="r")["residual_norm"][:], [expected, expected])


def test_neutral_components_of_wide_data_match_pca_without_a_d_by_d_matrix():
    """Real neutral data is wide (1,200 dialogues x d = 5,376): the components and shares equal
    sklearn's PCA, k is the fewest components reaching ``share``, and, as the docstring says,
    no ``d x d`` matrix is ever built (at d = 5,376 that is 231 MB per layer)."""
    import tracemalloc

    from sklearn.decomposition import PCA

    rng = np.random.default_rng(6)
    n, d = 40, 2000
    # A few strong directions plus isotropic noise, off-centre like real activations.
    basis = np.linalg.qr(rng.standard_normal((d, 4)))[0].T
    neutral = (rng.standard_normal((n, 4)) * [40.0, 20.0, 10.0, 5.0]) @ basis
    neutral += rng.standard_normal((n, d)) * 0.3 + rng.standard_normal(d) * 50.0
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    pcs = neutral_components(neutral, 0.9)
    peak = tracemalloc.get_traced_memory()[1]
    if not was_tracing:
        tracemalloc.stop()
    assert peak < d * d * 8 / 4, f"peak {peak / 1e6:.1f} MB: a d x d float64 matrix is {d * d * 8 / 1e6:.0f} MB"
    ref = PCA(svd_solver="full").fit(neutral)
    np.testing.assert_allclose(pcs.explained_ratio[: n - 1], ref.explained_variance_ratio_[: n - 1], rtol=1e-9, atol=1e-15)
    cum = np.cumsum(pcs.explained_ratio)
    assert cum[pcs.k - 1] >= 0.9 > cum[pcs.k - 2] and pcs.k == 3
    assert pcs.components.shape == (pcs.k, d)
    np.testing.assert_allclose(pcs.components @ pcs.components.T, np.eye(pcs.k), atol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(pcs.components * ref.components_[: pcs.k], axis=1)), 1, atol=1e-9)
    # The denoised vectors are orthogonal to every removed component, the rest of raw is kept.
    res = emotion_vectors(rng.standard_normal((5, d)) * 3.0 + 7.0, neutral, 0.9)
    assert res["k"] == pcs.k
    np.testing.assert_allclose(res["denoised"] @ pcs.components.T, 0, atol=1e-4)
    kept = res["raw"].astype(np.float64) - (res["raw"] @ pcs.components.T) @ pcs.components
    np.testing.assert_allclose(res["denoised"], kept, rtol=1e-5, atol=1e-5)


def test_zero_rows_are_unit_normalised_without_dividing_by_zero():
    """A zero row (one emotion alone, or an emotion vector wholly inside the removed neutral
    span) stays zero, and no 0/0 is evaluated: no RuntimeWarning, no FloatingPointError under
    ``np.errstate(all="raise")``."""
    import warnings

    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        np.testing.assert_array_equal(unit(np.array([[0.0, 0.0, 0.0], [0.0, 3.0, 4.0]])), [[0, 0, 0], [0, 0.6, 0.8]])
        # One emotion: raw is the zero vector, and so are its unit copies.
        one = emotion_vectors(np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]), 0.5)
        # raw in the span of the removed component: the denoised vector is zero.
        two = emotion_vectors(np.array([[2.0, 5.0, 5.0], [0.0, 5.0, 5.0]]), np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]), 0.5)
    for key in ("raw", "denoised", "raw_unit", "denoised_unit"):
        np.testing.assert_array_equal(one[key], np.zeros((1, 3)), err_msg=key)
    np.testing.assert_array_equal(two["denoised_unit"], np.zeros((2, 3)))
    np.testing.assert_array_equal(two["raw_unit"], [[1, 0, 0], [-1, 0, 0]])
