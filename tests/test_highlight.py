"""Token-level projections (emotion_vectors.extraction.highlight) on the real default model."""

import html
import re

import numpy as np
import pytest
import torch

from emotion_vectors.extraction.highlight import highlight_html, token_projections

pytestmark = pytest.mark.slow

TEXT = "I finally got the job & I can't stop smiling <3"


def test_token_projections_equal_hidden_states(default_model):
    model, tok = default_model
    rng = np.random.default_rng(0)
    vector = rng.normal(size=model.config.hidden_size) * 3.0  # not unit: normalised inside
    unit = vector / np.linalg.norm(vector)
    enc = tok(TEXT, add_special_tokens=True, return_tensors="pt")
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True, use_cache=False).hidden_states
    for layer in (4, 19):
        got = token_projections(model, tok, TEXT, vector, layer)
        want = hs[layer + 1][0].double().numpy() @ unit  # block `layer`'s output
        assert got.layer == layer and got.token_ids == enc["input_ids"][0].tolist()
        assert got.projections.shape == (len(got.token_ids),)
        np.testing.assert_allclose(got.projections, want, rtol=1e-4, atol=1e-3)
    # The pieces rebuild the text exactly, one per token.
    assert "".join(got.pieces) == TEXT and len(got.pieces) == len(got.token_ids)
    # max_tokens keeps the leading tokens, with the same values (causal model).
    short = token_projections(model, tok, TEXT, vector, 19, max_tokens=4)
    np.testing.assert_allclose(short.projections, got.projections[:4], rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError):
        token_projections(model, tok, TEXT, np.zeros(model.config.hidden_size), 19)
    with pytest.raises(ValueError):
        token_projections(model, tok, TEXT, vector, 99)


def test_highlight_html_escapes_text(default_model):
    model, tok = default_model
    text = '<script>alert("x")</script> & fish <b>bold</b>'
    tp = token_projections(model, tok, text, np.ones(model.config.hidden_size), 19)
    page = highlight_html(
        [{"emotion": "happy<i>", "text_id": "id&1", "pieces": tp.pieces, "tokens": tp.tokens,
          "values": tp.projections / np.abs(tp.projections).max() * 3,
          "pooled": [i > 0 for i in range(len(tp))], "score": 1.5}],
        title="Token view <test>",
    )
    assert "<script" not in page and "<b>" not in page and '"x")' not in page
    assert "happy&lt;i&gt;" in page
    # The spans' contents, unescaped, are the text.
    inner = re.findall(r'<span class="tok[^"]*" style="[^"]*" title="[^"]*">([^<]*)</span>', page)
    assert len(inner) == len(tp) and html.unescape("".join(inner)) == text
    assert "id&amp;1" in page and "Token view &lt;test&gt;" in page
    assert page.count('<span class="tok') == len(tp)
    assert page.count("tok unpooled") == 1 and "background:#" in page
