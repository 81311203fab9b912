"""Steering against prompting (emotion_vectors.steering.scores): the three axes, the statistics,
the unsteered model's reading of replies, the KL on neutral text, the judge's validation, and the
whole evaluation on a tiny random model (structure, nulls, claims, determinism) and, slow, on the
real default model. Calibration of the tests under their nulls: test_calibration_steering.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emotion_vectors.core.claims import NOT_TESTABLE, VERDICTS
from emotion_vectors.steering.steer import Steer, steering
from emotion_vectors.steering.evaluate import MASK_TOKEN, dose_claims
from emotion_vectors.steering.scores import (
    DEFAULT_CONCEPT_MAP,
    ScoresError,
    choose_strength,
    concept_map,
    fluency_scores,
    harmonic_mean,
    kl_on_texts,
    lexicon_concept,
    load_concept_validation,
    methods_figure,
    parse_rating,
    relevance_scores,
    repetition_rate,
    response_logprobs,
    scores_claims,
    VS_PROMPTING,
    sign_flip_floor,
    sign_flip_test,
    steering_scores,
    tradeoff_figure,
    validate_concept_scorer,
    validation_pairs,
)
from emotion_vectors.vectors.store_layout import write_store

VALIDATION = "config/steering/concept_validation.jsonl"


# ------------------------------------------------------------------------------------------
# the axes


def test_concept_map_covers_the_default_emotions_and_names_what_is_missing():
    import yaml

    cfg = yaml.safe_load(open("config/config.yaml"))
    assert concept_map(cfg["emotions"])  # every default emotion has a category
    assert concept_map(["happy", "calm", "sad", "afraid"]) == {"happy": "joy", "calm": "positive",
                                                              "sad": "sadness", "afraid": "fear"}
    assert concept_map(["happy"], {"happy": "trust"}) == {"happy": "trust"}
    with pytest.raises(ScoresError, match=r"no NRC category for \['wistful'\]"):
        concept_map(["happy", "wistful"])
    with pytest.raises(ScoresError, match="not NRC categories"):
        concept_map(["happy"], {"happy": "glee"})
    assert set(DEFAULT_CONCEPT_MAP.values()) <= {"anger", "anticipation", "disgust", "fear", "joy", "negative",
                                                 "positive", "sadness", "surprise", "trust"}


def test_lexicon_concept_is_the_category_share_of_affect_words_with_emotion_words_masked():
    lex = {"fear": frozenset({"fear", "negative"}), "terror": frozenset({"fear", "negative"}),
           "sunny": frozenset({"joy", "positive"}), "afraid": frozenset({"fear", "negative"})}
    texts = ["The terror and the sunny day.", "I was afraid.", "Nothing here at all.", "fear fear sunny"]
    got = lexicon_concept(texts, "fear", mask_words=["afraid"], lexicon=lex)
    # 1 of 2 affect words; "afraid" masked away (no affect word left); none; 2 of 3
    np.testing.assert_allclose(got, [0.5, 0.0, 0.0, 2 / 3])
    unmasked = lexicon_concept(texts[1:2], "fear", mask_words=[], lexicon=lex)
    assert unmasked[0] == 1.0  # the emotion word itself would score: that is why it is masked
    real = lexicon_concept(["I screamed in terror and trembled, dreading the dark."], "fear", mask_words=[])
    assert real[0] > 0.3
    with pytest.raises(ScoresError, match="not one of"):
        lexicon_concept(["x"], "glee", mask_words=[])


def test_repetition_fluency_relevance_and_harmonic_mean():
    assert repetition_rate("the cat sat on the mat") == 0.0
    assert repetition_rate("go go go go go go") == pytest.approx(1 - 1 / 4)
    assert repetition_rate("a b") == 0.0
    f = fluency_scores(np.array([10.0, 20.0, 5.0, np.nan]), np.array([0.0, 0.0, 0.5, 0.0]), 10.0)
    np.testing.assert_allclose(f, [1.0, 0.5, 0.5, 0.0])  # capped at 1; a loop loses its repeats; empty: 0
    r = relevance_scores(np.array([-10.0, -10.0, np.nan]), np.array([[-10.0], [-20.0], [-5.0]]))
    np.testing.assert_allclose(r, [0.5, 1 / (1 + np.exp(-10)), 0.0])
    h = harmonic_mean(np.array([1.0, 0.5, 0.0]), np.array([1.0, 1.0, 1.0]), np.array([1.0, 0.25, 1.0]))
    np.testing.assert_allclose(h, [1.0, 3 / (2 + 1 + 4), 0.0])


def test_sign_flip_test_exact_values_and_floor():
    d = np.ones(8)
    assert sign_flip_test(d, alternative="greater") == pytest.approx(1 / 256)
    assert sign_flip_test(d) == pytest.approx(2 / 256)  # two-sided
    assert sign_flip_test(-d, alternative="less") == pytest.approx(1 / 256)
    assert sign_flip_test(np.array([1.0, -1.0])) == 1.0
    assert sign_flip_floor(8) == pytest.approx(2 / 256) and sign_flip_floor(8, "greater") == pytest.approx(1 / 256)
    assert np.isnan(sign_flip_test([]))
    # steering against prompting is one-sided: a vector that prompting beats in every pair (what the
    # negative control's vectors do) gets p = 1, not the two-sided 2/256
    assert VS_PROMPTING == "greater" and sign_flip_test(-d, alternative=VS_PROMPTING) == 1.0
    big = sign_flip_test(np.ones(30), alternative="greater", n_mc=999, seed=1)
    assert big == pytest.approx(1 / 1000)  # Monte-Carlo beyond 20 pairs


def test_choose_strength_prefers_the_best_mean_then_the_smallest():
    assert choose_strength([0.1, 0.2, 0.4], [[0.1, 0.3], [0.5, 0.5], [0.2, 0.2]]) == 0.2
    assert choose_strength([0.1, 0.2, 0.4], [[0.0], [0.0], [0.0]]) == 0.1


# ------------------------------------------------------------------------------------------
# the unsteered model's reading, the KL


def test_response_logprobs_equal_full_sequence_scoring(tiny_llama):
    model, tok = tiny_llama
    ctx = [tok("User: hi\nAssistant:")["input_ids"], tok("User: tell me\nAssistant:")["input_ids"]]
    resp = [tok(" hello there", add_special_tokens=False)["input_ids"], tok(" fine", add_special_tokens=False)["input_ids"],
            tok(" a longer answer here", add_special_tokens=False)["input_ids"], []]
    contexts = [ctx[0], ctx[0], ctx[1], ctx[1]]
    got = response_logprobs(model, contexts, resp, batch_size=2)
    assert np.isnan(got[3])
    total, head = response_logprobs(model, contexts, resp, batch_size=2, head=2)
    np.testing.assert_allclose(total, got, atol=1e-6)
    for c, r, g, h in zip(contexts[:3], resp[:3], got[:3], head[:3]):
        with torch.inference_mode():
            lp = torch.log_softmax(model(torch.tensor([c + r])).logits[0].float(), -1)
        want = [float(lp[len(c) - 1 + k, t]) for k, t in enumerate(r)]
        assert g == pytest.approx(sum(want), abs=1e-3)
        assert h == pytest.approx(sum(want[:2]), abs=1e-3)  # the first two tokens only


def test_kl_on_texts_zero_unsteered_positive_steered_and_as_computed_directly(tiny_llama):
    model, tok = tiny_llama
    d = model.config.hidden_size
    rng = np.random.default_rng(0)
    v = rng.standard_normal(d)
    rows = [[], [Steer(2, v, 1.0, 5.0)], [Steer(2, v, 3.0, 5.0)]]
    texts = ["The meeting is at noon in room four.", "Please send the report by Friday."]
    kl = kl_on_texts(model, tok, texts, rows, max_tokens=8, batch_size=2)
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[1] > 0 and kl[2] > kl[1]
    total, n = 0.0, 0
    for t in texts:
        ids = torch.tensor([tok(t)["input_ids"][:8]])
        with torch.inference_mode():
            p0 = torch.log_softmax(model(ids).logits[0].float(), -1)
            with steering(model, rows[1]):
                p1 = torch.log_softmax(model(ids).logits[0].float(), -1)
        total += float((p0.exp() * (p0 - p1)).sum())
        n += ids.shape[1]
    assert kl[1] == pytest.approx(total / n, rel=1e-3)


# ------------------------------------------------------------------------------------------
# the judge and its validation


def test_labelled_sentences_and_validation_pairs():
    items = load_concept_validation(VALIDATION)
    assert len(items) >= 40 and len({it["id"] for it in items}) == len(items)
    labels = {it["emotion"] for it in items}
    assert {"happy", "sad", "afraid", "calm", "angry", "none"} <= labels
    from emotion_vectors.corpus.leak import find_leaks

    for it in items:  # the labelled sentences never say their emotion's word
        if it["emotion"] != "none":
            assert not find_leaks(it["text"], it["emotion"]), it
    pairs = validation_pairs(items, ["happy", "calm", "sad", "afraid"])
    assert any(p["truth"] for p in pairs) and not all(p["truth"] for p in pairs)
    assert all(p["emotion"] in ("happy", "calm", "sad", "afraid") for p in pairs)


def test_parse_rating():
    assert parse_rating("The text is cheerful.\nRATING: 2") == 1.0
    assert parse_rating("rating: 0 ... RATING=1") == 0.5
    assert parse_rating("no idea") is None


def test_lexicon_validated_on_the_labelled_sentences():
    """The lexicon scorer as the validation reads it (texts masked, rated against their label and
    another emotion): its kappa and AUROC are what the report shows beside a judge's."""
    items = load_concept_validation(VALIDATION)
    cats = concept_map(["happy", "calm", "sad", "afraid"])
    res = validate_concept_scorer(lambda texts, e: lexicon_concept(texts, cats[e], mask_words=[]), items,
                                  ["happy", "calm", "sad", "afraid"], mask_words=["happy", "calm", "sad", "afraid"],
                                  threshold=0.34, n_bootstrap=200, name="nrc")
    assert res["n_pairs"] > 40 and 0 <= res["accuracy"] <= 1
    assert res["auroc"] > 0.6  # the lexicon reads these sentences better than chance
    assert isinstance(res["passed"], bool) and "kappa" in res["reason"]
    constant = validate_concept_scorer(lambda texts, e: np.ones(len(texts)), items, ["happy", "sad"],
                                       mask_words=[], n_bootstrap=200)
    assert not constant["passed"] and constant["kappa"] == 0  # a scorer that says yes to everything fails


