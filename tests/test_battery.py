"""The validation battery (emotion_vectors.reading.battery): data files, scores with known answers, the
random-direction null, threshold evaluation, and one small run on the real model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from emotion_vectors.reading import battery as B
from emotion_vectors.core.claims import binomial_interval, holm
from emotion_vectors.corpus.leak import find_leaks

from conftest import REPO_ROOT

DEFAULT_EMOTIONS = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())["emotions"]


# --- data files ------------------------------------------------------------------------------


def test_data_files_load_and_cover_the_default_emotions():
    items = B.load_implicit()
    templates = B.load_intensity()
    thr = B.load_thresholds()
    counts = pd.Series([x["emotion"] for x in items]).value_counts()
    for e in DEFAULT_EMOTIONS:
        assert counts.get(e, 0) >= 2, e
    assert len(items) >= 2 * len(DEFAULT_EMOTIONS)
    assert all(x["emotion"] in DEFAULT_EMOTIONS for x in items)
    assert len(templates) >= 6
    assert all(4 <= len(t["levels"]) <= 5 for t in templates)
    assert all(t["emotion"] in DEFAULT_EMOTIONS for t in templates)
    assert str(thr["written"]) == "2026-11-27"
    assert set(thr["checks"]) <= set(B.CHECKS)
    for x in items:
        assert 1 <= x["text"].count(".") + x["text"].count("!") + x["text"].count("?") <= 4


def test_no_battery_text_names_its_own_emotion():
    emotions = B.load_emotions()
    assert len(emotions) == 171
    items, templates = B.load_implicit(), B.load_intensity()
    for x in items:
        assert find_leaks(x["text"], x["emotion"]) == [], x["id"]
    for r in B.intensity_rows(templates):
        assert find_leaks(r["text"], r["emotion"]) == [], r["id"]
    report = B.leak_report(items, templates, emotions)
    assert report["own"] == []
    # Other emotion words are reported, not forbidden; today there are none.
    assert report["other"] == []


def test_leak_report_flags_own_and_other_words():
    items = [{"id": "a", "emotion": "sad", "text": "She was sad and lonely."}]
    rep = B.leak_report(items, [], ["sad", "lonely", "happy"])
    assert rep["own"][0]["named"] == {"sad": ["sad"]}
    assert rep["other"][0]["named"] == {"lonely": ["lonely"]}


# --- constructed scores ----------------------------------------------------------------------

EMOS = ["happy", "sad", "afraid", "calm", "angry", "proud"]
CLUSTERS = {"happy": "pos", "calm": "pos", "proud": "pos", "sad": "neg", "afraid": "neg",
            "angry": "neg"}


def _items(per: int = 4):
    return [{"id": f"{e}-{k}", "emotion": e, "text": "x"} for e in EMOS for k in range(per)]


def _table(items, scores):
    df = pd.DataFrame(scores, columns=EMOS)
    df.insert(0, "id", [x["id"] for x in items])
    return df


def test_perfect_scores_hit_every_item():
    items = _items()
    s = np.zeros((len(items), len(EMOS)))
    for i, x in enumerate(items):
        s[i, EMOS.index(x["emotion"])] = 3.0
    # shuffled row order: rows are matched by id
    df = _table(items, s).sample(frac=1.0, random_state=0)
    r = B.implicit_scenarios(df, items, EMOS, CLUSTERS)
    assert r["top1"]["rate"] == 1.0 and r["top3"]["rate"] == 1.0 and r["median_rank"] == 1.0
    assert r["top1"]["chance"] == pytest.approx(1 / 6) and r["top3"]["chance"] == pytest.approx(0.5)
    assert r["top1"]["times_chance"] == pytest.approx(6.0)
    lo, hi = r["top1"]["ci95"]
    assert 0.8 < lo < 1.0 and hi == 1.0
    assert r["clusters"]["hit_rate"] == 1.0
    assert r["clusters"]["chance"] == pytest.approx(0.5)
    m = np.array(r["clusters"]["matrix"])
    assert m.sum() == len(items) and np.trace(m) == len(items)
    assert r["clusters"]["labels"] == ["pos", "neg"]


def test_known_wrong_answers_and_ties():
    items = _items(1)
    s = np.zeros((len(items), len(EMOS)))
    for i, x in enumerate(items):  # target always last, "sad" always first (but for sad-0)
        s[i] = np.arange(len(EMOS), 0, -1.0)
        s[i, EMOS.index(x["emotion"])] = -1.0
    s[:, EMOS.index("sad")] = 99.0
    r = B.implicit_scenarios(_table(items, s), items, EMOS, CLUSTERS)
    ranks = {x["id"]: x["rank"] for x in r["items"]}
    assert ranks["happy-0"] == 6.0 and ranks["afraid-0"] == 6.0 and ranks["sad-0"] == 1.0
    assert r["top1"]["hits"] == 1 and r["top3"]["hits"] == 1
    # only negative-cluster targets hit their cluster ("sad" is negative)
    assert r["clusters"]["hit_rate"] == pytest.approx(0.5)
    # ties count half
    assert B.target_ranks(np.array([[1.0, 1.0, 0.0]]), np.array([0]))[0] == 1.5


def test_shuffled_scores_are_near_chance():
    rng = np.random.default_rng(3)
    emos = [f"e{i}" for i in range(24)]
    items = [{"id": str(i), "emotion": emos[i % 24], "text": "x"} for i in range(2400)]
    df = pd.DataFrame(rng.standard_normal((2400, 24)), columns=emos)
    df.insert(0, "id", [x["id"] for x in items])
    r = B.implicit_scenarios(df, items, emos)
    assert r["top1"]["ci95"][0] < 1 / 24 < r["top1"]["ci95"][1]
    assert r["top3"]["ci95"][0] < 3 / 24 < r["top3"]["ci95"][1]
    assert abs(r["median_rank"] - 12.5) <= 1.5
    assert r["clusters"]["source"] == "none" and len(r["clusters"]["labels"]) == 24


def test_implicit_rejects_unknown_emotion_and_missing_rows():
    items = [{"id": "a", "emotion": "bored", "text": "x"}]
    with pytest.raises(B.BatteryError, match="not scored"):
        B.implicit_scenarios(_table(_items(1), np.zeros((6, 6))), items, EMOS)
    items = [{"id": "zz", "emotion": "sad", "text": "x"}]
    with pytest.raises(B.BatteryError, match="no row"):
        B.implicit_scenarios(_table(_items(1), np.zeros((6, 6))), items, EMOS)


TEMPLATES = [
    {"id": "t1", "emotion": "sad", "levels": ["a", "b", "c", "d", "e"]},
    {"id": "t2", "emotion": "afraid", "levels": ["a", "b", "c", "d"]},
    {"id": "t3", "emotion": "proud", "levels": ["a", "b", "c", "d"]},
]


def _intensity_table(values: dict[str, list[float]]):
    rows = B.intensity_rows(TEMPLATES)
    df = pd.DataFrame(0.0, index=range(len(rows)), columns=EMOS)
    df.insert(0, "id", [r["id"] for r in rows])
    for i, r in enumerate(rows):
        df.loc[i, r["emotion"]] = values[r["template"]][r["level"] - 1]
    return df


def test_intensity_spearman():
    df = _intensity_table({"t1": [0.1, 0.2, 0.5, 1.0, 4.0], "t2": [-1, 0, 2, 3],
                           "t3": [3, 2, 1, 0]})
    r = B.intensity(df, TEMPLATES, EMOS)
    rho = {t["template"]: t["spearman"] for t in r["templates"]}
    assert rho["t1"] == pytest.approx(1.0) and rho["t2"] == pytest.approx(1.0)
    assert rho["t3"] == pytest.approx(-1.0)
    assert r["median_spearman"] == pytest.approx(1.0)
    assert r["n_positive"] == 2 and r["n_monotone"] == 2
    assert r["scores"]["intensity_median_spearman"] == pytest.approx(1.0)


# --- logit lens -------------------------------------------------------------------------------


def test_logit_lens_self_recognition_uses_word_forms():
    top = {"happy": ["Ġthe", "Ġhappiest", "x"], "sad": ["▁Sad", "y"], "afraid": ["fear"],
           "worn out": ["Ġworn"], "bored": ["Ġboring"], "calm": []}
    r = B.logit_lens_self_recognition(top, list(top), top_k=20)
    assert r["recognised"] == {"bored": ["Ġboring"], "happy": ["Ġhappiest"], "sad": ["▁Sad"],
                               "worn out": ["Ġworn"]}
    assert r["rate"] == pytest.approx(4 / 6) and r["no_tokens"] == ["calm"]
    # top_k cuts the list
    assert B.logit_lens_self_recognition(top, ["happy"], top_k=1)["n_recognised"] == 0


def test_logit_lens_from_tsv(tmp_path):
    rows = [(19, "sad", "promoted", 1, "Ġsadly", "sadly"), (19, "sad", "suppressed", 1, "Ġhappy",
            "happy"), (19, "happy", "promoted", 1, "Ġrain", "rain"),
            (14, "happy", "promoted", 1, "Ġhappy", "happy")]
    df = pd.DataFrame(rows, columns=["layer", "emotion", "direction", "rank", "token", "text"])
    path = tmp_path / "lens.tsv"
    df.to_csv(path, sep="\t", index=False)
    r = B.logit_lens_self_recognition(path, ["sad", "happy"], layer=19)
    assert r["n_recognised"] == 1 and list(r["recognised"]) == ["sad"]


# --- null -------------------------------------------------------------------------------------


def test_random_direction_null_shape_and_seeds():
    rng = np.random.default_rng(0)
    items = _items(2)
    x_imp = rng.standard_normal((len(items), 16))
    x_int = rng.standard_normal((13, 16))

    def fake_lens(dirs):
        return [["Ġhappy" if v[0] > 0 else "x"] for v in dirs]

    kw = dict(n_draws=40, lens_fn=fake_lens, n_draws_lens=5, chunk=7)
    a = B.random_direction_null(x_imp, items, x_int, TEMPLATES, EMOS, CLUSTERS, seed=1, **kw)
    b = B.random_direction_null(x_imp, items, x_int, TEMPLATES, EMOS, CLUSTERS, seed=1, **kw)
    c = B.random_direction_null(x_imp, items, x_int, TEMPLATES, EMOS, CLUSTERS, seed=2, **kw)
    assert set(a["values"]) == set(B.CHECKS)
    for k, v in a["values"].items():
        assert v.shape == ((5,) if k == "logit_lens_self_recognition" else (40,))
        np.testing.assert_array_equal(v, b["values"][k])
    assert not np.array_equal(a["values"]["implicit_median_rank"],
                              c["values"]["implicit_median_rank"])
    # chunking does not change the draws
    d = B.random_direction_null(x_imp, items, x_int, TEMPLATES, EMOS, CLUSTERS, seed=1,
                                **{**kw, "chunk": 40})
    np.testing.assert_array_equal(a["values"]["implicit_top1_hit_rate"],
                                  d["values"]["implicit_top1_hit_rate"])
    s = a["summary"]["implicit_median_rank"]
    assert s["quantile"] == pytest.approx(0.05)
    assert s["bound"] <= np.median(a["values"]["implicit_median_rank"])
    assert a["summary"]["implicit_top3_hit_rate"]["bound"] >= np.median(
        a["values"]["implicit_top3_hit_rate"])
    # random directions are near chance on average
    assert abs(a["values"]["implicit_top1_hit_rate"].mean() - 1 / 6) < 0.08


def test_vectorised_cores_match_scipy_and_the_single_draw_path():
    """The null's vectorised scores equal scipy's Spearman / Pearson (ties, a constant template,
    templates of different lengths) and the one-matrix functions the observed values use."""
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(0)
    z = rng.standard_normal((7, 14, 3))
    z[2, 0:5, 0] = 1.0  # a constant template: left out of the median
    z[3, 5:9, 1] = [1, 1, 2, 2]  # ties
    groups = [(np.arange(0, 5), 0), (np.arange(5, 9), 1), (np.arange(9, 14), 2)]
    out = B._intensity_many(z, groups)
    for j in range(7):
        rs = [spearmanr(np.arange(len(i)), z[j, i, c]).statistic if np.ptp(z[j, i, c]) > 0 else np.nan
              for i, c in groups]
        ps = [pearsonr(np.arange(len(i)), z[j, i, c]).statistic if np.ptp(z[j, i, c]) > 0 else np.nan
              for i, c in groups]
        assert out["intensity_median_spearman"][j] == pytest.approx(np.nanmedian(rs))
        assert out["intensity_mean_pearson"][j] == pytest.approx(np.nanmean(ps))
        assert B._intensity_core(z[j], groups) == pytest.approx(np.nanmedian(rs))
    items = _items(2)
    target = np.array([EMOS.index(x["emotion"]) for x in items])
    cl, _ = B._cluster_index(EMOS, CLUSTERS)
    zi = rng.standard_normal((5, len(items), len(EMOS)))
    many = B._implicit_many(zi, target, cl)
    for j in range(5):
        one = B._implicit_core(zi[j], target, cl)
        assert {k: many[k][j] for k in one} == pytest.approx(one)
        ranks = B.target_ranks(zi[j], target)
        assert one["implicit_median_rank"] == np.median(ranks)
        assert many["implicit_mean_target_z"][j] == pytest.approx(zi[j][np.arange(len(items)), target].mean())


def test_lex_p_breaks_ties_and_counts_them_without_a_tiebreaker():
    null = np.array([0.1, 0.2, 0.2, 0.2, 0.3])
    tb = np.array([0.0, -1.0, 0.5, 2.0, 0.0])
    # without a tie-breaker the three ties count against the observed 0.2: (1 + 4) / 6
    assert B.lex_p(0.2, null, "higher") == pytest.approx(5 / 6)
    # with one, only the tied draws with a tie-breaker >= 0.5 count: 0.2@0.5, 0.2@2.0 and 0.3
    assert B.lex_p(0.2, null, "higher", 0.5, tb) == pytest.approx(4 / 6)
    # lower is better (median rank): a draw counts when it is lower, or tied with a tie-breaker at least as high
    assert B.lex_p(0.2, null, "lower", 0.5, tb) == pytest.approx((1 + 1 + 2) / 6)
    assert np.isnan(B.lex_p(float("nan"), null, "higher")) and np.isnan(B.lex_p(0.2, np.array([np.nan]), "higher", 0, [0]))


def test_shuffled_null_is_exchangeable_with_the_real_vectors():
    """The real set goes through the same function as every shuffle: a 'shuffle' equal to the real
    vectors ties it exactly; shuffles that read the texts perfectly beat it."""
    rng = np.random.default_rng(4)
    items = _items(2)
    x_imp = rng.standard_normal((len(items), 16))
    x_int = rng.standard_normal((13, 16))
    real = B.random_unit_directions(rng, len(EMOS), 16)
    shuf = np.stack([real, *(B.random_unit_directions(rng, len(EMOS), 16) for _ in range(9))])
    res = B.shuffled_null(x_imp, items, x_int, TEMPLATES, EMOS, CLUSTERS, real, shuf)
    assert res["n_shuffles"] == 10
    for check in ("implicit_top1_hit_rate", "intensity_median_spearman"):
        assert res["values"][check][0] == res["observed"][check]
    tb = res["tiebreak"]["implicit_mean_target_z"]
    assert tb[0] == res["observed"]["implicit_mean_target_z"]
    with pytest.raises(B.BatteryError, match="do not match"):
        B.shuffled_null(x_imp, items, x_int, TEMPLATES, EMOS, CLUSTERS, real, shuf[:, :3])


def test_zscore_projections_match_definition():
    rng = np.random.default_rng(1)
    x, u = rng.standard_normal((9, 5)), rng.standard_normal((3, 5))
    z = B.zscore_projections(x, u)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-12)


# --- evaluate ---------------------------------------------------------------------------------


def _results(top1=0.5, top3=0.8, median=2.0, cluster=0.9, rho=0.7, lens=0.3, with_null=True, n_null=1001):
    e = 24
    res = {
        "n_emotions": e,
        "implicit": {"n_emotions": e, "top1": {"chance": 1 / e}, "top3": {"chance": 3 / e},
                     "clusters": {"chance": 0.25},
                     "scores": {"implicit_top1_hit_rate": top1, "implicit_top3_hit_rate": top3,
                                "implicit_median_rank": median,
                                "implicit_cluster_hit_rate": cluster}},
        "intensity": {"scores": {"intensity_median_spearman": rho}},
        "lens": {"scores": {"logit_lens_self_recognition": lens}},
    }
    if with_null:
        vals = {"implicit_top1_hit_rate": np.linspace(0, 0.1, n_null),
                "implicit_top3_hit_rate": np.linspace(0, 0.3, n_null),
                "implicit_median_rank": np.linspace(8, 16, n_null),
                "implicit_cluster_hit_rate": np.linspace(0.1, 0.4, n_null),
                "intensity_median_spearman": np.linspace(-0.8, 0.8, n_null),
                "logit_lens_self_recognition": np.zeros(n_null)}
        res["null"] = {"values": vals, "summary": {k: B.null_summary(v, B.CHECKS[k])
                                                   for k, v in vals.items()}}
    return res


def test_evaluate_against_thresholds_and_null():
    thr = B.load_thresholds()
    rows = {r["check"]: r for r in B.evaluate(_results(), thr)}
    assert set(rows) == set(thr["checks"])
    assert rows["implicit_top1_hit_rate"]["threshold"] == pytest.approx(2 / 24)
    assert rows["implicit_top3_hit_rate"]["threshold"] == pytest.approx(6 / 24)
    assert rows["implicit_median_rank"]["threshold"] == pytest.approx(0.3333 * 24)
    assert rows["implicit_cluster_hit_rate"]["threshold"] == pytest.approx(0.375)
    assert rows["implicit_median_rank"]["null_p95"] == pytest.approx(8.4)
    assert rows["intensity_median_spearman"]["null_p95"] == pytest.approx(0.72)
    assert all(r["meets_threshold"] for r in rows.values())
    # rho 0.7 meets 0.5 but sits inside the null (p = 1 + #{>= 0.7} over 1002): no effect, fails
    assert rows["intensity_median_spearman"]["beats_null"] is False
    n_ge = int(np.sum(np.linspace(-0.8, 0.8, 1001) >= 0.7))
    assert rows["intensity_median_spearman"]["p"] == pytest.approx((1 + n_ge) / 1002)
    assert rows["intensity_median_spearman"]["verdict"] == "no effect"
    assert rows["intensity_median_spearman"]["passed"] is False
    # beyond every null draw: p = 1/1002, Holm over the six checks (five tied at the minimum)
    assert rows["implicit_top1_hit_rate"]["null_p"] == pytest.approx(1 / 1002)
    assert rows["implicit_top1_hit_rate"]["p_holm"] == pytest.approx(6 / 1002)
    assert rows["implicit_top1_hit_rate"]["passed"] is True
    assert rows["implicit_median_rank"]["passed"] is True
    # without shuffled-label vectors the claim says it used the weaker null
    assert rows["implicit_top1_hit_rate"]["null_used"].startswith("random unit directions")

    bad = {r["check"]: r for r in B.evaluate(_results(top1=0.05, median=9.0, lens=0.2), thr)}
    assert bad["implicit_top1_hit_rate"]["meets_threshold"] is False  # 0.05 < 2/24
    assert bad["implicit_median_rank"]["meets_threshold"] is False  # 9 > 8
    assert bad["logit_lens_self_recognition"]["passed"] is False

    nonull = B.evaluate(_results(with_null=False), thr)
    assert all(r["passed"] is None and r["null_p95"] is None and r["verdict"] == "not testable" for r in nonull)

    # a null too small for Holm over six checks (101 draws: 1/102 > 0.05/6): no p, not testable;
    # a check that misses its threshold still fails
    small_rows, small_claims = B.evaluate_checks(_results(top1=0.05, n_null=101), thr)
    small = {r["check"]: r for r in small_rows}
    assert all(r["p"] is None and r["verdict"] == "not testable" for r in small_rows)
    assert small["implicit_top3_hit_rate"]["passed"] is None
    assert small["implicit_top1_hit_rate"]["passed"] is False
    assert all("at least 120 draws are needed" in c.note for c in small_claims)

    with pytest.raises(B.BatteryError, match="unknown check"):
        B.evaluate(_results(), {"checks": {"nope": {"min": 1}}})


def test_battery_claims_ids_intervals_and_shuffled_null():
    thr = B.load_thresholds()
    res = _results()
    res["implicit"].update(n_scored=72, top1={"chance": 1 / 24, "hits": 36}, top3={"chance": 3 / 24, "hits": 58})
    rng = np.random.default_rng(0)
    k = 199
    res["shuffled"] = {"n_shuffles": k,
                       "observed": {c: v for c, v in B.observed_scores(res).items()},
                       "values": {c: rng.uniform(0, 1, k) if B.CHECKS[c] == "higher" else rng.uniform(1, 30, k)
                                  for c in B.CHECKS},
                       "tiebreak": {}}
    res["shuffled"]["values"]["implicit_top1_hit_rate"][:] = 0.9  # every shuffle beats 0.5
    res["shuffled"]["values"]["implicit_top3_hit_rate"] = rng.uniform(0, 0.5, k)  # none reaches 0.8
    rows, claims = B.evaluate_checks(res, thr)
    assert [c.id for c in claims] == [f"battery.{c}" for c in thr["checks"]]
    by = {c.id: c for c in claims}
    top1 = by["battery.implicit_top1_hit_rate"]
    assert top1.p == pytest.approx(1.0) and top1.verdict == "no effect" and top1.extra["passed"] is False
    assert top1.interval == pytest.approx(list(binomial_interval(36, 72)))
    assert "shuffled-label vectors (199 shuffles" in top1.extra["null_used"] and top1.family == 6
    assert top1.extra["random_direction_p"] == pytest.approx(1 / 1002)  # the weaker null would have passed it
    top3 = by["battery.implicit_top3_hit_rate"]
    assert top3.p == pytest.approx(1 / 200)
    np.testing.assert_allclose([c.p_adjusted for c in claims], holm([c.p for c in claims]))
    assert by["battery.intensity_median_spearman"].interval is None
    json.dumps([c.to_dict() for c in claims])


def test_clusters_from_tsv(tmp_path):
    df = pd.DataFrame({"layer": [19, 19, 19, 19], "cut": ["fixed", "fixed", "silhouette",
                                                            "silhouette"],
                       "k": [2, 2, 3, 3], "emotion": ["sad", "happy", "sad", "happy"],
                       "cluster": [1, 2, 5, 5]})
    path = tmp_path / "c.tsv"
    df.to_csv(path, sep="\t", index=False)
    assert B.clusters_from_tsv(path, 19) == {"sad": "1", "happy": "2"}
    with pytest.raises(B.BatteryError):
        B.clusters_from_tsv(path, 4)


# --- real model -------------------------------------------------------------------------------

BUILD = {
    "happy": ["We laughed all day at the fair and ate ice cream in the sun.",
              "I got the job and danced around the kitchen with joy."],
    "sad": ["My grandmother died last night and I cried for hours.",
            "The house is empty since my dog passed away."],
    "afraid": ["Someone is trying to open my door in the middle of the night.",
               "The car skidded toward the cliff edge and I screamed."],
    "proud": ["My daughter graduated first in her class today.",
              "I finished my first marathon after a year of training."],
}


@pytest.mark.slow
def test_run_battery_on_a_tiny_real_store(default_model, tmp_path):
    from emotion_vectors.extraction.extract import extract_pooled
    from emotion_vectors.vectors.store_layout import write_store

    model, tok = default_model
    layer = 19
    means = {}
    for e, texts in BUILD.items():
        res = extract_pooled(model, tok, texts, None, [layer], pool_start=1, batch_size=8)
        means[e] = res.pooled[:, 0, :].astype(np.float64).mean(0)
    grand = np.mean(list(means.values()), axis=0)
    vecs = np.stack([means[e] - grand for e in BUILD])[:, None, :]
    store = write_store(tmp_path / "v.zarr", emotions=list(BUILD), layers=[layer], raw=vecs,
                        denoised=None, residual_norm=None, n_neutral_pcs_removed=None,
                        n_stories=None)
    # a shuffled-label store in the layout of vectors/shuffled.zarr: the build texts' labels
    # permuted (3 shuffles), the same mean-difference construction
    from emotion_vectors.vectors.build import shuffled_name

    acts = {e: extract_pooled(model, tok, t, None, [layer], pool_start=1, batch_size=8).pooled[:, 0, :]
            .astype(np.float64) for e, t in BUILD.items()}
    pooled = np.concatenate([acts[e] for e in BUILD])
    labels = np.repeat(np.arange(len(BUILD)), 2)
    rows, names = [], []
    for k in range(3):
        lab = np.random.default_rng(k).permutation(labels)
        m = np.stack([pooled[lab == i].mean(0) for i in range(len(BUILD))])
        rows.append(m - m.mean(0))
        names += [shuffled_name(e, k) for e in BUILD]
    shuffled = write_store(tmp_path / "shuffled.zarr", emotions=names, layers=[layer],
                           raw=np.concatenate(rows)[:, None, :], denoised=None, residual_norm=None,
                           n_neutral_pcs_removed=None, n_stories=None,
                           attrs={"source_emotions": list(BUILD), "n_shuffles": 3})
    res = B.run_battery(store, model, tok, n_draws=30, n_draws_lens=2, batch_size=16, shuffled=shuffled)
    assert res["layer"] == layer and res["n_emotions"] == 4
    imp = res["implicit"]
    assert imp["n_items"] == 12 and imp["n_scored"] == 12  # 3 items for each of the 4
    assert imp["top1"]["chance"] == pytest.approx(0.25)
    assert imp["clusters"]["source"] == "valence sign"
    assert set(imp["clusters"]["labels"]) <= {"pleasant", "unpleasant"}
    assert res["intensity"]["n_templates"] == 4  # sad, afraid, happy, proud
    assert len(res["dropped"]["items"]) == len(B.load_implicit()) - 12
    assert res["consistency_max_abs"] < 1e-3
    assert res["null"]["values"]["implicit_top1_hit_rate"].shape == (30,)
    assert res["null"]["values"]["logit_lens_self_recognition"].shape == (2,)
    assert res["lens"]["source"] == "computed" and np.isfinite(res["lens"]["scale"])
    checks = {r["check"]: r for r in res["checks"]}
    assert set(checks) == set(B.load_thresholds()["checks"])
    assert all(r["null_p95"] is not None for r in checks.values())
    # the claims use the shuffled-label null; 3 shuffles cannot reach 0.05/6: not testable, and say so
    assert res["shuffled"]["n_shuffles"] == 3 and res["shuffled"]["values"]["implicit_top1_hit_rate"].shape == (3,)
    assert [c["id"] for c in res["claims"]] == [f"battery.{c}" for c in checks]
    for c in res["claims"]:
        assert c["verdict"] == "not testable" and c["p"] is None and "at least 120 draws" in c["note"]
        assert c["extra"]["null_used"].startswith("shuffled-label vectors (3 shuffles")
    assert all(r["passed"] in (None, False) for r in checks.values())
    summary = B.summary_json(res)
    assert "values" not in summary["shuffled"] and "values" not in summary["null"]
    json.dumps(summary)
