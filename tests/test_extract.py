"""Tests of the activation extraction engine (``emotion_vectors.extraction.extract``).

The reference everywhere is the plain way: run each text alone (no padding) with
``output_hidden_states=True`` and average ``hidden_states[i + 1][pool_start:]``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL_FIXTURES, tokenizer_copy
from emotion_vectors.extraction.extract import (
    ExtractionError,
    LayerIndexError,
    NonFiniteActivationError,
    PooledBatch,
    ShortTextError,
    _block_hidden,
    default_layers,
    extract_pooled,
    iter_pooled,
    plan_extraction,
    validate_layers,
)
from emotion_vectors.core.models import decoder_layers

WORDS = (
    "the rain kept falling on the old roof while she counted coins at the kitchen table "
    "and her brother argued with the landlord about a broken fence near the river path "
    "before the bus came late again so everyone walked home through the quiet market"
).split()
REL_TOL = 1e-4


def make_texts(n_words: Sequence[int], seed: int = 0) -> list[str]:
    """Deterministic word-salad texts with the given word counts."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=n)) for n in n_words]


# Mixed lengths (about 45 to 190 tokens with the SmolLM2 tokenizer), unsorted on purpose.
MIXED = make_texts([70, 150, 55, 190, 95, 60, 120])


def reference(
    model: torch.nn.Module, tokenizer: Any, text: str, layers: Sequence[int], pool_start: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Plain reference for one text: ``(pooled (L, d), token_norm (L,), n_tokens)``."""
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states
    pooled, norms = [], []
    for layer in layers:
        h = hidden[layer + 1][0, pool_start:].to(torch.float32)
        pooled.append(h.mean(0).numpy())
        norms.append(torch.linalg.vector_norm(h, dim=-1).mean().item())
    return np.stack(pooled), np.asarray(norms, dtype=np.float32), int(enc["input_ids"].shape[1])


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Largest ``||a - b|| / ||b||`` over the last axis."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float((np.linalg.norm(a64 - b64, axis=-1) / np.linalg.norm(b64, axis=-1)).max())


def check_against_reference(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: list[str],
    layers: list[int],
    pool_start: int = 50,
    **kwargs: Any,
) -> None:
    before = hook_ids(model)
    result = extract_pooled(model, tokenizer, texts, None, layers, pool_start=pool_start, **kwargs)
    assert hook_ids(model) == before  # the engine's hooks are gone
    assert result.skipped == []
    assert result.indices.tolist() == list(range(len(texts)))
    assert result.pooled.dtype == np.float32 and result.token_norm.dtype == np.float32
    for j, text in enumerate(texts):
        ref_pooled, ref_norm, n = reference(model, tokenizer, text, layers, pool_start)
        assert result.n_tokens[j] == n
        assert rel_err(result.pooled[j], ref_pooled) <= REL_TOL, (j, rel_err(result.pooled[j], ref_pooled))
        np.testing.assert_allclose(result.token_norm[j], ref_norm, rtol=REL_TOL)


class Counter:
    """Forward pre-hook that counts calls and records the batch size it saw."""

    def __init__(self) -> None:
        self.calls = 0
        self.batch_sizes: list[int] = []

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.calls += 1
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor):
            self.batch_sizes.append(int(hidden.shape[0]))


def hook_ids(model: torch.nn.Module) -> list[set[int]]:
    """Ids of the forward hooks on each block (transformers may keep its own there)."""
    return [set(b._forward_hooks) for b in decoder_layers(model)]


# ---------------------------------------------------------------- equality with the reference


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("fixture", TINY_MODEL_FIXTURES)
def test_pooled_equals_hidden_states_reference(request: pytest.FixtureRequest, fixture: str, side: str) -> None:
    model, tok = request.getfixturevalue(fixture)
    tok = tokenizer_copy(tok, side)
    n_blocks = len(decoder_layers(model))
    layers = [n_blocks - 2, 0, 2]  # unsorted on purpose; the last block is tested separately
    check_against_reference(model, tok, MIXED, layers, batch_size=3)


@pytest.mark.parametrize("side", ["left", "right"])
def test_default_model_equals_reference(default_model: tuple[Any, Any], side: str) -> None:
    model, tok = default_model
    tok = tokenizer_copy(tok, side)
    texts = make_texts([70, 140, 55, 100], seed=3)
    check_against_reference(model, tok, texts, [4, 19, 28], batch_size=4)


def test_max_batch_tokens_and_batch_size_give_same_numbers(tiny_llama: tuple[Any, Any]) -> None:
    model, tok = tiny_llama
    by_count = extract_pooled(model, tok, MIXED, None, [1, 3], batch_size=2)
    by_tokens = extract_pooled(model, tok, MIXED, None, [1, 3], batch_size=None, max_batch_tokens=300)
    assert rel_err(by_tokens.pooled, by_count.pooled) <= REL_TOL


def test_bos_is_token_zero_when_the_tokenizer_adds_it(tiny_llama: tuple[Any, Any]) -> None:
    """Position 0 is whatever the add_special_tokens=True encoding starts with (here a BOS)."""
    from tokenizers.processors import TemplateProcessing

    model, tok = tiny_llama
    bos = "<|im_start|>"
    tok_bos = tokenizer_copy(tok, "left")
    tok_bos._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))]
    )
    text = MIXED[0]
    n_plain = len(tok(text)["input_ids"])
    result = extract_pooled(model, tok_bos, [text], None, [2], pool_start=10)
    assert result.n_tokens[0] == n_plain + 1
    ref, _, _ = reference(model, tok_bos, text, [2], 10)
    assert rel_err(result.pooled[0], ref) <= REL_TOL


def test_bfloat16_model_pools_in_float32(tiny_llama: tuple[Any, Any]) -> None:
    model, tok = tiny_llama
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    result = extract_pooled(bf16, tok, MIXED[:3], None, [1, 3], batch_size=1)
    assert result.pooled.dtype == np.float32
    for j, text in enumerate(MIXED[:3]):
        ref, _, _ = reference(bf16, tok, text, [1, 3], 50)  # bf16 states, float32 mean
        assert rel_err(result.pooled[j], ref) <= 1e-5


# ---------------------------------------------------------------- layer convention, early stop


@pytest.mark.parametrize("fixture", TINY_MODEL_FIXTURES)
def test_last_block_is_taken_before_the_final_norm(request: pytest.FixtureRequest, fixture: str) -> None:
    model, tok = request.getfixturevalue(fixture)
    last = len(decoder_layers(model)) - 1
    result = extract_pooled(model, tok, MIXED[:3], None, [last], batch_size=3)
    # hidden_states[-1] is after the final norm: not what layer `last` holds.
    post_norm = np.stack([reference(model, tok, t, [last], 50)[0] for t in MIXED[:3]])
    assert rel_err(result.pooled, post_norm) > 0.1
    # The same stack without its final norm gives the raw output of the last block.
    raw = copy.deepcopy(model)
    raw.get_decoder().norm = torch.nn.Identity()
    pre_norm = np.stack([reference(raw, tok, t, [last], 50)[0] for t in MIXED[:3]])
    assert rel_err(result.pooled, pre_norm) <= REL_TOL


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma4_mm"])
def test_forward_stops_after_the_deepest_wanted_block(request: pytest.FixtureRequest, fixture: str) -> None:
    model, tok = request.getfixturevalue(fixture)
    blocks = decoder_layers(model)
    counters = {name: Counter() for name in ("wanted", "later", "last", "norm", "lm_head")}
    modules = {
        "wanted": blocks[1],
        "later": blocks[2],
        "last": blocks[-1],
        "norm": model.get_decoder().norm,
        "lm_head": model.get_output_embeddings(),
    }
    handles = [modules[k].register_forward_pre_hook(c, with_kwargs=True) for k, c in counters.items()]
    try:
        out = extract_pooled(model, tok, MIXED[:4], None, [0, 1], batch_size=2)
        assert counters["wanted"].calls == 2  # two batches
        assert counters["later"].calls == counters["last"].calls == 0
        assert counters["norm"].calls == counters["lm_head"].calls == 0
        # Asking for the last block still skips the final norm and the LM head.
        extract_pooled(model, tok, MIXED[:4], None, [len(blocks) - 1], batch_size=4)
        assert counters["last"].calls == 1
        assert counters["norm"].calls == counters["lm_head"].calls == 0
    finally:
        for h in handles:
            h.remove()
    assert out.pooled.shape == (4, 2, model.config.get_text_config().hidden_size)


def test_default_layers_and_validation() -> None:
    assert default_layers(60) == [4, 9, 14, 19, 24, 29, 34, 39, 44, 49, 54]  # 39: two-thirds
    assert default_layers(30) == [4, 9, 14, 19, 24]
    assert default_layers(18) == [4, 9, 11, 14]
    assert default_layers(6) == [3, 4]
    assert default_layers(1) == [0]
    assert validate_layers([5, 0, 2], 6) == [5, 0, 2]
    with pytest.raises(LayerIndexError, match=r"\[6, -1\]"):
        validate_layers([0, 6, -1], 6)
    with pytest.raises(LayerIndexError, match=r"\[2\].*more than once"):
        validate_layers([2, 2], 6)
    with pytest.raises(LayerIndexError, match="integers"):
        validate_layers([1.0], 6)  # type: ignore[list-item]
    with pytest.raises(LayerIndexError):
        validate_layers([], 6)


def test_bad_layer_rejected_before_running(tiny_llama: tuple[Any, Any]) -> None:
    model, tok = tiny_llama
    with pytest.raises(LayerIndexError, match=r"\[5\]"):
        next(iter_pooled(model, tok, MIXED, None, [1, 5]))


# ---------------------------------------------------------------- short texts


def test_short_texts_skipped_and_reported(tiny_gemma3: tuple[Any, Any]) -> None:
    model, tok = tiny_gemma3
    texts = [MIXED[0], "a short text", MIXED[1], make_texts([30])[0]]
    n = [len(tok(t)["input_ids"]) for t in texts]
    assert n[1] <= 50 and n[3] <= 50 and n[0] > 50 and n[2] > 50
    ids = ["a", "b", "c", "d"]
    plan = plan_extraction(tok, texts, ids, pool_start=50)
    assert plan.skipped == [("b", n[1]), ("d", n[3])]
    assert plan.kept.tolist() == [0, 2]
    result = extract_pooled(model, tok, texts, ids, [1])
    assert result.ids == ["a", "c"] and result.skipped == plan.skipped


def test_short_text_boundary(tiny_llama: tuple[Any, Any]) -> None:
    """n_tokens == pool_start is short; n_tokens == pool_start + 1 pools exactly one token."""
    model, tok = tiny_llama
    text = MIXED[2]
    n = len(tok(text)["input_ids"])
    assert plan_extraction(tok, [text], pool_start=n).skipped == [("0", n)]
    result = extract_pooled(model, tok, [text, MIXED[3]], None, [2], pool_start=n - 1, batch_size=2)
    ref, _, _ = reference(model, tok, text, [2], n - 1)
    assert rel_err(result.pooled[0], ref) <= REL_TOL


def test_short_policy_error_names_ids_before_any_forward(tiny_llama: tuple[Any, Any]) -> None:
    model, tok = tiny_llama
    counter = Counter()
    handle = decoder_layers(model)[0].register_forward_pre_hook(counter, with_kwargs=True)
    try:
        with pytest.raises(ShortTextError, match=r"tiny-1 \(\d+ tokens\).*tiny-2"):
            list(iter_pooled(model, tok, [MIXED[0], "hi", "hello there"], ["ok", "tiny-1", "tiny-2"],
                             [1], short_policy="error"))
    finally:
        handle.remove()
    assert counter.calls == 0


# ---------------------------------------------------------------- out of memory, NaN, resume


def test_out_of_memory_halves_the_batch_and_retries(tiny_gemma4_text: tuple[Any, Any]) -> None:
    model, tok = tiny_gemma4_text
    expected = extract_pooled(model, tok, MIXED, None, [0, 3], batch_size=1)
    seen: list[int] = []

    def fail_if_big(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        rows = int((args[0] if args else kwargs["hidden_states"]).shape[0])
        seen.append(rows)
        if rows > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (raised by the test)")

    before = hook_ids(model)
    handle = decoder_layers(model)[0].register_forward_pre_hook(fail_if_big, with_kwargs=True)
    try:
        batches = list(iter_pooled(model, tok, MIXED, None, [0, 3], batch_size=7))
    finally:
        handle.remove()
    assert hook_ids(model) == before
    # 7 fails -> 4 fails -> 2 + 2, then the remaining 3 run as 2 + 1; one PooledBatch.
    assert seen == [7, 4, 2, 2, 2, 1]
    assert len(batches) == 1
    got = batches[0]
    order = np.argsort(got.indices)
    assert got.indices[order].tolist() == list(range(len(MIXED)))
    assert rel_err(got.pooled[order], expected.pooled) <= REL_TOL


def test_out_of_memory_on_a_single_text_is_raised(tiny_llama: tuple[Any, Any]) -> None:
    model, tok = tiny_llama

    def always_fail(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory (raised by the test)")

    handle = decoder_layers(model)[0].register_forward_pre_hook(always_fail)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            list(iter_pooled(model, tok, MIXED[:2], None, [1], batch_size=2))
    finally:
        handle.remove()


def test_nan_names_the_text_id_and_layer(tiny_llama: tuple[Any, Any]) -> None:
    model, tok = tiny_llama
    poisoned = copy.deepcopy(model)
    bad_token = tok(" giraffe", add_special_tokens=False)["input_ids"][-1]
    with torch.no_grad():
        poisoned.get_input_embeddings().weight[bad_token] = float("nan")
    first, rest = MIXED[1].split(" ", 1)
    texts = [MIXED[0], f"{first} giraffe {rest}", MIXED[2]]
    assert bad_token in tok(texts[1])["input_ids"]
    assert all(bad_token not in tok(t)["input_ids"] for t in (texts[0], texts[2]))
    before = hook_ids(poisoned)
    with pytest.raises(NonFiniteActivationError, match=r"'story-7'.*layer 2\b"):
        list(iter_pooled(poisoned, tok, texts, ["story-1", "story-7", "story-9"], [3, 2], batch_size=3))
    assert hook_ids(poisoned) == before


def test_resume_with_skip_indices_gives_identical_results(tiny_gemma3: tuple[Any, Any]) -> None:
    model, tok = tiny_gemma3
    texts = make_texts([60, 80, 100, 120, 140, 65, 85, 105, 125], seed=7)
    kwargs: dict[str, Any] = dict(batch_size=2)
    full = list(iter_pooled(model, tok, texts, None, [1, 4], **kwargs))
    assert len(full) == 5
    # Pretend the run died after writing the first two batches and one text of the third.
    done = set(full[0].indices.tolist()) | set(full[1].indices.tolist()) | {int(full[2].indices[1])}
    counter = Counter()
    handle = decoder_layers(model)[0].register_forward_pre_hook(counter, with_kwargs=True)
    try:
        resumed = list(iter_pooled(model, tok, texts, None, [1, 4], skip_indices=done, **kwargs))
    finally:
        handle.remove()
    assert counter.calls == 3  # fully written batches are not run again
    got = {int(i): (b.pooled[k], b.token_norm[k]) for b in resumed for k, i in enumerate(b.indices)}
    assert set(got) == set(range(len(texts))) - done
    for b in full:
        for k, i in enumerate(b.indices):
            if int(i) in got:
                assert np.array_equal(got[int(i)][0], b.pooled[k])  # bit-identical
                assert np.array_equal(got[int(i)][1], b.token_norm[k])


def test_batches_are_sorted_and_capped(shared_tokenizer: Any) -> None:
    tok = shared_tokenizer
    texts = make_texts([60, 200, 80, 150, 90, 70, 300, 65], seed=11)
    plan = plan_extraction(tok, texts, batch_size=3, max_batch_tokens=250)
    order = np.concatenate(plan.batches)
    assert sorted(order.tolist()) == list(range(len(texts)))
    assert (np.diff(plan.n_tokens[order]) <= 0).all()  # longest first
    for b in plan.batches:
        assert len(b) <= 3
        assert len(b) == 1 or plan.padded_tokens(b) <= 250
    assert plan.batches[0].tolist() == [6]  # the 300-word text is alone, over the cap
    assert plan.padded_tokens(plan.batches[0]) > 250
    again = plan_extraction(tok, texts, batch_size=3, max_batch_tokens=250)
    assert [b.tolist() for b in again.batches] == [b.tolist() for b in plan.batches]
    with pytest.raises(ValueError, match="batch_size, max_batch_tokens"):
        plan_extraction(tok, texts, batch_size=None)


def test_progress_reports_texts_and_tokens(tiny_llama: tuple[Any, Any]) -> None:
    model, tok = tiny_llama
    calls: list[tuple[int, int, int]] = []
    texts = MIXED[:5] + ["too short"]
    batches = list(iter_pooled(model, tok, texts, None, [0], batch_size=2, progress=lambda *a: calls.append(a)))
    assert [c[0] for c in calls] == [2, 4, 5]
    assert all(c[1] == 5 for c in calls)
    assert calls[-1][2] == sum(int(b.n_tokens.sum()) for b in batches)


# ---------------------------------------------------------------- tuple vs tensor block outputs


def test_block_output_tensor_or_tuple() -> None:
    h = torch.zeros(2, 3, 4)
    assert _block_hidden(h) is h
    assert _block_hidden((h, None)) is h
    assert _block_hidden([h]) is h
    with pytest.raises(TypeError):
        _block_hidden(None)


def _tuple_outputs(model: torch.nn.Module, layers: list[int]) -> list[Any]:
    """Make the given blocks return ``(hidden, None)`` like older transformers stacks, and the
    next block unwrap it, the way those stacks' model loops do (``layer_outputs[0]``)."""
    blocks = decoder_layers(model)

    def wrap(module: torch.nn.Module, args: Any, output: Any) -> Any:
        return (output, None)

    def unwrap(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args and isinstance(args[0], tuple):
            return (args[0][0], *args[1:]), kwargs
        return None

    handles = []
    for layer in layers:
        handles.append(blocks[layer].register_forward_hook(wrap))
        if layer + 1 < len(blocks):
            handles.append(blocks[layer + 1].register_forward_pre_hook(unwrap, with_kwargs=True))
    return handles


def test_tuple_block_outputs_give_the_same_numbers(tiny_llama: tuple[Any, Any]) -> None:
    model, tok = tiny_llama
    layers = [0, 2, 3]
    as_tensor = extract_pooled(model, tok, MIXED[:4], None, layers, batch_size=2)
    handles = _tuple_outputs(model, layers)
    try:
        as_tuple = extract_pooled(model, tok, MIXED[:4], None, layers, batch_size=2)
    finally:
        for h in handles:
            h.remove()
    assert np.array_equal(as_tuple.pooled, as_tensor.pooled)
    assert np.array_equal(as_tuple.token_norm, as_tensor.token_norm)


# ---------------------------------------------------------------- hygiene


def test_hooks_removed_when_the_generator_is_abandoned(tiny_llama: tuple[Any, Any]) -> None:
    model, tok = tiny_llama
    before = hook_ids(model)
    gen = iter_pooled(model, tok, MIXED, None, [1], batch_size=2)
    first = next(gen)
    assert isinstance(first, PooledBatch) and hook_ids(model) == before
    gen.close()
    assert hook_ids(model) == before


def test_training_mode_is_refused(tiny_llama: tuple[Any, Any]) -> None:
    model, tok = tiny_llama
    model.train()
    try:
        with pytest.raises(ValueError) as err:
            next(iter_pooled(model, tok, MIXED, None, [1]))
        assert str(err.value) == (
            "model is in training mode (dropout would change activations): call model.eval()")
    finally:
        model.eval()


def test_blocks_that_never_run_are_reported(tiny_llama: tuple[Any, Any]) -> None:
    """A block list that the forward does not use (a stale model) is an error, not silence."""
    model, tok = tiny_llama
    other = copy.deepcopy(model)
    other.get_decoder().layers = copy.deepcopy(decoder_layers(model))  # forward uses the new list
    stale_blocks = decoder_layers(model)

    class Stale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = other

        def get_decoder(self) -> Any:
            return type("D", (), {"layers": stale_blocks})()

        def forward(self, **kwargs: Any) -> Any:
            return self.inner(**kwargs)

    with pytest.raises(ExtractionError) as err:
        next(iter_pooled(Stale().eval(), tok, MIXED[:2], None, [1]))
    # the message names the model class whose forward skipped the blocks
    assert str(err.value) == (
        "decoder blocks [1] did not run during the forward pass of Stale; are they the blocks "
        "its forward uses?")


def test_results_are_float32_whatever_the_default_dtype(tiny_llama: tuple[Any, Any]) -> None:
    """The pooled buffers are float32 by construction, not by the process's default dtype: a
    caller that set ``torch.set_default_dtype(torch.float64)`` still gets the documented
    float32 results, with the same numbers."""
    model, tok = tiny_llama
    expected = extract_pooled(model, tok, MIXED[:3], None, [1, 3], batch_size=3)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = extract_pooled(model, tok, MIXED[:3], None, [1, 3], batch_size=3)
    finally:
        torch.set_default_dtype(old)
    assert got.pooled.dtype == np.float32 and got.token_norm.dtype == np.float32
    np.testing.assert_array_equal(got.pooled, expected.pooled)
    np.testing.assert_array_equal(got.token_norm, expected.token_norm)


@pytest.mark.parametrize(
    ("n_texts", "most_rows", "attempts"),
    [
        # 6 fails -> 3 + 3; the first 3 fails -> 2 + 1; the other 3 is over the new cap: 2 + 1
        (6, 2, [6, 3, 2, 1, 2, 1]),
        # 8 -> 4 -> 2 -> 1 + 1; then the 2 left of the 4, and the other 4, run one by one
        (8, 1, [8, 4, 2, 1, 1, 1, 1, 1, 1, 1, 1]),
        # 8 -> 4 -> 2 + 2; the other 4 is over the new cap: 2 + 2
        (8, 2, [8, 4, 2, 2, 2, 2]),
    ],
)
def test_out_of_memory_splits_cover_every_row_once(
    tiny_llama: tuple[Any, Any], n_texts: int, most_rows: int, attempts: list[int]
) -> None:
    """Repeated halving inside one batch: every text is computed exactly once, in ranges no
    larger than the smallest size that fitted, and the values equal one-text-at-a-time runs."""
    model, tok = tiny_llama
    texts = make_texts([55 + 5 * i for i in range(n_texts)], seed=5)
    expected = extract_pooled(model, tok, texts, None, [1], batch_size=1)
    seen: list[int] = []

    def fail_if_big(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        rows = int((args[0] if args else kwargs["hidden_states"]).shape[0])
        seen.append(rows)
        if rows > most_rows:
            raise torch.OutOfMemoryError("CUDA out of memory (raised by the test)")

    handle = decoder_layers(model)[0].register_forward_pre_hook(fail_if_big, with_kwargs=True)
    try:
        batches = list(iter_pooled(model, tok, texts, None, [1], batch_size=n_texts))
    finally:
        handle.remove()
    assert seen == attempts
    assert len(batches) == 1
    got = batches[0]
    order = np.argsort(got.indices)
    assert got.indices[order].tolist() == list(range(n_texts))
    assert rel_err(got.pooled[order], expected.pooled) <= REL_TOL
    np.testing.assert_allclose(got.token_norm[order], expected.token_norm, rtol=REL_TOL)


@pytest.mark.parametrize("fits_alone", [True, False])
def test_out_of_memory_later_in_a_batch(tiny_llama: tuple[Any, Any], fits_alone: bool) -> None:
    """An out-of-memory error on rows that do not start the batch (here: whenever one bulky
    text is in the pass) halves those rows only; if that text does not fit even alone, the
    error is raised (not retried forever), and the hooks are gone."""
    model, tok = tiny_llama
    texts = make_texts([60 + 12 * i for i in range(6)], seed=9)
    first, rest = texts[1].split(" ", 1)
    texts[1] = f"{first} giraffe {rest}"
    bulky = tok(" giraffe", add_special_tokens=False)["input_ids"][-1]
    assert [bulky in tok(t)["input_ids"] for t in texts] == [False, True, False, False, False, False]
    plan = plan_extraction(tok, texts, batch_size=6)
    assert plan.batches[0].tolist().index(1) == 4  # the bulky text is row 4 of the only batch
    expected = extract_pooled(model, tok, texts, None, [2], batch_size=1)
    seen: list[int] = []

    def fail_if_bulky(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs["input_ids"]
        seen.append(int(ids.shape[0]))
        if len(seen) > 30:
            raise RuntimeError("still retrying after 30 forward passes")
        if bool((ids == bulky).any()) and (ids.shape[0] > 1 or not fits_alone):
            raise torch.OutOfMemoryError("CUDA out of memory (raised by the test)")

    before = hook_ids(model)
    handle = model.register_forward_pre_hook(fail_if_bulky, with_kwargs=True)
    try:
        if fits_alone:
            batches = list(iter_pooled(model, tok, texts, None, [2], plan=plan))
        else:
            with pytest.raises(torch.OutOfMemoryError):
                list(iter_pooled(model, tok, texts, None, [2], plan=plan))
    finally:
        handle.remove()
    assert hook_ids(model) == before
    # 6 fails; rows 0-2 run; rows 3-5 fail -> 3-4 fail -> 3, 4 (bulky, alone), 5
    assert seen == ([6, 3, 3, 2, 1, 1, 1] if fits_alone else [6, 3, 3, 2, 1, 1])
    if fits_alone:
        got = batches[0]
        order = np.argsort(got.indices)
        assert got.indices[order].tolist() == list(range(6))
        assert rel_err(got.pooled[order], expected.pooled) <= REL_TOL


def test_overflowing_token_norm_is_non_finite_too(tiny_llama: tuple[Any, Any]) -> None:
    """Residual vectors of size 1e20 are finite in float32 and so is their mean, but their L2
    norm overflows: the token norm is not finite, which is an error like a NaN mean."""
    model, tok = tiny_llama
    blocks = decoder_layers(model)

    def huge(module: torch.nn.Module, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        hidden[0, :, :] = 1e20  # every position of the batch's first (longest) text
        return output

    handle = blocks[2].register_forward_hook(huge)
    try:
        with pytest.raises(NonFiniteActivationError) as err:
            list(iter_pooled(model, tok, MIXED[:2], ["m0", "m1"], [2], batch_size=2))
    finally:
        handle.remove()
    longest = plan_extraction(tok, MIXED[:2], ["m0", "m1"], batch_size=2).batches[0][0]
    assert str(err.value).startswith(
        f"non-finite pooled activation for text id {['m0', 'm1'][int(longest)]!r} at layer 2 (0-based block output);")