# ------------------------------------------------------------------------------------------
# the whole evaluation on a tiny random model


def _stores(tmp_path, emotions, d, layer, n_shuffles):
    rng = np.random.default_rng(0)

    def store(name, names, vecs):
        return write_store(tmp_path / name, emotions=names, layers=[layer], raw=vecs[:, None, :], denoised=vecs[:, None, :],
                           residual_norm=np.array([5.0]), n_neutral_pcs_removed=None, n_stories=None,
                           attrs={"num_hidden_layers": layer + 2})

    real = store("v.zarr", emotions, rng.standard_normal((len(emotions), d)))
    names = [f"{e}@shuffle{k}" for k in range(n_shuffles) for e in emotions]
    null = store("s.zarr", names, rng.standard_normal((len(names), d)))
    return real, null, [[f"{e}@shuffle{k}" for e in emotions] for k in range(n_shuffles)]


def test_steering_scores_on_a_tiny_model(tiny_llama, tmp_path):
    model, tok = tiny_llama
    emotions = ["happy", "sad"]
    real, null, sets = _stores(tmp_path, emotions, model.config.hidden_size, 2, 3)
    kw = dict(prompts=["Tell me about your morning.", "Describe the street.", "What is for dinner?",
                       "Write about rain."],
              strengths=[0.5, 1.0], test_strength=1.0, samples=2, max_new_tokens=5, temperature=0.8,
              neutral_texts=["The meeting is at noon.", "Send the report."], kl_tokens=6, n_other=1,
              controls_prompts=1, signs={"happy": 1, "sad": -1}, layer=2, null_store=null, shuffle_sets=sets,
              n_random=2, n_permutations=99, seed=3, batch_size=8, n_boot=50, relevance_tokens=3)
    res = steering_scores(model, tok, real, emotions, **kw)
    sm = res.summary
    assert sm["select_prompts"] == [0, 2] and sm["report_prompts"] == [1, 3] and sm["relevance_tokens"] == 3
    assert set(sm["chosen_strength"].values()) <= {0.5, 1.0}
    methods = [g.method for g in res.generations]
    # unsteered 4 x 2; steering sweep 2 prompts x 2 emotions x 2 strengths x 2; controls on 1 prompt:
    # 3 shuffles x 2 + 2 random; report half: (steering, prompting, both) x 2 emotions x 2 prompts x 2
    assert methods.count("unsteered") == 8 and methods.count("shuffled") == 6 and methods.count("random") == 2
    assert methods.count("steering") == 16 + 8 and methods.count("prompting") == 8 and methods.count("both") == 8
    for g in res.generations:
        assert set(g.concept) == set(emotions) and 0 <= g.fluency <= 1 and 0 <= g.relevance <= 1
        if g.method in ("steering", "both") and g.half == "report":
            assert g.strength == sm["chosen_strength"][g.emotion]
    # the report-half table: every method per emotion, the paired comparisons, the controls' lines
    rows = {(r["emotion"], r["method"]): r for r in res.table}
    for e in emotions:
        for m in ("unsteered", "prompting", "steering", "both"):
            assert rows[(e, m)]["n"] == 4 and rows[(e, m)]["score_lo"] <= rows[(e, m)]["score_hi"]
        assert "p_vs_prompting_holm" in rows[(e, "steering")]
        assert rows[(e, "shuffled-label @1")]["n"] == 3
        assert rows[(e, "steering")]["kl"] > 0 and rows[(e, "unsteered")]["kl"] == 0
    kinds = {c["kind"] for c in res.curves}
    assert kinds == {"unsteered", "steering", "prompting", "shuffled", "random"}
    json.dumps(sm)
    claims = scores_claims(sm, figure="steering/tradeoff.png")
    ids = [c.id for c in claims]
    assert "steering.scores.steering_vs_prompting" in ids and "steering.scores.happy.both_vs_prompting" in ids
    assert "steering.scores.shuffled" in ids and "steering.scores.sad.shuffled" in ids and "steering.scores.random" in ids
    assert all(c.verdict in VERDICTS for c in claims)
    by = {c.id: c for c in claims}
    # 4 pairs cannot reach 0.05 / 2 (one-sided floor 1/16), 3 shuffles cannot reach 0.05
    assert by["steering.scores.happy.steering_vs_prompting"].verdict == NOT_TESTABLE
    assert "4 pairs" in by["steering.scores.happy.steering_vs_prompting"].note
    assert by["steering.scores.shuffled"].verdict == NOT_TESTABLE and by["steering.scores.shuffled"].p is None
    # the VADER dose claims come from the same replies
    dclaims = dose_claims(res.dose)
    assert [c.id for c in dclaims] == ["steering.dose.shuffled", "steering.dose.happy.shuffled",
                                       "steering.dose.sad.shuffled"]
    tradeoff_figure(res.curves, tmp_path / "t.png")
    methods_figure(res.table, tmp_path / "m.png")
    assert (tmp_path / "t.png").stat().st_size > 0 and (tmp_path / "m.png").stat().st_size > 0
    again = steering_scores(model, tok, real, emotions, **kw)
    assert [g.text for g in again.generations] == [g.text for g in res.generations]  # seeded
    with pytest.raises(ScoresError, match="test_strength"):
        steering_scores(model, tok, real, emotions, **(kw | {"test_strength": 0.3}))
    with pytest.raises(ScoresError, match="positive"):
        steering_scores(model, tok, real, emotions, **(kw | {"strengths": [-0.5, 1.0]}))
    with pytest.raises(ScoresError, match="neutral"):
        steering_scores(model, tok, real, emotions, **(kw | {"neutral_texts": []}))
    with pytest.raises(ScoresError, match="emotion"):
        steering_scores(model, tok, real, emotions, **(kw | {"instruction": "Be sad."}))


