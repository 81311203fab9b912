"""The extraction engine's rules one by one (``emotion_vectors.extraction.extract``): argument checks and
their messages, layer choice, batching at its caps, tokenising in chunks, padding ids, resume
bookkeeping and ``extract_pooled``'s arguments. Found untested by mutation testing
(``make mutants``); ``tests/test_extract.py`` checks the numbers against the plain reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from conftest import tokenizer_copy
from emotion_vectors.extraction import extract
from emotion_vectors.extraction.extract import (
    ExtractionError,
    LayerIndexError,
    NonFiniteActivationError,
    ShortTextError,
    default_layers,
    extract_pooled,
    iter_pooled,
    main_layer,
    main_stored_layer,
    plan_extraction,
    validate_layers,
)
from emotion_vectors.core.models import decoder_layers

TEXTS = [
    "the rain kept falling on the old roof while she counted coins at the kitchen table",
    "her brother argued with the landlord about a broken fence near the river path today",
    "the bus came late again so everyone walked home",
    "quiet market",
    "before the bus came late again so everyone walked home through the quiet market square at dusk",
]


def test_main_layer_and_its_nearest_stored_layer():
    assert [main_layer(n) for n in (1, 2, 3, 30, 60)] == [0, 0, 1, 19, 39]
    with pytest.raises(ValueError, match="^n_blocks must be >= 1, got 0$"):
        main_layer(0)
    assert main_stored_layer([4, 9, 19, 24], 30) == 19
    assert main_stored_layer([17, 21], 30) == 21  # equally near: the deeper
    assert main_stored_layer([4, 9, 17, 24], 30) == 17
    assert main_stored_layer([np.int64(3), 6], None) == 3  # depth unknown: max + 1 = 7 -> 4 -> nearest 3
    assert main_stored_layer([2], 100) == 2
    assert main_stored_layer(list(range(30)), None) == 19  # depth unknown: max + 1 = 30 blocks
    with pytest.raises(ValueError, match="^no stored layers$"):
        main_stored_layer([], 30)


def test_default_layers_steps():
    assert default_layers(6, step=1) == [0, 1, 2, 3, 4]
    assert default_layers(12, step=2) == [1, 3, 5, 7, 9]
    with pytest.raises(ValueError, match="^step must be >= 1, got 0$"):
        default_layers(6, step=0)
    with pytest.raises(ValueError, match="^n_blocks must be >= 1, got 0$"):
        default_layers(0)


def test_layer_validation_messages():
    assert validate_layers((np.int64(2), 0), 3) == [2, 0]
    with pytest.raises(LayerIndexError, match="^no layers requested: give at least one 0-based block index$"):
        validate_layers([], 6)
    with pytest.raises(LayerIndexError, match=r"^layer indices must be integers, got \[True\]$"):
        validate_layers([True], 6)
    with pytest.raises(LayerIndexError) as err:
        validate_layers([0, 6], 6)
    assert str(err.value) == (
        "layer indices [6] are outside 0..5: the model has 6 decoder blocks and layer i means the "
        "output of block i (0-based); negative indices are not accepted")
    with pytest.raises(LayerIndexError, match=r"^layer indices \[1, 2\] are listed more than once$"):
        validate_layers([2, 1, 2, 1], 6)


def test_plan_argument_checks(shared_tokenizer: Any):
    tok = shared_tokenizer
    cases = [
        (dict(short_policy="drop"), ValueError, "short_policy must be 'skip' or 'error', not 'drop'"),
        (dict(pool_start=-1), ValueError, "pool_start must be >= 0, got -1"),
        (dict(batch_size=0), ValueError, "batch_size must be >= 1 or None, got 0"),
        (dict(max_batch_tokens=0), ValueError, "max_batch_tokens must be >= 1 or None, got 0"),
        (dict(batch_size=None, max_batch_tokens=None), ValueError, "set batch_size, max_batch_tokens or both"),
    ]
    for kwargs, exc, message in cases:
        with pytest.raises(exc) as err:
            plan_extraction(tok, TEXTS, **kwargs)
        assert str(err.value) == message
    with pytest.raises(TypeError, match=r"^texts must be strings; positions \[1, 3\] are not$"):
        plan_extraction(tok, ["a", b"b", "c", None])  # type: ignore[list-item]
    with pytest.raises(TypeError) as err:
        plan_extraction(tok, ["a", "b", *[None] * 12])  # type: ignore[list-item]
    assert str(err.value) == "texts must be strings; positions [2, 3, 4, 5, 6, 7, 8, 9, 10, 11] are not"  # first 10
    with pytest.raises(ValueError, match="^got 5 texts but 2 ids$"):
        plan_extraction(tok, TEXTS, ["a", "b"])
    # pool_start 0 and batch_size 1 are allowed; ids default to positions, given ids become str
    plan = plan_extraction(tok, TEXTS, pool_start=0, batch_size=1)
    assert plan.ids == ["0", "1", "2", "3", "4"] and plan.n_texts == 5
    assert plan_extraction(tok, TEXTS, [10, 11, 12, 13, 14], max_batch_tokens=1).ids == ["10", "11", "12", "13", "14"]


def test_plan_fields_and_short_texts(shared_tokenizer: Any):
    tok = shared_tokenizer
    n = [len(tok(t)["input_ids"]) for t in TEXTS]
    plan = plan_extraction(tok, TEXTS, list("abcde"), pool_start=10, batch_size=2, max_batch_tokens=100)
    assert plan.n_tokens.tolist() == n and plan.n_tokens.dtype == np.int64
    short = [i for i in range(5) if n[i] <= 10]
    assert short == [2, 3]
    assert plan.kept.tolist() == [0, 1, 4] and plan.kept.dtype == np.int64
    assert plan.skipped == [("c", n[2]), ("d", n[3])]
    assert plan.skipped_indices.tolist() == short and plan.skipped_indices.dtype == np.int64
    assert (plan.pool_start, plan.short_policy, plan.batch_size, plan.max_batch_tokens) == (10, "skip", 2, 100)
    # n_tokens == pool_start is short, pool_start + 1 is not
    assert plan_extraction(tok, [TEXTS[2]], pool_start=n[2] - 1).kept.tolist() == [0]
    assert plan_extraction(tok, [TEXTS[2]], pool_start=n[2]).kept.tolist() == []
    # more than 50 short texts: 50 named, the rest counted
    many = [f"word{i}" for i in range(53)]
    with pytest.raises(ShortTextError) as err:
        plan_extraction(tok, many, pool_start=10, short_policy="error")
    msg = str(err.value)
    assert msg.startswith("53 text(s) have n_tokens <= pool_start=10, so no token is left to average: 0 (")
    assert "49 (" in msg and "50 (" not in msg and " and 3 more. Lengthen or drop them" in msg
    n_many = [len(tok(t)["input_ids"]) for t in many[:3]]
    assert f"average: 0 ({n_many[0]} tokens), 1 ({n_many[1]} tokens), 2 ({n_many[2]} tokens), 3 (" in msg
    assert msg.endswith("lower pool_start, or use short_policy='skip'.")
    assert plan.padded_tokens(np.array([], dtype=np.int64)) == 0
    assert plan.padded_tokens(np.array([0, 1])) == 2 * max(n[0], n[1])


def test_batches_at_their_caps():
    n_tokens = np.array([10, 10, 10, 8, 5, 5, 4])
    order = np.arange(7)
    batches = extract._make_batches(order, n_tokens, 3, None)
    assert [b.tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    # exactly at the token cap is allowed (3 x 10 = 30), one token less is not
    assert [b.tolist() for b in extract._make_batches(order[:4], n_tokens, None, 30)] == [[0, 1, 2], [3]]
    assert [b.tolist() for b in extract._make_batches(order[:4], n_tokens, None, 29)] == [[0, 1], [2, 3]]
    # a text longer than the cap has a batch of its own
    assert [b.tolist() for b in extract._make_batches(order[:2], n_tokens, None, 5)] == [[0], [1]]
    assert all(b.dtype == np.int64 for b in batches)
    # both caps: whichever binds first; padding counts the longest text so far
    assert [b.tolist() for b in extract._make_batches(order, n_tokens, 4, 24)] == [[0, 1], [2, 3], [4, 5, 6]]
    assert extract._make_batches(order[:0], n_tokens, 2, None) == []


def test_token_lengths_are_counted_in_chunks(shared_tokenizer: Any, monkeypatch: pytest.MonkeyPatch):
    tok = shared_tokenizer
    texts = [" ".join(["rain"] * k) for k in range(1, 12)]
    expected = [len(tok(t)["input_ids"]) for t in texts]
    monkeypatch.setattr(extract, "_TOKENIZE_CHUNK", 3)
    calls = []
    real_call = type(tok).__call__

    def counting(self, batch, *args, **kwargs):
        calls.append(len(batch))
        return real_call(self, batch, *args, **kwargs)

    monkeypatch.setattr(type(tok), "__call__", counting)
    lengths = extract._token_lengths(tok, texts)
    assert lengths.tolist() == expected and lengths.dtype == np.int64
    assert calls == [3, 3, 3, 2]


def test_iter_pooled_argument_checks(tiny_llama: Any):
    model, tok = tiny_llama
    plan = plan_extraction(tok, TEXTS, pool_start=2)
    with pytest.raises(ValueError, match="^plan covers 5 texts but 4 were given$"):
        next(iter_pooled(model, tok, TEXTS[:4], None, [1], plan=plan))
    odd = tokenizer_copy(tok, "right")
    odd.padding_side = "middle"
    with pytest.raises(ValueError, match="^tokenizer.padding_side must be 'left' or 'right', not 'middle'$"):
        next(iter_pooled(model, odd, TEXTS, None, [1], pool_start=2))
    # a plan made with another tokenisation (one more token per text) is refused, naming the ids
    bos = tokenizer_copy(tok, "right")
    from tokenizers.processors import TemplateProcessing

    start = "<|im_start|>"
    bos._tokenizer.post_processor = TemplateProcessing(
        single=f"{start} $A", pair=f"{start} $A $B", special_tokens=[(start, tok.convert_tokens_to_ids(start))])
    plan_ab = plan_extraction(tok, TEXTS[:2], ["a", "b"], pool_start=2)
    with pytest.raises(ExtractionError, match=r"^tokenisation changed since the plan was made \(token counts differ for ids \['a', 'b'\]\)$"):
        next(iter_pooled(model, bos, TEXTS[:2], ["a", "b"], [1], plan=plan_ab))


def _pad_ids_seen(model, tok, texts):
    seen = []

    def grab(module, args, kwargs):
        seen.append(kwargs["input_ids"].clone())

    handle = model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        list(iter_pooled(model, tok, texts, None, [0], pool_start=2, batch_size=2))
    finally:
        handle.remove()
    return seen


def test_padding_uses_the_pad_then_eos_then_0(tiny_llama: Any):
    model, tok = tiny_llama
    texts = [TEXTS[0], TEXTS[2]]  # different lengths: one row is padded
    short_len = len(tok(TEXTS[2])["input_ids"])
    for pad, eos, expected in ((7, 5, 7), (None, 5, 5), (None, None, 0)):
        t = tokenizer_copy(tok, "right")
        t.pad_token_id = pad
        t.eos_token_id = eos
        assert t.pad_token_id == pad and t.eos_token_id == eos
        ids = _pad_ids_seen(model, t, texts)[0]
        assert ids[1, short_len:].unique().tolist() == [expected], (pad, eos)
    left = tokenizer_copy(tok, "left")
    ids = _pad_ids_seen(model, left, texts)[0]
    assert ids[1, : ids.shape[1] - short_len].unique().tolist() == [tok.pad_token_id]


def test_pad_batch_positions_count_from_each_text():
    ids, mask, pos = extract._pad_batch([[5, 6, 7], [8]], 0, "left", torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]
    ids, mask, pos = extract._pad_batch([[5, 6, 7], [8]], 9, "right", torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert ids.dtype == mask.dtype == pos.dtype == torch.long


def test_non_finite_message_names_every_bad_layer(tiny_llama: Any):
    model, tok = tiny_llama
    blocks = decoder_layers(model)

    def poison(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden[1, :, 0] = float("inf")  # every position of the batch's second text
        return output

    handle = blocks[1].register_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteActivationError) as err:
            list(iter_pooled(model, tok, TEXTS[:2], ["s1", "s2"], [3, 1, 0], pool_start=2, batch_size=2))
    finally:
        handle.remove()
    order = plan_extraction(tok, TEXTS[:2], ["s1", "s2"], pool_start=2).batches[0].tolist()
    bad = ["s1", "s2"][order[1]]
    assert str(err.value) == (
        f"non-finite pooled activation for text id {bad!r} at layer 1 (0-based block output) "
        "(also at layers [3]); check the text and the model dtype (float16 can overflow on "
        "Gemma's residual stream)")


def test_out_of_memory_keeps_the_smaller_batch_for_later_batches(tiny_llama: Any):
    model, tok = tiny_llama
    texts = [" ".join(["rain"] * (30 - i)) for i in range(8)]
    seen: list[int] = []

    def fail_if_big(module, args):
        rows = int(args[0].shape[0])
        seen.append(rows)
        if rows > 2:
            raise torch.OutOfMemoryError("raised by the test")

    handle = decoder_layers(model)[0].register_forward_pre_hook(fail_if_big)
    try:
        batches = list(iter_pooled(model, tok, texts, None, [0], pool_start=2, batch_size=4))
    finally:
        handle.remove()
    # batch 1: 4 fails, 2 + 2; batch 2 runs as 2 + 2 straight away
    assert seen == [4, 2, 2, 2, 2]
    assert [len(b.indices) for b in batches] == [4, 4]
    # a custom out-of-memory type is honoured too
    seen.clear()

    class Full(RuntimeError):
        pass

    def full_if_big(module, args):
        seen.append(int(args[0].shape[0]))
        if args[0].shape[0] > 1:
            raise Full("no room")

    handle = decoder_layers(model)[0].register_forward_pre_hook(full_if_big)
    try:
        out = list(iter_pooled(model, tok, texts[:3], None, [0], pool_start=2, batch_size=3, oom_errors=(Full,)))
    finally:
        handle.remove()
    assert seen == [3, 2, 1, 1, 1] and sum(len(b.indices) for b in out) == 3


def test_resume_progress_counts_only_new_texts(tiny_llama: Any):
    model, tok = tiny_llama
    calls = []
    batches = list(iter_pooled(model, tok, TEXTS, None, [0], pool_start=2, batch_size=2, skip_indices={0, 1, 4},
                               progress=lambda *a: calls.append(a)))
    got = sorted(int(i) for b in batches for i in b.indices)
    assert got == [2]  # text 3 is too short, 0, 1 and 4 were done before
    assert calls[-1][:2] == (1, 1)


def test_extract_pooled_arguments(tiny_llama: Any):
    model, tok = tiny_llama
    plan = plan_extraction(tok, TEXTS, list("abcde"), pool_start=2, batch_size=1)
    # a given plan wins over plan settings passed beside it
    res = extract_pooled(model, tok, TEXTS, list("abcde"), [np.int64(2), 0], plan=plan, pool_start=40, batch_size=3)
    assert res.layers == [2, 0] and all(type(x) is int for x in res.layers)
    assert res.ids == list("abce") and res.indices.tolist() == [0, 1, 2, 4]  # "d" is too short
    same = extract_pooled(model, tok, TEXTS, list("abcde"), [2, 0], pool_start=2, batch_size=1)
    np.testing.assert_array_equal(res.pooled, same.pooled)
    # iter_pooled's own arguments pass through (resume)
    part = extract_pooled(model, tok, TEXTS, list("abcde"), [2, 0], pool_start=2, batch_size=1, skip_indices={1, 3})
    assert part.ids == ["a", "c", "e"] and part.indices.tolist() == [0, 2, 4]
    np.testing.assert_array_equal(part.pooled, same.pooled[[0, 2, 3]])
    # nothing long enough: an empty result of the documented shapes
    empty = extract_pooled(model, tok, ["a", "b"], ["x", "y"], [1, 3], pool_start=5)
    assert empty.indices.shape == (0,) and empty.indices.dtype == np.int64
    assert empty.pooled.shape == (0, 2, 0) and empty.pooled.dtype == np.float32
    assert empty.token_norm.shape == (0, 2) and empty.n_tokens.shape == (0,)
    assert empty.token_norm.dtype == np.float32 and empty.n_tokens.dtype == np.int64
    assert empty.ids == [] and [i for i, _ in empty.skipped] == ["x", "y"] and empty.layers == [1, 3]


def test_block_outputs_of_every_shape():
    from types import SimpleNamespace

    h = torch.zeros(2, 3, 4)
    assert extract._block_hidden(SimpleNamespace(hidden_states=h)) is h  # a ModelOutput-like object
    assert extract._block_hidden((h,)) is h
    for bad in ((None, h), [], (), 5, SimpleNamespace(hidden_states=None)):
        with pytest.raises(TypeError, match="^cannot read hidden states from a decoder block output of type "):
            extract._block_hidden(bad)
    with pytest.raises(TypeError, match=r"of type <class 'int'>$"):
        extract._block_hidden(5)


def test_device_cache_is_emptied_only_for_a_cuda_device(monkeypatch: pytest.MonkeyPatch):
    """After an out-of-memory error the CUDA caching allocator gives its blocks back before the
    retry; a CPU (or other) device leaves CUDA alone. A spy stands in for the allocator call,
    which a machine without a GPU cannot observe."""
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    for device in ("cpu", "meta"):
        extract._free_device_memory(torch.device(device))
    assert calls == []
    extract._free_device_memory(torch.device("cuda"))
    extract._free_device_memory(torch.device("cuda", 1))
    assert calls == ["empty_cache", "empty_cache"]


def test_model_is_told_the_padding_and_builds_no_cache(tiny_llama: Any):
    """What the forward pass receives: an attention mask over each text's own tokens and
    position ids counting from each text's first token (0), on either padding side, and no
    KV cache (nothing is generated, so a cache would only take device memory)."""
    model, tok = tiny_llama
    texts = [TEXTS[2], TEXTS[0], TEXTS[4]]
    lengths = sorted((len(tok(t)["input_ids"]) for t in texts), reverse=True)  # rows: longest first
    assert len(set(lengths)) == 3
    longest = lengths[0]
    for side in ("left", "right"):
        calls: list[dict[str, Any]] = []
        caches: list[Any] = []
        handles = [
            model.register_forward_pre_hook(lambda m, a, k: calls.append(dict(k)), with_kwargs=True),
            decoder_layers(model)[0].register_forward_pre_hook(
                lambda m, a, k: caches.append(k.get("cache", k.get("past_key_values"))),  # renamed in 5.x
                with_kwargs=True),
        ]
        try:
            list(iter_pooled(model, tokenizer_copy(tok, side), texts, None, [1], pool_start=2, batch_size=3))
        finally:
            for h in handles:
                h.remove()
        assert len(calls) == 1 and caches == [None], side
        mask, pos = calls[0]["attention_mask"], calls[0]["position_ids"]
        assert mask is not None and pos is not None and mask.shape == pos.shape == (3, longest)
        for row, n in enumerate(lengths):
            own = slice(longest - n, longest) if side == "left" else slice(0, n)
            expected = torch.zeros(longest, dtype=torch.long)
            expected[own] = 1
            assert mask[row].tolist() == expected.tolist(), (side, row)
            assert pos[row, own].tolist() == list(range(n)), (side, row)


def _forward_shapes(model: Any) -> tuple[list[tuple[int, int]], Any]:
    """Record the ``(rows, padded length)`` of every forward pass through the first block."""
    shapes: list[tuple[int, int]] = []

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        shapes.append((int(hidden.shape[0]), int(hidden.shape[1])))

    return shapes, decoder_layers(model)[0].register_forward_pre_hook(grab, with_kwargs=True)


def test_iter_pooled_plans_with_its_own_arguments_and_defaults(tiny_llama: Any):
    """Without a plan, iter_pooled batches exactly as plan_extraction does with the same
    arguments: by default at most 8 texts from token 50 on; under ``max_batch_tokens`` alone,
    no forward pass holds more padded tokens than the budget."""
    model, tok = tiny_llama
    texts = [" ".join(["rain"] * (58 + 3 * i)) for i in range(10)] + [" ".join(["rain"] * 50)]
    n = [len(tok(t)["input_ids"]) for t in texts]
    assert min(n[:10]) > 50 and n[10] == 50  # the last one is too short for the default pool_start
    shapes, handle = _forward_shapes(model)
    try:
        out = list(iter_pooled(model, tok, texts, None, [0]))
    finally:
        handle.remove()
    plan = plan_extraction(tok, texts)
    assert (plan.pool_start, plan.batch_size, plan.max_batch_tokens) == (50, 8, None)
    assert [b.indices.tolist() for b in out] == [b.tolist() for b in plan.batches]
    assert [len(b.indices) for b in out] == [8, 2] and [r for r, _ in shapes] == [8, 2]
    budget = 3 * max(n) - 1  # two of the longest texts fit, three do not
    shapes, handle = _forward_shapes(model)
    try:
        out = list(iter_pooled(model, tok, texts, None, [0], pool_start=2, batch_size=None, max_batch_tokens=budget))
    finally:
        handle.remove()
    plan = plan_extraction(tok, texts, pool_start=2, batch_size=None, max_batch_tokens=budget)
    assert [b.indices.tolist() for b in out] == [b.tolist() for b in plan.batches]
    assert len(out) > 1 and sum(len(b.indices) for b in out) == len(texts)
    assert all(rows * length <= budget for rows, length in shapes) and max(r for r, _ in shapes) >= 2


def test_input_ids_go_to_the_input_embeddings_device(tiny_llama: Any):
    """The ids go where the input embeddings are, not where the model's first parameter is
    (here an unused leading module left on the meta device, like an unloaded vision tower)."""
    model, tok = tiny_llama

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower = torch.nn.Linear(4, 4, device="meta")  # registered first
            self.inner = model

        def get_input_embeddings(self) -> Any:
            return self.inner.get_input_embeddings()

        def get_decoder(self) -> Any:
            return self.inner.get_decoder()

        def forward(self, **kwargs: Any) -> Any:
            return self.inner(**kwargs)

    wrapped = Wrapped().eval()
    assert next(wrapped.parameters()).device.type == "meta"
    expected = extract_pooled(model, tok, TEXTS[:3], None, [1, 3], pool_start=2, batch_size=3)
    got = extract_pooled(wrapped, tok, TEXTS[:3], None, [1, 3], pool_start=2, batch_size=3)
    np.testing.assert_array_equal(got.pooled, expected.pooled)
    np.testing.assert_array_equal(got.token_norm, expected.token_norm)


def test_a_tokenizer_without_a_padding_side_pads_on_the_right(tiny_llama: Any):
    """``padding_side`` None, empty or missing altogether means right padding."""
    model, tok = tiny_llama
    texts = [TEXTS[0], TEXTS[2]]
    short_len = len(tok(TEXTS[2])["input_ids"])

    class Bare:  # a tokenizer-like object with no padding_side attribute
        pad_token_id = tok.pad_token_id
        eos_token_id = tok.eos_token_id

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return tok(*args, **kwargs)

    unset = []
    for value in (None, ""):
        t = tokenizer_copy(tok, "right")
        t.padding_side = value
        unset.append(t)
    for t in [*unset, Bare()]:
        ids = _pad_ids_seen(model, t, texts)[0]
        assert ids.shape[1] > short_len
        assert ids[1, short_len:].unique().tolist() == [tok.pad_token_id]
        assert ids[1, :short_len].tolist() == tok(TEXTS[2])["input_ids"]


def test_batches_name_their_texts(tiny_llama: Any):
    """Each PooledBatch's ids are the ids of its indices, in the same order, also when a
    resumed batch yields only part of its texts."""
    model, tok = tiny_llama
    ids = ["alpha", "beta", "gamma", "delta", "eps"]
    plan = plan_extraction(tok, TEXTS, ids, pool_start=2, batch_size=2)
    assert [len(b) for b in plan.batches] == [2, 2]  # "delta" (2 tokens) is skipped
    out = list(iter_pooled(model, tok, TEXTS, ids, [1], plan=plan, skip_indices={plan.batches[0][0]}))
    assert [b.indices.tolist() for b in out] == [plan.batches[0][1:].tolist(), plan.batches[1].tolist()]
    for b in out:
        assert b.ids == [ids[i] for i in b.indices]
        assert b.pooled.shape[0] == b.token_norm.shape[0] == b.n_tokens.shape[0] == len(b.ids)


def test_short_text_error_counts_the_texts_it_does_not_name(shared_tokenizer: Any):
    """Up to 50 short texts are all named and nothing is added; from 51 on, the rest is counted."""
    tok = shared_tokenizer
    many = [f"word{i}" for i in range(51)]
    n = [len(tok(t)["input_ids"]) for t in many]
    tail = ". Lengthen or drop them, lower pool_start, or use short_policy='skip'."
    with pytest.raises(ShortTextError) as err:
        plan_extraction(tok, [TEXTS[0], *many[:2]], pool_start=10, short_policy="error")
    assert str(err.value) == (
        f"2 text(s) have n_tokens <= pool_start=10, so no token is left to average: 1 ({n[0]} tokens), "
        f"2 ({n[1]} tokens){tail}")
    for k, more in ((50, ""), (51, " and 1 more")):
        with pytest.raises(ShortTextError) as err:
            plan_extraction(tok, many[:k], pool_start=10, short_policy="error")
        assert str(err.value).endswith(f"49 ({n[49]} tokens){more}{tail}"), k


# --- devices: the meta device stands in for a second device (no GPU here) -------------------


class _ToyDecoder(torch.nn.Module):
    """Embedding + linear blocks, runnable on the meta device (a transformers model is not: its
    mask code reads values); ``model.layers`` are its decoder blocks, as ``decoder_layers`` finds them."""

    def __init__(self, vocab: int = 50, d: int = 8, n_blocks: int = 3) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(d, d) for _ in range(n_blocks))

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        h = self.embed(input_ids)
        for block in self.layers:
            h = block(h)
        return (h,)


def test_inputs_and_pooling_buffers_follow_the_device() -> None:
    meta = torch.device("meta")
    # the padded ids, mask and own-token positions go to the model's input device
    ids, mask, positions = extract._pad_batch([[1, 2, 3], [4, 5]], 0, "left", meta)
    assert (ids.device, mask.device, positions.device) == (meta, meta, meta)
    assert ids.shape == mask.shape == positions.shape == (2, 3)
    # a forward pass on that device pools there: (b, n_layers, d) float32 buffers on the device
    with torch.device("meta"):
        model = _ToyDecoder()
    pooler = extract._Pooler(decoder_layers(model), [0, 2])
    pooled, norms = extract._run_forward(model, pooler, [[1, 2, 3, 4], [5, 6]], 1, 0, "left", meta)
    assert pooled.device == meta and pooled.shape == (2, 2, 8) and pooled.dtype == torch.float32
    assert norms.device == meta and norms.shape == (2, 2) and norms.dtype == torch.float32
    # a block whose output is on another device than the inputs (a model split over devices):
    # it is moved to the window's device, where the buffers live
    pooler = extract._Pooler([torch.nn.Identity()], [0])
    pooler.start(torch.ones((2, 3), dtype=torch.bool, device=meta))
    with pytest.raises(extract._StopForward):
        pooler._hook(0, 0)(None, (), (torch.randn(2, 3, 4),))
    assert pooler.pooled.device == meta and pooler.norms.device == meta
    assert pooler.pooled.shape == (2, 1, 4) and pooler.norms.shape == (2, 1)
