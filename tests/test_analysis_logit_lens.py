"""Logit lens: token matching, a hand-built model with known answers, and the tiny models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from emotion_vectors.analysis import logit_lens as ll
from emotion_vectors.extraction import lens

TINY = ("tiny_llama", "tiny_gemma3", "tiny_gemma4_text", "tiny_gemma4_mm")


def test_normalise_token_and_word_forms():
    assert lens.normalise_token("Ġhappy") == "happy"
    assert lens.normalise_token("▁Sad") == "sad"
    assert lens.normalise_token(" Calm ") == "calm"
    assert lens.normalise_token(None) == ""
    assert ll.word_forms("happy") == {"happy"}
    assert ll.word_forms("at ease") == {"at ease", "ease"}
    assert ll.word_forms("worn out") == {"worn out", "worn"}
    assert ll.word_forms("grief-stricken") == {"grief-stricken", "grief", "stricken"}
    assert ll.word_forms("self-confident") == {"self-confident", "confident"}


@pytest.fixture(scope="module")
def handmade():
    """A 1-layer Llama with a word-level vocabulary and an unembedding built by hand:
    happy = +e0, sad = -e0, calm = +e1, desperate = -e1, ease = +e2 (rows scaled)."""
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rows = {
        "<unk>": {}, "Ġhappy": {0: 2.0}, "HAPPY": {0: 1.5}, "▁Sad": {0: -2.0}, "sad": {0: -1.0},
        "calm": {1: 2.0}, "ĠDesperate": {1: -2.0}, "Ġease": {2: 2.0}, "Ġat": {},
        "the": {}, "ok": {3: 0.5}, "Ġunhappy": {0: -0.5},
    }
    vocab = {t: i for i, t in enumerate(rows)}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")), unk_token="<unk>"
    )
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=8, intermediate_size=16,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    w = torch.zeros(len(vocab), 8)
    for t, entries in rows.items():
        for k, v in entries.items():
            w[vocab[t], k] = v
    w += 0.001 * torch.randn_like(w)  # break ties among the zero rows
    model.lm_head.weight.data = w
    return model, tok


def handmade_vectors():
    emotions = ["happy", "sad", "calm", "desperate", "at ease"]
    x = np.zeros((5, 8))
    x[0, 0], x[1, 0], x[2, 1], x[3, 1], x[4, 2] = 3.0, -1.0, 0.5, -2.0, 1.0
    return emotions, x


def test_handmade_promotes_and_suppresses(handmade):
    model, tok = handmade
    emotions, x = handmade_vectors()
    res = ll.logit_lens(x, emotions, model, tok, scale=10.0, layer=7, top_k=3, batch_size=2)
    t = res.tokens
    happy_up = t[(t.emotion == "happy") & (t.direction == "promoted")]
    assert list(happy_up["token"][:2]) == ["Ġhappy", "HAPPY"]
    assert list(happy_up["is_own_word"][:2]) == [True, True]
    happy_down = t[(t.emotion == "happy") & (t.direction == "suppressed")]
    assert happy_down.iloc[0]["token"] == "▁Sad" and happy_down.iloc[0]["text"] == "sad"
    assert (t["layer"] == 7).all() and len(t) == 5 * 2 * 3
    s = res.summary.set_index("emotion")
    assert s.loc["happy", "own_word_rank"] == 1
    assert s.loc["sad", "own_word_rank"] == 1  # "▁Sad", any casing
    assert s.loc["desperate", "own_word_rank"] == 1  # "ĠDesperate"
    assert s.loc["at ease", "own_word_rank"] == 1  # content word "ease"
    assert s["own_word_promoted"].all() and (s["scale"] == 10.0).all()
    assert s.loc["happy", "own_word_logit_pct"] == pytest.approx(100 * 11 / 12)
    p = res.pairs.set_index(["vector", "word_of"])
    assert set(p.index) == {("happy", "sad"), ("sad", "happy"), ("calm", "desperate"),
                            ("desperate", "calm")}
    assert p["in_top_k_suppressed"].all()
    assert p.loc[("happy", "sad"), "word_tokens"] == 2
    assert p.loc[("happy", "sad"), "min_percentile"] == 0.0
    assert p.loc[("happy", "sad"), "own_word_percentile"] == 100.0
    counts = ll.summarise(res, 3)
    assert counts["own_word_promoted"] == 5 and counts["opposite_pairs"] == 2
    assert counts["opposite_pairs_mutually_suppressed"] == 2


def test_scale_only_matters_through_epsilon(handmade):
    model, _ = handmade
    d = np.eye(8)[:2]
    a = lens.lens_logits(d, model, 1.0)
    b = lens.lens_logits(d, model, 100.0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fixture", TINY)
def test_final_norm_is_the_models_last_norm(fixture, request):
    """The module the lens uses is the one whose output the model unembeds."""
    model, tok = request.getfixturevalue(fixture)
    norm = lens.final_norm(model)
    seen = {}
    handle = norm.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
    try:
        ids = tok("I feel happy today", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
    finally:
        handle.remove()
    torch.testing.assert_close(seen["out"], out.hidden_states[-1])
    assert model.get_output_embeddings().weight.shape[0] >= len(tok)


@pytest.mark.parametrize("fixture", TINY)
def test_unembedding_row_promotes_its_own_word(fixture, request):
    """A direction equal to the unembedding row of " happy" puts that token in its top 20."""
    model, tok = request.getfixturevalue(fixture)
    w = model.get_output_embeddings().weight.detach().float().numpy()
    ids = {e: tok(" " + e, add_special_tokens=False)["input_ids"] for e in ("happy", "sad")}
    assert all(len(v) == 1 for v in ids.values()), ids
    x = np.stack([w[ids["happy"][0]], w[ids["sad"][0]]])
    res = ll.logit_lens(x, ["happy", "sad"], model, tok, scale=8.0, top_k=20)
    s = res.summary.set_index("emotion")
    assert s["own_word_in_vocab"].all()
    assert s.loc["happy", "own_word_promoted"] and s.loc["sad", "own_word_promoted"]
    assert len(res.tokens) == 2 * 2 * 20
    assert list(res.pairs["vector"]) == ["happy", "sad"]


@pytest.mark.slow
def test_default_model_lens_on_its_own_word_directions(default_model):
    """The real SmolLM2: directions equal to the (tied) embedding rows of the emotion words.

    The real embedding is anisotropic (word-piece rows of large norm top most directions), so
    the own word is not always in the top 20; it stays in the top 5% of the 49,152 logits
    (observed 98.9-99.99th percentile). Checks the lens reads the real model and tokenizer
    (BPE 'Ġ' tokens, casing) consistently."""
    model, tok = default_model
    emotions = ["happy", "sad", "calm", "desperate", "proud", "ashamed", "excited", "bored",
                "loving", "hostile"]
    w = model.get_output_embeddings().weight.detach().float().numpy()
    rows = [tok(" " + e, add_special_tokens=False)["input_ids"] for e in emotions]
    single = [r[0] for r in rows if len(r) == 1]
    assert len(single) >= 8
    names = [e for e, r in zip(emotions, rows) if len(r) == 1]
    res = ll.logit_lens(w[single], names, model, tok, scale=50.0, top_k=20)
    s = res.summary
    assert s["own_word_in_vocab"].all()
    assert (s["own_word_logit_pct"] > 95).all(), s
    assert s.set_index("emotion").loc["happy", "own_word_promoted"]
    promoted = res.tokens[res.tokens.direction == "promoted"]
    assert promoted["text"].str.len().gt(0).any()


# --- the partial loader: only the final norm and the unembedding ---------------------------


def _saved(model, tmp_path, **kwargs):
    out = tmp_path / "saved"
    model.save_pretrained(out, **kwargs)
    return out


def _assert_same_lens(model, head, d, seed=0):
    """Same logits (allclose) and the same top and bottom tokens as the full model."""
    x = np.random.default_rng(seed).standard_normal((6, d))
    full = lens.lens_logits(x, model, 37.0)
    part = lens.lens_logits(x, head, 37.0)
    torch.testing.assert_close(part, full, rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.topk(part, 10).indices, torch.topk(full, 10).indices)
    assert torch.equal(torch.topk(-part, 10).indices, torch.topk(-full, 10).indices)


@pytest.mark.parametrize("fixture", TINY)
def test_partial_loader_matches_the_full_model(fixture, request, tmp_path, caplog):
    """Tiny Llama (untied head), Gemma 3 and Gemma 4 text and multimodal (tied: the head is the
    input embedding; Gemma's norm scales by 1 + weight): the lens head read from the saved
    checkpoint gives the full model's logits, and nothing else is read."""
    import logging

    model, tok = request.getfixturevalue(fixture)
    path = _saved(model, tmp_path)
    with caplog.at_level(logging.INFO, logger="emotion_vectors.analysis.logit_lens"):
        head = ll.load_lens_head(path)
    assert type(head.norm) is type(lens.final_norm(model))
    torch.testing.assert_close(head.norm.weight, lens.final_norm(model).weight)
    d = model.get_output_embeddings().weight.shape[1]
    _assert_same_lens(model, head, d)
    info = head.info
    names = set(info["tensors"])
    tied = fixture != "tiny_llama"
    assert info["tied"] is tied
    assert len(names) == 2
    assert any(n.endswith("norm.weight") for n in names)
    assert any(n.endswith("lm_head.weight" if not tied else "embed_tokens.weight")
               for n in names)
    assert not any(".layers." in n for n in names)
    assert 0 < info["loaded_bytes"] < info["checkpoint_bytes"]
    assert "logit lens: read" in caplog.text and "of the checkpoint" in caplog.text
    # the whole lens on a real tokenizer agrees as well
    w = model.get_output_embeddings().weight.detach().float().numpy()
    ids = [tok(" " + e, add_special_tokens=False)["input_ids"][0] for e in ("happy", "sad")]
    a = ll.logit_lens(w[ids], ["happy", "sad"], model, tok, scale=8.0, top_k=15).tokens
    b = ll.logit_lens(w[ids], ["happy", "sad"], head, tok, scale=8.0, top_k=15).tokens
    assert a["token_id"].tolist() == b["token_id"].tolist()


def test_gemma_norm_uses_one_plus_weight(tiny_gemma3, tmp_path):
    """Guard against building a plain RMSNorm: with weight w, Gemma 3 multiplies by 1 + w."""
    model, _ = tiny_gemma3
    head = ll.load_lens_head(_saved(model, tmp_path))
    x = torch.randn(2, 1, model.config.hidden_size)
    rms = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + head.norm.eps)
    torch.testing.assert_close(head.norm(x), rms * (1 + head.norm.weight))


