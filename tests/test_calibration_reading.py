"""Calibration of the real-text checks' tests (emotion_vectors.reading.text_checks).

Each test the reading stage uses to claim an effect is run many times on simulated data under
its null; its rejection rate at alpha = 0.05 must lie in the binomial 99% band of a calibrated
test (``claims.rejection_band``), and its smallest attainable p must be below alpha.

- The corpora agreement and the emotion AUROCs are tested against shuffled-label vectors. The
  simulation builds them as the workflow does: story activations that do not depend on their
  emotion label, vectors = emotion mean - mean over emotions, the labels permuted within topic
  (``vectors.shuffle_labels``) for each shuffle. The simulated human texts carry what breaks
  the naive tests: a shared offset from the neutral baseline (agreement) and labels tied to a
  direction that the stories also vary along (AUROC), so the Mann-Whitney test of a single
  direction rejects far more than alpha there while the shuffled-label tests stay calibrated.
- The valence AUROC's Mann-Whitney test is checked under exchangeable labels, with and
  without ties.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emotion_vectors.core.claims import ALPHA, min_attainable_p, rejection_band
from emotion_vectors.reading.text_checks import (
    corpora_agreement,
    emotion_label_check,
    mannwhitney_auroc,
    shuffled_means,
)
from emotion_vectors.vectors.build import shuffle_labels

K = 20  # the default vectors.n_shuffles: smallest p 1/21 < 0.05


def _stories(rng, E=6, topics=3, per=4, d=12):
    """Story activations that do not depend on the emotion label (topic effects only), labels."""
    emo = np.repeat(np.arange(E), topics * per)
    top = np.tile(np.repeat(np.arange(topics), per), E)
    topic_means = rng.standard_normal((topics, d)) * 2
    acts = topic_means[top] + rng.standard_normal((emo.size, d))
    # a direction along which stories vary a lot (like length or register)
    axis = np.zeros(d)
    axis[0] = 1.0
    acts += np.outer(rng.standard_normal(emo.size) * 3, axis)
    return acts, emo, top


def _vector_sets(rng, acts, emo, top, E):
    """(K+1, E, d) unit vectors: the real labels' first, then K within-topic shuffles."""
    labels = np.vstack([emo[None], shuffle_labels(emo, top, K, int(rng.integers(1 << 30)))])
    onehot = (labels[:, :, None] == np.arange(E)).astype(float)  # (K+1, n, E)
    means = np.einsum("kne,nd->ked", onehot, acts) / onehot.sum(axis=1)[:, :, None]
    v = means - means.mean(axis=1, keepdims=True)
    return v / np.linalg.norm(v, axis=2, keepdims=True)


def test_agreement_test_is_calibrated_under_its_null():
    rng = np.random.default_rng(0)
    n_sims, E, d = 1000, 24, 12  # 24 emotions as the default run: Spearman ties are rare
    p = np.empty(n_sims)
    naive = np.empty(n_sims)
    for i in range(n_sims):
        acts, emo, top = _stories(rng, E=E, d=d, per=2)
        sets = _vector_sets(rng, acts, emo, top, E)
        neutral = rng.standard_normal(d)
        offset = rng.standard_normal(d) * 3  # short human text vs the neutral dialogues
        real, null = {}, {}
        for c in ("tweets", "chat"):
            x = neutral + offset + rng.standard_normal(d) + rng.standard_normal((40, d)) * 2
            proj = np.einsum("ked,nd->ken", sets, x)  # (K+1, E, n)
            m = shuffled_means(proj, sets @ neutral)  # (K+1, E)
            real[c], null[c] = m[0], m[1:]
        res = corpora_agreement(real, null, n_boot=0)
        p[i] = res["pairs"][0]["p_shuffled"]
        naive[i] = res["pairs"][0]["p_naive"]
    lo, hi = rejection_band(n_sims)
    rate = float(np.mean(p < ALPHA))
    print(f"agreement vs shuffles: rejection rate {rate:.4f} in {n_sims} sims, band {(lo, hi)}; "
          f"naive Spearman p: {np.mean(naive < ALPHA):.3f}")
    assert lo <= rate <= hi, (rate, (lo, hi))
    assert p.min() == min_attainable_p(K) < ALPHA
    # the naive Spearman p, which ignores the shared offset, "finds" agreement most of the time
    assert np.mean(naive < ALPHA) > 0.3


def test_valence_auroc_mannwhitney_is_calibrated_under_exchangeable_labels():
    rng = np.random.default_rng(1)
    n_sims = 1000
    lo, hi = rejection_band(n_sims)
    for ties in (False, True):
        p = np.empty(n_sims)
        for i in range(n_sims):
            s = rng.standard_exponential(120)  # skewed scores
            if ties:
                s = np.round(s, 1)
            y = rng.permutation(np.r_[np.ones(40, bool), np.zeros(80, bool)])
            p[i] = mannwhitney_auroc(y, s)["p_mannwhitney"]
        rate = float(np.mean(p < ALPHA))
        print(f"valence AUROC Mann-Whitney (ties={ties}): rejection rate {rate:.4f} in {n_sims} sims, band {(lo, hi)}")
        assert lo <= rate <= hi, (ties, rate, (lo, hi))
    assert mannwhitney_auroc(np.r_[np.ones(40, bool), np.zeros(80, bool)],
                             np.r_[np.ones(40), np.zeros(80)])["p_mannwhitney"] < ALPHA


def test_emotion_auroc_tests_are_calibrated_under_their_null():
    """The family test (mean AUROC vs the shuffles) and each emotion's test (its AUROC vs its own
    shuffles), with human labels tied to a direction the stories vary along."""
    rng = np.random.default_rng(2)
    n_sims, E, d = 1000, 6, 12
    emotions = [f"e{j}" for j in range(E)]
    label_map = {f"l{j}": {"emotions": [emotions[j]], "nrc": None} for j in range(3)}
    p_fam, p_one, p_mw = np.empty(n_sims), np.empty(n_sims), np.empty(n_sims)
    for i in range(n_sims):
        acts, emo, top = _stories(rng, E=E, d=d)
        sets = _vector_sets(rng, acts, emo, top, E)
        n = 60
        lab = rng.integers(0, 3, n)
        x = rng.standard_normal((n, d))
        x[:, 0] += (lab == 0) * 1.5  # label l0's texts sit further along the stories' noisy axis
        proj = np.einsum("ked,nd->ken", sets, x)  # (K+1, E, n)
        df = pd.DataFrame(proj[0].T, columns=emotions)
        df["label"] = [f"l{j}" for j in lab]
        null = {e: proj[1:, j, :] for j, e in enumerate(emotions)}
        chk = emotion_label_check(df, label_map, null_scores=null, n_boot=0)
        p_fam[i] = chk["family"]["p_shuffled"]
        row0 = chk["rows"][0]
        p_one[i] = row0["p_shuffled"]
        p_mw[i] = row0["p_mannwhitney"]
    lo, hi = rejection_band(n_sims)
    for name, p in (("family", p_fam), ("one emotion", p_one)):
        rate = float(np.mean(p < ALPHA))
        print(f"emotion AUROC vs shuffles ({name}): rejection rate {rate:.4f} in {n_sims} sims, band {(lo, hi)}; "
              f"Mann-Whitney of one direction: {np.mean(p_mw < ALPHA):.3f}")
        assert lo <= rate <= hi, (name, rate, (lo, hi))
        assert p.min() == min_attainable_p(K) < ALPHA
    # a single direction's Mann-Whitney p is not emotion-specific: it rejects far more often
    assert np.mean(p_mw < ALPHA) > 2 * hi
