"""Corpus diagnostics on constructed corpora whose answer is known: separable and inseparable
emotions, planted emotion and topic effects, shards and story files read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from emotion_vectors.vectors.diagnostics import (
    SEPARABILITY_COLUMNS,
    Corpus,
    between_share,
    expected_between_share,
    permute_within,
    headline,
    load_corpus,
    majority_share,
    nearest_centroid_loo,
    permutation_p,
    separability,
    separability_figure,
    variance_shares,
)
from emotion_vectors.core.stats import stratified_subsample, wilson_interval


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Small dense problems: BLAS threads only contend (the rule runs with one thread too).
    sklearn's and scipy's own BLAS/OpenMP are loaded first: the limit applies to loaded ones only."""
    import scipy.optimize  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def design(n_emotions: int, n_topics: int, per_cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced emotion x topic labels."""
    emotion = np.repeat(np.arange(n_emotions), n_topics * per_cell)
    topic = np.tile(np.repeat(np.arange(n_topics), per_cell), n_emotions)
    return emotion, topic


def corpus_of(layers: list[np.ndarray], emotion: np.ndarray, topic: np.ndarray) -> Corpus:
    acts = np.stack(layers, axis=1).astype(np.float32)
    n_e = int(emotion.max()) + 1
    return Corpus(
        activations=acts,
        emotion=emotion,
        topic=topic,
        ids=[f"s{i}" for i in range(len(emotion))],
        layers=list(range(len(layers))),
        emotions=[f"e{i}" for i in range(n_e)],
    )


def test_wilson_and_permutation_p():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and 0.15 < hi < 0.17
    assert wilson_interval(20, 20)[1] == 1.0
    assert permutation_p(0.9, np.array([0.1, 0.2, 0.3])) == pytest.approx(0.25)
    assert permutation_p(0.2, np.array([0.1, 0.2, 0.3])) == pytest.approx(0.75)
    assert np.isnan(permutation_p(0.5, np.zeros(0)))
    assert majority_share(np.array([0, 0, 1, 2])) == 0.5


def test_nearest_centroid_matches_brute_force():
    rng = np.random.default_rng(3)
    emotion, _ = design(4, 1, 5)
    for d in (30, 6):  # Gram path (n <= d) and data path (n > d)
        x = rng.normal(size=(len(emotion), d)) + rng.normal(size=(4, d))[emotion]
        xc = x - x.mean(0)
        expected = []
        for i in range(len(emotion)):
            cos = []
            for c in range(4):
                m = xc[(emotion == c) & (np.arange(len(emotion)) != i)].mean(0)
                cos.append(xc[i] @ m / np.linalg.norm(xc[i]) / np.linalg.norm(m))
            expected.append(int(np.argmax(cos)))
        assert (nearest_centroid_loo(x, emotion) == np.array(expected)).all()


def test_separable_corpus_is_found_and_inseparable_is_not():
    rng = np.random.default_rng(0)
    emotion, topic = design(6, 3, 4)  # 72 stories, 12 per emotion
    d = 80
    separable = rng.normal(size=(6, d))[emotion] * 2.0 + rng.normal(size=(len(emotion), d))
    same = rng.normal(size=(len(emotion), d))  # every emotion from one distribution
    rows, extra = separability(
        corpus_of([separable, same], emotion, topic),
        nc_permutations=99, probe_permutations=49, probe_folds=3, probe_max_dim=8, seed=1, log=lambda m: None,
    )
    by = {(r["layer"], r["method"]): r for r in rows}
    for method in ("nearest_centroid", "logistic_probe"):
        good, bad = by[(0, method)], by[(1, method)]
        assert good["accuracy"] > 0.95 and good["ci_low"] > 0.85
        assert good["p_perm"] == pytest.approx(1 / (1 + good["n_permutations"]))
        assert good["chance"] == pytest.approx(1 / 6) and good["n_stories"] == 72 and good["n_emotions"] == 6
        # Inseparable: the accuracy is within the null's spread and the test does not reject.
        assert bad["accuracy"] < 0.35 and bad["p_perm"] > 0.05
        assert bad["ci_low"] < 1 / 6 < bad["ci_high"]
        assert abs(good["null_mean"] - 1 / 6) < 0.06 and good["null_p95"] < 0.35
        assert extra[method]["best_layer"] == 0
    assert extra["nearest_centroid"]["p_perm_max_layer"] == pytest.approx(0.01)
    assert extra["logistic_probe"]["p_perm_max_layer"] == pytest.approx(0.02)
    assert extra["logistic_probe"]["n_permutations"] == 49


def test_probe_folds_do_not_depend_on_the_labels():
    """The probe's folds are stratified on the topic, so the true labelling and every shuffled
    one are scored on the same folds (the permutation null is exchangeable with the observed)."""
    from emotion_vectors.vectors.diagnostics import _Probe, probe_folds_of

    rng = np.random.default_rng(0)
    emotion, topic = design(6, 3, 4)
    x = rng.normal(size=(len(emotion), 20))
    a = _Probe(x, emotion, folds=4, C=1.0, max_dim=8, seed=3, strata=topic)
    b = _Probe(x, permute_within(emotion, topic, rng), folds=4, C=1.0, max_dim=8, seed=3, strata=topic)
    for (tr_a, te_a, za, _), (tr_b, te_b, zb, _) in zip(a.folds, b.folds):
        assert (te_a == te_b).all() and np.array_equal(za, zb)
        assert np.bincount(topic[te_a]).tolist() == [6, 6, 6]  # each fold balanced over topics
    folds = probe_folds_of(len(emotion), topic, 4, 3)
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(len(emotion)))
    one_topic = probe_folds_of(10, np.zeros(10), 5, 0)
    assert len(one_topic) == 5 and all(len(te) == 2 for _, te in one_topic)

def test_variance_shares_recover_planted_effects():
    rng = np.random.default_rng(1)
    emotion, topic = design(4, 5, 40)  # n = 800
    d, n = 12, len(emotion)
    a = rng.normal(size=(4, d))
    a = (a - a.mean(0)) / np.sqrt(((a - a.mean(0)) ** 2).sum(1).mean()) * np.sqrt(3.0)  # mean ||a_e||^2 = 3
    b = rng.normal(size=(5, d))
    b = (b - b.mean(0)) / np.sqrt(((b - b.mean(0)) ** 2).sum(1).mean()) * np.sqrt(1.0)  # mean ||b_t||^2 = 1
    noise_per_dim = 0.5  # total noise variance d * 0.5 = 6
    x = a[emotion] + b[topic] + rng.normal(scale=np.sqrt(noise_per_dim), size=(n, d))
    rows = variance_shares(corpus_of([x], emotion, topic), n_permutations=50, seed=0)
    raw = {r["factor"]: r for r in rows if r["scale"] == "raw"}
    total = 3.0 + 1.0 + d * noise_per_dim
    assert raw["emotion"]["share"] == pytest.approx(3.0 / total, abs=0.02)
    assert raw["topic"]["share"] == pytest.approx(1.0 / total, abs=0.02)
    assert raw["emotion"]["p_perm"] < 0.05 and raw["topic"]["p_perm"] < 0.05
    # No interaction planted: the interaction share is its chance level, which holds with main
    # effects (df / df_within of the within-cell variance; df / (n - 1) would not).
    assert raw["interaction"]["share"] == pytest.approx(raw["interaction"]["chance_expected"], abs=0.005)
    within = 1 - raw["emotion x topic"]["share"]
    assert raw["interaction"]["chance_expected"] == pytest.approx(12 / (800 - 20) * within)
    assert abs(raw["interaction"]["adjusted_share"]) < 0.01 and raw["interaction"]["p_perm"] > 0.05
    assert raw["interaction"]["permuted_within"] == "topic"
    # Emotions are shuffled within topics: chance = (G - 1) / (n - T) * (1 - topic share), balanced design.
    assert raw["emotion"]["chance_expected"] == pytest.approx(3 / 795 * (1 - raw["topic"]["share"]))
    assert raw["emotion"]["permuted_within"] == "topic" and raw["topic"]["permuted_within"] == "emotion"
    assert raw["emotion x topic"]["n_groups"] == 20 and raw["interaction"]["n_groups"] == 12
    std = {r["factor"]: r for r in rows if r["scale"] == "standardised"}
    assert std["emotion"]["share"] > std["topic"]["share"] > std["interaction"]["share"]


def test_variance_share_of_labels_that_carry_nothing_is_its_chance():
    rng = np.random.default_rng(2)
    emotion, topic = design(24, 3, 2)  # the default run's shape: 144 stories, 6 per emotion
    x = rng.normal(size=(len(emotion), 40))
    rows = variance_shares(corpus_of([x], emotion, topic), n_permutations=200, seed=0)
    raw = {r["factor"]: r for r in rows if r["scale"] == "raw"}
    chance = 23 / 141 * (1 - raw["topic"]["share"])  # shuffled within 3 topics
    assert raw["emotion"]["chance_expected"] == pytest.approx(chance)
    assert raw["emotion"]["null_mean"] == pytest.approx(chance, abs=0.01)  # the exact expectation
    assert raw["emotion"]["share"] == pytest.approx(chance, abs=0.05)  # positive by chance alone
    assert abs(raw["emotion"]["adjusted_share"]) < 0.06 and raw["emotion"]["p_perm"] > 0.05
    # Cells: emotions shuffled within topics, so the topic's share stays in every shuffle.
    t_share = raw["topic"]["share"]
    assert raw["emotion x topic"]["chance_expected"] == pytest.approx(t_share + 3 * 23 / 141 * (1 - t_share))
    assert raw["emotion x topic"]["null_mean"] == pytest.approx(raw["emotion x topic"]["chance_expected"], abs=0.01)
    # Interaction: df = 23 x 2, 72 within-cell df; its shuffled share has the same expectation.
    assert raw["interaction"]["n_groups"] == 46
    assert raw["interaction"]["chance_expected"] == pytest.approx(46 / 72 * (1 - raw["emotion x topic"]["share"]))
    assert raw["interaction"]["null_mean"] == pytest.approx(raw["interaction"]["chance_expected"], abs=0.02)
    assert raw["interaction"]["p_perm"] > 0.05 and raw["emotion x topic"]["p_perm"] > 0.05
    xc = x - x.mean(0)
    assert between_share(xc, np.arange(len(x)), float((xc**2).sum())) == pytest.approx(1.0)


def test_expected_share_within_strata_matches_shuffles():
    """The exact expectation under within-stratum shuffles, on an unbalanced design."""
    rng = np.random.default_rng(5)
    strata = rng.integers(0, 4, size=90)
    labels = rng.integers(0, 5, size=90)
    x = rng.normal(size=(90, 7)) + 2.0 * rng.normal(size=(4, 7))[strata]
    xc = x - x.mean(0)
    total = float((xc**2).sum())
    shuffled = [between_share(xc, permute_within(labels, strata, rng), total) for _ in range(4000)]
    assert expected_between_share(xc, labels, strata, total) == pytest.approx(np.mean(shuffled), rel=0.02)
    assert expected_between_share(xc, labels, None, total) == pytest.approx(4 / 89)
    p = permute_within(labels, strata, rng)
    for s in range(4):  # each stratum keeps its labels
        assert sorted(p[strata == s]) == sorted(labels[strata == s])


def test_topic_heavy_corpus_without_emotion_is_not_called_separable():
    """What the default run looks like: a strong topic effect, no emotion effect. A shuffle across
    topics would unbalance them and put the null above chance-level real labellings; the
    within-topic null does not, and neither test rejects."""
    rng = np.random.default_rng(4)
    emotion, topic = design(24, 3, 2)
    x = 3.0 * rng.normal(size=(3, 50))[topic] + rng.normal(size=(len(emotion), 50))
    c = corpus_of([x], emotion, topic)
    rows, _ = separability(c, nc_permutations=199, probe_permutations=0, seed=0, log=lambda m: None)
    nc = rows[0]
    assert nc["p_perm"] > 0.05 and abs(nc["accuracy"] - nc["null_mean"]) < 0.05
    var = {r["factor"]: r for r in variance_shares(c, n_permutations=199) if r["scale"] == "raw"}
    assert var["topic"]["share"] > 0.8 and var["topic"]["p_perm"] < 0.01
    assert var["emotion"]["p_perm"] > 0.05
    assert var["emotion"]["chance_expected"] < 0.05 < 23 / 143  # the global formula would be far off
    assert var["emotion"]["null_mean"] == pytest.approx(var["emotion"]["chance_expected"], rel=0.1)


def test_stratified_subsample_spreads_over_topics():
    topics = np.repeat(np.arange(5), 12)
    rng = np.random.default_rng(0)
    keep = stratified_subsample(topics, 10, rng)
    assert len(keep) == 10 and len(set(keep)) == 10
    assert np.bincount(topics[keep]).tolist() == [2, 2, 2, 2, 2]
    again = stratified_subsample(topics, 10, np.random.default_rng(0))
    assert (keep == again).all()
    assert (stratified_subsample(topics, None, rng) == np.arange(60)).all()


def write_shards(tmp_path, per_emotion: dict[str, int], layers=(2, 5), d=8, seed=0, effect=0.0):
    """Activation shards (as shards.write_shard leaves them) and story shards with topics;
    ``effect`` adds an emotion mean of that size (per dimension) at the first layer."""
    rng = np.random.default_rng(seed)
    act_paths, story_paths = {}, {}
    for e, n in per_emotion.items():
        ids = [f"{e}-t{k % 3:03d}-s{k // 3:02d}" for k in range(n)]
        acts = rng.normal(size=(n, len(layers), d))
        acts[:, 0, :] += effect * rng.normal(size=d)
        g = zarr.open_group(str(tmp_path / f"{e}.zarr"), mode="w")
        g.create_array("activations", data=acts.astype(np.float32), chunks=(4, len(layers), d))
        g.attrs.update({"ids": ids, "layers": list(layers), "complete": True})
        stories = [{"id": i, "topic_index": k % 3, "text": "x"} for k, i in enumerate(ids)]
        (tmp_path / f"{e}.json").write_text(json.dumps({"emotion": e, "stories": stories[::-1]}))
        act_paths[e], story_paths[e] = tmp_path / f"{e}.zarr", tmp_path / f"{e}.json"
    return act_paths, story_paths


def test_load_corpus_reads_topics_and_subsamples(tmp_path):
    acts, stories = write_shards(tmp_path, {"calm": 9, "happy": 12})
    full = load_corpus(acts, stories)
    assert full.activations.shape == (21, 2, 8) and full.layers == [2, 5]
    assert full.emotions == ["calm", "happy"] and full.available == {"calm": 9, "happy": 12}
    assert full.emotion.tolist() == [0] * 9 + [1] * 12
    assert full.topic.tolist() == [int(i.split("-t")[1][:3]) for i in full.ids]
    stored = np.asarray(zarr.open_group(str(acts["happy"]))["activations"][:])
    assert np.array_equal(full.activations[9:], stored)
    sub = load_corpus(acts, stories, max_per_emotion=6, seed=0)
    assert np.bincount(sub.emotion).tolist() == [6, 6]
    for e_idx in (0, 1):
        assert np.bincount(sub.topic[sub.emotion == e_idx]).tolist() == [2, 2, 2]
    row = sub.ids.index(sub.ids[8])
    k = [i for i in full.ids].index(sub.ids[8])
    assert np.array_equal(sub.activations[row], full.activations[k])


def test_load_corpus_refuses_unmatched_stories(tmp_path):
    acts, stories = write_shards(tmp_path, {"calm": 4, "happy": 4})
    stories["happy"].write_text(json.dumps({"stories": [{"id": "other", "topic_index": 0}]}))
    with pytest.raises(ValueError, match="missing from"):
        load_corpus(acts, stories)


def test_figure_and_headline(tmp_path):
    rng = np.random.default_rng(0)
    emotion, topic = design(4, 2, 4)
    x = rng.normal(size=(4, 20))[emotion] * 3 + rng.normal(size=(32, 20))
    c = corpus_of([x, rng.normal(size=(32, 20))], emotion, topic)
    sep, extra = separability(c, nc_permutations=99, probe_permutations=3, seed=0, log=lambda m: None)
    var = variance_shares(c, n_permutations=20)
    separability_figure(sep, var, tmp_path / "sep.png", title="test")
    assert (tmp_path / "sep.png").stat().st_size > 10_000
    recog = [{"emotion": "(all)", "n": 32, "correct": 8, "share": 0.25, "ci_low": 0.1, "ci_high": 0.4,
              "chance": 0.25, "p_binom": 0.6}]
    h = headline(sep, extra, var, recog)
    assert h["separability"]["nearest_centroid"]["best_layer"] == 0
    assert h["separability"]["nearest_centroid"]["ratio_to_chance"] > 3
    # The probe's 3 permutations cannot reject: not testable, out of the family; the nearest
    # centroid (p 0.01) and the judge (p 0.6) are corrected together.
    assert h["separability"]["logistic_probe"]["verdict"] == "not testable"
    assert h["family"]["m"] == 2 and h["separability"]["nearest_centroid"]["p_holm"] == pytest.approx(0.02)
    assert h["separable"] is True and h["recognisable"] is False
    assert h["variance_shares"]["emotion"]["share"] > h["variance_shares"]["topic"]["share"]
    assert "judge does not recognise" in h["verdict"]
    json.dumps(h)


class _Files(list):
    """A list of paths with named members, like Snakemake's input/output objects."""

    def __init__(self, **named):
        super().__init__()
        for key, value in named.items():
            self.extend(value if isinstance(value, list) else [value])
            setattr(self, key, value)


def run_script(name: str, smk, monkeypatch) -> None:
    """Run a workflow script with a stand-in ``snakemake`` object (logging to the test's log)."""
    import logging
    import runpy

    from emotion_vectors.core import jobs
    from emotion_vectors.core.config import REPO_ROOT

    monkeypatch.setattr(jobs, "start_job", lambda smk_: logging.getLogger(f"test.{smk_.rule}"))
    runpy.run_path(str(REPO_ROOT / "workflow" / "scripts" / name), init_globals={"snakemake": smk})


def run_diagnostics(tmp_path, monkeypatch, *, effect: float, p_binom: float, seed: int = 0) -> tuple[dict, list[dict]]:
    """The rules' scripts (separability, then diagnostics_summary) on 3 emotions x 6 stories with
    an emotion effect of ``effect`` at the first layer; the judge's table is given."""
    import pandas as pd
    from types import SimpleNamespace

    from emotion_vectors.core.claims import read_claims

    acts, stories = write_shards(tmp_path, {"calm": 6, "happy": 6, "sad": 6}, effect=effect, seed=seed)
    out = tmp_path / "diagnostics"
    out.mkdir()
    # Enough permutations that the smallest p (1/200, 1/100) is below Holm's first threshold 0.05/3.
    settings = {"max_per_emotion": 60, "nc_permutations": 199, "probe_permutations": 99, "probe_folds": 3,
                "probe_C": 1.0, "probe_max_dim": 4, "variance_permutations": 99, "seed": 0}
    smk = SimpleNamespace(
        input=_Files(emotions=list(map(str, acts.values())), stories=list(map(str, stories.values()))),
        output=_Files(table=str(out / "separability.tsv"), variance=str(out / "variance_shares.tsv"),
                      figure=str(out / "separability.png"), meta=str(out / "separability.json")),
        params=SimpleNamespace(emotions=list(acts), settings=settings),
        threads=1, config={"run": "test"}, rule="separability", log=[],
    )
    run_script("separability.py", smk, monkeypatch)
    sep = pd.read_csv(out / "separability.tsv", sep="\t")
    assert list(sep.columns) == SEPARABILITY_COLUMNS
    assert len(sep) == 4 and set(sep["method"]) == {"nearest_centroid", "logistic_probe"}
    assert (sep["n_stories"] == 18).all() and (sep["n_emotions"] == 3).all()
    assert set(sep["n_permutations"]) == {199, 99}
    var = pd.read_csv(out / "variance_shares.tsv", sep="\t")
    assert len(var) == 2 * 2 * 4 and (out / "separability.png").exists()
    meta = json.loads((out / "separability.json").read_text())
    assert meta["n_stories"] == 18 and meta["layers"] == [2, 5] and "provenance" in meta
    assert set(meta["variance_max_layer"]["raw"]) == {"emotion", "topic", "emotion x topic", "interaction"}

    recog = [{"emotion": e, "n": 6, "correct": 2, "share": 1 / 3, "ci_low": 0.1, "ci_high": 0.7, "chance": 0.25,
              "ratio_to_chance": 4 / 3, "p_binom": 0.4, "auc": 0.5, "p_auc": 0.5} for e in ("calm", "happy", "sad")]
    recog.append({"emotion": "(all)", "n": 18, "correct": 6, "share": 1 / 3, "ci_low": 0.16, "ci_high": 0.56,
                  "chance": 0.25, "ratio_to_chance": 4 / 3, "p_binom": p_binom, "auc": 0.5, "p_auc": 0.5})
    pd.DataFrame(recog).to_csv(out / "recognisability.tsv", sep="\t", index=False)
    (out / "recognisability.json").write_text(json.dumps({"judge": {"name": "j", "path": "p"}}))
    smk = SimpleNamespace(
        input=SimpleNamespace(separability=str(out / "separability.tsv"), separability_meta=str(out / "separability.json"),
                              variance=str(out / "variance_shares.tsv"), recognisability=str(out / "recognisability.tsv"),
                              recognisability_meta=str(out / "recognisability.json")),
        output=SimpleNamespace(summary=str(out / "summary.json"), claims=str(out / "claims.json")),
        threads=1, config={"run": "test"}, rule="diagnostics_summary", log=[],
    )
    run_script("diagnostics_summary.py", smk, monkeypatch)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"] == "test" and summary["judge"]["name"] == "j"
    assert set(summary["separability"]) == {"nearest_centroid", "logistic_probe"}
    return summary, read_claims(out / "claims.json")


IDS = {"diagnostics.verdict", "diagnostics.separability.nearest_centroid", "diagnostics.separability.logistic_probe",
       "diagnostics.recognisability", "diagnostics.recognisability.per_emotion", "diagnostics.variance.emotion",
       "diagnostics.variance.interaction"}


def test_scripts_claim_nothing_on_activations_without_emotion(tmp_path, monkeypatch):
    # Each of these tests rejects 5% of the time on such data (tests/test_calibration_diagnostics.py);
    # seed 1 is one of the corpora on which none does by chance, so any "effect" here is a bug.
    summary, claims = run_diagnostics(tmp_path, monkeypatch, effect=0.0, p_binom=0.4, seed=1)
    by = {c["id"]: c for c in claims}
    assert set(by) == IDS
    assert summary["separable"] is False and summary["recognisable"] is False
    assert "neither" in summary["verdict"]
    for c in claims:  # every test can reject, and none does
        assert c["verdict"] == "no effect", c
    fam = [by[i] for i in ("diagnostics.separability.nearest_centroid", "diagnostics.separability.logistic_probe",
                           "diagnostics.recognisability")]
    assert all(c["family"] == 3 and c["correction"] == "Holm over 3 tests" for c in fam)
    assert by["diagnostics.verdict"]["p_adjusted"] == min(c["p_adjusted"] for c in fam)


def test_scripts_claim_an_effect_on_separable_activations(tmp_path, monkeypatch):
    summary, claims = run_diagnostics(tmp_path, monkeypatch, effect=2.0, p_binom=0.03)
    by = {c["id"]: c for c in claims}
    nc = by["diagnostics.separability.nearest_centroid"]
    assert nc["verdict"] == "effect" and nc["p"] == pytest.approx(1 / 200)
    assert nc["p_adjusted"] == pytest.approx(3 / 200) and nc["extra"]["best_layer"] == 2
    assert nc["interval"][0] <= nc["statistic"] <= nc["interval"][1] and nc["n_null"] == 199
    assert by["diagnostics.separability.logistic_probe"]["verdict"] == "effect"
    # Holm step-down: 3 x 0.005, 2 x 0.01, then the judge's 0.03 at its own level.
    rec = by["diagnostics.recognisability"]
    assert rec["p"] == pytest.approx(0.03) and rec["p_adjusted"] == pytest.approx(0.03)
    assert rec["verdict"] == "effect" and summary["recognisable"] is True
    assert by["diagnostics.separability.logistic_probe"]["p"] == pytest.approx(0.01)
    assert by["diagnostics.separability.logistic_probe"]["p_adjusted"] == pytest.approx(0.02)
    assert by["diagnostics.verdict"]["p_adjusted"] == pytest.approx(0.015)
    assert "the corpus carries its emotions" in summary["verdict"]
    assert summary["separable"] is True and by["diagnostics.verdict"]["verdict"] == "effect"
    assert by["diagnostics.variance.emotion"]["verdict"] == "effect"
    assert by["diagnostics.variance.emotion"]["extra"]["best_layer"] == 2

    # The README's table of several runs, side by side (a run without outputs says so).
    import importlib.util

    from emotion_vectors.core.config import REPO_ROOT

    spec = importlib.util.spec_from_file_location("diagnostics_table", REPO_ROOT / "scripts" / "diagnostics_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.table([tmp_path.name, "never-ran"], tmp_path.parent)
    lines = text.splitlines()
    assert lines[0] == f"| claim | {tmp_path.name} | never-ran |" and len(lines) == 2 + len(mod.ROWS) + 1
    nc_line = next(x for x in lines if x.startswith("| nearest centroid"))
    assert "p 0.005, adj. 0.015; **effect**" in nc_line and "block 2" in nc_line and "(no diagnostics" in nc_line
    assert "**effect**: family p 0.015 (Holm over 3 tests)" in text


def test_verdict_follows_the_holm_corrected_p():
    """Two separability tests at p 0.03 and 0.04 pass one by one, but not after Holm over the
    three tests of the verdict (0.09, 0.09); the summary and the claims say the same."""
    from emotion_vectors.vectors.diagnostics import diagnostics_claims

    def sep_rows(p_nc, p_probe):
        rows = []
        for m, p in (("nearest_centroid", p_nc), ("logistic_probe", p_probe)):
            rows.append({"layer": 4, "method": m, "accuracy": 0.3, "ci_low": 0.2, "ci_high": 0.4, "chance": 0.25,
                         "null_mean": 0.25, "null_p95": 0.29, "p_perm": p, "n_permutations": 999})
        extra = {"nearest_centroid": {"best_layer": 4, "p_perm_max_layer": p_nc},
                 "logistic_probe": {"best_layer": 4, "p_perm_max_layer": p_probe}}
        return rows, extra

    recog = [{"emotion": "(all)", "n": 100, "correct": 25, "share": 0.25, "ci_low": 0.17, "ci_high": 0.34,
              "chance": 0.25, "p_binom": 0.5}]
    rows, extra = sep_rows(0.03, 0.04)
    h = headline(rows, extra, [], recog)
    assert h["separable"] is False and "neither" in h["verdict"]
    assert h["separability"]["nearest_centroid"]["p_holm"] == pytest.approx(0.09)
    assert h["separability"]["logistic_probe"]["p_holm"] == pytest.approx(0.09)
    assert h["family"]["p_family"] == pytest.approx(0.09) and h["family"]["verdict"] == "no effect"
    rows, extra = sep_rows(0.01, 0.04)  # Holm: 0.03, then 0.08
    h = headline(rows, extra, [], recog)
    assert h["separable"] is True and h["separability"]["logistic_probe"]["verdict"] == "no effect"
    claims = {c.id: c for c in diagnostics_claims(json.loads(json.dumps(h)))}
    assert claims["diagnostics.verdict"].verdict == "effect"
    assert claims["diagnostics.verdict"].p_adjusted == pytest.approx(0.03)
    assert claims["diagnostics.separability.logistic_probe"].verdict == "no effect"
    # A null too small for Holm's first threshold gives no p-value and is not testable.
    rows, extra = sep_rows(0.04, 0.04)
    for r in rows:
        r["n_permutations"] = 29  # smallest p 1/30 > 0.05 / 2 (two tests without the judge)
    h = headline(rows, extra, [], None)
    assert h["separable"] is False and not h["separability_testable"] and h["verdict"].startswith("not testable")
    claims = {c.id: c for c in diagnostics_claims(h)}
    assert claims["diagnostics.verdict"].verdict == "not testable" and claims["diagnostics.verdict"].p is None


def test_tiny_uneven_corpus_runs(tmp_path):
    """What the workflow's tiny test config can produce: one topic, two stories per emotion, an
    emotion short of stories. Nothing crashes; the probe is skipped (NaN) when a class has one story."""
    rng = np.random.default_rng(0)
    emotion = np.array([0, 0, 1, 1, 2])
    topic = np.zeros(5, dtype=int)
    c = corpus_of([rng.normal(size=(5, 16)), rng.normal(size=(5, 16))], emotion, topic)
    rows, extra = separability(c, nc_permutations=20, probe_permutations=3, seed=0, log=lambda m: None)
    probe = [r for r in rows if r["method"] == "logistic_probe"]
    assert all(np.isnan(r["accuracy"]) for r in probe) and extra["logistic_probe"]["best_layer"] is None
    assert all(0 <= r["accuracy"] <= 1 for r in rows if r["method"] == "nearest_centroid")
    var = variance_shares(c, n_permutations=5)
    topic_rows = [r for r in var if r["factor"] == "topic"]
    assert all(abs(r["share"]) < 1e-9 and abs(r["chance_expected"]) < 1e-9 for r in topic_rows)
    h = headline(rows, extra, var)
    separability_figure(rows, var, tmp_path / "f.png")
    json.dumps(h)
    # Every claim id is there in every run, "not testable" where nothing could be tested.
    from emotion_vectors.vectors.diagnostics import diagnostics_claims

    claims = {c.id: c for c in diagnostics_claims(h)}
    assert set(claims) == IDS
    for cid in ("diagnostics.separability.logistic_probe", "diagnostics.recognisability",
                "diagnostics.recognisability.per_emotion"):
        assert claims[cid].verdict == "not testable" and claims[cid].p is None and claims[cid].note
    assert h["recognisable"] is None


def test_many_labellings_at_once_match_one_at_a_time():
    """The vectorised paths (shares and nearest-centroid predictions of many labellings, the
    within-stratum shuffles) agree with the one-labelling versions."""
    from emotion_vectors.vectors.diagnostics import _NearestCentroid, between_shares, permute_within_many

    rng = np.random.default_rng(8)
    emotion, topic = design(5, 3, 3)
    perms = permute_within_many(emotion, topic, 30, rng)
    for s in range(3):  # each row shuffles within topics
        assert sorted(perms[:, topic == s].ravel()) == sorted(np.tile(emotion[topic == s], 30))
    assert len({tuple(p) for p in perms}) > 25
    for d in (40, 7):
        x = rng.normal(size=(len(emotion), d))
        xc = x - x.mean(0)
        total = float((xc**2).sum())
        many = between_shares(xc, perms, total)
        assert np.allclose(many, [between_share(xc, p, total) for p in perms])
        pred, _ = _NearestCentroid(x).predict_many(perms, 5)
        assert (pred == np.stack([nearest_centroid_loo(x, p) for p in perms])).all()
