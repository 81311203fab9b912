"""Steering evidence (emotion_vectors.steering.evaluate) and the valence readout (emotion_vectors.steering.readout).

The statistics are checked on planted data (their calibration under the null is in
test_calibration_steering.py). The batched scorer is checked against one direction at a time
under ``steering``; the continuation test where the answer is known (vectors that are the
unembedding directions of the emotion words, added to the last block's output, must come out
specific); the dose-response for what it computes (conditions, seeds, masked scores, slopes,
nulls, claims) on a tiny random model and, slow, on the real default model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY_MODEL_FIXTURES
from emotion_vectors.core.claims import EFFECT, NOT_TESTABLE, VERDICTS
from emotion_vectors.steering.readout import ReadoutError, store_valence_direction, valence_direction
from emotion_vectors.steering.steer import Steer, steering
from emotion_vectors.steering.evaluate import (
    MASK_TOKEN,
    bootstrap_mean_ci,
    bootstrap_slope_ci,
    bootstrap_slopes,
    continuation_claims,
    continuation_test,
    derive_seed,
    dose_claims,
    dose_response,
    mask_emotion_words,
    pool_test,
    readout_scores,
    row_z,
    set_test,
    slope,
    specificity_test,
    steered_word_logprobs,
    vader_scores,
    word_logprobs,
)
from emotion_vectors.vectors.store_layout import write_store


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


def test_slope_row_z_and_seeds():
    x = np.array([-1.0, 0, 1, 2])
    assert slope(x, 3 * x + 1) == pytest.approx(3)
    assert np.isnan(slope(np.ones(3), np.arange(3.0)))
    z = row_z(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    np.testing.assert_allclose(z[0], [-1.2247449, 0, 1.2247449], rtol=1e-6)
    assert (z[1] == 0).all()  # a constant row has no own-word excess
    # scale and shift of a row do not matter
    np.testing.assert_allclose(row_z(np.array([[10.0, 20.0, 30.0]]) - 7), z[:1])
    assert derive_seed("a", 1) == derive_seed("a", 1) != derive_seed("a", 2)


def test_specificity_test_finds_a_planted_diagonal_and_ignores_row_and_column_effects():
    rng = np.random.default_rng(0)
    e = 12
    noise = rng.standard_normal((e, e))
    rows = 5 * rng.standard_normal((e, 1))  # some vectors push every word hard
    cols = 5 * rng.standard_normal((1, e))  # some words rise under any vector
    res = specificity_test(noise + rows + cols + 3 * np.eye(e), n_permutations=999, seed=1)
    assert res["p"] == pytest.approx(1 / 1000)
    assert res["n_null"] == 999 and res["n_null_emotion"] == e - 1
    assert sum(r == 1 for r in res["vector_rank"]) >= e - 2
    # without the diagonal the row and column effects alone give nothing
    res0 = specificity_test(noise + rows + cols, n_permutations=999, seed=1)
    assert res0["p"] > 0.05
    # the per-emotion exact p is rank / E (ties against), Holm-adjusted
    assert res["p_emotion"][0] == pytest.approx(res["vector_rank"][0] / e)
    assert all(h >= p for h, p in zip(res["p_emotion_holm"], res["p_emotion"]))
    with pytest.raises(ValueError, match="square"):
        specificity_test(np.ones((3, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        specificity_test(np.array([[1.0, np.nan], [0.0, 1.0]]))


def test_set_test_and_pool_test_on_planted_effects():
    rng = np.random.default_rng(1)
    sets = rng.standard_normal((40, 6))
    res = set_test(sets[0] + 10, sets[1:])
    assert res["p"] == pytest.approx(1 / 40) and res["n_null"] == 39
    assert all(p == pytest.approx(1 / 40) for p in res["p_emotion"])
    assert set_test(sets[0], sets[1:])["p"] > 0.05
    empty = set_test(sets[0], np.zeros((0, 6)))
    assert np.isnan(empty["p"]) and empty["n_null"] == 0
    # pool: rows 0..5 the emotions' vectors, the rest random directions
    values = rng.standard_normal((106, 6))
    values[np.arange(6), np.arange(6)] += 6
    res = pool_test(values, 6, n_permutations=999, seed=0)
    assert res["p"] == pytest.approx(1 / 1000) and res["n_null_emotion"] == 100
    assert max(res["p_emotion"]) < 0.05
    # the emotions' vectors' values on OTHER emotions' words are not the statistic
    values2 = rng.standard_normal((106, 6))
    values2[:6] += 6 * (1 - np.eye(6))
    assert pool_test(values2, 6, n_permutations=999, seed=0)["p"] > 0.05
    with pytest.raises(ValueError, match="values must be"):
        pool_test(np.ones((3, 6)), 6)


def test_bootstrap_slopes_cover_the_truth_and_match_the_slope():
    rng = np.random.default_rng(3)
    x = np.repeat([-0.2, 0.0, 0.2], 40)
    y = 2.0 * x + 0.1 * rng.standard_normal(x.size)
    lo, hi = bootstrap_slope_ci(x, y, np.random.default_rng(0), 500)
    assert lo < 2.0 < hi and hi - lo < 0.5
    # the weighted cell means are the least-squares slope of the resample
    b = bootstrap_slopes(x, y, np.random.default_rng(5), 3)
    assert b.shape == (3,) and np.all(np.abs(b - slope(x, y)) < 0.2)
    one = bootstrap_slopes(np.array([0.0, 1.0]), np.array([1.0, 3.0]), np.random.default_rng(0), 4)
    np.testing.assert_allclose(one, 2.0)  # one generation per strength: always the slope
    assert bootstrap_slopes(np.zeros(3), np.ones(3), np.random.default_rng(0), 4).size == 0
    lo, hi = bootstrap_mean_ci(rng.normal(1.0, 0.1, 200), np.random.default_rng(0), 500)
    assert lo < 1.0 < hi


def test_vader_scores_sign_and_masking_of_emotion_words():
    s = vader_scores(["What a wonderful, happy day!", "This is awful and I hate it.", ""])
    assert s[0] > 0.5 and s[1] < -0.5 and s[2] == 0.0
    text = "I felt HAPPY, so happily calm. Calmly, the scared dog was scaring me; happiness."
    masked = mask_emotion_words(text, ["happy", "calm", "scared"])
    assert masked == (f"I felt {MASK_TOKEN}, so {MASK_TOKEN} {MASK_TOKEN}. {MASK_TOKEN}, the {MASK_TOKEN} dog "
                      f"was {MASK_TOKEN} me; happiness.")  # a derivation is not a form
    # VADER scores the emotion words themselves: masked, a sentence that only names them is neutral
    plain = ["I am happy.", "I am sad and scared.", "She was calm."]
    assert all(v != 0 for v in vader_scores(plain))
    assert np.all(vader_scores([mask_emotion_words(t, ["happy", "sad", "scared", "calm"]) for t in plain]) == 0)


# ------------------------------------------------------------------------------------------
# stores


def _store(tmp_path, name, emotions, vecs, layer, unit=100.0, n_blocks=None):
    stack = np.asarray(vecs, dtype=np.float64)[:, None, :]
    return write_store(tmp_path / name, emotions=emotions, layers=[layer], raw=stack, denoised=stack,
                       residual_norm=np.array([unit]), n_neutral_pcs_removed=None, n_stories=None,
                       attrs={"num_hidden_layers": n_blocks or layer + 1})


def _random_stores(tmp_path, emotions, d, layer, n_shuffles, seed=0):
    """A store of random vectors and a shuffled-label store of n_shuffles random pseudo sets."""
    rng = np.random.default_rng(seed)
    real = _store(tmp_path, "v.zarr", emotions, rng.standard_normal((len(emotions), d)), layer)
    names = [f"{e}@shuffle{k}" for k in range(n_shuffles) for e in emotions]
    null = _store(tmp_path, "shuffled.zarr", names, rng.standard_normal((len(names), d)), layer)
    sets = [[f"{e}@shuffle{k}" for e in emotions] for k in range(n_shuffles)]
    return real, null, sets


def _unembedding_store(tmp_path, model, tokenizer, words, layer):
    """A store whose vector for each word is the unembedding row of the word's first token."""
    w = model.get_output_embeddings().weight.detach().numpy().astype(np.float64)
    rows = np.stack([w[tokenizer(" " + e, add_special_tokens=False)["input_ids"][0]] for e in words])
    return _store(tmp_path, "unemb.zarr", words, rows, layer)


