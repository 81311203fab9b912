"""Human norms: the file, the reviewed mapping table, coverage."""

from __future__ import annotations

import numpy as np
import pytest

from emotion_vectors.analysis import norms

from test_analysis_helpers import emotion_words


def test_norms_file_and_values():
    df = norms.load_norms()
    assert len(df) == 13915
    assert df.index.is_unique
    assert "null" in df.index  # a real headword that a default CSV reader turns into NaN
    assert df.loc["happy", "valence"] == pytest.approx(8.47)
    assert df["valence"].between(1, 9).all() and df["arousal"].between(1, 9).all()


def test_mapping_table_is_needed_and_valid():
    df = norms.load_norms()
    words = set(emotion_words())
    seen = set()
    for emotion, headword, rule, reason in norms.MAPPING:
        assert emotion not in seen, f"{emotion} mapped twice"
        seen.add(emotion)
        assert emotion in words, f"{emotion} is not one of the study's emotions"
        assert emotion not in df.index, f"{emotion} is a headword: no mapping needed"
        assert rule in ("lemma", "derivation", "head", "unmapped")
        assert reason
        assert (headword is None) == (rule == "unmapped")
        if headword is not None:
            assert headword in df.index, f"{headword} (for {emotion}) is not rated"


def test_every_study_emotion_is_decided():
    ratings = norms.match_ratings(emotion_words())
    table = ratings.table
    assert (table["reason"] != "not in the reviewed mapping").all()
    cov = ratings.coverage()
    assert cov == {
        "n_emotions": 171, "covered": 153, "coverage": pytest.approx(153 / 171),
        "exact": 126, "lemma": 17, "derivation": 7, "head": 3, "unmapped": 18,
    }
    for phrase in ("at ease", "on edge", "worn out", "grief-stricken", "self-confident"):
        assert phrase in set(table["emotion"])
    row = table.set_index("emotion").loc["grief-stricken"]
    assert row["headword"] == "grief" and row["rule"] == "head"
    assert np.isnan(table.set_index("emotion").loc["on edge", "valence"])


def test_unknown_emotion_is_unmapped_with_reason():
    ratings = norms.match_ratings(["happy", "flabbergasted-ish"])
    assert list(ratings.table["rule"]) == ["exact", "unmapped"]
    assert ratings.table.loc[1, "reason"] == "not in the reviewed mapping"
    assert np.isfinite(ratings.valence[0]) and np.isnan(ratings.valence[1])
    assert list(ratings.exact) == [True, False]
