"""Calibration of the steering evidence's tests (emotion_vectors.steering.evaluate): each test is
simulated many times under its own null, and its rejection rate at alpha = 0.05 must lie in the
binomial 99% band around 0.05 (``claims.rejection_band``); the smallest p each can give with the
default number of draws must be below alpha. Pure NumPy, a few seconds each.

The nulls simulated:

- specificity (continuation, vs the other emotions' vectors): the ``E x E`` rise matrix has
  exchangeable rows (vectors whose label says nothing about which word they raise), with vector
  effects (some push every word), word effects (some words rise under anything), a shared
  factor and heavy tails;
- shuffled (continuation and dose-response): the real set of vectors and every shuffled set are
  exchangeable (the stories' activations do not depend on the label), with correlation between
  the emotions of one set;
- random (continuation, weak null): the emotion vectors and the random directions are
  exchangeable (iid);
- dose-response: slopes of noisy generations (sampling noise, a per-direction effect, and a
  shift shared by every direction built from stories: the negative control's situation, where
  slopes exclude zero without any emotion).
"""

from __future__ import annotations

import numpy as np

from emotion_vectors.core.claims import ALPHA, min_attainable_p, rejection_band
from emotion_vectors.steering.evaluate import _signed, pool_test, row_z, set_test, slope, specificity_test

N_SIMS = 1000
LO, HI = rejection_band(N_SIMS)


def _rate(p: list[float] | np.ndarray) -> float:
    return float(np.mean(np.asarray(p) <= ALPHA))


def test_band_is_what_the_claims_module_says():
    assert LO < ALPHA < HI and HI < 0.075


def test_specificity_test_is_calibrated_under_exchangeable_vectors():
    rng = np.random.default_rng(0)
    e = 24
    p, p_emotion = [], []
    for _ in range(N_SIMS):
        word = 3 * rng.standard_normal((1, e))  # some words rise under any vector
        shared = rng.standard_normal((1, e))  # a factor every vector carries, in its own amount
        vec = 2 * rng.standard_normal((e, 1)) + rng.standard_normal((e, 1)) * shared
        noise = rng.standard_t(3, size=(e, e))
        res = specificity_test(word + vec + noise, n_permutations=199, seed=int(rng.integers(1 << 30)))
        p.append(res["p"])
        p_emotion.append(res["p_emotion"][0])
    assert LO <= _rate(p) <= HI, _rate(p)
    # one emotion's exact rank p: P(p <= 0.05) = floor(0.05 * 24) / 24 = 1/24
    assert abs(_rate(p_emotion) - 1 / 24) < 0.025
    assert min_attainable_p(9999) < ALPHA  # the default number of permutations


def test_specificity_test_holm_family_error_at_most_alpha():
    rng = np.random.default_rng(1)
    e = 6  # few emotions: a single exact rank p can reach 1/6, never below 0.05 / 6 ...
    hits = 0
    for _ in range(400):
        res = specificity_test(rng.standard_normal((e, e)), n_permutations=19, seed=0)
        hits += min(res["p_emotion_holm"]) <= ALPHA
    assert hits == 0  # ... so Holm over the emotions can never reject: the claims say so


def test_shuffled_set_test_is_calibrated_family_and_per_emotion():
    rng = np.random.default_rng(2)
    e, k = 24, 39  # 39 shuffles: P(p <= 0.05) = 2/40 = 0.05 exactly
    cov = 0.5 * np.eye(e) + 0.5  # the emotions of one set are correlated
    chol = np.linalg.cholesky(cov)
    p, p_one = [], []
    for _ in range(N_SIMS):
        sets = rng.standard_normal((k + 1, e)) @ chol.T
        res = set_test(sets[0], sets[1:])
        p.append(res["p"])
        p_one.append(res["p_emotion"][3])
    assert LO <= _rate(p) <= HI, _rate(p)
    assert LO <= _rate(p_one) <= HI, _rate(p_one)
    assert min_attainable_p(20) < ALPHA  # the default: vectors.n_shuffles = 20


