"""Is the valence readout valence for this run? (emotion_vectors.steering.readout.check_valence_direction)

PC1 is oriented by anchor emotions, so it always has a "pleasant" end; only its correlation with
human valence ratings says whether it is valence. Vectors whose first axis is the emotion words'
human valence must pass; vectors without it (noise, as in the negative control) must not.
"""

from __future__ import annotations

import numpy as np
import pytest

from emotion_vectors.analysis.norms import match_ratings
from emotion_vectors.steering.readout import (
    VALENCE_MIN_R,
    check_valence_direction,
    store_valence_check,
    valence_direction,
)
from emotion_vectors.vectors.store_layout import write_store

EMOTIONS = ["afraid", "scared", "terrified", "calm", "serene", "desperate", "happy", "sad", "angry",
            "furious", "enraged", "grateful", "thankful", "stubborn", "obstinate", "smug", "disturbed",
            "proud", "ashamed", "lonely", "nostalgic", "bored", "excited", "hostile"]


def _vectors(signal: float, seed: int = 0, d: int = 40) -> np.ndarray:
    """Emotion vectors whose first coordinate is ``signal`` x the words' human valence (z-scored)
    on top of unit noise in every coordinate."""
    rng = np.random.default_rng(seed)
    val = match_ratings(EMOTIONS).valence
    z = (val - np.nanmean(val)) / np.nanstd(val)
    v = rng.standard_normal((len(EMOTIONS), d))
    v[:, 0] += signal * np.nan_to_num(z)
    return v


def test_valence_axis_passes_and_noise_does_not():
    v = _vectors(4.0)
    res = check_valence_direction(v, EMOTIONS, valence_direction(v, EMOTIONS, 19), n_bootstrap=300)
    assert res["is_valence"] and res["r"] > 0.8 and res["ci_low"] > 0.5
    assert res["n_rated"] == 24 and res["min_r"] == VALENCE_MIN_R and "is valence" in res["note"]
    # Noise only: the anchors still orient PC1, but it does not follow human valence.
    noise = _vectors(0.0, seed=3)
    res = check_valence_direction(noise, EMOTIONS, valence_direction(noise, EMOTIONS, 19), n_bootstrap=300)
    assert not res["is_valence"] and "not shown to be valence" in res["note"]
    assert res["ci_low"] < 0 < res["ci_high"]


def test_a_weak_correlation_is_not_valence():
    """r above 0 with an interval above 0, but below min_r: not read as valence."""
    v = _vectors(4.0)
    d = valence_direction(v, EMOTIONS, 19)
    res = check_valence_direction(v, EMOTIONS, d, min_r=0.99, n_bootstrap=100)
    assert not res["is_valence"] and "r is below 0.99" in res["note"]


def test_too_few_rated_emotions_cannot_be_checked():
    names = ["happy", "sad", "calm", "afraid"]
    v = np.random.default_rng(0).standard_normal((4, 8))
    res = check_valence_direction(v, names, valence_direction(v, names, 1))
    assert res["is_valence"] is False and res["r"] is None and "4 of the run's 4 emotions" in res["note"]


def test_store_valence_check(tmp_path):
    v = _vectors(4.0)[:, None, :]
    store = write_store(tmp_path / "v.zarr", emotions=EMOTIONS, layers=[7], raw=v, denoised=v,
                        residual_norm=None, n_neutral_pcs_removed=None, n_stories=None)
    res = store_valence_check(store, 7, n_bootstrap=100)
    assert res["is_valence"] and res["layer"] == 7
    direct = check_valence_direction(v[:, 0], EMOTIONS, valence_direction(v[:, 0], EMOTIONS, 7), n_bootstrap=100)
    assert res["r"] == pytest.approx(direct["r"])