# ------------------------------------------------------------------------------------------
# the batched scorer and the continuation test on a tiny random model


WORDS = ["happy", "obstinate", "sad", "enraged"]  # two words of two tokens in SmolLM2's vocabulary


@pytest.mark.parametrize("fixture", TINY_MODEL_FIXTURES)
def test_steered_word_logprobs_equal_one_direction_at_a_time(request, fixture):
    model, tok = request.getfixturevalue(fixture)
    assert [len(tok(" " + w, add_special_tokens=False)["input_ids"]) for w in WORDS] == [1, 2, 1, 2]
    prompts = ["She said that she felt", "In one word, he was"]
    d = model.get_input_embeddings().weight.shape[1]
    rng = np.random.default_rng(0)
    rows = [[Steer(2, rng.standard_normal(d), s, 5.0)] for s in (1.0, -2.0, 3.0)] + [[]]
    rows.append([Steer(1, rng.standard_normal(d), 1.0, 5.0), Steer(3, rng.standard_normal(d), 2.0, 5.0)])
    got = steered_word_logprobs(model, tok, prompts, WORDS, rows, batch_size=2)
    assert got.shape == (5, 2, 4)
    for r, steers in enumerate(rows):
        with steering(model, steers):
            want = word_logprobs(model, tok, prompts, WORDS)
        np.testing.assert_allclose(got[r], want, atol=2e-4, err_msg=str(r))
    assert not np.allclose(got[0], got[3], atol=1e-3)  # steering changes the scores
    with pytest.raises(ValueError, match="generated"):
        steered_word_logprobs(model, tok, prompts, WORDS, rows, positions="generated")


