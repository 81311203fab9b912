"""Steering evidence (emotion_vectors.steer_eval) and the valence readout (emotion_vectors.readout).

The continuation test is checked where the answer is known: vectors that are the unembedding
directions of the emotion words, added to the last block's output, must raise their own word
above what random directions of the same norm do. The dose-response is checked for what it
computes (conditions, seeds, scores, slopes) on the real default model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from emotion_vectors.readout import ReadoutError, store_valence_direction, valence_direction
from emotion_vectors.steer_eval import (
    bootstrap_mean_ci,
    bootstrap_slope_ci,
    continuation_test,
    derive_seed,
    dose_response,
    readout_scores,
    slope,
    upper_p,
    vader_scores,
    word_logprobs,
)
from emotion_vectors.store_layout import write_store


# ------------------------------------------------------------------------------------------
# valence readout


def _valenced(rng, d=16, flip=False):
    emotions = ["happy", "calm", "proud", "sad", "afraid", "angry", "bored"]
    axis = np.zeros(d)
    axis[3] = 1.0
    sign = np.array([1, 1, 1, -1, -1, -1, 0.1]) * (-1 if flip else 1)
    v = 5 * sign[:, None] * axis[None, :] + 0.3 * rng.standard_normal((len(emotions), d))
    return emotions, v, axis


def test_valence_direction_is_pc1_oriented_by_anchors():
    rng = np.random.default_rng(0)
    emotions, v, axis = _valenced(rng)
    vd = valence_direction(v, emotions, 9)
    assert abs(abs(vd.direction @ axis) - 1) < 0.02  # PC1 is the planted axis
    assert vd.direction @ axis > 0  # pleasant side up
    assert vd.anchor_gap > 0 and vd.explained > 0.8
    assert set(vd.pleasant) == {"happy", "calm", "proud"}
    assert set(vd.unpleasant) == {"sad", "afraid", "angry"}
    # the same emotions with the axis pointing the other way: the direction follows the anchors
    _, v2, _ = _valenced(np.random.default_rng(0), flip=True)
    vd2 = valence_direction(v2, emotions, 9)
    assert vd2.direction @ axis < 0
    proj2 = v2 @ vd2.direction
    assert proj2[emotions.index("happy")] > proj2[emotions.index("sad")]
    # scores relative to a baseline
    x = np.stack([axis * 2, -axis * 2])
    np.testing.assert_allclose(vd.score(x, baseline=-axis * 2), [4 * (vd.direction @ axis), 0], atol=1e-9)


def test_valence_direction_errors_name_the_problem():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((3, 8))
    with pytest.raises(ReadoutError, match="unpleasant none"):
        valence_direction(v, ["happy", "calm", "bored"], 0)
    with pytest.raises(ReadoutError, match="at least 3"):
        valence_direction(v[:2], ["happy", "sad"], 0)
    with pytest.raises(ReadoutError, match="shape"):
        valence_direction(v, ["happy", "sad"], 0)


def test_store_valence_direction_reads_the_layer(tmp_path):
    rng = np.random.default_rng(2)
    emotions, v, axis = _valenced(rng)
    stack = np.stack([rng.standard_normal(v.shape), v], axis=1)  # layers [3, 7]
    out = write_store(tmp_path / "v.zarr", emotions=emotions, layers=[3, 7], raw=stack, denoised=stack,
                      residual_norm=np.array([10.0, 20.0]), n_neutral_pcs_removed=None, n_stories=None)
    vd = store_valence_direction(out, 7)
    assert vd.layer == 7 and vd.direction @ axis > 0.98
    with pytest.raises(ReadoutError, match="not stored"):
        store_valence_direction(out, 5)


# ------------------------------------------------------------------------------------------
# small statistics


def test_slope_and_upper_p():
    x = np.array([-1.0, 0, 1, 2])
    assert slope(x, 3 * x + 1) == pytest.approx(3)
    assert np.isnan(slope(np.ones(3), np.arange(3.0)))
    assert upper_p(5.0, np.array([1.0, 2, 6, 7])) == pytest.approx(3 / 5)
    assert upper_p(20.0, np.arange(19.0)) == pytest.approx(1 / 20)
    assert upper_p(10.0, np.arange(19.0)) == pytest.approx(10 / 20)
    assert np.isnan(upper_p(1.0, np.array([])))


def test_bootstrap_intervals_cover_the_truth():
    rng = np.random.default_rng(3)
    x = np.repeat([-0.2, 0.0, 0.2], 40)
    y = 2.0 * x + 0.1 * rng.standard_normal(x.size)
    lo, hi = bootstrap_slope_ci(x, y, np.random.default_rng(0), 500)
    assert lo < 2.0 < hi and hi - lo < 0.5
    lo, hi = bootstrap_mean_ci(rng.normal(1.0, 0.1, 200), np.random.default_rng(0), 500)
    assert lo < 1.0 < hi
    assert derive_seed("a", 1) == derive_seed("a", 1) != derive_seed("a", 2)


def test_vader_scores_sign():
    s = vader_scores(["What a wonderful, happy day!", "This is awful and I hate it.", ""])
    assert s[0] > 0.5 and s[1] < -0.5 and s[2] == 0.0


# ------------------------------------------------------------------------------------------
# the real default model


def _unembedding_store(tmp_path, model, tokenizer, words, layer):
    """A store whose vector for each word is the unembedding row of the word's first token."""
    w = model.get_output_embeddings().weight.detach().numpy().astype(np.float64)
    rows = np.stack([w[tokenizer(" " + e, add_special_tokens=False)["input_ids"][0]] for e in words])
    stack = rows[:, None, :]
    return write_store(tmp_path / "unemb.zarr", emotions=words, layers=[layer], raw=stack, denoised=stack,
                       residual_norm=np.array([100.0]), n_neutral_pcs_removed=None, n_stories=None,
                       attrs={"num_hidden_layers": layer + 1})


