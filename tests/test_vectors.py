"""Emotion-vector maths on hand-checkable examples, and the store built from real shards."""

import numpy as np
import pytest

from emotion_vectors.vectors import emotion_vectors, neutral_components, project_out, unit


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

    from emotion_vectors.shards import write_shard
    from emotion_vectors.vectors import build_vector_store

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
    from emotion_vectors.shards import write_shard
    from emotion_vectors.vectors import ShardMismatchError, build_vector_store

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
    assert not (tmp_path / "v.zarr").exists()