def test_continuation_test_outputs_nulls_and_claims(tiny_llama, tmp_path):
    model, tok = tiny_llama
    d = model.config.hidden_size
    real, null, sets = _random_stores(tmp_path, WORDS, d, 2, n_shuffles=3)
    res = continuation_test(model, tok, real, WORDS, prompts=["She said that she felt"],
                            strengths=[-1.0, 0, 1.0, 2.0], layer=2, null_store=null, shuffle_sets=sets,
                            n_random=5, n_permutations=99, seed=0, batch_size=7)
    sm = res.summary
    assert sm["test_strength"] == 2.0 and sm["n_shuffled"] == 3 and sm["n_random"] == 5
    assert sm["n_directions_scored"] == 4 * 3 + 3 * 4 + 5
    assert len(res.per_strength) == 4 * 4 and len(res.per_emotion) == 4
    assert len(res.null_rows) == 3 * 4 + 5 * 4
    assert all(r["own_rise"] == 0 for r in res.per_strength if r["strength"] == 0)
    t = sm["tests"]
    assert t["shuffled"]["n_null"] == 3 and t["specificity"]["n_null"] == 99 and t["random"]["n_null"] == 99
    for row in res.per_emotion:
        assert 1 <= row["vector_rank"] <= 4 and 1 <= row["specificity_rank"] <= 4
        assert row["p_shuffled"] >= 1 / 4 and row["p_random"] >= 1 / 6
    # the summary keeps the E x E rise matrix at the test strength: the tests recompute from it
    rises = np.array(sm["rise_matrix"]["values"])
    assert rises.shape == (4, 4) and sm["rise_matrix"]["order"] == WORDS
    assert specificity_test(rises, n_permutations=99, seed=derive_seed("spec", 0))["p"] == t["specificity"]["p"]
    np.testing.assert_allclose([r["own_z"] for r in res.per_emotion], np.diag(row_z(rises)))
    # the tests read the rises at the test strength: the curve's last point
    for row in res.per_emotion:
        top = [r for r in res.per_strength if r["emotion"] == row["emotion"] and r["strength"] == 2.0]
        assert row["rise_at_max"] == pytest.approx(top[0]["own_rise"])
    claims = continuation_claims(sm, res.per_emotion, figure="steering/continuation.png")
    ids = [c.id for c in claims]
    assert ids == ["steering.continuation.specificity", "steering.continuation.shuffled",
                   "steering.continuation.random"]
    assert all(c.verdict in VERDICTS for c in claims)
    shuffled = claims[1]
    assert shuffled.verdict == NOT_TESTABLE and shuffled.p is None and "draws" in shuffled.note  # 3 shuffles
    assert "WEAK NULL" in claims[2].null
    assert claims[0].extra["n_top1_vector"] == sm["n_top1_vector"]
    # same seed, same numbers (bit-identical reruns)
    again = continuation_test(model, tok, real, WORDS, prompts=["She said that she felt"],
                              strengths=[-1.0, 0, 1.0, 2.0], layer=2, null_store=null, shuffle_sets=sets,
                              n_random=5, n_permutations=99, seed=0, batch_size=7)
    assert again.per_emotion == res.per_emotion