def test_shuffled_set_test_through_row_z_of_rise_matrices():
    """The continuation's shuffled test end to end: rise matrices ``(E, W)`` of the real set and
    of each shuffled set, exchangeable; own-word z within each vector's row; set test."""
    rng = np.random.default_rng(3)
    e, k = 8, 19  # 19 shuffles: P(p <= 0.05) = 1/20
    p, p_holm = [], []
    for _ in range(N_SIMS):
        word = 2 * rng.standard_normal((1, 1, e))  # word effects shared by all sets
        rises = word + rng.standard_normal((k + 1, e, 1)) + rng.standard_t(4, size=(k + 1, e, e))
        own = np.stack([np.diag(row_z(r)) for r in rises])
        res = set_test(own[0], own[1:])
        p.append(res["p"])
        p_holm.append(min(res["p_emotion_holm"]))
    assert LO <= _rate(p) <= HI, _rate(p)
    assert _rate(p_holm) <= HI  # Holm: family-wise error at most alpha (here it cannot reject at all)


def test_random_pool_test_is_calibrated_under_exchangeable_directions():
    rng = np.random.default_rng(4)
    e, n_random = 24, 100
    p, p_one = [], []
    for _ in range(N_SIMS):
        rises = rng.standard_normal((e + n_random, 1)) + rng.standard_t(5, size=(e + n_random, e))
        res = pool_test(row_z(rises), e, n_permutations=199, seed=int(rng.integers(1 << 30)))
        p.append(res["p"])
        p_one.append(res["p_emotion"][5])
    assert LO <= _rate(p) <= HI, _rate(p)
    assert LO <= _rate(p_one) <= HI, _rate(p_one)
    assert min_attainable_p(9999) < ALPHA


def _dose_slopes(rng, n_dirs, strengths, n_gen, shift, spread):
    """Slopes of ``n_dirs`` directions: each direction's true effect ``shift + spread * N(0, 1)``
    on a sentiment score, generations with noise (clipped to [-1, 1] like VADER), a shared
    baseline at strength 0 (``slope`` checked against the vectorised form on the first)."""
    x_dir = np.repeat(strengths, n_gen)
    x = np.concatenate([np.zeros(n_gen), x_dir])
    base = np.clip(0.1 + 0.4 * rng.standard_normal(n_gen), -1, 1)
    beta = shift + spread * rng.standard_normal((n_dirs, 1))
    y = np.clip(0.1 + beta * x_dir + 0.4 * rng.standard_normal((n_dirs, x_dir.size)), -1, 1)
    y = np.concatenate([np.broadcast_to(base, (n_dirs, n_gen)), y], axis=1)
    xc = x - x.mean()
    out = (y - y.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)
    assert abs(out[0] - slope(x, y[0])) < 1e-12
    return out


