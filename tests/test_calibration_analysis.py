"""Calibration of the geometry's rating test: PC1 of vectors unrelated to the ratings correlates
with them at the nominal rate (the test the findings' geometry claims use)."""

import numpy as np
from scipy import stats as sps

from emotion_vectors.analysis.geometry import pca
from emotion_vectors.analysis.stats import correlate
from emotion_vectors.core.claims import rejection_band


def test_pc1_rating_correlation_rejects_at_alpha_under_the_null():
    rng = np.random.default_rng(0)
    n_sims, n_emotions, d = 2000, 23, 40
    # a spiked covariance like real emotion vectors (a dominant direction and a few large dims),
    # but ratings drawn independently of it
    scale = np.ones(d)
    scale[:3] = [6.0, 3.0, 2.0]
    rejected = 0
    for _ in range(n_sims):
        x = rng.standard_normal((n_emotions, d)) * scale
        ratings = rng.uniform(1, 9, n_emotions)
        scores = pca(x, n_components=3).scores[:, 0]
        rejected += correlate(scores, ratings, method="pearson", n_bootstrap=0).p < 0.05
    lo, hi = rejection_band(n_sims)
    assert lo <= rejected / n_sims <= hi, rejected / n_sims
    # and it can reject: a PC1 that is the rating
    x = rng.standard_normal((n_emotions, d))
    ratings = rng.uniform(1, 9, n_emotions)
    x[:, 0] = 10 * (ratings - ratings.mean())
    assert correlate(pca(x, 3).scores[:, 0], ratings, n_bootstrap=0).p < 1e-6
    assert sps.pearsonr(pca(x, 3).scores[:, 0], ratings).pvalue < 1e-6
