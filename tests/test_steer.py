"""Tests of activation steering (``emotion_vectors.steering.steer``): that it provably steers.

The reference for "what the model does without steering" is the same model called with the same
tokens and no hook. Where steering changes the greedy tokens, the unsteered reference is made to
produce the steered run's tokens by a logits processor that forces them, so the two runs make the
same forward calls on the same inputs and their block outputs can be compared call by call.

Block outputs are recorded by forward hooks registered INSIDE the steering context (after the
steering hooks), so they see what the next block sees. Bit-identity claims use ``torch.equal``;
a steered value is compared with ``allclose`` (``h + delta - h`` is ``delta`` up to rounding).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from conftest import TINY_MODEL_FIXTURES
from emotion_vectors.extraction.extract import LayerIndexError, _block_hidden, extract_pooled
from emotion_vectors.core.models import decoder_layers
from emotion_vectors.steering.steer import (
    Steer,
    SteeringPositionError,
    SteeringUnitError,
    call_positions,
    generate_rows,
    random_steers,
    sample_rows,
    steering,
    steering_rows,
    steers_from_store,
)
from emotion_vectors.vectors.store_layout import read_store, write_store

PROMPTS = ["The old house", "She opened the letter and", "Rain"]
POLICIES: list[Any] = ["all", "generated", 3]


# --------------------------------------------------------------------------- helpers


def hook_counts(model: torch.nn.Module) -> int:
    """All forward (pre-)hooks on the model and its submodules."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@contextlib.contextmanager
def recording(model: torch.nn.Module, layers: Sequence[int]) -> Iterator[list[dict[int, torch.Tensor]]]:
    """Per top-level forward call, a dict ``layer -> block output (b, T, d)`` (a copy)."""
    calls: list[dict[int, torch.Tensor]] = []
    blocks = decoder_layers(model)

    def record(layer: int):
        def hook(module, args, output):
            calls[-1][layer] = _block_hidden(output).detach().clone()
        return hook

    handles = [model.register_forward_pre_hook(lambda m, a, k: calls.append({}), with_kwargs=True)]
    handles += [blocks[layer].register_forward_hook(record(layer)) for layer in layers]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


class ForceTokens(LogitsProcessor):
    """Makes greedy generation emit given tokens: step ``i`` may only pick ``tokens[:, i]``."""

    def __init__(self, tokens: torch.Tensor, prompt_width: int) -> None:
        self.tokens = tokens
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_width
        forced = torch.full_like(scores, -math.inf)
        forced.scatter_(1, self.tokens[:, step : step + 1], 0.0)
        return scores + forced


