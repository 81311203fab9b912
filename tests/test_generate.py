"""Story generation with the real default model: leak rejection, shortfall, resume."""

import pytest

from emotion_vectors.corpus.backends import HFChatBackend
from emotion_vectors.core.config import REPO_ROOT
from emotion_vectors.corpus.generate import Checkpoint, ShardShortError, generate_story_shard, load_prompts
from emotion_vectors.corpus.leak import find_leaks

TOPICS = ["A neighbor wants to install a fence", "A neighbor starts a renovation project"]
BASE = {
    "per_topic": 2, "per_reply": 1, "max_new_tokens": 40, "min_words": 5, "temperature": 0.9,
    "top_p": 0.95, "batch_size": 2, "oversample": 1.0, "max_rounds": 2, "allow_shortfall": True, "seed": 7,
}


@pytest.fixture(scope="module")
def prompts():
    return load_prompts(REPO_ROOT / "config" / "prompts", "story")


def test_interrupted_shard_resumes_to_the_same_stories(tmp_path, default_model, prompts):
    model, tok = default_model
    full = generate_story_shard(HFChatBackend(model, tok), "calm", TOPICS, BASE, prompts, output=tmp_path / "a.json", log=lambda m: None)
    assert Checkpoint(tmp_path / "a.json", "").path.exists()  # cleared by the job script once written

    def stop_after_first_batch(msg):
        if "batch 1" in msg:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_story_shard(HFChatBackend(model, tok), "calm", TOPICS, BASE, prompts, output=tmp_path / "b.json", log=stop_after_first_batch)
    assert (tmp_path / "b.json.progress.json").exists()
    messages = []
    resumed = generate_story_shard(HFChatBackend(model, tok), "calm", TOPICS, BASE, prompts, output=tmp_path / "b.json", log=messages.append)
    assert any("resuming" in m for m in messages)
    assert [s["text"] for s in resumed["stories"]] == [s["text"] for s in full["stories"]]
    assert [s["seed"] for s in resumed["stories"]] == [s["seed"] for s in full["stories"]]
    assert resumed["rejections"] == full["rejections"] and resumed["replies"] == full["replies"]
    for s in full["stories"]:
        # The real leak filter (a whitespace split would let "calm." or "Calmly" through).
        assert s["id"].startswith("calm-t00") and s["topic"] in TOPICS and not find_leaks(s["text"], "calm")


def test_leaks_are_rejected_and_a_short_shard_fails_or_says_so(tmp_path, default_model, prompts):
    model, tok = default_model
    # An "emotion" every English story uses: every story leaks.
    settings = dict(BASE, per_topic=1, max_rounds=1, allow_shortfall=False)
    with pytest.raises(ShardShortError) as err:
        generate_story_shard(HFChatBackend(model, tok), "the", TOPICS[:1], settings, prompts, output=tmp_path / "c.json", log=lambda m: None)
    assert "'leak'" in str(err.value) and "allow_shortfall" in str(err.value)
    shard = generate_story_shard(
        HFChatBackend(model, tok), "the", TOPICS[:1], dict(settings, allow_shortfall=True), prompts, output=tmp_path / "d.json", log=lambda m: None
    )
    assert shard["complete"] is False and shard["n_stories"] == 0
    assert shard["shortfall"] == {TOPICS[0]: 1} and shard["rejections"]["leak"] >= 1
    assert "the" in shard["leak_forms"]