def test_dose_response_shuffled_test_is_calibrated_where_a_test_against_zero_is_not():
    """The negative control's situation: every direction built from stories lowers sentiment
    (a shared shift), so slopes exclude zero without any emotion. Against zero the test rejects
    most of the time; against the shuffled-label pseudo vectors (same shift) it is calibrated,
    for the family (mean signed slope) and per emotion."""
    rng = np.random.default_rng(5)
    strengths = np.array([-0.2, 0.2])
    signs = [1, 1, -1, -1]  # happy, calm, sad, afraid
    e, k = 4, 39
    p_fam, p_one, excludes_zero = [], [], []
    for _ in range(N_SIMS // 2):
        slopes = _dose_slopes(rng, (k + 1) * e, strengths, 4, shift=-2.0, spread=0.5).reshape(k + 1, e)
        res = set_test(_signed(slopes[0], signs), _signed(slopes[1:], signs))
        p_fam.append(res["p"])
        p_one.append(res["p_emotion"][2])
        excludes_zero.append(slopes[0, 0] < -1.0)  # a pleasant emotion's slope far below zero
    lo, hi = rejection_band(N_SIMS // 2)
    assert lo <= _rate(p_fam) <= hi, _rate(p_fam)
    assert lo <= _rate(p_one) <= hi, _rate(p_one)
    assert np.mean(excludes_zero) > 0.5  # what a test against zero would have called an effect


def test_signed_statistic_two_sided_where_no_sign():
    v = np.array([[1.0, -2.0, -3.0]])
    np.testing.assert_array_equal(_signed(v, [1, -1, 0]), [[1.0, 2.0, 3.0]])


# ------------------------------------------------------------------------------------------
# Steering against prompting (emotion_vectors.steering.scores)


def _hm_like(rng, shape, zero_share=0.4, tie_break=True):
    """Per-reply steering scores as the harmonic mean gives them: exactly 0 for a share of
    replies (an axis at 0), else in (0, 1); with the tests' tie-break (TIE_BREAK x the mean of the
    axes, continuous) added."""
    from emotion_vectors.steering.scores import TIE_BREAK

    hm = np.where(rng.random(shape) < zero_share, 0.0, rng.beta(2, 5, shape))
    return hm + (TIE_BREAK * rng.random(shape) if tie_break else 0.0)


def test_sign_flip_paired_test_is_calibrated_and_its_floor_is_as_stated():
    """Steering vs prompting per emotion: 8 report pairs (4 prompts x 2 samples), the two methods'
    replies exchangeable within each pair (prompts differ, in the same way for both). With the
    tie-break the two-sided exact test rejects 12/256 of the time (its grid's largest p below
    0.05); without it, the zero-scored pairs tie and the test is conservative (never above)."""
    from emotion_vectors.steering.scores import sign_flip_floor, sign_flip_test

    rng = np.random.default_rng(7)
    n = 8
    p, p_ties = [], []
    for _ in range(N_SIMS):
        prompt = np.repeat(rng.normal(0, 0.1, n // 2), 2)  # 4 prompts x 2 samples
        a = _hm_like(rng, n) + prompt
        b = _hm_like(rng, n) + prompt
        p.append(sign_flip_test(a - b))
        p_ties.append(sign_flip_test(_hm_like(rng, n, tie_break=False) - _hm_like(rng, n, tie_break=False)))
    assert LO <= _rate(p) <= HI, _rate(p)
    assert abs(_rate(p) - 12 / 256) < 0.02
    assert _rate(p_ties) <= HI
    assert sign_flip_floor(8) < ALPHA / 4  # one emotion of four can pass Holm with 8 pairs ...
    assert sign_flip_floor(4) > ALPHA / 4  # ... not with 4 (the claims then say "not testable")


def test_strength_chosen_on_one_half_reported_on_the_other_is_calibrated():
    """The whole comparison under the global null (steering at every strength and prompting
    alike): the strength with the best mean on the selection half (choose_strength), the
    sign-flip test on the report half. Choosing on the same half would be biased: that is what
    the split prevents (shown: choosing and testing on one half rejects far more often)."""
    from emotion_vectors.steering.scores import choose_strength, sign_flip_test

    rng = np.random.default_rng(8)
    strengths = [0.1, 0.2, 0.4]
    n = 8
    p, p_same_half = [], []
    for _ in range(N_SIMS):
        sel = {s: _hm_like(rng, n) for s in strengths}
        s_best = choose_strength(strengths, [sel[s] for s in strengths])
        report_steer, report_prompt = _hm_like(rng, n), _hm_like(rng, n)
        p.append(sign_flip_test(report_steer - report_prompt, alternative="greater"))
        p_same_half.append(sign_flip_test(sel[s_best] - _hm_like(rng, n), alternative="greater"))
    assert LO <= _rate(p) <= HI, _rate(p)
    assert _rate(p_same_half) > HI  # the winner's curse the split avoids


def test_controls_set_test_on_steering_scores_is_calibrated_with_ties_broken():
    """The controls at the test strength: each direction's mean steering score over 2 replies
    (zero-inflated), the real set and 19 shuffled sets exchangeable. Exact with the tie-break;
    conservative (not above alpha) without it."""
    rng = np.random.default_rng(9)
    e, k = 4, 19
    p, p_one, p_ties = [], [], []
    for _ in range(N_SIMS):
        scores = _hm_like(rng, (k + 1, e, 2), zero_share=0.6).mean(axis=-1)
        res = set_test(scores[0], scores[1:])
        p.append(res["p"])
        p_one.append(res["p_emotion"][1])
        tied = _hm_like(rng, (k + 1, e, 2), zero_share=0.6, tie_break=False).mean(axis=-1)
        p_ties.append(set_test(tied[0], tied[1:])["p_emotion"][1])
    assert LO <= _rate(p) <= HI, _rate(p)
    assert LO <= _rate(p_one) <= HI, _rate(p_one)
    assert _rate(p_ties) <= HI