def test_mask_token_is_not_an_affect_word():
    from emotion_vectors.corpus.lexicon import load_nrc

    assert MASK_TOKEN not in load_nrc()


@pytest.mark.slow
def test_concept_judge_through_the_in_process_chat_backend_is_validated_before_use(default_model):
    """A judge is a chat backend rating 0-2; on the labelled sentences it gets a kappa interval and
    passes only above the floor (SmolLM2, a 135M model, is not expected to: then the lexicon scores)."""
    from emotion_vectors.corpus.backends import HFChatBackend
    from emotion_vectors.steering.scores import ConceptJudge

    model, tok = default_model
    judge = ConceptJudge(HFChatBackend(model, tok, name="smollm2"), max_tokens=16)
    assert judge.name == "chat:smollm2"
    items = load_concept_validation(VALIDATION)
    subset = [it for it in items if it["emotion"] == "happy"][:3] + [it for it in items if it["emotion"] == "sad"][:3]
    subset += [it for it in items if it["emotion"] == "none"][:2]
    got = judge.score([subset[0]["text"]], "happy")
    assert got.shape == (1,) and (np.isnan(got[0]) or got[0] in (0.0, 0.5, 1.0))
    res = validate_concept_scorer(judge.score, subset, ["happy", "sad"], mask_words=["happy", "sad"],
                                  n_bootstrap=200, name=judge.name)
    assert res["scorer"] == "chat:smollm2" and res["n_pairs"] == 14 and 0 <= res["n_unparsed"] <= 14
    assert isinstance(res["passed"], bool) and res["floor"] == 0.2
    if res["passed"]:  # a pass must rest on an interval above the floor
        assert res["kappa_ci95"][0] > 0.2
