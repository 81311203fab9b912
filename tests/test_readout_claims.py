"""The real-text checks as claims (emotion_vectors.reading.text_checks).

The statistics are checked against scipy/sklearn; the claims are checked to say "effect" only
where the vectors carry what the shuffled-label vectors do not, and to say "not testable" where
the readout is not valence or the null has too few draws. The emotion-label check runs on a small
hand-written labelled fixture (tests/data/emotion_labelled.tsv: no labelled emotion corpus ships
in a package on the registries, so the check runs on any labelled file a user provides).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emotion_vectors.core.claims import EFFECT, NO_EFFECT, NOT_TESTABLE, mc_p
from emotion_vectors.corpus.lexicon import load_nrc
from emotion_vectors.reading.corpora import load_file
from emotion_vectors.reading.text_checks import (
    CheckError,
    agreement_claims,
    aurocs_many,
    check_label_map,
    corpora_agreement,
    emotion_claims,
    emotion_label_check,
    mannwhitney_auroc,
    nrc_scores,
    paired_auroc_difference,
    parse_labels,
    shuffled_means,
    valence_auroc_claim,
)

FIXTURE = Path(__file__).parent / "data" / "emotion_labelled.tsv"
LABEL_MAP = {"fear": {"emotions": ["afraid", "scared"], "nrc": "fear"},
             "joy": {"emotions": ["happy"], "nrc": "joy"},
             "sadness": {"emotions": ["sad"], "nrc": "sadness"},
             "surprise": {"emotions": ["surprised"], "nrc": "surprise"},
             "gratitude": {"emotions": ["grateful"], "nrc": None}}


def test_mannwhitney_auroc_matches_sklearn_and_scipy():
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = np.round(rng.standard_normal(200) + 0.4 * y, 1)  # ties
    r = mannwhitney_auroc(y, s)
    assert r["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert r["p_mannwhitney"] == pytest.approx(mannwhitneyu(s[y], s[~y], alternative="greater").pvalue)
    assert r["n_positive"] == y.sum()
    s2 = s.copy()
    s2[:5] = np.nan
    assert mannwhitney_auroc(y, s2)["n_positive"] + mannwhitney_auroc(y, s2)["n_negative"] == 195
    assert mannwhitney_auroc(np.zeros(4, bool), np.arange(4.0))["auroc"] is None
    many = aurocs_many(y, np.stack([s, -s, np.where(np.arange(200) == 0, np.nan, s)]))
    assert many[0] == pytest.approx(roc_auc_score(y, s)) and many[1] == pytest.approx(1 - many[0])
    assert np.isnan(many[2])


def test_paired_difference():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(60, bool), np.zeros(60, bool)]
    good = y + rng.standard_normal(120) * 0.5
    bad = rng.standard_normal(120)
    same = paired_auroc_difference(y, good, good, n_boot=100)
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0]
    d = paired_auroc_difference(y, good, bad, n_boot=300)
    assert d["difference"] > 0.3 and d["ci95"][0] > 0 and d["n"] == 120


def test_nrc_lexicon_on_the_fixture():
    lex = load_nrc()
    assert "fear" in lex["terror"] and "joy" in lex["happy"]
    recs = load_file(FIXTURE, "text", label_column="labels")
    texts = [r["text"] for r in recs]
    fear = np.array(["fear" in r["label"] for r in recs])
    sc = nrc_scores(texts, "fear", lex)
    assert sc.shape == (48,) and np.isfinite(sc).all() and (sc >= 0).all()
    assert sc[fear].mean() > sc[~fear].mean()
    assert list(nrc_scores(["", None, "terror terror"], "fear", lex)[[0, 2]]) == [0.0, 1.0]
    assert np.isnan(nrc_scores([None], "fear", lex)[0])
    with pytest.raises(CheckError, match="NRC category"):
        nrc_scores(texts, "fright", lex)


def test_label_maps_and_labels():
    assert check_label_map(LABEL_MAP)["gratitude"] == {"emotions": ["grateful"], "nrc": None}
    with pytest.raises(CheckError, match="'afraid' is under both 'fear' and 'nervousness'"):
        check_label_map({"fear": {"emotions": ["afraid"]}, "nervousness": {"emotions": ["afraid"]}})
    with pytest.raises(CheckError, match="give emotions"):
        check_label_map({"fear": ["afraid"]})
    with pytest.raises(CheckError, match="not an NRC category"):
        check_label_map({"fear": {"emotions": ["afraid"], "nrc": "scary"}})
    got = parse_labels(["fear, joy", None, float("nan"), "", ["sadness"], " anger "], separator=",")
    assert got == [frozenset({"fear", "joy"}), None, None, None, frozenset({"sadness"}), frozenset({"anger"})]
    assert parse_labels(["fear, joy"]) == [frozenset({"fear, joy"})]


def _fixture_scores(signal: float, seed: int = 0) -> pd.DataFrame:
    """The fixture as a scores table: each emotion column = signal x (text has the emotion's
    label) + noise; labels as the loaders write them."""
    rng = np.random.default_rng(seed)
    recs = load_file(FIXTURE, "text", label_column="labels")
    labels = parse_labels([r["label"] for r in recs], ",")
    cols = {}
    for lab, spec in LABEL_MAP.items():
        y = np.array([lab in s for s in labels], float)
        for e in spec["emotions"]:
            if e != "grateful":  # not a run emotion here
                cols[e] = signal * y + rng.standard_normal(len(recs))
    cols["calm"] = rng.standard_normal(len(recs))
    df = pd.DataFrame(cols)
    df["valence"] = rng.standard_normal(len(recs))
    df["label"] = [r["label"] for r in recs]
    df["text"] = [r["text"] for r in recs]
    return df


def test_emotion_label_check_and_claims():
    from sklearn.metrics import roc_auc_score

    df = _fixture_scores(3.0)
    K = 20
    rng = np.random.default_rng(9)
    null = {e: rng.standard_normal((K, len(df))) for e in ["afraid", "scared", "happy", "sad", "surprised", "calm"]}
    chk = emotion_label_check(df, LABEL_MAP, separator=",", null_scores=null, n_boot=200, seed=0)
    rows = {r["emotion"]: r for r in chk["rows"]}
    # grateful is not a run emotion; surprise has one text: skipped, with the reason
    assert [r["emotion"] for r in chk["rows"]] == ["afraid", "scared", "happy", "sad", "surprised"]
    assert rows.pop("surprised")["skipped"] == "fewer than 5 texts with label 'surprise' or without it"
    assert chk["n_texts"] == 48 and chk["n_shuffles"] == K
    fear = np.array(["fear" in str(x).split(",") for x in df["label"]])
    assert rows["afraid"]["n_positive"] == 12 and rows["afraid"]["label"] == "fear"
    assert rows["afraid"]["auroc"] == pytest.approx(roc_auc_score(fear, df["afraid"]))
    assert rows["afraid"]["ci_low"] < rows["afraid"]["auroc"] < rows["afraid"]["ci_high"]
    assert rows["afraid"]["nrc_category"] == "fear" and rows["afraid"]["nrc_auroc"] > 0.5
    assert rows["afraid"]["p_shuffled"] == pytest.approx(
        mc_p(rows["afraid"]["auroc"], aurocs_many(fear, null["afraid"])))
    assert rows["afraid"]["p_shuffled"] == pytest.approx(1 / 21)
    assert all(r["p_shuffled_holm"] >= r["p_shuffled"] for r in rows.values())
    fam = chk["family"]
    assert fam["n_emotions"] == 4 and fam["mean_auroc"] == pytest.approx(np.mean([r["auroc"] for r in rows.values()]))
    assert fam["p_shuffled"] == pytest.approx(1 / 21) and fam["ci95"][0] < fam["mean_auroc"]

    claims = {c.id: c for c in emotion_claims("fixture", chk)}
    assert set(claims) == {"scoring.fixture.emotion_auroc"} | {f"scoring.fixture.emotion_auroc.{e}" for e in rows}
    assert claims["scoring.fixture.emotion_auroc"].verdict == EFFECT  # one exact test, p = 1/21
    per = claims["scoring.fixture.emotion_auroc.afraid"]
    # 20 shuffles cannot survive Holm over 4 emotions: no p, and the note says what is needed
    assert per.verdict == NOT_TESTABLE and per.p is None and "80 draws" in per.note
    assert per.family == 4 and per.extra["nrc_auroc"] == rows["afraid"]["nrc_auroc"]

    # With enough shuffles, the per-emotion claims are tested (and survive Holm here).
    null_big = {e: rng.standard_normal((200, len(df))) for e in null}
    chk = emotion_label_check(df, LABEL_MAP, separator=",", null_scores=null_big, n_boot=50)
    assert all(c.verdict == EFFECT for c in emotion_claims("fixture", chk))

    # Vectors with no signal: no effect anywhere.
    flat = _fixture_scores(0.0, seed=4)
    chk = emotion_label_check(flat, LABEL_MAP, separator=",", null_scores=null_big, n_boot=50)
    assert all(c.verdict == NO_EFFECT for c in emotion_claims("fixture", chk))
    # No shuffled vectors: nothing to test against.
    chk = emotion_label_check(df, LABEL_MAP, separator=",", n_boot=50)
    assert all(c.verdict == NOT_TESTABLE for c in emotion_claims("fixture", chk))


def test_emotion_label_check_skips_and_errors():
    df = _fixture_scores(1.0)
    chk = emotion_label_check(df, LABEL_MAP, separator=",", n_boot=0, min_positive=13)
    assert all(r["skipped"].startswith("fewer than 13") for r in chk["rows"])
    claims = emotion_claims("fixture", chk)
    assert len(claims) == 1 and claims[0].verdict == NOT_TESTABLE and "enough" in claims[0].note
    df.loc[0, "label"] = None
    df.loc[1, "afraid"] = np.nan
    chk = emotion_label_check(df, LABEL_MAP, separator=",", n_boot=0)
    assert chk["n_texts"] == 46 and chk["n_excluded_no_label"] == 1 and chk["n_excluded_not_scored"] == 1
    with pytest.raises(CheckError, match="label column 'lab'"):
        emotion_label_check(df, LABEL_MAP, label_column="lab")
    with pytest.raises(CheckError, match="none of the mapped emotions"):
        emotion_label_check(df, {"pride": {"emotions": ["proud"]}})
    with pytest.raises(CheckError, match="numbers of shuffles"):
        emotion_label_check(df, LABEL_MAP, null_scores={"afraid": np.zeros((3, 48)), "sad": np.zeros((4, 48))})


def test_shuffled_means_is_the_ranking_formula():
    rng = np.random.default_rng(2)
    raw = rng.standard_normal((3, 50)) + 2
    neutral = np.array([0.5, 1.0, -1.0])
    got = shuffled_means(raw, neutral)
    np.testing.assert_allclose(got, (raw.mean(1) - neutral) / raw.std(1))


def _agreement_case(extra_signal: float, K: int = 20, E: int = 24, seed: int = 0):
    """Two corpora whose means share an offset seen by every set of directions; the real
    vectors (set 0) also share ``extra_signal`` x a common emotion profile."""
    rng = np.random.default_rng(seed)
    d = 30
    offset = rng.standard_normal(d) * 3
    sets = rng.standard_normal((K + 1, E, d))
    profile = rng.standard_normal(E)
    means = {}
    for c in ("a", "b"):
        corpus_mean = offset + rng.standard_normal(d) * 2.0
        m = sets @ corpus_mean  # (K+1, E)
        m[0] += extra_signal * profile
        means[c] = m
    return {c: m[0] for c, m in means.items()}, {c: m[1:] for c, m in means.items()}


def test_agreement_from_a_shared_offset_is_no_effect():
    real, null = _agreement_case(0.0)
    res = corpora_agreement(real, null, n_boot=200)
    pr = res["pairs"][0]
    assert pr["spearman"] > 0.6 and pr["p_naive"] < 1e-3  # the naive test "finds" agreement
    assert pr["null_median"] > 0.6 and pr["p_shuffled"] > 0.05
    (claim,) = agreement_claims(res)
    assert claim.id == "scoring.corpora_agreement" and claim.verdict == NO_EFFECT
    assert claim.n_null == 20 and claim.extra["p_naive_ignoring_offset"] == pr["p_naive"]


def test_agreement_beyond_the_shuffles_is_an_effect():
    real, null = _agreement_case(60.0)
    res = corpora_agreement(real, null, n_boot=200)
    assert res["pairs"][0]["p_shuffled"] == pytest.approx(1 / 21)
    (claim,) = agreement_claims(res)
    assert claim.verdict == EFFECT and claim.interval[0] <= claim.statistic <= claim.interval[1]


def test_agreement_with_three_corpora_and_without_null():
    rng = np.random.default_rng(5)
    real = {c: rng.standard_normal(10) for c in "xyz"}
    null = {c: rng.standard_normal((30, 10)) for c in "xyz"}
    res = corpora_agreement(real, null, n_boot=50)
    assert len(res["pairs"]) == 3 and res["family"]["n_pairs"] == 3
    null_mean = np.mean([p["null"] for p in res["pairs"]], axis=0)
    assert res["family"]["p_shuffled"] == pytest.approx(mc_p(res["family"]["mean_spearman"], null_mean))
    claims = agreement_claims(res)
    assert [c.id for c in claims] == ["scoring.corpora_agreement", "scoring.corpora_agreement.x.y",
                                      "scoring.corpora_agreement.x.z", "scoring.corpora_agreement.y.z"]
    assert all(c.family == 3 for c in claims[1:])
    res = corpora_agreement(real)
    assert all(c.verdict == NOT_TESTABLE for c in agreement_claims(res))
    one = agreement_claims(corpora_agreement({"x": real["x"]}))
    assert one[0].verdict == NOT_TESTABLE and "fewer than two" in one[0].note
    with pytest.raises(CheckError, match="same number"):
        corpora_agreement(real, {"x": null["x"], "y": null["y"][:5], "z": null["z"]})


def test_valence_auroc_claim_is_gated_by_the_pc1_check():
    check = {"n_positive": 40, "n_negative": 60,
             "scorers": {"valence": {"auroc": 0.7, "ci95": [0.6, 0.8], "p_mannwhitney": 1e-4}},
             "same_texts": {"n": 95, "scorers": {"vader": {"auroc": 0.75}}},
             "valence_direction_check": {"is_valence": True, "note": "PC1 is valence"}}
    c = valence_auroc_claim("tweets", check)
    assert c.id == "scoring.tweets.valence_auroc" and c.verdict == EFFECT and c.p == 1e-4
    assert c.interval == [0.6, 0.8] and "VADER reaches 0.750" in c.note
    check["valence_direction_check"] = {"is_valence": False, "note": "PC1 of layer 19 is not shown to be valence"}
    c = valence_auroc_claim("tweets", check)
    assert c.verdict == NOT_TESTABLE and c.p is None and c.note.startswith("PC1 of layer 19 is not shown")
    assert c.statistic == 0.7  # the AUROC is still reported
    del check["valence_direction_check"]
    assert valence_auroc_claim("tweets", check).verdict == NOT_TESTABLE
    check["valence_direction_check"] = {"is_valence": True}
    check["scorers"]["valence"]["p_mannwhitney"] = 0.4
    assert valence_auroc_claim("tweets", check).verdict == NO_EFFECT
