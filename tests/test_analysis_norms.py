"""Human norms: the file, the reviewed mapping table, coverage."""

from __future__ import annotations

import re

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
    for row in norms.MAPPING:
        assert row.emotion not in seen, f"{row.emotion} mapped twice"
        seen.add(row.emotion)
        assert row.emotion in words, f"{row.emotion} is not one of the study's emotions"
        assert row.emotion not in df.index, f"{row.emotion} is a headword: no mapping needed"
        assert row.rule in ("lemma", "derivation", "head", "unmapped")
        assert row.reason
        assert (row.headword is None) == (row.rule == "unmapped")
        if row.headword is not None:
            assert row.headword in df.index, f"{row.headword} (for {row.emotion}) is not rated"


def _quoted(text: str) -> list[str]:
    return re.findall(r"'([^']+)'", text)


@pytest.mark.parametrize("row", norms.MAPPING, ids=lambda r: r.emotion)
def test_every_reason_is_true_of_the_norms_file(row):
    """Each reason's claims, checked against the file: words said to be rated are headwords,
    words said not to be rated are absent, and no headword has a form of a root said to have
    none; every quoted word of the reason is one of those (or the emotion or its headword), so
    a reason cannot make an unchecked claim about the file."""
    df = norms.load_norms()
    headwords = set(df.index)
    for word in row.rated:
        assert word in headwords, f"{row.emotion}: the reason says {word!r} is rated; it is not"
    for word in row.unrated:
        assert word not in headwords, (
            f"{row.emotion}: the reason says {word!r} is not rated, but it is "
            f"(V {df.loc[word, 'valence']})")
    for stem in row.no_form:
        forms = sorted(w for w in headwords if w.startswith(stem))
        assert not forms, f"{row.emotion}: the reason says no form of {stem}- is rated: {forms}"
    for word in _quoted(row.reason):
        covered = (word in (row.emotion, row.headword) or word in row.rated
                   or word in row.unrated or any(word.startswith(s) for s in row.no_form))
        assert covered, f"{row.emotion}: {word!r} is quoted in the reason but no claim checks it"
    claims = set(row.rated) | set(row.unrated)
    assert claims <= set(_quoted(row.reason)), f"{row.emotion}: a checked word is not in the reason"
    if row.rule == "unmapped":
        # an unmapped emotion's own word is not rated either (else it would be exact)
        assert row.emotion not in headwords


def test_known_false_reasons_are_gone():
    """The reviewer's find: 'stricken' IS rated (V 2.79); so is 'wear', but 'worn' is not."""
    df = norms.load_norms()
    assert df.loc["stricken", "valence"] == pytest.approx(2.79)
    by = {r.emotion: r for r in norms.MAPPING}
    assert "stricken" in by["grief-stricken"].rated
    assert "not rated" not in by["grief-stricken"].reason
    assert "worn" in by["worn out"].unrated and "worn" not in df.index


def test_every_study_emotion_is_decided():
    """Coverage follows from the table (no pinned counts): each emotion is exact, mapped by its
    row, or unmapped by its row; covered = emotions with a rating."""
    emotions = emotion_words()
    ratings = norms.match_ratings(emotions)
    table = ratings.table.set_index("emotion")
    df = norms.load_norms()
    by = {r.emotion: r for r in norms.MAPPING}
    assert (table["reason"] != "not in the reviewed mapping").all()
    for e in emotions:
        if e in df.index:
            assert table.loc[e, "rule"] == "exact" and table.loc[e, "headword"] == e
            assert table.loc[e, "valence"] == df.loc[e, "valence"]
        else:
            row = by[e]
            assert table.loc[e, "rule"] == row.rule and table.loc[e, "reason"] == row.reason
            if row.headword:
                assert table.loc[e, "valence"] == df.loc[row.headword, "valence"]
                assert table.loc[e, "arousal"] == df.loc[row.headword, "arousal"]
            else:
                assert np.isnan(table.loc[e, "valence"])
    cov = ratings.coverage()
    exact = sum(e in df.index for e in emotions)
    mapped = sum(by[e].headword is not None for e in emotions if e not in df.index)
    assert cov["exact"] == exact and cov["covered"] == exact + mapped
    assert cov["n_emotions"] == len(emotions) == 171
    assert sum(cov[k] for k in ("exact", "lemma", "derivation", "head", "unmapped")) == 171
    row = table.loc["grief-stricken"]
    assert row["headword"] == "grief" and row["rule"] == "head"


def test_unknown_emotion_is_unmapped_with_reason():
    ratings = norms.match_ratings(["happy", "flabbergasted-ish"])
    assert list(ratings.table["rule"]) == ["exact", "unmapped"]
    assert ratings.table.loc[1, "reason"] == "not in the reviewed mapping"
    assert np.isfinite(ratings.valence[0]) and np.isnan(ratings.valence[1])
    assert list(ratings.exact) == [True, False]
