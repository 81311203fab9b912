"""Helpers shared by the analysis tests (no tests here; named test_* to sit with them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "gemma4-31b-it_layer40_emotion_vectors.npz"


def reference_matrix() -> tuple[list[str], np.ndarray]:
    """The published layer-40 vectors: (sorted emotions, (171, 5376) float32); skips if absent."""
    if not REFERENCE.exists():
        pytest.skip(f"reference vectors not found at {REFERENCE} (CI puts shared/ beside the repo)")
    data = np.load(REFERENCE)
    emotions = sorted(data.keys())
    return emotions, np.stack([data[e] for e in emotions])


def emotion_words() -> list[str]:
    """The study's 171 emotion words (config/emotions.txt)."""
    path = REPO_ROOT / "config" / "emotions.txt"
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def structured_vectors(emotions: list[str], n_layers: int, d: int, seed: int = 0,
                       valence: dict[str, float] | None = None) -> np.ndarray:
    """``(n, n_layers, d)`` vectors whose first axis follows the emotions' human valence
    (so that PC1 tracks valence), with layer-dependent noise.

    ``valence``: the ratings to build from, given by the test (so that a test of the analysis
    does not build its data with the norms code it then checks); default ``match_ratings``'s."""
    rng = np.random.default_rng(seed)
    if valence is None:
        from emotion_vectors.analysis.norms import match_ratings

        val = match_ratings(emotions).valence
    else:
        val = np.array([valence.get(e, np.nan) for e in emotions], dtype=float)
    val = np.where(np.isfinite(val), val, 5.0) - 5.0
    base = rng.standard_normal((len(emotions), d)) * 0.3
    base[:, 0] += val
    noise = [rng.standard_normal(base.shape) * 0.1 * (1 + i) for i in range(n_layers)]
    out = np.stack([base + e for e in noise], axis=1)
    return out.astype(np.float32)