def encode(tok: Any, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        return dict(tok(list(prompts), return_tensors="pt", padding=True))
    finally:
        tok.padding_side = old


def greedy(model: Any, tok: Any, enc: dict[str, torch.Tensor], n_new: int, *, use_cache: bool = True,
           force: torch.Tensor | None = None, exact: bool = False, **kwargs: Any) -> Any:
    """Greedy generation of ``n_new`` tokens; ``exact``: EOS cannot stop it early (costs a
    vocabulary-wide logits processor per step; the tiny random models never emit EOS in these
    tests, and an early stop would show up as a length mismatch)."""
    procs = LogitsProcessorList()
    if force is not None:
        procs.append(ForceTokens(force, enc["input_ids"].shape[1]))
    if exact:
        kwargs["min_new_tokens"] = n_new
    return model.generate(
        **enc, max_new_tokens=n_new, do_sample=False, use_cache=use_cache,
        pad_token_id=tok.pad_token_id, logits_processor=procs, **kwargs)


_UNITS: dict[tuple[int, int, int], float] = {}


def unit_norm_of(model: Any, tok: Any, layer: int, pool_start: int = 0) -> float:
    """Mean per-token residual norm at ``layer`` over a few texts (as the store measures it),
    computed once per (session-scoped) model."""
    key = (id(model), layer, pool_start)
    if key not in _UNITS:
        _UNITS[key] = _measure_unit(model, tok, layer, pool_start)
    return _UNITS[key]


def _measure_unit(model: Any, tok: Any, layer: int, pool_start: int) -> float:
    texts = ["The rain kept falling on the roof.", "He laughed and ran to the market today."]
    res = extract_pooled(model, tok, texts, None, [layer], pool_start=pool_start)
    return float(res.token_norm.mean())


def random_direction(d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(d)


def hidden_size(model: Any) -> int:
    return int(model.get_input_embeddings().weight.shape[1])


def expected_selection(mask: torch.Tensor, n_calls: int, policy: Any) -> list[torch.Tensor]:
    """Which tokens a policy steers in each call of a cached ``generate`` from the left-padded
    prompt ``mask`` (b, W), worked out independently of the module: call 0 is the prompt, call
    ``c >= 1`` is generated token ``c - 1`` of each row, at position ``prompt_len + c - 1``."""
    real = mask.bool()
    n_pad = (~real).sum(-1)
    plen = real.sum(-1)
    cols = torch.arange(mask.shape[1])
    pos0 = cols.unsqueeze(0) - n_pad.unsqueeze(-1)
    out = []
    for c in range(n_calls):
        if c == 0:
            pos, ok = pos0, real
        else:
            pos, ok = (plen + c - 1).unsqueeze(-1), torch.ones(len(plen), 1, dtype=torch.bool)
        if policy == "all":
            sel = ok
        elif policy == "generated":
            sel = ok & (pos >= plen.unsqueeze(-1))
        else:
            sel = ok & (pos >= policy)
        out.append(sel)
    return out


# --------------------------------------------------------------------------- Steer, random_steers


def test_steer_normalises_direction_and_validates() -> None:
    s = Steer(layer=2, direction=np.array([3.0, 4.0]), strength=0.5, unit_norm=10.0)
    assert np.allclose(s.direction, [0.6, 0.8]) and s.direction.dtype == np.float64
    assert s.added_norm == 5.0
    assert np.allclose(s.vector, [3.0, 4.0])
    assert s == Steer(2, torch.tensor([6.0, 8.0]), 0.5, 10.0)
    assert len({s, Steer(2, np.array([6.0, 8.0]), 0.5, 10.0)}) == 1
    with pytest.raises(ValueError, match="zero vector"):
        Steer(0, np.zeros(4), 1.0, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        Steer(0, np.array([1.0, np.nan]), 1.0, 1.0)
    with pytest.raises(ValueError, match="1-D"):
        Steer(0, np.ones((2, 2)), 1.0, 1.0)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="unit_norm"):
            Steer(0, np.ones(3), 1.0, bad)
    with pytest.raises(ValueError, match="strength"):
        Steer(0, np.ones(3), math.inf, 1.0)
    with pytest.raises(ValueError, match="layer"):
        Steer(-1, np.ones(3), 1.0, 1.0)


def test_random_steers_keep_layers_strengths_norms_with_uniform_directions() -> None:
    like = [Steer(1, np.ones(16), 0.3, 7.0), Steer(4, np.arange(1.0, 17.0), -2.0, 3.0)]
    a, b, c = random_steers(like, 0), random_steers(like, 0), random_steers(like, 1)
    assert a == b and a != c
    for r, s in zip(a, like):
        assert (r.layer, r.strength, r.unit_norm, r.added_norm) == (s.layer, s.strength, s.unit_norm, s.added_norm)
        assert math.isclose(float(np.linalg.norm(r.direction)), 1.0, rel_tol=1e-12)
    # uniform on the sphere: the mean of many draws is near 0, each coordinate's variance 1/d
    many = np.stack([random_steers(like[:1], seed)[0].direction for seed in range(400)])
    assert np.abs(many.mean(0)).max() < 0.1
    assert np.allclose((many**2).mean(0), 1 / 16, atol=0.03)


# --------------------------------------------------------------------------- generate with the cache


@pytest.mark.parametrize("policy", ["all", 3])
def test_cached_generate_steers_prefill_and_every_decode_step(tiny_gemma4_text: Any, policy: Any) -> None:
    model, tok = tiny_gemma4_text
    layer, later, n_new = 2, 4, 5
    steer = Steer(layer, random_direction(hidden_size(model), 0), 1.0, unit_norm_of(model, tok, layer))
    enc = encode(tok, PROMPTS[:2])  # row 1 is left-padded
    with steering(model, [steer], positions=policy), recording(model, [layer, later]) as steered:
        out_s = greedy(model, tok, enc, n_new)
    with recording(model, [layer, later]) as plain:
        out_p = greedy(model, tok, enc, n_new, force=out_s[:, enc["input_ids"].shape[1]:])
    assert torch.equal(out_s, out_p)
    assert len(steered) == len(plain) == n_new  # the prefill, then one call per new token
    assert [c[layer].shape[1] for c in steered] == [enc["input_ids"].shape[1]] + [1] * (n_new - 1)
    delta = torch.as_tensor(steer.vector, dtype=torch.float32)
    for call, (cs, cp, sel) in enumerate(zip(steered, plain, expected_selection(enc["attention_mask"], n_new, policy))):
        assert sel.any(), call
        for lay in (layer, later):
            assert torch.equal(cs[lay][~sel], cp[lay][~sel]), (call, lay)  # not steered: bit-identical
        # at the steered block the difference is exactly the added vector, at every steered token
        diff = cs[layer][sel] - cp[layer][sel]
        assert torch.allclose(diff, delta.expand_as(diff), rtol=1e-4, atol=1e-4 * steer.added_norm), call
        # and it propagates: every steered token's state at a later block differs
        assert ((cs[later][sel] - cp[later][sel]).abs().amax(-1) > 1e-3).all(), call


def test_generated_policy_leaves_prefill_unchanged_and_steers_generated_tokens(tiny_gemma4_text: Any) -> None:
    model, tok = tiny_gemma4_text
    layer, later, n_new = 2, 4, 5
    steer = Steer(layer, random_direction(hidden_size(model), 1), 1.0, unit_norm_of(model, tok, layer))
    enc = encode(tok, PROMPTS[:2])
    width = enc["input_ids"].shape[1]
    with steering(model, [steer], positions="generated"), recording(model, [layer, later]) as steered:
        out_s = greedy(model, tok, enc, n_new, output_logits=True, return_dict_in_generate=True)
    with recording(model, [layer, later]) as plain:
        out_p = greedy(model, tok, enc, n_new, output_logits=True, return_dict_in_generate=True,
                       force=out_s.sequences[:, width:])
    assert torch.equal(out_s.sequences, out_p.sequences)
    # the prefill: states and the logits of the first new token are bit-identical
    for lay in (layer, later):
        assert torch.equal(steered[0][lay], plain[0][lay])
    assert torch.equal(out_s.logits[0], out_p.logits[0])
    # every decode call: the generated token is steered at the block and changed later on
    for call in range(1, n_new):
        diff = steered[call][layer] - plain[call][layer]
        assert torch.allclose(diff, torch.as_tensor(steer.vector, dtype=torch.float32).expand_as(diff),
                              rtol=1e-4, atol=1e-4 * steer.added_norm)
        assert ((steered[call][later] - plain[call][later]).abs().amax(-1) > 1e-3).all()
        assert not torch.allclose(out_s.logits[call], out_p.logits[call])
    # for one prompt, "generated" is "from K" with K = the prompt's length
    one = encode(tok, PROMPTS[1:2])
    with steering(model, [steer], positions="generated"):
        a = greedy(model, tok, one, n_new)
    with steering(model, [steer], positions=one["input_ids"].shape[1]):
        b = greedy(model, tok, one, n_new)
    with steering(model, [steer], positions="generated", prompt_length=one["input_ids"].shape[1]):
        c = greedy(model, tok, one, n_new)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_from_k_changes_states_from_position_k_only(tiny_gemma4_text: Any) -> None:
    model, tok = tiny_gemma4_text
    layer, k = 1, 3
    ids = tok(["She opened the letter and read it twice"], return_tensors="pt")["input_ids"]
    steer = Steer(layer, random_direction(hidden_size(model), 2), 0.5, unit_norm_of(model, tok, layer))
    layers = list(range(layer, len(decoder_layers(model))))
    with recording(model, layers) as plain:
        logits_p = model(input_ids=ids).logits
    with steering(model, [steer], positions=k), recording(model, layers) as steered:
        logits_s = model(input_ids=ids).logits
    for lay in layers:
        assert torch.equal(steered[0][lay][:, :k], plain[0][lay][:, :k]), lay
        assert ((steered[0][lay][:, k:] - plain[0][lay][:, k:]).abs().amax(-1) > 1e-3).all(), lay
    assert torch.equal(logits_s[:, :k], logits_p[:, :k])
    assert not torch.allclose(logits_s[:, k:], logits_p[:, k:])


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("policy", POLICIES)
def test_padding_is_never_steered(tiny_gemma4_text: Any, side: str, policy: Any) -> None:
    model, tok = tiny_gemma4_text
    layer = 1
    old = tok.padding_side
    tok.padding_side = side
    try:
        enc = dict(tok(["She opened the letter and read it", "Rain"], return_tensors="pt", padding=True))
    finally:
        tok.padding_side = old
    pad = enc["attention_mask"] == 0
    assert pad.any()
    steer = Steer(layer, random_direction(hidden_size(model), 3), 2.0, unit_norm_of(model, tok, layer))
    layers = list(range(layer, len(decoder_layers(model))))
    with recording(model, layers) as plain:
        model(**enc)
    with steering(model, [steer], positions=policy), recording(model, layers) as steered:
        model(**enc)
    # Nothing is added at a pad position. With left padding a pad position attends only to pads,
    # so its state stays bit-identical at every later block too; with right padding it attends to
    # the real tokens before it, so later blocks legitimately see the steered tokens there.
    for lay in layers if side == "left" else [layer]:
        assert torch.equal(steered[0][lay][pad], plain[0][lay][pad]), lay
    # the steered tokens of this single forward call: by position in each row's own text
    pos = enc["attention_mask"].cumsum(-1) - 1
    want = ~pad if policy in ("all", "generated") else (~pad & (pos >= policy))
    if policy == "generated":  # the first call IS the prompt: nothing is generated yet
        want = torch.zeros_like(pad)
    changed = (steered[0][layer] - plain[0][layer]).abs().amax(-1) > 0
    assert torch.equal(changed, want)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("fixture", TINY_MODEL_FIXTURES)
def test_steered_generation_same_with_and_without_cache(request: Any, fixture: str, policy: Any) -> None:
    model, tok = request.getfixturevalue(fixture)
    layer, n_new = 2, 6
    steer = Steer(layer, random_direction(hidden_size(model), 4), 2.0, unit_norm_of(model, tok, layer))
    enc = encode(tok, PROMPTS[:2])
    width = enc["input_ids"].shape[1]
    plain = greedy(model, tok, enc, n_new)
    with steering(model, [steer], positions=policy):
        cached = greedy(model, tok, enc, n_new, use_cache=True)
    with steering(model, [steer], positions=policy):
        uncached = greedy(model, tok, enc, n_new, use_cache=False)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached[:, width:], plain[:, width:])  # the steer does change tokens


@pytest.mark.parametrize("policy", POLICIES)
def test_batched_left_padded_equals_one_prompt_at_a_time(tiny_gemma4_text: Any, policy: Any) -> None:
    model, tok = tiny_gemma4_text
    layer, n_new = 2, 6
    steer = Steer(layer, random_direction(hidden_size(model), 5), 2.0, unit_norm_of(model, tok, layer))
    enc = encode(tok, PROMPTS)
    lengths = enc["attention_mask"].sum(-1).tolist()
    assert len(set(lengths)) == 3 and min(lengths) < 3 < max(lengths)  # K=3 falls in some prompts only
    width = enc["input_ids"].shape[1]
    with steering(model, [steer], positions=policy):
        batched = greedy(model, tok, enc, n_new)[:, width:]
    for row, prompt in enumerate(PROMPTS):
        one = encode(tok, [prompt])
        with steering(model, [steer], positions=policy):
            single = greedy(model, tok, one, n_new)[:, one["input_ids"].shape[1]:]
        assert torch.equal(batched[row : row + 1], single), (row, prompt)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma4_text"])
def test_static_cache_four_d_masks_give_the_same_tokens(request: Any, fixture: str) -> None:
    """``cache_implementation="static"`` makes generate() pass 4-D causal masks (a dict of them
    for Gemma) instead of the 2-D mask; positions read from them must agree."""
    model, tok = request.getfixturevalue(fixture)
    layer, n_new = 2, 4
    steer = Steer(layer, random_direction(hidden_size(model), 11), 2.0, unit_norm_of(model, tok, layer))
    enc = encode(tok, PROMPTS[:2])
    for policy in POLICIES:
        with steering(model, [steer], positions=policy):
            dynamic = greedy(model, tok, enc, n_new)
        with steering(model, [steer], positions=policy):
            static = greedy(model, tok, enc, n_new, cache_implementation="static")
        assert torch.equal(dynamic, static), policy


class FakeCache:
    def __init__(self, n: int) -> None:
        self.n = n

    def get_seq_length(self) -> int:
        return self.n


def test_call_positions_from_what_forward_receives() -> None:
    ids = torch.zeros((2, 1), dtype=torch.long)
    # a decode step: 2-D mask over 4 past + 1 current tokens, row 1 has two left pads
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    pos, real = call_positions((), {"input_ids": ids, "attention_mask": mask, "cache": FakeCache(4)})
    assert pos.tolist() == [[4], [2]] and real.all()
    # the same without the cache (use_cache=False re-reads everything; here only the positions)
    pos, real = call_positions((), {"input_ids": torch.zeros((2, 5), dtype=torch.long), "attention_mask": mask})
    assert pos[1, 2:].tolist() == [0, 1, 2] and real.tolist()[1] == [False, False, True, True, True]
    # no mask: no padding, positions after the cache's length, or after a legacy cache_position
    pos, real = call_positions((ids,), {"past_key_values": FakeCache(7)})
    assert pos.tolist() == [[7], [7]] and real.all()
    pos, _ = call_positions((), {"input_ids": ids, "cache_position": torch.tensor([9])})
    assert pos.tolist() == [[9], [9]]
    pos, _ = call_positions((torch.zeros((1, 3), dtype=torch.long),), {})
    assert pos.tolist() == [[0, 1, 2]]
    # a mask of the current tokens only, with a cache, is refused (its positions would restart at 0)
    with pytest.raises(SteeringPositionError, match="past"):
        call_positions((), {"input_ids": ids, "attention_mask": mask[:, -1:], "cache": FakeCache(4)})
    # 4-D masks: a full causal mask with padding is read; a sliding-window one is refused
    causal = torch.tril(torch.ones(4, 4, dtype=torch.bool))
    key_real = torch.tensor([[True] * 4, [False, True, True, True]])
    four_d = (causal.unsqueeze(0) & key_real.unsqueeze(1)).unsqueeze(1)  # (2, 1, 4, 4)
    pos, real = call_positions((), {"input_ids": torch.zeros((2, 4), dtype=torch.long),
                                    "attention_mask": {"full_attention": four_d}})
    assert torch.equal(real, key_real) and pos[1, 1:].tolist() == [0, 1, 2]
    sliding = four_d & ~torch.tril(torch.ones(4, 4, dtype=torch.bool), diagonal=-2)
    with pytest.raises(SteeringPositionError, match="not a full causal mask"):
        call_positions((), {"input_ids": torch.zeros((2, 4), dtype=torch.long), "attention_mask": sliding})
    with pytest.raises(SteeringPositionError, match="full_attention"):
        call_positions((), {"input_ids": torch.zeros((2, 4), dtype=torch.long),
                            "attention_mask": {"sliding_attention": sliding}})

# --------------------------------------------------------------------------- exit, strength 0, misuse


def test_hooks_removed_on_exit_and_on_exception(tiny_gemma4_text: Any) -> None:
    model, tok = tiny_gemma4_text
    ids = tok(["The old house stood alone"], return_tensors="pt")["input_ids"]
    base = model(input_ids=ids).logits
    n_hooks = hook_counts(model)
    steers = [Steer(2, random_direction(hidden_size(model), 6), 1.0, 10.0),
              Steer(4, random_direction(hidden_size(model), 7), -1.0, 10.0)]
    with steering(model, steers):
        assert hook_counts(model) > n_hooks
        assert not torch.allclose(model(input_ids=ids).logits, base)
    assert hook_counts(model) == n_hooks
    assert torch.equal(model(input_ids=ids).logits, base)
    with pytest.raises(KeyError, match="boom"):
        with steering(model, steers, positions="generated"):
            model(input_ids=ids)
            raise KeyError("boom")
    assert hook_counts(model) == n_hooks
    assert torch.equal(model(input_ids=ids).logits, base)
    # an exception inside the forward pass itself (a block outside the model's own call)
    with pytest.raises(SteeringPositionError, match="outside a forward call"):
        with steering(model, steers):
            model.model(input_ids=ids)
    assert hook_counts(model) == n_hooks
    assert torch.equal(model(input_ids=ids).logits, base)


def test_zero_strength_is_bit_identical(tiny_gemma4_text: Any) -> None:
    model, tok = tiny_gemma4_text
    enc = encode(tok, PROMPTS[:2])
    base = model(**enc).logits
    base_gen = greedy(model, tok, enc, 4, output_logits=True, return_dict_in_generate=True)
    n_hooks = hook_counts(model)
    zero = [Steer(2, random_direction(hidden_size(model), 8), 0.0, 10.0),
            Steer(3, random_direction(hidden_size(model), 9), -0.0, 10.0)]
    for steers in (zero, []):
        with steering(model, steers, positions="all"):
            assert hook_counts(model) == n_hooks  # nothing registered
            assert torch.equal(model(**enc).logits, base)
            gen = greedy(model, tok, enc, 4, output_logits=True, return_dict_in_generate=True)
        assert torch.equal(gen.sequences, base_gen.sequences)
        assert all(torch.equal(a, b) for a, b in zip(gen.logits, base_gen.logits))


def test_steering_rejects_bad_arguments(tiny_gemma4_text: Any) -> None:
    model, tok = tiny_gemma4_text
    ids = tok(["Rain"], return_tensors="pt")["input_ids"]
    d = hidden_size(model)
    ok = Steer(1, np.ones(d), 1.0, 1.0)
    with pytest.raises(LayerIndexError, match="outside"):
        with steering(model, [Steer(6, np.ones(d), 1.0, 1.0)]):
            pass
    for bad in ("first", -1, 1.5, True):
        with pytest.raises(ValueError, match="positions"):
            with steering(model, [ok], positions=bad):
                pass
    with pytest.raises(ValueError, match="prompt_length"):
        with steering(model, [ok], positions="all", prompt_length=3):
            pass
    with pytest.raises(ValueError, match="d=8"):
        with steering(model, [Steer(1, np.ones(8), 1.0, 1.0)]):
            model(input_ids=ids)
    # "generated" takes prompt lengths from the first call: a second batch of another size is refused
    with pytest.raises(SteeringPositionError, match="one generate"):
        with steering(model, [ok], positions="generated"):
            model(input_ids=ids)
            model(input_ids=ids.repeat(2, 1))


# --------------------------------------------------------------------------- one direction per row


def row_steers(model: Any, tok: Any, layer: int) -> list[list[Steer]]:
    """Three rows: two different directions and strengths, and a row with no active steer."""
    unit = unit_norm_of(model, tok, layer)
    d = hidden_size(model)
    return [[Steer(layer, random_direction(d, 20), 2.0, unit)],
            [Steer(layer, random_direction(d, 21), -1.5, unit), Steer(layer + 1, random_direction(d, 22), 1.0, unit)],
            [Steer(layer, random_direction(d, 23), 0.0, unit)]]


@pytest.mark.parametrize("policy", POLICIES)
def test_steering_rows_batch_equals_each_row_alone(tiny_gemma4_text: Any, policy: Any) -> None:
    """A left-padded batch whose rows carry different steers gives each row the tokens it gets
    alone under ``steering`` with its own steers (the third row, strength 0: unsteered)."""
    model, tok = tiny_gemma4_text
    layer, n_new = 2, 6
    rows = row_steers(model, tok, layer)
    enc = encode(tok, PROMPTS)
    width = enc["input_ids"].shape[1]
    with steering_rows(model, rows, positions=policy):
        batched = greedy(model, tok, enc, n_new)[:, width:]
    with steering_rows(model, rows, positions=policy):
        uncached = greedy(model, tok, enc, n_new, use_cache=False)[:, width:]
    assert torch.equal(batched, uncached)  # cached = uncached
    alone = []
    for row, prompt in enumerate(PROMPTS):
        one = encode(tok, [prompt])
        with steering(model, rows[row], positions=policy):
            alone.append(greedy(model, tok, one, n_new)[:, one["input_ids"].shape[1]:])
        assert torch.equal(batched[row : row + 1], alone[-1]), (row, prompt)
    plain = greedy(model, tok, enc, n_new)[:, width:]
    assert torch.equal(batched[2], plain[2])  # the strength-0 row is the unsteered row
    assert not torch.equal(batched[0], plain[0]) and not torch.equal(batched[1], plain[1])


@pytest.mark.parametrize("fixture", TINY_MODEL_FIXTURES)
def test_steering_rows_same_with_and_without_cache(request: Any, fixture: str) -> None:
    model, tok = request.getfixturevalue(fixture)
    rows = row_steers(model, tok, 2)[:2]
    enc = encode(tok, PROMPTS[:2])
    with steering_rows(model, rows, positions="all"):
        cached = greedy(model, tok, enc, 5)
    with steering_rows(model, rows, positions="all"):
        uncached = greedy(model, tok, enc, 5, use_cache=False)
    assert torch.equal(cached, uncached)


def test_steering_rows_adds_each_rows_vector_and_leaves_inactive_rows_exact(tiny_gemma4_text: Any) -> None:
    model, tok = tiny_gemma4_text
    layer, later = 2, 4
    rows = row_steers(model, tok, layer)
    enc = encode(tok, PROMPTS)
    real = enc["attention_mask"].bool()
    with recording(model, [layer, layer + 1, later]) as plain:
        base = model(**enc).logits
    with steering_rows(model, rows), recording(model, [layer, layer + 1, later]) as steered:
        out = model(**enc).logits
    for r, steers in enumerate(rows):
        for lay in (layer, layer + 1):
            want = sum((s.vector for s in steers if s.layer == lay and s.strength), np.zeros(hidden_size(model)))
            diff = (steered[0][lay][r] - plain[0][lay][r])[real[r]]
            if lay == layer:  # only this row's own vector is added at its block
                assert torch.allclose(diff, torch.as_tensor(want, dtype=torch.float32).expand_as(diff),
                                      rtol=1e-4, atol=1e-3), (r, lay)
        # padding is never steered, at any block
        assert torch.equal(steered[0][layer][r][~real[r]], plain[0][layer][r][~real[r]])
    for lay in (layer, layer + 1, later):  # the inactive row: bit-identical at every block
        assert torch.equal(steered[0][lay][2], plain[0][lay][2])
    assert torch.equal(out[2], base[2]) and not torch.allclose(out[0], base[0])
    # the same steer in every row is bit-identical to steering() with it
    same = [rows[0]] * 3
    with steering_rows(model, same):
        a = model(**enc).logits
    with steering(model, rows[0]):
        b = model(**enc).logits
    assert torch.equal(a, b)


def test_steering_rows_strength_zero_registers_nothing_and_checks_batch(tiny_gemma4_text: Any) -> None:
    model, tok = tiny_gemma4_text
    enc = encode(tok, PROMPTS[:2])
    base = model(**enc).logits
    n_hooks = hook_counts(model)
    unit = unit_norm_of(model, tok, 2)
    zero = [[Steer(2, random_direction(hidden_size(model), 30), 0.0, unit)], []]
    with steering_rows(model, zero):
        assert hook_counts(model) == n_hooks
        assert torch.equal(model(**enc).logits, base)
    rows = row_steers(model, tok, 2)
    with pytest.raises(SteeringPositionError, match="3 rows of steers.*batch of 2"):
        with steering_rows(model, rows):
            model(**enc)
    assert hook_counts(model) == n_hooks
    with pytest.raises(ValueError, match="one entry"):
        with steering_rows(model, []):
            pass
    with pytest.raises(TypeError, match="Steer objects"):
        with steering_rows(model, [[np.ones(4)]]):
            pass
    with pytest.raises(ValueError, match="different widths"):
        with steering_rows(model, [[Steer(1, np.ones(8), 1.0, 1.0)], rows[0]]):
            pass
    with pytest.raises(ValueError, match="positions"):
        with steering_rows(model, rows, positions="first"):
            pass


# --------------------------------------------------------------------------- the shared prefix


@pytest.mark.parametrize("fixture", TINY_MODEL_FIXTURES)
def test_broadcast_call_equals_the_batch_of_identical_prompts(request: Any, fixture: str) -> None:
    """One row run below the first steered block and repeated there gives every row the logits and
    the KV cache that a batch of the same prompt, one row per entry, gives (up to the rounding of
    batched products); the rows' steers still differ (the strength-0 row is the plain model)."""
    model, tok = request.getfixturevalue(fixture)
    rows = row_steers(model, tok, 2)
    ids = torch.tensor([tok("She opened the letter and read it twice")["input_ids"]])
    n = len(rows)
    with torch.inference_mode():
        with steering_rows(model, rows):
            full = model(input_ids=ids.expand(n, -1), attention_mask=torch.ones((n, ids.shape[1]), dtype=torch.long),
                         use_cache=True)
        with steering_rows(model, rows, broadcast=True), recording(model, [1, 2]) as rec:
            one = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        plain = model(input_ids=ids).logits
    assert rec[0][1].shape[0] == 1 and rec[0][2].shape[0] == n  # block 1 ran once, block 2 is repeated
    assert one.logits.shape == full.logits.shape
    assert torch.allclose(one.logits, full.logits, atol=1e-4, rtol=1e-4)
    assert torch.allclose(one.logits[2], plain[0], atol=1e-4, rtol=1e-4)  # the unsteered row
    assert not torch.allclose(one.logits[0], one.logits[1], atol=1e-3)
    cache_one = getattr(one, "cache", None) or one.past_key_values
    cache_full = getattr(full, "cache", None) or full.past_key_values
    for a, b in zip(cache_one.layers, cache_full.layers):
        if getattr(b, "keys", None) is None or not b.is_initialized:
            continue
        assert a.keys.shape == b.keys.shape
        assert torch.allclose(a.keys, b.keys, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fixture", TINY_MODEL_FIXTURES)
def test_broadcast_call_of_m_rows_is_tiled_to_the_rows(request: Any, fixture: str) -> None:
    """A call of m rows for k * m entries of ``rows`` (no attention mask: the blocks above read one
    mask for every row) gives row r * m + q the logits of call row q under rows[r * m + q]."""
    model, tok = request.getfixturevalue(fixture)
    d = hidden_size(model)
    unit = unit_norm_of(model, tok, 2)
    rows = [[Steer(2, random_direction(d, 40 + i), 1.5, unit)] if i != 3 else [] for i in range(6)]
    a = tok("The old house stood")["input_ids"]
    b = tok("Rain fell on the roof")["input_ids"][: len(a)]
    a = a[: len(b)]
    two = torch.tensor([a, b])
    with torch.inference_mode():
        with steering_rows(model, rows, broadcast=True, repeat_cache=False):
            tiled = model(input_ids=two, use_cache=False).logits
        with steering_rows(model, rows):
            full = model(input_ids=two.repeat(3, 1), use_cache=False).logits
    assert tiled.shape == full.shape
    assert torch.allclose(tiled, full, atol=1e-4, rtol=1e-4)
    with pytest.raises(SteeringPositionError, match="6 rows of steers.*batch of 4"):
        with steering_rows(model, rows, broadcast=True):
            model(input_ids=torch.tensor([a] * 4))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("fixture", TINY_MODEL_FIXTURES)
def test_generate_rows_equals_the_batch_and_each_row_alone(request: Any, fixture: str, policy: Any) -> None:
    """generate_rows (the prompt's shared part once) gives each row the greedy tokens of the same
    prompt generated alone under ``steering`` with that row's steers, with and without a cache."""
    model, tok = request.getfixturevalue(fixture)
    rows = row_steers(model, tok, 2)
    enc = encode(tok, ["She opened the letter and"])
    ids = enc["input_ids"][0]
    got = generate_rows(model, ids, rows, positions=policy, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                        pad_token_id=tok.pad_token_id)
    assert got.shape == (3, 6)
    for r, steers in enumerate(rows):
        with steering(model, steers, positions=policy):
            alone = greedy(model, tok, enc, 6, exact=True)[:, ids.shape[0]:]
        assert torch.equal(got[r : r + 1], alone), (r, policy)
    plain = greedy(model, tok, enc, 6, exact=True)[:, ids.shape[0]:]
    assert torch.equal(got[2:3], plain) and not torch.equal(got[0:1], plain)


def test_generate_rows_samples_like_the_plain_batch_and_broadcast_is_checked(tiny_llama: Any) -> None:
    """Seeded sampling: the same tokens as ``generate`` on the batch of identical prompts with the
    same seed; a call of another batch size is refused; with no active row the rows are the
    unsteered model's, repeated."""
    model, tok = tiny_llama
    rows = row_steers(model, tok, 2)
    enc = encode(tok, ["The old house"])
    ids = enc["input_ids"][0]
    kw = dict(max_new_tokens=5, min_new_tokens=5, do_sample=True, temperature=1.0, top_k=0,
              pad_token_id=tok.pad_token_id)
    got = generate_rows(model, ids, rows, seed=3, **kw)
    batch = {k: v.expand(3, -1) for k, v in enc.items()}
    torch.manual_seed(3)
    with steering_rows(model, rows):
        want = model.generate(**batch, **kw)[:, ids.shape[0]:]
    assert torch.equal(got, want)
    zero = [[], [], []]
    same = generate_rows(model, ids, zero, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    assert torch.equal(same[0], same[1]) and torch.equal(same[1], same[2])
    two = {k: v.expand(2, -1) for k, v in enc.items()}
    with pytest.raises(SteeringPositionError, match="3 rows of steers.*batch of 2.*one row"):
        with steering_rows(model, rows, broadcast=True):
            model(**two)


@pytest.mark.parametrize("policy", POLICIES)
def test_generate_rows_reads_the_prompt_once_per_distinct_row(tiny_llama: Any, policy: Any) -> None:
    """Rows with the same steers (samples of one condition) share the prompt's cache: the prompt
    runs once per distinct row above the steered block (the unsteered row and a row of strength
    0 are one), and the seeded samples are those of the plain batch of every row."""
    model, tok = tiny_llama
    rows = row_steers(model, tok, 2)
    many = [rows[0], rows[1], rows[2], rows[0], rows[1], [], rows[2]]
    enc = encode(tok, ["The old house"])
    ids = enc["input_ids"][0]
    kw = dict(max_new_tokens=5, min_new_tokens=5, do_sample=True, temperature=1.0, top_k=0,
              pad_token_id=tok.pad_token_id)
    with recording(model, [3]) as rec:
        got = generate_rows(model, ids, many, positions=policy, seed=3, **kw)
    assert rec[0][3].shape[0] == 3  # the prompt's head: one row per distinct row, not 7
    assert all(c[3].shape[0] == len(many) for c in rec[1:])  # every generated token: 7 rows
    batch = {k: v.expand(len(many), -1) for k, v in enc.items()}
    torch.manual_seed(3)
    with steering_rows(model, many, positions=policy):
        want = model.generate(**batch, **kw)[:, ids.shape[0]:]
    assert torch.equal(got, want)
    greedy_kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    alone = generate_rows(model, ids, many[:3], positions=policy, **greedy_kw)
    both = generate_rows(model, ids, many, positions=policy, **greedy_kw)
    assert torch.equal(both[:3], alone) and torch.equal(both[3:5], alone[:2])
    assert torch.equal(both[5], alone[2]) and torch.equal(both[6], alone[2])


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("fixture", TINY_MODEL_FIXTURES)
def test_sample_rows_greedy_equals_each_row_alone_shared_and_padded(request: Any, fixture: str, policy: Any) -> None:
    """The decoding loop gives, greedily, each row the tokens ``generate`` gives that row alone under
    ``steering`` with its steers: rows of one prompt (run once below the steered block) and rows
    of different prompts (left-padded)."""
    model, tok = request.getfixturevalue(fixture)
    rows = row_steers(model, tok, 2)
    kw = dict(max_new_tokens=5, temperature=0.0, positions=policy, pad_token_id=tok.pad_token_id, eos_token_ids=[])
    one = tok("She opened the letter and")["input_ids"]
    shared = sample_rows(model, [one] * 3, rows, **kw)
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    padded = sample_rows(model, prompts, rows, **kw)
    for r, steers in enumerate(rows):
        for got, prompt in ((shared[r], one), (padded[r], prompts[r])):
            enc = {"input_ids": torch.tensor([prompt]), "attention_mask": torch.ones((1, len(prompt)), dtype=torch.long)}
            with steering(model, steers, positions=policy):
                alone = greedy(model, tok, enc, 5, exact=True)[0, len(prompt):].tolist()
            assert got == alone, (r, policy)


def test_sample_rows_sampling_is_seeded_and_top_k_top_p_restrict_the_draw(tiny_llama: Any) -> None:
    model, tok = tiny_llama
    rows = row_steers(model, tok, 2)
    prompt = tok("The old house")["input_ids"]
    kw = dict(max_new_tokens=6, pad_token_id=tok.pad_token_id, eos_token_ids=[])
    a = sample_rows(model, [prompt] * 3, rows, temperature=1.0, seed=4, **kw)
    assert a == sample_rows(model, [prompt] * 3, rows, temperature=1.0, seed=4, **kw)
    assert a != sample_rows(model, [prompt] * 3, rows, temperature=1.0, seed=5, **kw)
    best = sample_rows(model, [prompt] * 3, rows, temperature=0.0, **kw)
    assert sample_rows(model, [prompt] * 3, rows, temperature=1.0, top_k=1, seed=1, **kw) == best
    assert sample_rows(model, [prompt] * 3, rows, temperature=1.0, top_p=1e-9, seed=1, **kw) == best
    # a row stops at its end token: the tokens after it are not returned
    first = best[0][0]
    cut = sample_rows(model, [prompt] * 3, rows, temperature=0.0, max_new_tokens=6,
                      pad_token_id=tok.pad_token_id, eos_token_ids=[first])
    assert cut[0] == [] and all(first not in r for r in cut)
    with pytest.raises(ValueError, match="one prompt per row"):
        sample_rows(model, [prompt], rows, temperature=0.0, **kw)


# --------------------------------------------------------------------------- the vector store


def small_store(path: Any, d: int, residual_norm: Any, attrs: dict | None = None,
                layers: Sequence[int] = (1, 2, 4)) -> Any:
    """A two-emotion store of random denoised vectors at three layers (``write_store``)."""
    rng = np.random.default_rng(10)
    denoised = rng.standard_normal((2, 3, d))
    write_store(path, emotions=["joy", "fear"], layers=list(layers), raw=None, denoised=denoised,
                residual_norm=residual_norm, n_neutral_pcs_removed=None, n_stories=None, attrs=attrs)
    return denoised


def test_steers_from_store_units_and_errors(tmp_path: Any) -> None:
    d = 64
    denoised = small_store(tmp_path / "unknown.zarr", d, None)
    with pytest.raises(SteeringUnitError, match="no measured residual norm.*absolute_scale"):
        steers_from_store(tmp_path / "unknown.zarr", "joy", [2], 0.1)
    (s,) = steers_from_store(tmp_path / "unknown.zarr", "joy", [2], 0.1, absolute_scale=40.0)
    assert (s.layer, s.unit_norm) == (2, 40.0) and math.isclose(s.added_norm, 4.0)
    assert np.allclose(s.direction, denoised[0, 1] / np.linalg.norm(denoised[0, 1]), atol=1e-6)

    small_store(tmp_path / "measured.zarr", d, np.array([3.0, 5.0, 7.0]), {"num_hidden_layers": 6})
    store = read_store(tmp_path / "measured.zarr")
    steers = steers_from_store(store, "fear", [4, 1], 0.5)
    assert [(s.layer, s.unit_norm, s.added_norm) for s in steers] == [(4, 7.0, 3.5), (1, 3.0, 1.5)]
    assert np.allclose(steers[0].direction, denoised[1, 2] / np.linalg.norm(denoised[1, 2]), atol=1e-6)
    # layers=None: the main layer, block round(2*6/3)-1 = 3, is not stored; the nearest (ties:
    # deeper) is 4. Without the depth, max(layers)+1 = 5 blocks give block 2.
    assert [s.layer for s in steers_from_store(store, "joy", None, 0.1)] == [4]
    small_store(tmp_path / "nodepth.zarr", d, np.array([3.0, 5.0, 7.0]))
    assert [s.layer for s in steers_from_store(tmp_path / "nodepth.zarr", "joy", None, 0.1)] == [2]
    # absolute_scale overrides a measured norm
    assert steers_from_store(store, "joy", [1], 0.5, absolute_scale=2.0)[0].added_norm == 1.0
    with pytest.raises(ValueError, match="'anger' is not in .*joy, fear"):
        steers_from_store(store, "anger", [1], 0.1)
    with pytest.raises(ValueError, match=r"layers \[3\] are not in .*\[1, 2, 4\]"):
        steers_from_store(store, "joy", [3], 0.1)
    with pytest.raises(ValueError, match="'raw_unit' is not in .*denoised, denoised_unit"):
        steers_from_store(store, "joy", [1], 0.1, kind="raw_unit")
    with pytest.raises(ValueError, match="absolute_scale"):
        steers_from_store(store, "joy", [1], 0.1, absolute_scale=0.0)


def test_store_steer_adds_strength_times_residual_norm(tiny_gemma4_text: Any, tmp_path: Any) -> None:
    model, tok = tiny_gemma4_text
    d = hidden_size(model)
    norms = np.array([unit_norm_of(model, tok, x) for x in (1, 2, 4)])
    small_store(tmp_path / "v.zarr", d, norms)
    strength = 0.25
    (steer,) = steers_from_store(tmp_path / "v.zarr", "joy", [2], strength)
    ids = tok(["The old house stood alone"], return_tensors="pt")["input_ids"]
    with recording(model, [2]) as plain:
        model(input_ids=ids)
    with steering(model, [steer]), recording(model, [2]) as steered:
        model(input_ids=ids)
    change = (steered[0][2] - plain[0][2])[0, 3].double()  # one token
    assert math.isclose(float(change.norm()), strength * norms[1], rel_tol=1e-4)
    assert float(change @ torch.from_numpy(steer.direction.copy()) / change.norm()) > 1 - 1e-6


# --------------------------------------------------------------------------- the sign


@pytest.mark.parametrize("layer", [2, 5])
def test_unembedding_direction_raises_that_tokens_logit(tiny_gemma4_text: Any, layer: int) -> None:
    model, tok = tiny_gemma4_text
    target = tok(" happy", add_special_tokens=False)["input_ids"][0]
    direction = model.get_output_embeddings().weight[target].detach()
    ids = tok(["The old house stood alone"], return_tensors="pt")["input_ids"]
    unit = unit_norm_of(model, tok, layer)
    base = model(input_ids=ids).logits[0, :, target]
    got = {}
    for strength in (-4.0, 1.0, 4.0):
        with steering(model, [Steer(layer, direction, strength, unit)]):
            got[strength] = model(input_ids=ids).logits[0, :, target]
    assert (got[1.0] > base).all() and (got[4.0] > got[1.0]).all() and (got[-4.0] < base).all()


# --------------------------------------------------------------------------- the real default model


DEFAULT_PROMPTS = ["The weather today is", "Yesterday I"]  # 4 and 3 tokens
DEFAULT_LAYER, DEFAULT_NEW = 19, 8


def default_steer(model: Any, tok: Any, tmp_path: Any) -> tuple[Steer, float]:
    """A strength-0.6 random-direction steer at layer 19 of SmolLM2, via a store whose residual
    norm is measured on the model as the workflow measures it (from each text's 2nd token:
    SmolLM2's first token is a ~2500-norm attention sink that would dominate a mean over all)."""
    unit = unit_norm_of(model, tok, DEFAULT_LAYER, pool_start=1)
    small_store(tmp_path / "v.zarr", hidden_size(model), np.array([1.0, unit, 1.0]), layers=(14, 19, 24))
    (steer,) = steers_from_store(tmp_path / "v.zarr", "fear", [DEFAULT_LAYER], 0.6)
    return random_steers([steer], seed=0)[0], unit  # the null direction: any direction must steer right


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["all", "generated", 4])
def test_default_model_cache_and_batching_consistent(default_model: Any, tmp_path: Any, policy: Any) -> None:
    """SmolLM2-135M, greedy, 8 new tokens: steered tokens are the same with and without the
    cache, and in a left-padded batch of two prompts as for each prompt alone; they differ from
    the unsteered tokens."""
    model, tok = default_model
    steer, _ = default_steer(model, tok, tmp_path)
    enc = encode(tok, DEFAULT_PROMPTS)
    assert (enc["attention_mask"] == 0).any()  # the batch is padded
    width = enc["input_ids"].shape[1]
    plain = greedy(model, tok, enc, DEFAULT_NEW, exact=True)
    with steering(model, [steer], positions=policy):
        cached = greedy(model, tok, enc, DEFAULT_NEW, exact=True)
    with steering(model, [steer], positions=policy):
        uncached = greedy(model, tok, enc, DEFAULT_NEW, use_cache=False, exact=True)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, plain)
    for row, prompt in enumerate(DEFAULT_PROMPTS):
        one = encode(tok, [prompt])
        with steering(model, [steer], positions=policy):
            single = greedy(model, tok, one, DEFAULT_NEW, exact=True)
        assert torch.equal(cached[row, width:], single[0, one["input_ids"].shape[1]:]), prompt


@pytest.mark.slow
def test_default_model_added_norm_and_sign(default_model: Any, tmp_path: Any) -> None:
    """SmolLM2-135M: the residual change at a token is strength x the store's residual norm, and
    steering along " happy"'s unembedding direction raises its logit at every token."""
    model, tok = default_model
    steer, unit = default_steer(model, tok, tmp_path)
    ids = tok([DEFAULT_PROMPTS[0]], return_tensors="pt")["input_ids"]
    with recording(model, [DEFAULT_LAYER]) as rec_p:
        base = model(input_ids=ids).logits
    with steering(model, [steer]), recording(model, [DEFAULT_LAYER]) as rec_s:
        model(input_ids=ids)
    change = (rec_s[0][DEFAULT_LAYER] - rec_p[0][DEFAULT_LAYER])[0, 2].double()
    assert math.isclose(float(change.norm()), 0.6 * unit, rel_tol=1e-4)
    target = tok(" happy", add_special_tokens=False)["input_ids"][0]
    direction = model.get_output_embeddings().weight[target].detach()
    with steering(model, [Steer(DEFAULT_LAYER, direction, 0.6, unit)]):
        up = model(input_ids=ids).logits
    assert (up[0, :, target] > base[0, :, target]).all()