def test_continuation_test_bad_input_fails_before_scoring(tiny_llama, tmp_path):
    model, tok = tiny_llama
    real, null, sets = _random_stores(tmp_path, WORDS, model.config.hidden_size, 2, n_shuffles=2)
    kw = dict(prompts=["x"], layer=2)
    with pytest.raises(ValueError, match="include 0"):
        continuation_test(model, tok, real, WORDS, strengths=[0.1, 0.2], **kw)
    with pytest.raises(ValueError, match="generated"):
        continuation_test(model, tok, real, WORDS, strengths=[0, 0.1], positions="generated", **kw)
    with pytest.raises(ValueError, match="n_shuffled=5 .* holds 2"):
        continuation_test(model, tok, real, WORDS, strengths=[0, 0.1], null_store=null, shuffle_sets=sets,
                          n_shuffled=5, **kw)
    bad = [s[:-1] + ["nope@shuffle0"] for s in sets]
    with pytest.raises(ValueError, match="'nope@shuffle0'.*not in"):
        continuation_test(model, tok, real, WORDS, strengths=[0, 0.1], null_store=null, shuffle_sets=bad, **kw)
    with pytest.raises(ValueError, match=r"\['calm'\] are not in the store"):
        continuation_test(model, tok, real, WORDS + ["calm"], strengths=[0, 0.1], **kw)
    with pytest.raises(ValueError, match="layer 3 is not a stored layer"):
        continuation_test(model, tok, real, WORDS, strengths=[0, 0.1], prompts=["x"], layer=3)


def test_dose_response_rows_nulls_masking_and_claims(tiny_llama, tmp_path):
    model, tok = tiny_llama
    d = model.config.hidden_size
    emotions = ["happy", "sad"]
    real, null, sets = _random_stores(tmp_path, emotions, d, 2, n_shuffles=2)
    direction = store_valence_direction(_store(tmp_path, "three.zarr", ["happy", "sad", "calm"],
                                               np.random.default_rng(4).standard_normal((3, d)), 2), 2)
    kwargs = dict(prompts=["Tell me about your morning.", "Describe the street."], strengths=[-1.0, 1.0],
                  samples=1, max_new_tokens=4, temperature=0.8, direction=direction,
                  signs={"happy": 1, "sad": -1}, layer=2, null_store=null, shuffle_sets=sets,
                  n_random=2, n_permutations=99, seed=7, batch_size=16, n_boot=50)
    res = dose_response(model, tok, real, emotions, **kwargs)
    # baseline 2 prompts x 1 sample; 2 emotions + 2 x 2 pseudo + 2 random = 8 directions x 2 strengths x 2
    assert len(res.generations) == 2 + 8 * 2 * 2
    kinds = [g.kind for g in res.generations]
    assert kinds.count("baseline") == 2 and kinds.count("emotion") == 8 and kinds.count("shuffled") == 16
    assert {g.condition for g in res.generations if g.kind == "shuffled"} >= {"happy@shuffle1@+1", "sad@shuffle0@-1"}
    assert all(-1 <= g.vader <= 1 and -1 <= g.vader_unmasked <= 1 for g in res.generations)
    # the readout is read for the baseline and the emotions' own generations only
    assert all(np.isnan(g.readout) for g in res.generations if g.kind in ("shuffled", "random"))
    # slopes: least squares over the baseline and the emotion's generations
    ser = [g for g in res.generations if g.kind == "baseline" or (g.kind == "emotion" and g.emotion == "happy")]
    want = slope(np.array([g.strength for g in ser]), np.array([g.vader for g in ser]))
    assert res.slopes[0]["vader_slope"] == pytest.approx(want)
    assert res.slopes[0]["vader_slope_lo"] <= res.slopes[0]["vader_slope_hi"]
    sm = res.summary
    assert sm["n_shuffled"] == 2 and len(sm["null_slopes"]["shuffled"]) == 2 and len(sm["null_slopes"]["random"]) == 2
    assert sm["tests"]["shuffled"]["n_null"] == 2 and "WEAK NULL" in sm["tests"]["random"]["note"]
    json.dumps(sm)
    claims = dose_claims(sm, figure="steering/dose_response.png")
    assert [c.id for c in claims] == ["steering.dose.shuffled", "steering.dose.happy.shuffled",
                                      "steering.dose.sad.shuffled"]
    assert all(c.verdict == NOT_TESTABLE and c.p is None for c in claims)  # 2 shuffles cannot reject
    assert "direction held fixed" in claims[1].interval_of and "(2 per strength" in claims[1].interval_of
    # same seed, same generations
    again = dose_response(model, tok, real, emotions, **kwargs)
    assert [g.text for g in again.generations] == [g.text for g in res.generations]
    with pytest.raises(ValueError, match="non-zero"):
        dose_response(model, tok, real, emotions, **(kwargs | {"strengths": [0.0]}))


