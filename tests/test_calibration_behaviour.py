"""Calibration of the tests the behaviour experiment and the validation battery use to claim an
effect: each is simulated many times under its own null, and its rejection rate at alpha = 0.05
must lie in the binomial 99% band of a calibrated test (``claims.rejection_band``), with a
smallest attainable p below alpha. Pure numpy/scipy on simulated data; seconds in all.

- Fisher's exact test of a condition's rate against the baseline (``behaviour.stats``): exact,
  hence conservative with discrete counts; its simulated rejection rate must match its exact size
  (enumerated) and never exceed alpha's band; Holm over the conditions keeps the family-wise rate.
- The battery's permutation test against the shuffled-label vectors (``battery.shuffled_null``,
  ``battery.lex_p``): stories whose activations do not depend on their label, vectors built
  from them, the same vectors with the labels permuted within topic.
- The battery's random-direction test, under its own null (the vectors are random directions).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from emotion_vectors.reading import battery as B
from emotion_vectors.steering.behaviour.stats import fisher_min_p, fisher_vs_baseline
from emotion_vectors.core.claims import ALPHA, holm, min_attainable_p, rejection_band
from emotion_vectors.vectors.build import shuffle_labels

N_SIMS = 2000


# --------------------------------------------------------------------------------------------
# Behaviour: Fisher's exact test of a rate against the baseline


def _fisher_table(n: int, n0: int) -> np.ndarray:
    """Two-sided Fisher p of every table k/n against k0/n0, vectorised per total: given
    t = k + k0 the table is hypergeometric, and p sums the probabilities of the tables no more
    likely than the observed one (scipy's rule, relative tolerance 1e-7)."""
    from scipy.stats import hypergeom

    out = np.full((n + 1, n0 + 1), np.nan)
    for t in range(n + n0 + 1):
        ks = np.arange(max(0, t - n0), min(n, t) + 1)
        pmf = hypergeom.pmf(ks, n + n0, n, t)
        p = np.array([pmf[pmf <= v * (1 + 1e-7)].sum() for v in pmf])
        out[ks, t - ks] = np.minimum(p, 1.0)
    return out


@pytest.fixture(scope="module")
def fisher_100() -> np.ndarray:
    table = _fisher_table(100, 100)
    # the table is fisher_vs_baseline's (the function the experiment uses), checked on a sample
    rng = np.random.default_rng(0)
    for k, k0 in rng.integers(0, 101, (150, 2)):
        assert table[k, k0] == pytest.approx(fisher_vs_baseline(int(k), 100, int(k0), 100)[1], rel=1e-6, abs=1e-300)
    return table


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_fisher_rate_test_is_valid_under_equal_rates(fisher_100, rate):
    n = n0 = 100
    rng = np.random.default_rng(int(rate * 100))
    k, k0 = rng.binomial(n, rate, N_SIMS), rng.binomial(n0, rate, N_SIMS)
    rejected = fisher_100[k, k0] < ALPHA
    observed = float(rejected.mean())
    # the exact size: the probability of a rejected table under equal rates
    w = binom.pmf(np.arange(n + 1), n, rate)
    size = float((np.outer(w, w) * (fisher_100 < ALPHA)).sum())
    lo, hi = binom.ppf([0.005, 0.995], N_SIMS, size) / N_SIMS
    print(f"\nFisher n=n0=100, rate {rate}: simulated rejection {observed:.4f}, exact size {size:.4f}, "
          f"calibrated band {rejection_band(N_SIMS)}")
    assert lo <= observed <= hi  # the simulation agrees with the exact size
    assert size <= ALPHA  # exact: never more than alpha ...
    assert observed <= rejection_band(N_SIMS)[1]  # ... and never liberal beyond sampling error
    assert size > 0.03  # conservative by discreteness only, not broken (0.033 at 0.2, 0.040 at 0.5)
    assert fisher_min_p(n, n0) < ALPHA


def test_holm_over_conditions_keeps_the_familywise_rate(fisher_100):
    """15 conditions against one shared baseline (dependent tests), all under the null: Holm's
    family-wise rejection rate stays within alpha's band."""
    rng = np.random.default_rng(7)
    m, rate = 15, 0.3
    k0 = rng.binomial(100, rate, N_SIMS)
    k = rng.binomial(100, rate, (N_SIMS, m))
    p = fisher_100[k, k0[:, None]]
    any_rejected = np.array([np.any(holm(row) < ALPHA) for row in p])
    uncorrected = float(np.mean(np.any(p < ALPHA, axis=1)))
    print(f"\nHolm over {m} conditions: family-wise rejection {any_rejected.mean():.4f} "
          f"(uncorrected: {uncorrected:.3f})")
    assert any_rejected.mean() <= rejection_band(N_SIMS)[1]
    assert uncorrected > 0.2  # what correction is for


def test_fisher_smallest_p_decides_testability():
    assert fisher_min_p(4, 4) == pytest.approx(2 / 70)  # 4 against 4: cannot reach 0.05/15
    assert fisher_min_p(4, 4) >= ALPHA / 15
    assert fisher_min_p(100, 100) < 1e-50
    assert np.isnan(fisher_min_p(0, 4))


# --------------------------------------------------------------------------------------------
# Battery: simulated stories, vectors, texts


E, TOPICS, PER_CELL, D = 6, 5, 2, 12
EMOTIONS = [f"e{i}" for i in range(E)]
CLUSTERS = {e: ("a" if i < 3 else "b") for i, e in enumerate(EMOTIONS)}
ITEMS = [{"id": f"{e}-{j}", "emotion": e, "text": "x"} for e in EMOTIONS for j in range(3)]
TEMPLATES = [{"id": f"t{j}", "emotion": EMOTIONS[j], "levels": ["a"] * 5} for j in range(3)]
SCALES = np.linspace(3.0, 0.5, D)  # anisotropic activations, like a residual stream
TESTED = [c for c in B.CHECKS if c != "logit_lens_self_recognition"]


def _units(acts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit mean-difference vectors ``(..., E, d)`` for label arrays ``(..., n)``."""
    onehot = (labels[..., None] == np.arange(E)).astype(float)  # (..., n, E)
    means = np.einsum("...ne,nd->...ed", onehot, acts) / onehot.sum(axis=-2)[..., None]
    raw = means - means.mean(axis=-2, keepdims=True)
    return raw / np.linalg.norm(raw, axis=-1, keepdims=True)


def _lens_fn(dirs: np.ndarray) -> list[list[str]]:
    """A stand-in logit lens: direction i 'promotes' emotion i's word when its first coordinate is large."""
    return [[f"Ġ{EMOTIONS[i]}" if v[0] > 0.6 else "Ġthe"] for i, v in enumerate(dirs)]


def _permute_within_topic(labels: np.ndarray, topic: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``(k, n)`` labels permuted uniformly within each topic (what ``vectors.shuffle_labels``
    does, vectorised over the shuffles for speed)."""
    order = np.argsort(topic, kind="stable")
    perm = np.argsort(topic[order][None, :] + rng.random((k, labels.size)), axis=1)  # within-block orders
    out = np.empty((k, labels.size), dtype=labels.dtype)
    out[:, order] = labels[order][perm]
    return out


def _simulate_shuffled(rng: np.random.Generator, k: int, lens: bool = False) -> dict[str, float]:
    labels = np.repeat(np.arange(E), TOPICS * PER_CELL)
    topic = np.tile(np.repeat(np.arange(TOPICS), PER_CELL), E)
    acts = rng.standard_normal((labels.size, D)) * SCALES  # no dependence on the label: the null
    real = _units(acts, labels)
    shuf = _units(acts, _permute_within_topic(labels, topic, k, rng))
    x_imp = rng.standard_normal((len(ITEMS), D)) * SCALES
    x_int = rng.standard_normal((15, D)) * SCALES
    res = B.shuffled_null(x_imp, ITEMS, x_int, TEMPLATES, EMOTIONS, CLUSTERS, real, shuf,
                          lens_fn=_lens_fn if lens else None, lens_top_k=1)
    out = {}
    for check in res["values"]:
        tb = B.TIEBREAK[check]
        out[check] = B.lex_p(res["observed"][check], res["values"][check], B.CHECKS[check],
                             res["observed"].get(tb) if tb else None, res["tiebreak"].get(tb) if tb else None)
    return out


def test_fast_permutation_matches_the_pipeline_shuffle():
    """The vectorised shuffle keeps every emotion's count in every topic, as ``shuffle_labels`` does."""
    labels = np.repeat(np.arange(E), TOPICS * PER_CELL)
    topic = np.tile(np.repeat(np.arange(TOPICS), PER_CELL), E)
    for shuffled in (_permute_within_topic(labels, topic, 50, np.random.default_rng(0)),
                     shuffle_labels(labels, topic, 50, 0)):
        for row in shuffled:
            for t in range(TOPICS):
                assert np.array_equal(np.bincount(row[topic == t], minlength=E),
                                      np.bincount(labels[topic == t], minlength=E))
        assert np.mean(shuffled != labels) > 0.5


@pytest.fixture(scope="module")
def shuffled_p() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    sims = [_simulate_shuffled(rng, 40) for _ in range(1000)]
    return {c: np.array([s[c] for s in sims]) for c in sims[0]}


@pytest.mark.parametrize("check", TESTED)
def test_battery_shuffled_label_test_is_calibrated(shuffled_p, check):
    """40 shuffles: the smallest p is 1/41 and an exact test rejects 2/41 = 0.049 of the time."""
    p = shuffled_p[check]
    rate = float(np.mean(p < ALPHA))
    print(f"\n{check}: shuffled-label test rejects {rate:.3f} under the null (band {rejection_band(len(p))})")
    lo, hi = rejection_band(len(p))
    assert lo <= rate <= hi
    assert min_attainable_p(40) < ALPHA and p.min() == pytest.approx(1 / 41)


def test_battery_lens_test_is_conservative():
    """The lens check has no tie-breaker: ties count against it, so it rejects at most alpha."""
    rng = np.random.default_rng(13)
    p = np.array([_simulate_shuffled(rng, 40, lens=True)["logit_lens_self_recognition"] for _ in range(300)])
    rate = float(np.mean(p < ALPHA))
    print(f"\nlogit-lens check: rejects {rate:.3f} under the null (ties count against it)")
    assert rate <= rejection_band(len(p))[1]


def test_battery_holm_over_checks_keeps_the_familywise_rate():
    """With 200 shuffles Holm over the checks can reject; under the null its family-wise rate is
    at most alpha (the checks share the texts and the vectors: strongly dependent). The lens
    check, never significant under ties, would only make Holm stricter: it is left out here."""
    rng = np.random.default_rng(12)
    p = np.array([[s[c] for c in TESTED] for s in (_simulate_shuffled(rng, 200) for _ in range(300))])
    fwer = float(np.mean([np.any(holm(row) < ALPHA) for row in p]))
    print(f"\nHolm over the battery's checks (200 shuffles): family-wise rejection {fwer:.3f}")
    assert fwer <= rejection_band(len(p))[1]
    assert min_attainable_p(200) < ALPHA / len(B.CHECKS)


@pytest.fixture(scope="module")
def random_p() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(21)
    ps: dict[str, list[float]] = {c: [] for c in TESTED}
    for s in range(1000):
        x_imp = rng.standard_normal((len(ITEMS), D)) * SCALES
        x_int = rng.standard_normal((15, D)) * SCALES
        real = B.random_unit_directions(rng, E, D)
        obs = B.check_values(x_imp, ITEMS, x_int, TEMPLATES, EMOTIONS, CLUSTERS, real[None])
        null = B.random_direction_null(x_imp, ITEMS, x_int, TEMPLATES, EMOTIONS, CLUSTERS, n_draws=40, seed=s)
        for check in TESTED:
            tb = B.TIEBREAK[check]
            ps[check].append(B.lex_p(float(obs[check][0]), null["values"][check], B.CHECKS[check],
                                     float(obs[tb][0]), null["tiebreak"][tb]))
    return {c: np.array(v) for c, v in ps.items()}


@pytest.mark.parametrize("check", TESTED)
def test_battery_random_direction_test_is_calibrated_under_its_null(random_p, check):
    """The weaker null tests "the vectors are directions uniform on the sphere": simulated with
    vectors that are, its p is exact too (40 draws: rejection 2/41)."""
    rate = float(np.mean(random_p[check] < ALPHA))
    print(f"\n{check}: random-direction test rejects {rate:.3f} under its null")
    lo, hi = rejection_band(len(random_p[check]))
    assert lo <= rate <= hi