@pytest.mark.slow
def test_word_logprobs_match_full_sequence_scoring(default_model):
    import torch

    model, tok = default_model
    prompts = ["She felt", "In one word, he was"]
    words = ["happy", "terrified"]
    got = word_logprobs(model, tok, prompts, words)
    for i, p in enumerate(prompts):
        for j, w in enumerate(words):
            pi = tok(p)["input_ids"]
            wi = tok(" " + w, add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                lp = torch.log_softmax(model(torch.tensor([pi + wi])).logits[0].float(), -1)
            want = sum(float(lp[len(pi) - 1 + k, t]) for k, t in enumerate(wi))
            assert got[i, j] == pytest.approx(want, abs=1e-3)


@pytest.mark.slow
def test_continuation_test_finds_planted_word_directions(default_model, tmp_path):
    model, tok = default_model
    words = ["happy", "sad", "calm"]
    last = model.config.num_hidden_layers - 1
    store = _unembedding_store(tmp_path, model, tok, words, last)
    res = continuation_test(model, tok, store, words, prompts=["She said that she felt"],
                            strengths=[-0.05, 0, 0.05, 0.1], layer=last, n_random=4, seed=0)
    assert res.summary["layer"] == last and res.summary["n_emotions"] == 3
    for row in res.per_emotion:
        assert row["rises"] and row["monotone"], row
        assert row["specificity_rank"] == 1, row  # its own word rises most
        assert row["slope"] > row["null_slope_p95"], row  # above every random direction here
        assert row["p_random"] == pytest.approx(1 / 5)
    assert res.summary["n_rising"] == 3 and res.summary["n_top1_specific"] == 3
    assert len(res.per_strength) == 3 * 4
    zero = [r for r in res.per_strength if r["strength"] == 0]
    assert all(r["own_rise"] == 0 for r in zero)
    with pytest.raises(ValueError, match="include 0"):
        continuation_test(model, tok, store, words, prompts=["x"], strengths=[0.1, 0.2], layer=last)


@pytest.mark.slow
def test_dose_response_conditions_scores_and_reproducibility(default_model, tmp_path):
    model, tok = default_model
    words = ["happy", "sad", "calm"]
    last = model.config.num_hidden_layers - 1
    store = _unembedding_store(tmp_path, model, tok, words, last)
    direction = store_valence_direction(store, last)
    kwargs = dict(prompts=["Tell me about your morning."], strengths=[-0.05, 0.05], samples=2,
                  max_new_tokens=6, temperature=0.8, direction=direction, layer=last, n_random=1,
                  seed=7, n_boot=200)
    gens, curves, slopes, summary = dose_response(model, tok, store, ["happy"], **kwargs)
    # baseline + happy at two strengths + one random direction at two strengths; 2 samples each
    names = sorted({g.condition for g in gens})
    assert names == sorted(["baseline", "happy@-0.05", "happy@+0.05", "random0@-0.05", "random0@+0.05"])
    assert len(gens) == 5 * 2 and summary["strengths"] == [-0.05, 0.0, 0.05]
    assert all(-1 <= g.vader <= 1 for g in gens)
    # the readout is the unsteered re-read projected on the valence direction
    text = next(g.text for g in gens if g.text.strip())
    again = readout_scores(model, tok, [text], direction)[0]
    assert again == pytest.approx(next(g.readout for g in gens if g.text == text), rel=1e-5)
    # the slope row is the least-squares slope over baseline + the emotion's generations
    ser = [g for g in gens if g.condition == "baseline" or g.emotion == "happy"]
    want = slope(np.array([g.strength for g in ser]), np.array([g.vader for g in ser]))
    assert slopes[0]["vader_slope"] == pytest.approx(want, nan_ok=True)
    assert len(summary["null_slopes"]["vader"]) == 1
    # same seed, same generations
    gens2, *_ = dose_response(model, tok, store, ["happy"], **kwargs)
    assert [g.text for g in gens2] == [g.text for g in gens]
    json.dumps(summary)  # JSON-able
