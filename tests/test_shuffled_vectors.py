"""Shuffled-label vectors (the matched null of emotion-specific claims) from real shards."""

import json

import numpy as np
import pytest

from emotion_vectors.vectors.store_layout import read_store
from emotion_vectors.vectors.build import (
    build_shuffled_store,
    build_vector_store,
    shuffle_labels,
    shuffled_name,
    shuffled_sets,
)


def _story_shard(path, ids, topics):
    path.write_text(json.dumps({"stories": [{"id": i, "topic_index": t} for i, t in zip(ids, topics)]}))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_llama):
    """Three emotions x two topics x three stories, and a neutral shard, read by a tiny Llama."""
    from emotion_vectors.extraction.shards import write_shard

    tmp = tmp_path_factory.mktemp("shuffled")
    model, tok = tiny_llama
    rng = np.random.default_rng(0)
    words = "the fence rain letter garden window quiet road light morning".split()
    settings = {"pool_start": 3, "short_text_policy": "skip", "batch_size": 4, "max_batch_tokens": None,
                "storage_dtype": "float32"}
    info = {"path": "tiny-llama", "revision": "test", "dtype": "float32", "quantization": "none"}
    acts, stories = {}, {}
    for name in ("joy", "fear", "calm", "neutral"):
        ids = [f"{name}-{i}" for i in range(6)]
        texts = [" ".join(rng.choice(words, size=rng.integers(8, 16))) for _ in ids]
        acts[name] = tmp / f"{name}.zarr"
        write_shard(model, tok, texts, ids, [0, 2], acts[name], settings, name=name, model_info=info,
                    attrs={"num_hidden_layers": 5})
        stories[name] = _story_shard(tmp / f"{name}.json", ids, [0, 0, 0, 1, 1, 1])
    return tmp, acts, stories


def test_shuffles_keep_every_emotions_count_in_every_topic():
    emotion = np.repeat(np.arange(4), 6)
    topic = np.tile(np.repeat([0, 1], 3), 4)
    labels = shuffle_labels(emotion, topic, 50, seed=3)
    for k in range(50):
        for t in (0, 1):
            np.testing.assert_array_equal(np.bincount(labels[k, topic == t], minlength=4), [3, 3, 3, 3])
    assert np.mean(labels != emotion) > 0.5  # they do relabel
    np.testing.assert_array_equal(labels, shuffle_labels(emotion, topic, 50, seed=3))  # seeded
    assert not np.array_equal(labels, shuffle_labels(emotion, topic, 50, seed=4))


def test_shuffled_store_rebuilds_the_vectors_with_permuted_labels(corpus):
    tmp, acts, stories = corpus
    emo = {e: acts[e] for e in ("joy", "fear", "calm")}
    sto = {e: stories[e] for e in emo}
    build_vector_store(emo, acts["neutral"], tmp / "real.zarr", denoise_variance=0.5, provenance={})
    summary = build_shuffled_store(emo, sto, acts["neutral"], tmp / "shuf.zarr", n_shuffles=4, seed=0,
                                   denoise_variance=0.5, provenance={"stage": "test"})
    real, shuf = read_store(tmp / "real.zarr"), read_store(tmp / "shuf.zarr")
    assert summary["n_shuffles"] == 4 and summary["n_stories"] == 18
    sets = shuffled_sets(shuf)
    assert sets[2] == [shuffled_name(e, 2) for e in ("joy", "fear", "calm")] == ["joy@shuffle2", "fear@shuffle2", "calm@shuffle2"]
    assert shuf.layers == real.layers
    np.testing.assert_allclose(shuf.residual_norm, real.residual_norm, rtol=1e-6)
    np.testing.assert_array_equal(shuf.n_neutral_pcs_removed, real.n_neutral_pcs_removed)
    # By hand: shuffle k's pseudo vector of emotion e is the mean of the stories the shuffle gave e,
    # minus the mean over emotions, with the same neutral PCs projected out as the real store's.
    x = np.concatenate([np.asarray(__import__("zarr").open_group(str(emo[e]), mode="r")["activations"][:], dtype=np.float64)
                        for e in emo])
    labels = shuffle_labels(np.repeat(np.arange(3), 6), np.tile([0, 0, 0, 1, 1, 1], 3), 4, seed=0)
    raw_k1 = shuf.array("raw")[3:6]
    means = np.stack([x[labels[1] == e].mean(axis=0) for e in range(3)])
    np.testing.assert_allclose(raw_k1, means - means.mean(axis=0), rtol=1e-4, atol=1e-5)
    # The same denoising: a real vector projected by the real store's PCs equals the store's denoised row,
    # and the shuffled store's denoised rows are orthogonal to what the real store removed.
    removed_real = real.array("raw")[:] - real.array("denoised")[:]
    for li in range(len(real.layers)):
        basis = np.linalg.svd(removed_real[:, li].astype(np.float64), full_matrices=False)[2][: int(real.n_neutral_pcs_removed[li])]
        if basis.size:
            assert np.abs(shuf.array("denoised")[:, li] @ basis.T).max() < 1e-3 * np.abs(shuf.array("denoised")[:, li]).max()
    np.testing.assert_allclose(np.linalg.norm(shuf.array("denoised_unit")[:], axis=-1), 1, atol=1e-5)
    assert shuf.attrs["source_emotions"] == ["joy", "fear", "calm"] and shuf.attrs["shuffled_within"] == "topic"