def test_partial_loader_dtype_and_missing_tensor(tiny_llama, tmp_path):
    model, _ = tiny_llama
    path = _saved(model, tmp_path)
    head = ll.load_lens_head(path, dtype="bfloat16")
    assert head.lm_head.weight.dtype == torch.bfloat16
    assert head.norm.weight.dtype == torch.bfloat16
    from safetensors.torch import load_file, save_file

    state = load_file(path / "model.safetensors")
    del state["model.norm.weight"]
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(KeyError, match="model.norm.weight"):
        ll.load_lens_head(path)


def test_hub_path_downloads_only_the_needed_shards(tiny_llama, tmp_path, monkeypatch):
    """A hub id: config and index first, then only the shard files holding the norm and the
    head (here: not the shard of the input embedding nor those of the blocks). The hub is
    simulated by a local copy (no network here)."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    model, _ = tiny_llama
    repo = _saved(model, tmp_path, max_shard_size="2MB")
    index = json.loads((repo / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 3
    cache = tmp_path / "cache" / "snapshot"
    cache.mkdir(parents=True)
    fetched: list[str] = []

    def fake_download(repo_id, filename, revision=None, **_):
        assert repo_id == "someone/tiny" and revision == "abc"
        fetched.append(filename)
        if not (repo / filename).exists():
            raise EntryNotFoundError(f"{filename} not in the repo")
        shutil.copy(repo / filename, cache / filename)
        return str(cache / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    head = ll.load_lens_head("someone/tiny", revision="abc")
    needed = {index["weight_map"]["lm_head.weight"], index["weight_map"]["model.norm.weight"]}
    assert set(fetched) == {"config.json", "model.safetensors.index.json"} | needed
    assert index["weight_map"]["model.embed_tokens.weight"] not in fetched
    assert head.info["repo_id"] == "someone/tiny"
    assert head.info["checkpoint_bytes"] == index["metadata"]["total_size"]
    _assert_same_lens(model, head, model.config.hidden_size)


@pytest.mark.slow
def test_partial_loader_on_the_default_model(default_model):
    """The real SmolLM2-135M (tied embeddings): same logits as the full model's norm + head,
    reading ~21% of the checkpoint."""
    from conftest import DEFAULT_SPEC, MODELS_DIR

    model, tok = default_model
    head, tok2 = ll.load_lens(DEFAULT_SPEC, MODELS_DIR)
    assert head.info["tied"] and set(head.info["tensors"]) == {
        "model.norm.weight", "model.embed_tokens.weight"}
    assert head.info["loaded_share"] < 0.3
    _assert_same_lens(model, head, model.config.hidden_size)
    w = model.get_output_embeddings().weight.detach().float().numpy()
    ids = [tok(" " + e, add_special_tokens=False)["input_ids"][0] for e in ("happy", "calm")]
    a = ll.logit_lens(w[ids], ["happy", "calm"], model, tok, scale=50.0, top_k=20)
    b = ll.logit_lens(w[ids], ["happy", "calm"], head, tok2, scale=50.0, top_k=20)
    assert a.tokens["token"].tolist() == b.tokens["token"].tolist()