def test_dose_claims_with_enough_shuffles():
    """With 20 shuffles the family is testable (smallest p 1/21) but one emotion of four is not
    after Holm (it would need 80); a clear effect is an effect."""
    rng = np.random.default_rng(0)
    emotions = ["happy", "calm", "sad", "afraid"]
    sgn = {"happy": 1, "calm": 1, "sad": -1, "afraid": -1}
    real = np.array([2.0, 2.0, -2.0, -2.0])
    shuf = rng.normal(0, 0.1, (20, 4))
    fam = set_test(real * [1, 1, -1, -1], shuf * [1, 1, -1, -1])
    summary = {"emotions": emotions, "expected_signs": sgn, "strengths": [-0.2, 0.0, 0.2], "n_shuffled": 20,
               "n_prompts": 2, "samples_per_prompt": 1,
               "tests": {"shuffled": {**fam, "interval": [1.5, 2.5], "n_surviving_holm": 0}},
               "slopes": [{"emotion": e, "vader_slope": real[i], "vader_slope_lo": 1.0, "vader_slope_hi": 3.0,
                           "p_shuffled": fam["p_emotion"][i], "p_shuffled_holm": fam["p_emotion_holm"][i],
                           "vader_unmasked_slope": 2.5} for i, e in enumerate(emotions)]}
    claims = dose_claims(summary)
    assert claims[0].verdict == EFFECT and claims[0].p == pytest.approx(1 / 21) and claims[0].interval == [1.5, 2.5]
    assert "smallest 20 null draws allow" in claims[0].note
    assert all(c.verdict == NOT_TESTABLE and "80" in c.note for c in claims[1:])


# ------------------------------------------------------------------------------------------
# the real default model


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
    """Unembedding directions of the words, at the last block: each raises its own word most,
    and is the vector that raises its word most, far above random directions."""
    model, tok = default_model
    words = ["happy", "sad", "calm", "angry"]
    last = model.config.num_hidden_layers - 1
    store = _unembedding_store(tmp_path, model, tok, words, last)
    res = continuation_test(model, tok, store, words, prompts=["She said that she felt"],
                            strengths=[-0.05, 0, 0.05, 0.1], layer=last, n_random=19, n_permutations=999,
                            seed=0)
    assert res.summary["layer"] == last and res.summary["n_emotions"] == 4
    for row in res.per_emotion:
        assert row["rises"] and row["monotone"], row
        assert row["specificity_rank"] == 1 and row["vector_rank"] == 1, row
        assert row["p_random"] == pytest.approx(1 / 20), row  # above every random direction
    assert res.summary["n_top1_specific"] == 4 and res.summary["n_top1_vector"] == 4
    assert res.summary["tests"]["random"]["p"] < 0.01


@pytest.mark.slow
def test_dose_response_on_the_default_model(default_model, tmp_path):
    model, tok = default_model
    words = ["happy", "sad", "calm"]
    last = model.config.num_hidden_layers - 1
    store = _unembedding_store(tmp_path, model, tok, words, last)
    direction = store_valence_direction(store, last)
    res = dose_response(model, tok, store, ["happy"], prompts=["Tell me about your morning."],
                        strengths=[-0.05, 0.05], samples=2, max_new_tokens=6, temperature=0.8,
                        direction=direction, signs={"happy": 1}, layer=last, n_random=1, seed=7, n_boot=200)
    assert sorted({g.condition for g in res.generations}) == sorted(
        ["baseline", "happy@-0.05", "happy@+0.05", "random0@-0.05", "random0@+0.05"])
    text = next(g for g in res.generations if g.kind == "emotion" and g.text.strip())
    again = readout_scores(model, tok, [text.text], direction)[0]
    assert again == pytest.approx(text.readout, rel=1e-5)