def test_two_emotions_give_opposite_pseudo_vectors_by_hand(corpus):
    """One story per (emotion, topic) cell and two emotions: each shuffle swaps or keeps the pair
    in every topic; its two pseudo vectors are +- half the mean difference of the stories it gave
    each label."""
    import zarr

    tmp, acts, stories = corpus
    emo = {e: acts[e] for e in ("joy", "fear")}
    sto = {e: _story_shard(tmp / f"{e}-one.json", [f"{e}-{i}" for i in range(6)], list(range(6))) for e in emo}
    build_shuffled_store(emo, sto, acts["neutral"], tmp / "shuf2.zarr", n_shuffles=3, seed=1,
                         denoise_variance=0.0, provenance={})
    shuf = read_store(tmp / "shuf2.zarr")
    x = np.concatenate([np.asarray(zarr.open_group(str(emo[e]), mode="r")["activations"][:], dtype=np.float64) for e in emo])
    labels = shuffle_labels(np.repeat([0, 1], 6), np.tile(np.arange(6), 2), 3, seed=1)
    for k in range(3):
        pseudo = shuf.array("raw")[2 * k:2 * k + 2]
        half = (x[labels[k] == 0].mean(axis=0) - x[labels[k] == 1].mean(axis=0)) / 2
        np.testing.assert_allclose(pseudo[0], half, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(pseudo[1], -half, rtol=1e-4, atol=1e-5)


def test_bad_input_is_named(corpus):
    tmp, acts, stories = corpus
    emo = {e: acts[e] for e in ("joy", "fear")}
    with pytest.raises(ValueError, match="no story shard for emotions \\['fear'\\]"):
        build_shuffled_store(emo, {"joy": stories["joy"]}, acts["neutral"], tmp / "x.zarr", n_shuffles=2,
                             seed=0, denoise_variance=0.5, provenance={})
    with pytest.raises(ValueError, match="n_shuffles must be at least 1"):
        build_shuffled_store(emo, stories, acts["neutral"], tmp / "x.zarr", n_shuffles=0, seed=0,
                             denoise_variance=0.5, provenance={})
    bad = _story_shard(tmp / "bad.json", ["joy-0"], [0])
    with pytest.raises(ValueError, match="missing from .*bad.json"):
        build_shuffled_store({"joy": acts["joy"], "fear": acts["fear"]}, {"joy": bad, "fear": stories["fear"]},
                             acts["neutral"], tmp / "x.zarr", n_shuffles=2, seed=0, denoise_variance=0.5, provenance={})
    real = tmp / "real.zarr"
    if real.exists():
        with pytest.raises(ValueError, match="not a shuffled-label store"):
            shuffled_sets(read_store(real))