def test_selection_judge_filters_and_records(tmp_path, default_model, prompts):
    """Best-of-n: only stories the (real) judge recognises are kept; nothing is edited; the shard
    records every judged candidate's verdict and the acceptance rate."""
    from emotion_vectors.corpus.judge import judge_stories

    model, tok = default_model
    seen = []

    def select(candidates):
        seen.extend(candidates)
        return judge_stories(model, tok, candidates, ["afraid", "calm", "happy", "sad"], {"options": 2})

    settings = dict(BASE, per_topic=1, oversample=2.0, max_rounds=2)
    shard = generate_story_shard(HFChatBackend(model, tok), "sad", TOPICS[:1], settings, prompts, output=tmp_path / "s.json", select=select, log=lambda m: None)
    sel = shard["selection"]
    assert sel["judged"] == len(seen) > 0
    assert sel["acceptance_rate"] == round(sel["recognised"] / sel["judged"], 4)
    # Every judged candidate is either recognised (then kept, or a surplus/duplicate) or rejected.
    assert shard["rejections"].get("not_recognised", 0) == sel["judged"] - sel["recognised"]
    for story in shard["stories"]:
        verdict = story["selection"]
        assert verdict["correct"] is True and verdict["chosen"] == "sad" and "sad" in verdict["candidates"]
        assert story["text"] in [c["text"] for c in seen]  # kept verbatim
    assert sel["recognised"] >= shard["n_stories"]


class _ScriptedBackend:
    """A generation backend that answers each request with the next scripted reply (and fails
    with a BackendError at the batch numbers in ``fail_at``): the round driver without a model."""

    def __init__(self, replies, fail_at=()):
        self.replies, self.fail_at, self.batches, self.seen = list(replies), set(fail_at), 0, []

    def identity(self):
        return {"backend": "scripted"}

    def describe(self):
        return {"backend": "scripted"}

    def seed_policy(self):
        return {"per": "request", "sent": False, "accepted": None, "honoured": False}

    def generate_batch(self, requests, *, max_tokens, temperature, top_p, seed):
        from emotion_vectors.corpus.backends import BackendError, Completion

        self.batches += 1
        if self.batches in self.fail_at:
            raise BackendError("HTTP 503 from POST http://127.0.0.1:9/v1/chat/completions: down", status=503)
        self.seen.extend(requests)
        out = []
        for _ in requests:
            text = self.replies.pop(0)
            out.append(Completion(text, 30, len(text.split()), "scripted", False, "stop", seed=None, retries=("429",)))
        return out


def test_round_driver_rejects_what_the_real_leak_filter_finds_and_resumes_after_a_backend_failure(tmp_path, prompts):
    from emotion_vectors.corpus.backends import BackendError

    replies = [
        "I keep my voice low and calm. The fence can wait until spring.",  # "calm." leaks
        "Calmly, I walk to the gate and look at the posts.",  # "Calmly" leaks (capitalised -ly form)
        "The posts can go in whenever they like; I have all afternoon to watch.",
        "It is only a fence, and the garden will still be here tomorrow.",
    ]
    settings = dict(BASE, per_topic=2, batch_size=2, oversample=2.0, max_rounds=1, min_words=5)
    backend = _ScriptedBackend(replies, fail_at={2})
    with pytest.raises(BackendError, match=r"calm: round 1 batch 2 failed: HTTP 503 .* rerun the job to resume"):
        generate_story_shard(backend, "calm", TOPICS[:1], settings, prompts, output=tmp_path / "c.json", log=lambda m: None)
    lines = []
    shard = generate_story_shard(backend, "calm", TOPICS[:1], settings, prompts, output=tmp_path / "c.json", log=lines.append)
    assert any("resuming" in line for line in lines)
    assert shard["rejections"] == {"leak": 2} and shard["leak_forms"] == {"calm": 1, "calmly": 1}
    assert [s["text"] for s in shard["stories"]] == replies[2:] and shard["complete"]
    assert all(not find_leaks(s["text"], "calm") for s in shard["stories"])
    assert len(backend.seen) == 4 and backend.seen[0].messages[-1]["role"] == "user"
    usage = shard["generation"]["usage"]
    assert usage["requests"] == 4 and usage["prompt_tokens"] == 120 and usage["retries"] == {"429": 4}
    assert shard["generation"]["backend"] == {"backend": "scripted"} and shard["generation"]["usage"]["cost"] is None
