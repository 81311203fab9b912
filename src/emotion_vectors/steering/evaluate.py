"""Evidence that steering with the emotion vectors steers, with nulls that can fail.

Strength is in units of the layer's residual norm (``steer.Steer``); every direction below (an
emotion's vector, a shuffled-label pseudo vector, a random direction) is added with the same
norm. Many directions are evaluated in one forward pass (``steer.steering_rows``: one direction
per sequence). Nothing is tuned on the numbers it reports: prompts, strengths and nulls come
from the config. Every test the claims use is simulated under its null in
``tests/test_calibration_steering.py``.

1. **Continuation test** (:func:`continuation_test`). Prompts that ask for a feeling ("Asked how
   she felt, she answered that she felt") are scored while a direction is added: the
   log-probability of every emotion's word as the continuation, averaged over the prompts. For
   each direction ``v`` and word ``w``, ``rise[v, w]`` is the change of that log-probability at
   the test strength ``s*`` (the largest configured strength) from the unsteered model; the
   emotions' own vectors are also scored at every configured strength (the curve, descriptive).
   Three tests, each with its own null:

   a. **specificity, against the other emotions' vectors** (:func:`specificity_test`): the
      ``E x E`` matrix ``rise[vector, word]`` of the emotions' vectors, each vector's mean rise
      removed (a vector that pushes every word counts for nothing), then standardised within
      each word across the ``E`` vectors; the statistic is the mean over emotions of the own
      vector's value on its own word. Null: the vectors' labels permuted (exact when the
      vectors are exchangeable, i.e. a vector's label says nothing about which word it raises).
      Per emotion: the own vector's rank among all vectors on its word (``vector_rank``; exact
      p = rank / E, Holm over emotions).
   b. **against shuffled-label vectors** (:func:`set_test`): the own word's z within the
      vector's row (its rise standardised over all ``E`` words under that vector, so that the
      vector's overall push does not count), of the real vector vs the same-named pseudo vector
      of every shuffle (``vectors/shuffled.zarr``: the same stories with their emotion labels
      permuted within topic). Exact: under "the stories' activations do not depend on their
      label", the real labelling and every shuffle are exchangeable. Per emotion (Monte-Carlo
      p, Holm) and for the family (the mean over emotions, real set vs each shuffle's set).
   c. **against random directions** of the same norm (:func:`pool_test`, a WEAK null): the
      same own-word z; per emotion vs every random direction's z on that word (Monte-Carlo p,
      Holm); for the family, the mean over emotions for the real assignment vs random
      assignments of ``E`` directions drawn from the emotion vectors and the random directions
      together (exact if the emotion vectors were uniform random directions). Uniform
      directions barely touch the subspace in which the model reads emotions, so any
      mean-difference direction may beat them: this is not evidence that a vector carries its
      emotion.

2. **Dose-response of free generation** (:func:`dose_response`). Neutral chat prompts are
   answered with seeded sampling while a direction is added at each configured strength. Each
   generation is scored by VADER (``vaderSentiment``) on the text with every form of every run
   emotion's word masked (``leak.leak_pattern``; VADER's lexicon holds *happy*, *sad*, *calm*,
   *scared*: unmasked, the score partly counts the model saying the emotion word). Per
   direction: the least-squares slope of the masked VADER score on strength (the unsteered
   generations at strength 0 included). Per steered emotion, the slope in its expected
   direction (sign: + for the pleasant readout anchors, - for the unpleasant; both ways for an
   emotion in neither) against

   - its shuffled-label pseudo vectors' slopes (exact Monte-Carlo p; Holm over the emotions),
     and for the family, the mean signed slope over the emotions, real set vs each shuffle;
   - random directions' slopes (a weak null, reported, not claimed: a direction built from any
     stories may move sentiment more than a uniform one).

   The slope's interval is a percentile bootstrap over generations (resampled within each
   strength) with the direction held fixed: it covers the sampling of the generations, not
   the uncertainty of the vector itself (another set of stories would give another vector and
   another slope; that would need vectors re-estimated from resampled stories and steered
   again, which this step does not do). The project's valence readout of the generations (the
   text re-read by the unsteered model and projected on PC1 of these same vectors) is reported
   for the emotions' own generations as a description only: it is not independent of the
   vectors being tested, and nothing is claimed from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emotion_vectors.core.claims import ALPHA, Claim, holm, make_claim, mc_p
from emotion_vectors.corpus.judge import _input_device
from emotion_vectors.steering.steer import Steer, _repeat_cache_rows, random_steers, steering_rows, steers_from_store

Log = Callable[[str], None]

#: What replaces every form of an emotion word before VADER reads a text (not in its lexicon).
MASK_TOKEN = "xxx"

WEAK_RANDOM_NULL = (
    "WEAK NULL: random directions uniform on the sphere, same norm. Uniform directions barely "
    "touch the subspace in which the model reads emotions, so any mean-difference direction may "
    "beat them; passing it is not evidence that a vector carries its emotion (the shuffled-label "
    "and other-emotion tests are)"
)


def _noop(_: str) -> None:
    pass


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from ``parts`` (their JSON), the same on every machine."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


# --------------------------------------------------------------------------------------------
# Statistics (pure NumPy; each test is simulated under its null in test_calibration_steering)


def slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` on ``x`` (NaN if ``x`` is constant)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    xc = x - x.mean()
    den = float(xc @ xc)
    return float(xc @ (y - y.mean()) / den) if den > 0 else float("nan")


def row_z(rises: np.ndarray) -> np.ndarray:
    """Each row standardised over its columns: ``(x - mean) / sd`` (0 where a row is constant).

    For a steering direction (a row) and the emotion words (columns): how much more a word rises
    than the direction's other words, in units of their spread; the direction's overall push
    (every word up or down alike) and its size do not count."""
    r = np.asarray(rises, dtype=float)
    centred = r - r.mean(axis=-1, keepdims=True)
    sd = r.std(axis=-1, keepdims=True)
    return np.divide(centred, sd, out=np.zeros_like(centred), where=sd > 0)


def _holm_list(p: np.ndarray) -> list[float]:
    return [float(v) for v in holm(np.asarray(p, dtype=float))]


def specificity_test(rises: np.ndarray, *, n_permutations: int = 9999, seed: int = 0) -> dict[str, Any]:
    """Do the emotions' vectors raise their own words more than the other emotions' vectors do?

    ``rises`` is ``(E, E)``: row = the vector of emotion ``i``, column = the word of emotion
    ``j``, in the same order. Each row's mean is removed (a vector's general push), then each
    column is standardised across the ``E`` vectors (``Z``). Statistic: the mean of the diagonal
    of ``Z``. Null: the rows' labels permuted, ``T = mean_j Z[pi(j), j]`` for ``n_permutations``
    random permutations (row centring and column standardising commute with row permutations,
    so this is the statistic of the permuted matrix); exact when the rows are exchangeable.

    Per emotion: ``vector_rank`` (1 + the number of vectors with a larger ``Z`` on its word) and
    the exact permutation p ``#{v: Z[v, j] >= Z[j, j]} / E`` with Holm over emotions.
    """
    r = np.asarray(rises, dtype=float)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] < 2:
        raise ValueError(f"specificity_test needs a square (E, E) matrix with E >= 2, got shape {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError("specificity_test: the rise matrix has non-finite entries")
    e = r.shape[0]
    c = r - r.mean(axis=1, keepdims=True)
    sd = c.std(axis=0, keepdims=True)
    z = np.divide(c - c.mean(axis=0, keepdims=True), sd, out=np.zeros_like(c), where=sd > 0)
    own = np.diag(z).copy()
    stat = float(own.mean())
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(np.arange(e), (int(n_permutations), 1)), axis=1)
    null = z[perms, np.arange(e)[None, :]].mean(axis=1)
    rank = 1 + (z > own[None, :]).sum(axis=0)
    p_e = (z >= own[None, :]).sum(axis=0) / e
    return {"statistic": stat, "p": mc_p(stat, null), "n_null": int(n_permutations),
            "null_mean": float(null.mean()), "null_q95": float(np.quantile(null, 0.95)),
            "own_z": own.tolist(), "vector_rank": rank.astype(int).tolist(),
            "p_emotion": p_e.tolist(), "p_emotion_holm": _holm_list(p_e),
            "n_null_emotion": e - 1}


def set_test(real: np.ndarray, sets: np.ndarray) -> dict[str, Any]:
    """The real labelling against ``K`` shuffled labellings (larger = more effect).

    ``real`` ``(E,)``: a statistic per emotion for the real vectors; ``sets`` ``(K, E)``: the same
    statistic for the same-named pseudo vector of each shuffle. Per emotion: Monte-Carlo p of
    ``real[e]`` among ``sets[:, e]`` (Holm over emotions); family: the mean over emotions, real
    vs each shuffle. Exact when the real set and the shuffled sets are exchangeable.
    """
    real = np.asarray(real, dtype=float)
    sets = np.asarray(sets, dtype=float).reshape(-1, real.size)
    k = sets.shape[0]
    if k == 0:
        return {"statistic": float(np.mean(real)), "p": float("nan"), "n_null": 0, "null": [],
                "p_emotion": [float("nan")] * real.size, "p_emotion_holm": [float("nan")] * real.size,
                "n_null_emotion": 0}
    p_e = np.array([mc_p(real[i], sets[:, i]) for i in range(real.size)])
    stat = float(np.mean(real))
    null = sets.mean(axis=1)
    return {"statistic": stat, "p": mc_p(stat, null), "n_null": int(k), "null": null.tolist(),
            "null_mean": float(null.mean()), "null_q95": float(np.quantile(null, 0.95)),
            "p_emotion": p_e.tolist(), "p_emotion_holm": _holm_list(p_e), "n_null_emotion": int(k)}


def pool_test(values: np.ndarray, n_real: int, *, n_permutations: int = 9999, seed: int = 0) -> dict[str, Any]:
    """The emotion vectors against a pool of random directions (larger = more effect).

    ``values`` ``(N, E)``: the statistic of direction ``v`` for emotion ``e``; rows ``0..E-1`` are
    the emotions' own vectors (``n_real == E``, row ``e`` is emotion ``e``'s vector), the others
    random directions. Per emotion: Monte-Carlo p of ``values[e, e]`` among the random rows'
    ``values[:, e]`` (Holm over emotions). Family: ``T = mean_e values[a(e), e]`` for the real
    assignment ``a(e) = e`` vs ``n_permutations`` random assignments of ``E`` distinct rows of all
    ``N`` (exact when all ``N`` directions are exchangeable, i.e. the emotion vectors behave
    like the random ones).
    """
    v = np.asarray(values, dtype=float)
    e = int(n_real)
    if v.ndim != 2 or v.shape[1] != e or v.shape[0] < e:
        raise ValueError(f"pool_test: values must be (N >= {e}, {e}), got shape {v.shape}")
    n_pool = v.shape[0] - e
    stat = float(np.mean(v[np.arange(e), np.arange(e)]))
    if n_pool == 0:
        return {"statistic": stat, "p": float("nan"), "n_null": 0, "p_emotion": [float("nan")] * e,
                "p_emotion_holm": [float("nan")] * e, "n_null_emotion": 0}
    p_e = np.array([mc_p(v[i, i], v[e:, i]) for i in range(e)])
    rng = np.random.default_rng(seed)
    picks = rng.random((int(n_permutations), v.shape[0])).argsort(axis=1)[:, :e]
    null = v[picks, np.arange(e)[None, :]].mean(axis=1)
    return {"statistic": stat, "p": mc_p(stat, null), "n_null": int(n_permutations),
            "null_mean": float(null.mean()), "null_q95": float(np.quantile(null, 0.95)),
            "p_emotion": p_e.tolist(), "p_emotion_holm": _holm_list(p_e), "n_null_emotion": int(n_pool)}


def _signed(values: np.ndarray, signs: Sequence[int]) -> np.ndarray:
    """``sign * value`` per emotion (last axis); ``|value|`` where the sign is 0 (both ways)."""
    v = np.asarray(values, dtype=float)
    s = np.asarray(signs, dtype=float)
    return np.where(s == 0, np.abs(v), s * v)


# --------------------------------------------------------------------------------------------
# Directions


def _layer_for(store: Any, layer: int | None) -> int:
    from emotion_vectors.extraction.extract import main_stored_layer

    if layer is not None:
        if layer not in store.layers:
            raise ValueError(f"steering layer {layer} is not a stored layer of {store.path}: {store.layers}")
        return int(layer)
    n = store.attrs.get("num_hidden_layers")
    return main_stored_layer(list(store.layers), int(n) if isinstance(n, (int, np.integer)) and n > 0 else None)


def _unit_steer(store: Any, emotion: str, layer: int) -> Steer:
    return steers_from_store(store, emotion, [layer], 1.0)[0]


def _null_directions(store: Any, null_store: Any, shuffle_sets: Sequence[Sequence[str]] | None,
                     emotions: Sequence[str], layer: int, n_shuffled: int | None) -> list[list[np.ndarray]]:
    """``out[k][i]``: the unit direction of ``emotions[i]``'s pseudo vector in shuffle ``k``.

    ``shuffle_sets[k]`` lists shuffle ``k``'s row names in the real store's emotion order
    (``vectors.build.shuffled_sets``). Checked before any forward pass."""
    from emotion_vectors.vectors.store_layout import Store, read_store

    if null_store is None or shuffle_sets is None:
        if n_shuffled:
            raise ValueError(f"n_shuffled={n_shuffled} but no shuffled-label vector store was given")
        return []
    ns = null_store if isinstance(null_store, Store) else read_store(null_store)
    sets = [list(s) for s in shuffle_sets]
    if n_shuffled is not None:
        if n_shuffled > len(sets):
            raise ValueError(f"n_shuffled={n_shuffled} shuffles requested but {ns.path} holds "
                             f"{len(sets)} (vectors.n_shuffles): lower n_shuffled or raise n_shuffles")
        sets = sets[:n_shuffled]
    if layer not in ns.layers:
        raise ValueError(f"steering layer {layer} is not a layer of the shuffled-label store {ns.path}: {ns.layers}")
    where = {name: i for i, name in enumerate(ns.emotions)}
    arr = np.asarray(ns.array("denoised_unit")[:, ns.layers.index(layer), :], dtype=np.float64)
    out = []
    for k, names in enumerate(sets):
        if len(names) != len(store.emotions):
            raise ValueError(f"shuffle {k} lists {len(names)} pseudo vectors for the store's "
                             f"{len(store.emotions)} emotions")
        row = []
        for e in emotions:
            name = names[store.emotions.index(e)]
            if name not in where:
                raise ValueError(f"pseudo vector {name!r} (shuffle {k}, {e}) is not in {ns.path}")
            vec = arr[where[name]]
            if not (np.isfinite(vec).all() and np.linalg.norm(vec) > 0):
                raise ValueError(f"pseudo vector {name!r} in {ns.path} is zero or not finite")
            row.append(vec)
        out.append(row)
    return out


# --------------------------------------------------------------------------------------------
# 1. Continuation test


def word_logprobs(model: Any, tokenizer: Any, prompts: Sequence[str], words: Sequence[str],
                  *, batch_size: int = 8) -> np.ndarray:
    """``(n_prompts, n_words)`` log-probability of ``" " + word`` (all its tokens) after each
    prompt (``judge.score_choices``). The model is called as it is, so an active
    :func:`~emotion_vectors.steering.steer.steering` context applies to prompt and word tokens alike."""
    from emotion_vectors.corpus.judge import score_choices

    cands = [" " + w for w in words]
    scores = score_choices(model, tokenizer, list(prompts), [cands] * len(prompts),
                           batch_size=batch_size)
    return np.stack(scores.logprob)


def steered_word_logprobs(model: Any, tokenizer: Any, prompts: Sequence[str], words: Sequence[str],
                          rows: Sequence[Sequence[Steer]], *, positions: str | int = "all",
                          batch_size: int = 64, log: Log = _noop) -> np.ndarray:
    """``(n_rows, n_prompts, n_words)``: log-probability of ``" " + word`` (all its tokens) after
    each prompt while row ``r``'s steers are added (``steer.steering_rows``: up to
    ``batch_size`` directions per forward pass, one per sequence).

    Each prompt runs once per chunk of rows below the steered block and once per row above it
    (no padding: a batch holds one prompt under many directions; ``steer.steering_rows`` with
    ``broadcast=True``), keeping its KV cache; the words of more than one token then continue
    from that cache, repeated once per such word, under the same row's steers. The same numbers as
    :func:`word_logprobs` inside ``steering(model, rows[r])`` (tested)."""
    import torch

    from emotion_vectors.corpus.judge import _cache_argument, _forward

    if positions == "generated":
        raise ValueError("positions='generated' steers nothing in the continuation test: the words "
                         "are scored from the prompt, which is never 'generated'; use 'all' or an int")
    cand = [tuple(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in words]
    empty = [w for w, c in zip(words, cand) if not c]
    if empty:
        raise ValueError(f"words that tokenize to nothing: {empty}")
    multi = [j for j, c in enumerate(cand) if len(c) > 1]
    n_multi = len(multi)
    m_max = max((len(cand[j]) for j in multi), default=1)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad = pad[0] if isinstance(pad, list) else pad
    device = _input_device(model)
    first_ids = torch.tensor([c[0] for c in cand], device=device)
    if n_multi:
        targets = torch.full((n_multi, m_max - 1), 0, dtype=torch.long)
        tmask = torch.zeros((n_multi, m_max - 1), dtype=torch.bool)
        c_ids = torch.full((n_multi, m_max - 1), pad, dtype=torch.long)
        for q, j in enumerate(multi):
            c = cand[j]
            c_ids[q, : len(c) - 1] = torch.tensor(c[:-1])
            targets[q, : len(c) - 1] = torch.tensor(c[1:])
            tmask[q, : len(c) - 1] = True
        targets, tmask = targets.to(device), tmask.to(device)
        multi_idx = torch.tensor(multi, device=device)
    rows = [list(r) for r in rows]
    out = np.zeros((len(rows), len(prompts), len(words)))
    started, last = time.perf_counter(), time.perf_counter()
    n_batches = math.ceil(len(rows) / batch_size) * len(prompts)
    done = 0
    for pi, prompt in enumerate(prompts):
        ids = tokenizer(prompt)["input_ids"]
        width = len(ids)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            b = len(chunk)
            # one row: the blocks below the steered one run once for the whole chunk
            # (steering_rows(broadcast=True) repeats it there; their cache stays at one row)
            x = torch.tensor([ids], dtype=torch.long, device=device)
            mask = torch.ones_like(x)
            with torch.inference_mode():
                with steering_rows(model, chunk, positions=positions, broadcast=True, repeat_cache=False):
                    o = _forward(model, 1, input_ids=x, attention_mask=mask, use_cache=bool(n_multi))
                first = torch.log_softmax(o.logits[:, -1, :].float(), dim=-1)
                res = first[:, first_ids].double()  # (b, W)
                if n_multi:
                    cache = getattr(o, "cache", None) or getattr(o, "past_key_values", None)
                    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
                        raise RuntimeError(f"{type(model).__name__} returned no repeatable KV cache; "
                                           "the continuation test needs one for words of several tokens")
                    rep = [r for r in chunk for _ in range(n_multi)]  # row r * M + q: word q under row r
                    layers = getattr(cache, "layers", None)
                    if m_max == 2 and layers is not None:
                        # Every word's second token follows its first: one new token per word, no
                        # padding. Below the steered block the words' first tokens run once (M rows,
                        # the prompt's cache tiled to M); above it, once per row and word.
                        for lay in layers:
                            keys = getattr(lay, "keys", None)
                            if not isinstance(keys, torch.Tensor) or keys.numel() == 0:
                                continue
                            if keys.shape[0] == 1:
                                lay.keys = keys.repeat(n_multi, 1, 1, 1)
                                lay.values = lay.values.repeat(n_multi, 1, 1, 1)
                            else:
                                lay.batch_repeat_interleave(n_multi)
                        # one position for every row (a (1, 1) tensor, so that the rotary tables
                        # broadcast over the rows that the steered block multiplies)
                        pos = torch.full((1, 1), width, dtype=torch.long, device=device)
                        with steering_rows(model, rep, positions=positions, broadcast=True, repeat_cache=False):
                            o2 = model(input_ids=c_ids[:, :1].to(device), position_ids=pos, use_cache=True,
                                       **{_cache_argument(model): cache})
                    else:
                        _repeat_cache_rows(cache, b)  # the blocks below to one row per direction
                        cache.batch_repeat_interleave(n_multi)
                        cm = tmask.repeat(b, 1).long()
                        full_mask = torch.cat([torch.ones((b * n_multi, width), dtype=torch.long, device=device), cm], 1)
                        pos = (width + torch.arange(m_max - 1, device=device)).expand(b * n_multi, -1)
                        with steering_rows(model, rep, positions=positions):
                            o2 = model(input_ids=c_ids.to(device).repeat(b, 1), attention_mask=full_mask,
                                       position_ids=pos, use_cache=True, **{_cache_argument(model): cache})
                    rest = torch.log_softmax(o2.logits.float(), dim=-1)  # (b*M, m_max-1, V)
                    got = rest.gather(-1, targets.repeat(b, 1).unsqueeze(-1)).squeeze(-1)
                    extra = (got * tmask.repeat(b, 1)).sum(-1).view(b, n_multi).double()
                    res[:, multi_idx] += extra
            out[start : start + b, pi] = res.cpu().numpy()
            done += 1
            now = time.perf_counter()
            if now - last > 30 or done == n_batches:
                log(f"continuation: scored {done}/{n_batches} batches ({now - started:.0f} s)")
                last = now
    return out


@dataclass
class ContinuationResult:
    """Per-emotion rows, per-(emotion, strength) rows, the tests and a JSON-able summary."""

    per_emotion: list[dict]
    per_strength: list[dict]
    summary: dict
    null_rows: list[dict] = field(default_factory=list)


def continuation_test(
    model: Any,
    tokenizer: Any,
    store: Any,
    emotions: Sequence[str],
    *,
    prompts: Sequence[str],
    strengths: Sequence[float],
    layer: int | None = None,
    null_store: Any = None,
    shuffle_sets: Sequence[Sequence[str]] | None = None,
    n_shuffled: int | None = None,
    n_random: int = 100,
    n_permutations: int = 9999,
    seed: int = 0,
    positions: str | int = "all",
    batch_size: int = 64,
    log: Log = _noop,
) -> ContinuationResult:
    """The continuation test (module docstring, part 1).

    ``strengths`` must include 0 and a positive value; the tests use the largest (``s*``), the
    curve all of them. ``null_store``/``shuffle_sets``: the shuffled-label vectors
    (``vectors/shuffled.zarr`` and ``vectors.build.shuffled_sets``), the first ``n_shuffled`` shuffles
    (all when ``None``); without them the shuffled test is not run.
    """
    from emotion_vectors.vectors.store_layout import Store, read_store

    strengths = sorted(float(s) for s in strengths)
    if 0.0 not in strengths or max(strengths) <= 0:
        raise ValueError(f"continuation strengths must include 0 and a positive value, got {strengths}")
    if positions == "generated":
        raise ValueError("positions='generated' steers nothing in the continuation test (the words are "
                         "scored from the prompt); use 'all' or an int")
    if n_random < 0 or n_permutations < 1:
        raise ValueError(f"n_random must be >= 0 and n_permutations >= 1, got {n_random}, {n_permutations}")
    store = store if isinstance(store, Store) else read_store(store)
    emotions = list(emotions)
    missing = [e for e in emotions if e not in store.emotions]
    if missing:
        raise ValueError(f"emotions {missing} are not in the store {store.path}")
    if len(emotions) < 2:
        raise ValueError("the continuation test needs at least 2 emotions")
    layer = _layer_for(store, layer)
    words = emotions
    n_e = len(emotions)
    s_top = max(strengths)
    grid = [s for s in strengths if s != 0.0]
    rows, n_k, started = _continuation_directions(store, emotions, layer, grid, s_top, null_store=null_store,
                                                  shuffle_sets=shuffle_sets, n_shuffled=n_shuffled,
                                                  n_random=n_random, seed=seed)
    log(f"continuation: {len(rows)} steered directions x strengths ({n_e} emotions x {len(grid)} strengths, "
        f"{n_k} shuffles x {n_e}, {n_random} random) x {len(prompts)} prompts, {batch_size} per pass")
    base = word_logprobs(model, tokenizer, prompts, words).mean(axis=0)  # (W,)
    lp = steered_word_logprobs(model, tokenizer, prompts, words, rows, positions=positions,
                               batch_size=batch_size, log=log).mean(axis=1)  # (rows, W)
    n_curve = n_e * len(grid)
    curve = lp[:n_curve].reshape(n_e, len(grid), len(words))
    rise_real = curve[:, grid.index(s_top), :] - base  # (E, W) at s*
    rise_shuf = (lp[n_curve : n_curve + n_k * n_e] - base).reshape(n_k, n_e, len(words))
    rise_rand = lp[n_curve + n_k * n_e :] - base  # (R, W)

    x = np.array(strengths)
    full, per_strength = _continuation_curves(emotions, strengths, grid, base, curve)
    spec = specificity_test(rise_real, n_permutations=n_permutations, seed=derive_seed("spec", seed))
    z_real = row_z(rise_real)
    own_real = np.diag(z_real).copy()
    own_shuf = np.stack([np.diag(row_z(rise_shuf[k])) for k in range(n_k)]) if n_k else np.zeros((0, n_e))
    shuf = set_test(own_real, own_shuf)
    z_rand = row_z(rise_rand) if n_random else np.zeros((0, n_e))
    rand = pool_test(np.vstack([z_real, z_rand]), n_e, n_permutations=n_permutations,
                     seed=derive_seed("pool", seed))
    per_emotion = _continuation_per_emotion(emotions, x, full, rise_real, own_real, own_shuf, z_rand, spec, shuf,
                                            rand)
    null_rows = [{"null": "shuffled", "index": k, "emotion": e, "own_z": float(own_shuf[k, i])}
                 for k in range(n_k) for i, e in enumerate(emotions)]
    null_rows += [{"null": "random", "index": r, "emotion": e, "own_z": float(z_rand[r, i])}
                  for r in range(n_random) for i, e in enumerate(emotions)]

    rises = sum(r["rises"] for r in per_emotion)
    summary = {
        "n_emotions": n_e, "strengths": strengths, "test_strength": s_top, "layer": layer,
        "positions": positions, "prompts": list(prompts), "n_shuffled": n_k, "n_random": n_random,
        "n_permutations": n_permutations, "n_directions_scored": len(rows),
        "n_rising": rises, "share_rising": rises / n_e,
        "n_top1_specific": sum(1 for r in per_emotion if r["specificity_rank"] == 1),
        "median_specificity_rank": float(np.median([r["specificity_rank"] for r in per_emotion])),
        "n_top1_vector": sum(1 for r in per_emotion if r["vector_rank"] == 1),
        "median_vector_rank": float(np.median([r["vector_rank"] for r in per_emotion])),
        "tests": _continuation_tests(spec, shuf, rand),
        "rise_matrix": {"rows": "emotions' vectors", "columns": "emotion words", "order": emotions,
                        "strength": s_top, "values": rise_real.tolist()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    log(f"continuation: own word the top riser under its vector for {summary['n_top1_specific']}/{n_e} "
        f"(median rank {summary['median_specificity_rank']:g}); own vector the top raiser of its word for "
        f"{summary['n_top1_vector']}/{n_e}; specificity p {spec['p']:.3g}, shuffled p {shuf['p']:.3g} "
        f"({n_k} shuffles), random p {rand['p']:.3g} (weak null) [{summary['seconds']:.0f} s]")
    return ContinuationResult(per_emotion, per_strength, summary, null_rows)


def _continuation_directions(store: Any, emotions: list[str], layer: int, grid: list[float], s_top: float, *,
                             null_store: Any, shuffle_sets: Sequence[Sequence[str]] | None,
                             n_shuffled: int | None, n_random: int, seed: int) -> tuple[list[list[Steer]], int, float]:
    """The steered rows of the continuation test: each emotion's vector at every non-zero strength,
    then each shuffle's pseudo vectors and the random directions at ``s_top``; also the number of
    shuffles and the clock's start (after the shuffled-label vectors are read)."""
    units = [_unit_steer(store, e, layer) for e in emotions]
    unit_norm = units[0].unit_norm
    shuffled = _null_directions(store, null_store, shuffle_sets, emotions, layer, n_shuffled)
    n_k = len(shuffled)
    started = time.perf_counter()

    def at(direction: np.ndarray, s: float) -> list[Steer]:
        return [Steer(layer=layer, direction=direction, strength=s, unit_norm=unit_norm)]

    rows: list[list[Steer]] = []
    for u in units:
        rows += [at(u.direction, s) for s in grid]
    for k in range(n_k):
        rows += [at(shuffled[k][i], s_top) for i in range(len(emotions))]
    like = [Steer(layer=layer, direction=units[0].direction, strength=s_top, unit_norm=unit_norm)]
    for r in range(n_random):
        rows.append(random_steers(like, derive_seed("continuation-null", seed, r)))
    return rows, n_k, started


def _continuation_curves(emotions: list[str], strengths: list[float], grid: list[float], base: np.ndarray,
                         curve: np.ndarray) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Each emotion's word log-probabilities at every strength (``(S, W)``, the unsteered ones at 0)
    and the per-(emotion, strength) rows: its own word's log-probability and rise, the other words'
    mean rise."""
    per_strength = []
    full = {}
    for i, e in enumerate(emotions):
        c = np.stack([base if s == 0.0 else curve[i, grid.index(s)] for s in strengths])  # (S, W)
        full[e] = c
        for si, s in enumerate(strengths):
            rise = c[si] - base
            per_strength.append({"emotion": e, "strength": s, "own_logprob": float(c[si, i]),
                                 "own_rise": float(rise[i]),
                                 "mean_other_rise": float(np.delete(rise, i).mean())})
    return full, per_strength


def _continuation_per_emotion(emotions: list[str], x: np.ndarray, full: Mapping[str, np.ndarray],
                              rise_real: np.ndarray, own_real: np.ndarray, own_shuf: np.ndarray,
                              z_rand: np.ndarray, spec: Mapping[str, Any], shuf: Mapping[str, Any],
                              rand: Mapping[str, Any]) -> list[dict]:
    """The per-emotion rows: the own word's slope and rise, its ranks, and the three tests' p-values
    with the nulls' summaries."""
    n_k, n_random = own_shuf.shape[0], z_rand.shape[0]
    per_emotion = []
    for i, e in enumerate(emotions):
        c = full[e]
        rise_max = rise_real[i]
        per_emotion.append({
            "emotion": e, "slope": slope(x, c[:, i]), "rises": bool(slope(x, c[:, i]) > 0),
            "monotone": bool(np.all(np.diff(c[:, i]) > 0)),
            "rise_at_max": float(rise_max[i]),
            "specificity_rank": int(1 + np.sum(rise_max > rise_max[i])),
            "own_z": float(own_real[i]),
            "vector_rank": spec["vector_rank"][i],
            "p_specificity": spec["p_emotion"][i], "p_specificity_holm": spec["p_emotion_holm"][i],
            "null_shuffled_mean": float(own_shuf[:, i].mean()) if n_k else float("nan"),
            "null_shuffled_q95": float(np.quantile(own_shuf[:, i], 0.95)) if n_k else float("nan"),
            "p_shuffled": shuf["p_emotion"][i], "p_shuffled_holm": shuf["p_emotion_holm"][i],
            "null_random_mean": float(z_rand[:, i].mean()) if n_random else float("nan"),
            "null_random_q95": float(np.quantile(z_rand[:, i], 0.95)) if n_random else float("nan"),
            "p_random": rand["p_emotion"][i], "p_random_holm": rand["p_emotion_holm"][i],
        })
    return per_emotion


def _continuation_tests(spec: Mapping[str, Any], shuf: Mapping[str, Any], rand: Mapping[str, Any]) -> dict:
    """The summary's ``tests``: each test's family result and its number of emotions surviving Holm."""

    def surviving(p_holm: Sequence[float]) -> int:
        return int(np.sum(np.asarray(p_holm, dtype=float) < ALPHA))

    return {
        "specificity": {k: spec[k] for k in ("statistic", "p", "n_null", "null_mean", "null_q95")}
        | {"n_surviving_holm": surviving(spec["p_emotion_holm"]), "n_null_emotion": spec["n_null_emotion"]},
        "shuffled": {k: shuf.get(k) for k in ("statistic", "p", "n_null", "null_mean", "null_q95")}
        | {"n_surviving_holm": surviving(shuf["p_emotion_holm"]), "n_null_emotion": shuf["n_null_emotion"]},
        "random": {k: rand.get(k) for k in ("statistic", "p", "n_null", "null_mean", "null_q95")}
        | {"n_surviving_holm": surviving(rand["p_emotion_holm"]), "n_null_emotion": rand["n_null_emotion"]},
    }


# --------------------------------------------------------------------------------------------
# 2. Dose-response of free generation


@dataclass
class Generation:
    condition: str
    emotion: str | None
    random_index: int | None
    strength: float
    prompt_index: int
    sample: int
    seed: int
    text: str
    n_tokens: int
    kind: str = "baseline"  # baseline | emotion | shuffled | random
    shuffle: int | None = None
    vader: float = float("nan")  # masked: every run emotion's word forms replaced by MASK_TOKEN
    vader_unmasked: float = float("nan")
    readout: float = float("nan")
    extra: dict = field(default_factory=dict)


def render_chat(tokenizer: Any, user: str) -> str:
    """One user turn through the chat template (plain ``User:/Assistant:`` without one)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    return f"User: {user}\nAssistant:"


def sample_batch(model: Any, tokenizer: Any, prompts: Sequence[str], *, seed: int,
                 max_new_tokens: int, temperature: float, top_p: float = 0.95) -> list[tuple[str, int]]:
    """Seeded sampling of one reply per prompt in a left-padded batch."""
    import torch

    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: v.to(_input_device(model)) for k, v in enc.items()}
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                             temperature=temperature if temperature > 0 else None,
                             top_p=top_p if temperature > 0 else None,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[:, enc["input_ids"].shape[1]:].cpu().tolist()
    eos = tokenizer.eos_token_id
    stops = set(eos if isinstance(eos, list) else [eos])
    res = []
    for row in new:
        n = next((i for i, t in enumerate(row) if t in stops), len(row))
        res.append((tokenizer.decode(row[:n], skip_special_tokens=True).strip(), n))
    return res


def vader_scores(texts: Sequence[str]) -> np.ndarray:
    """VADER compound sentiment (−1 … 1) of each text."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    sia = SentimentIntensityAnalyzer()
    return np.array([sia.polarity_scores(t)["compound"] if t else 0.0 for t in texts])


def mask_emotion_words(text: str, emotions: Sequence[str], token: str = MASK_TOKEN) -> str:
    """``text`` with every form of every emotion word replaced by ``token``.

    Forms and matching are the leak filter's (``leak.leak_pattern``: inflections, verb forms,
    irregular forms, any case, whole words). Every match is masked, also the homographs the leak
    filter would excuse in context ("the patient"): for a scorer, masking too much costs a
    neutral word, missing one lets the emotion word itself score. Derivations ("happiness",
    "fear" for *afraid*) are not forms and are not masked."""
    from emotion_vectors.corpus.leak import leak_pattern

    out = text.replace("\u02bc", "\u2019")
    for e in emotions:
        out = leak_pattern(e).sub(token, out)
    return out


def readout_scores(model: Any, tokenizer: Any, texts: Sequence[str], direction) -> np.ndarray:
    """The texts re-read by the (unsteered) model: mean activation over the tokens from the
    second on (the first is an attention sink whose residual norm is ~100x the others' in
    SmolLM2 and would dominate the mean) at the direction's layer, projected on the valence
    direction (NaN for empty texts; a one-token text has nothing to pool and gets NaN)."""
    from emotion_vectors.extraction.extract import extract_pooled

    idx = [i for i, t in enumerate(texts) if t.strip()]
    out = np.full(len(texts), np.nan)
    if not idx:
        return out
    res = extract_pooled(model, tokenizer, [texts[i] for i in idx], [str(i) for i in idx],
                         [direction.layer], pool_start=1, batch_size=16)
    for j, rid in zip(range(len(res.ids)), res.ids):
        out[int(rid)] = float(direction.score(res.pooled[j, 0]))
    return out


def bootstrap_mean_ci(values: np.ndarray, rng: np.random.Generator, n_boot: int = 1000) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan"), float("nan")
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def bootstrap_slope_ci(x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                       n_boot: int = 1000) -> tuple[float, float]:
    """Percentile interval of the slope, resampling generations within each strength (the
    direction held fixed: it covers the sampling of generations only)."""
    b = bootstrap_slopes(x, y, rng, n_boot)
    if b.size == 0:
        return float("nan"), float("nan")
    return float(np.quantile(b, 0.025)), float(np.quantile(b, 0.975))


def bootstrap_slopes(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, n_boot: int = 1000) -> np.ndarray:
    """``n_boot`` least-squares slopes of ``y`` on ``x``, generations resampled within each
    strength (the strengths' counts are kept, so the slope is a fixed weighting of the cell
    means). Empty when fewer than two strengths have a finite value."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    levels = np.unique(x)
    if levels.size < 2:
        return np.zeros(0)
    xc = x - x.mean()
    den = float(xc @ xc)
    total = np.zeros(n_boot)
    for s in levels:
        g = y[x == s]
        w = (s - x.mean()) * g.size / den
        total += w * g[rng.integers(0, g.size, size=(n_boot, g.size))].mean(axis=1)
    return total


@dataclass
class DoseResult:
    generations: list[Generation]
    curves: list[dict]
    slopes: list[dict]
    summary: dict


def dose_response(
    model: Any,
    tokenizer: Any,
    store: Any,
    emotions: Sequence[str],
    *,
    prompts: Sequence[str],
    strengths: Sequence[float],
    samples: int,
    max_new_tokens: int,
    temperature: float,
    direction=None,
    signs: dict[str, int] | None = None,
    mask_words: Sequence[str] | None = None,
    layer: int | None = None,
    null_store: Any = None,
    shuffle_sets: Sequence[Sequence[str]] | None = None,
    n_shuffled: int | None = None,
    n_random: int = 16,
    n_permutations: int = 9999,
    seed: int = 0,
    positions: str | int = "all",
    batch_size: int = 64,
    n_boot: int = 1000,
    log: Log = _noop,
) -> DoseResult:
    """Steered generations scored by masked VADER, against shuffled-label and random nulls
    (module docstring, part 2).

    ``signs``: the expected direction of each emotion's valence (+1, -1, or 0 = both ways);
    ``mask_words``: the emotions whose word forms are masked before VADER (default: the store's
    emotions); ``direction``: the valence readout (optional, descriptive, emotions' own
    generations only). Every direction (emotion, pseudo vector, random) is sampled at every
    non-zero strength, ``samples`` times per prompt; the unsteered generations are strength 0
    for all.
    """
    from emotion_vectors.vectors.store_layout import Store, read_store

    store = store if isinstance(store, Store) else read_store(store)
    emotions = list(emotions)
    missing = [e for e in emotions if e not in store.emotions]
    if missing:
        raise ValueError(f"dose-response emotions {missing} are not in the store {store.path}")
    grid = sorted({float(s) for s in strengths if float(s) != 0.0})
    if not grid:
        raise ValueError(f"dose-response strengths need a non-zero value, got {list(strengths)}")
    strengths = sorted(grid + [0.0])
    if samples < 1 or max_new_tokens < 1:
        raise ValueError(f"samples and max_new_tokens must be >= 1, got {samples}, {max_new_tokens}")
    signs = {e: int(np.sign((signs or {}).get(e, 0))) for e in emotions}
    mask_words = list(store.emotions if mask_words is None else mask_words)
    layer = _layer_for(store, layer)
    dirs, n_k, unit_norm = _dose_directions(store, emotions, layer, null_store=null_store, shuffle_sets=shuffle_sets,
                                            n_shuffled=n_shuffled, n_random=n_random, seed=seed)
    rendered = [render_chat(tokenizer, p) for p in prompts]
    # rows: (direction index or -1 for the baseline, strength, prompt, sample)
    plan: list[tuple[int, float, int, int]] = [(-1, 0.0, p, j) for p in range(len(prompts)) for j in range(samples)]
    for d in range(len(dirs)):
        plan += [(d, s, p, j) for s in grid for p in range(len(prompts)) for j in range(samples)]
    log(f"dose-response: {len(plan)} generations ({len(dirs)} directions: {len(emotions)} emotions, "
        f"{n_k} shuffles x {len(emotions)}, {n_random} random; x {len(grid)} strengths x "
        f"{len(prompts)} prompts x {samples}), {batch_size} per batch")

    started = time.perf_counter()
    gens = _dose_generate(model, tokenizer, plan, dirs, rendered, layer=layer, unit_norm=unit_norm, seed=seed,
                          batch_size=batch_size, max_new_tokens=max_new_tokens, temperature=temperature,
                          positions=positions, started=started, log=log)
    _dose_score(model, tokenizer, gens, mask_words, direction)
    gen_seconds = time.perf_counter() - started

    # slopes of every direction (baseline + its generations)
    base = [g for g in gens if g.kind == "baseline"]
    by_dir: dict[int, list[Generation]] = {}
    for (d, *_), g in zip(plan, gens):
        if d >= 0:
            by_dir.setdefault(d, []).append(g)
    dir_slope = np.array([slope(*_dose_series(base, by_dir, d, "vader")) for d in range(len(dirs))])
    n_e = len(emotions)
    sgn = [signs[e] for e in emotions]
    real_slopes = dir_slope[:n_e]
    shuf_slopes = dir_slope[n_e : n_e + n_k * n_e].reshape(n_k, n_e)
    rand_slopes = dir_slope[n_e + n_k * n_e :]
    shuf = set_test(_signed(real_slopes, sgn), _signed(shuf_slopes, sgn))
    pool_vals = _signed(np.concatenate([real_slopes, rand_slopes])[:, None] * np.ones((1, n_e)), sgn)
    rand = pool_test(pool_vals, n_e, n_permutations=n_permutations, seed=derive_seed("dose-pool", seed))
    rng = np.random.default_rng(derive_seed("dose-bootstrap", seed))
    boots = np.stack([bootstrap_slopes(*_dose_series(base, by_dir, i, "vader"), rng, n_boot)
                      for i in range(n_e)])  # (E, B)
    fam_boot = _signed(boots.T, sgn).mean(axis=1)
    slopes_rows, curves = _dose_rows(emotions, sgn, strengths, base, by_dir, real_slopes, shuf_slopes, rand_slopes,
                                     boots, shuf, rand, rng, n_boot)
    curves += _dose_null_curves(emotions, strengths, base, by_dir, n_k, len(dirs))
    summary = {
        "emotions": emotions, "expected_signs": signs, "strengths": strengths, "layer": layer,
        "positions": positions, "samples_per_prompt": samples, "n_prompts": len(prompts),
        "max_new_tokens": max_new_tokens, "temperature": temperature, "n_shuffled": n_k,
        "n_random": n_random, "n_permutations": n_permutations, "n_generations": len(gens),
        "n_directions": len(dirs), "masked_words": mask_words, "mask_token": MASK_TOKEN,
        "metric": "VADER compound of the text with every form of every run emotion's word masked",
        "tests": {
            "shuffled": {k: shuf.get(k) for k in ("statistic", "p", "n_null", "null_mean", "null_q95")}
            | {"interval": [float(np.quantile(fam_boot, 0.025)), float(np.quantile(fam_boot, 0.975))],
               "n_surviving_holm": int(np.sum(np.asarray(shuf["p_emotion_holm"], float) < ALPHA)),
               "n_null_emotion": shuf["n_null_emotion"]},
            "random": {k: rand.get(k) for k in ("statistic", "p", "n_null", "null_mean", "null_q95")}
            | {"n_surviving_holm": int(np.sum(np.asarray(rand["p_emotion_holm"], float) < ALPHA)),
               "n_null_emotion": rand["n_null_emotion"], "note": WEAK_RANDOM_NULL},
        },
        "slopes": slopes_rows,
        "null_slopes": {"shuffled": shuf_slopes.tolist(), "random": rand_slopes.tolist()},
        "generation_seconds": round(gen_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return DoseResult(gens, curves, slopes_rows, summary)


_DoseDirection = tuple[str, str | None, int | None, np.ndarray]  # (kind, emotion, index, unit direction)


def _dose_directions(store: Any, emotions: list[str], layer: int, *, null_store: Any,
                     shuffle_sets: Sequence[Sequence[str]] | None, n_shuffled: int | None, n_random: int,
                     seed: int) -> tuple[list[_DoseDirection], int, float]:
    """The sampled directions, ``(kind, emotion, index, unit direction)``: the emotions' vectors,
    each shuffle's pseudo vectors, the random directions; also the number of shuffles and the
    layer's residual norm."""
    units = [_unit_steer(store, e, layer) for e in emotions]
    unit_norm = units[0].unit_norm
    shuffled = _null_directions(store, null_store, shuffle_sets, emotions, layer, n_shuffled)
    n_k = len(shuffled)
    # directions: (kind, emotion, index, unit direction)
    dirs: list[_DoseDirection] = [("emotion", e, None, u.direction) for e, u in zip(emotions, units)]
    for k in range(n_k):
        dirs += [("shuffled", e, k, shuffled[k][i]) for i, e in enumerate(emotions)]
    like = [Steer(layer=layer, direction=units[0].direction, strength=1.0, unit_norm=unit_norm)]
    for r in range(n_random):
        dirs.append(("random", None, r, random_steers(like, derive_seed("dose-null", seed, r))[0].direction))
    return dirs, n_k, unit_norm


def _dose_generate(model: Any, tokenizer: Any, plan: Sequence[tuple[int, float, int, int]],
                   dirs: Sequence[_DoseDirection], rendered: Sequence[str], *, layer: int, unit_norm: float,
                   seed: int, batch_size: int, max_new_tokens: int, temperature: float, positions: str | int,
                   started: float, log: Log) -> list[Generation]:
    """Sample every row of ``plan`` in seeded batches of ``batch_size``, one direction per row."""

    def name(d: int, s: float) -> str:
        if d < 0:
            return "baseline"
        kind, e, k, _ = dirs[d]
        tag = {"emotion": f"{e}", "shuffled": f"{e}@shuffle{k}", "random": f"random{k}"}[kind]
        return f"{tag}@{s:+g}"

    gens: list[Generation] = []
    n_batches = math.ceil(len(plan) / batch_size)
    for bi in range(n_batches):
        chunk = plan[bi * batch_size : (bi + 1) * batch_size]
        bseed = derive_seed("dose", seed, bi, batch_size)
        steer_rows = [[] if d < 0 else [Steer(layer=layer, direction=dirs[d][3], strength=s, unit_norm=unit_norm)]
                      for d, s, _, _ in chunk]
        with steering_rows(model, steer_rows, positions=positions):
            replies = sample_batch(model, tokenizer, [rendered[p] for _, _, p, _ in chunk], seed=bseed,
                                   max_new_tokens=max_new_tokens, temperature=temperature)
        for (d, s, p, j), (text, n) in zip(chunk, replies):
            kind, e, k = ("baseline", None, None) if d < 0 else dirs[d][:3]
            gens.append(Generation(condition=name(d, s), emotion=e if kind in ("emotion", "shuffled") else None,
                                   random_index=k if kind == "random" else None, strength=s, prompt_index=p,
                                   sample=j, seed=bseed, text=text, n_tokens=n, kind=kind,
                                   shuffle=k if kind == "shuffled" else None))
        el = time.perf_counter() - started
        log(f"dose-response: batch {bi + 1}/{n_batches} generated ({el:.0f} s, "
            f"~{el / (bi + 1) * (n_batches - bi - 1):.0f} s left)")
    return gens


def _dose_score(model: Any, tokenizer: Any, gens: list[Generation], mask_words: Sequence[str], direction) -> None:
    """Fill the generations' masked and unmasked VADER scores, and (with ``direction``) the
    valence readout of the baseline's and the emotions' own generations."""
    texts = [g.text for g in gens]
    masked = vader_scores([mask_emotion_words(t, mask_words) for t in texts])
    raw = vader_scores(texts)
    for g, m, r in zip(gens, masked, raw):
        g.vader, g.vader_unmasked = float(m), float(r)
    if direction is not None:
        own = [i for i, g in enumerate(gens) if g.kind in ("baseline", "emotion")]
        rs = readout_scores(model, tokenizer, [texts[i] for i in own], direction)
        for i, v in zip(own, rs):
            gens[i].readout = float(v)


def _dose_series(base: list[Generation], by_dir: Mapping[int, list[Generation]], d: int,
                 metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Strengths and ``metric`` of direction ``d``'s series: the baseline and its generations."""
    ser = base + by_dir[d]
    return np.array([g.strength for g in ser]), np.array([getattr(g, metric) for g in ser])


def _dose_rows(emotions: list[str], sgn: list[int], strengths: list[float], base: list[Generation],
               by_dir: Mapping[int, list[Generation]], real_slopes: np.ndarray, shuf_slopes: np.ndarray,
               rand_slopes: np.ndarray, boots: np.ndarray, shuf: Mapping[str, Any], rand: Mapping[str, Any],
               rng: np.random.Generator, n_boot: int) -> tuple[list[dict], list[dict]]:
    """Per emotion: its slopes row (VADER slope, interval, nulls, p-values; the unmasked VADER and
    readout slopes) and its curve (the metrics' means and intervals at every strength)."""
    n_k, n_random = shuf_slopes.shape[0], rand_slopes.size
    slopes_rows, curves = [], []
    for i, e in enumerate(emotions):
        row: dict[str, Any] = {"emotion": e, "expected_sign": sgn[i],
                               "vader_slope": float(real_slopes[i]),
                               "vader_slope_lo": float(np.quantile(boots[i], 0.025)),
                               "vader_slope_hi": float(np.quantile(boots[i], 0.975)),
                               "null_shuffled_q025": float(np.quantile(shuf_slopes[:, i], 0.025)) if n_k else float("nan"),
                               "null_shuffled_q975": float(np.quantile(shuf_slopes[:, i], 0.975)) if n_k else float("nan"),
                               "p_shuffled": shuf["p_emotion"][i], "p_shuffled_holm": shuf["p_emotion_holm"][i],
                               "null_random_q025": float(np.quantile(rand_slopes, 0.025)) if n_random else float("nan"),
                               "null_random_q975": float(np.quantile(rand_slopes, 0.975)) if n_random else float("nan"),
                               "p_random": rand["p_emotion"][i], "p_random_holm": rand["p_emotion_holm"][i]}
        for metric in ("vader_unmasked", "readout"):
            xs, ys = _dose_series(base, by_dir, i, metric)
            row[f"{metric}_slope"] = slope(xs[np.isfinite(ys)], ys[np.isfinite(ys)]) if np.isfinite(ys).sum() > 1 else float("nan")
        slopes_rows.append(row)
        for s in strengths:
            grp = base if s == 0.0 else [g for g in by_dir[i] if g.strength == s]
            crow = {"emotion": e, "kind": "emotion", "strength": s, "n": len(grp)}
            for metric in ("vader", "vader_unmasked", "readout"):
                vals = np.array([getattr(g, metric) for g in grp])
                lo, hi = bootstrap_mean_ci(vals, rng, n_boot)
                mean = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
                crow.update({f"{metric}_mean": mean, f"{metric}_lo": lo, f"{metric}_hi": hi})
            curves.append(crow)
    return slopes_rows, curves


def _dose_null_curves(emotions: list[str], strengths: list[float], base: list[Generation],
                      by_dir: Mapping[int, list[Generation]], n_k: int, n_dirs: int) -> list[dict]:
    """The nulls' curves: per emotion its pseudo vectors' mean VADER at every strength (spread over
    the shuffles), and the random directions' (spread over the directions)."""
    n_e = len(emotions)
    curves = []
    base_mean = float(np.mean([g.vader for g in base]))
    for label, idx in ([(f"shuffled:{e}", [n_e + k * n_e + i for k in range(n_k)]) for i, e in enumerate(emotions)]
                       + [("random", list(range(n_e + n_k * n_e, n_dirs)))]):
        if not idx:
            continue
        for s in strengths:
            vals = [base_mean] if s == 0.0 else [np.mean([g.vader for g in by_dir[d] if g.strength == s]) for d in idx]
            curves.append({"emotion": label, "kind": label.split(":")[0], "strength": s, "n": len(idx),
                           "vader_mean": float(np.mean(vals)), "vader_lo": float(np.quantile(vals, 0.025)),
                           "vader_hi": float(np.quantile(vals, 0.975))})
    return curves


# --------------------------------------------------------------------------------------------
# Claims


def _at_floor(claim: Claim) -> Claim:
    """A claim whose Monte-Carlo p is the smallest its null allows says so (more draws could
    give a smaller p)."""
    from emotion_vectors.core.claims import min_attainable_p

    if claim.p is not None and claim.n_null and math.isclose(claim.p, min_attainable_p(claim.n_null)):
        claim.note = (claim.note + " " if claim.note else "") + (
            f"p = 1/{claim.n_null + 1} is the smallest {claim.n_null} null draws allow: the real statistic is "
            "above every draw, and more draws could give a smaller p.")
    return claim


def continuation_claims(summary: dict, per_emotion: Sequence[dict], *, figure: str | None = None) -> list[Claim]:
    """The continuation test's claims: specificity (vs the other emotions' vectors), shuffled
    (vs shuffled-label vectors), random (vs random directions, a weak null)."""
    t = summary["tests"]
    s_top = summary["test_strength"]
    n_e = summary["n_emotions"]
    emotions = [r["emotion"] for r in per_emotion]

    def per(key: str) -> dict:
        return {e: {"p": r[f"p_{key}"], "p_holm": r[f"p_{key}_holm"]} for e, r in zip(emotions, per_emotion)}

    spec, shuf, rand = t["specificity"], t["shuffled"], t["random"]
    claims = [
        make_claim(
            "steering.continuation.specificity", "steering",
            "Each emotion's vector raises the log-probability of its own emotion word more than the "
            "other emotions' vectors raise that word",
            test=(f"permutation test of the vector-to-word matching: rise of each word's log-probability at "
                  f"strength {s_top:g} x residual norm under each of the {n_e} vectors, each vector's mean "
                  "rise removed, standardised within each word across the vectors; statistic = mean over "
                  "emotions of the own vector's value on its own word"),
            null=(f"the vectors' emotion labels permuted ({spec['n_null']} random permutations); exact when a "
                  "vector's label says nothing about which word it raises"),
            statistic=spec["statistic"], p=spec["p"], n_null=spec["n_null"], figure=figure,
            note=(f"own vector the top raiser of its word for {summary['n_top1_vector']}/{n_e} emotions "
                  f"(median rank {summary['median_vector_rank']:g} of {n_e}); per emotion (exact p = rank/{n_e}, "
                  f"Holm) {spec['n_surviving_holm']}/{n_e} survive."),
            extra={"n_top1_vector": summary["n_top1_vector"], "median_vector_rank": summary["median_vector_rank"],
                   "n_top1_specific": summary["n_top1_specific"],
                   "median_specificity_rank": summary["median_specificity_rank"],
                   "per_emotion": per("specificity"), "n_surviving_holm": spec["n_surviving_holm"]}),
    ]
    if summary["n_shuffled"]:
        claims.append(make_claim(
            "steering.continuation.shuffled", "steering",
            "Steering with the emotions' vectors raises their own words (relative to the vector's other "
            "emotion words) more than steering with shuffled-label pseudo vectors does",
            test=(f"mean over the {n_e} emotions of the own word's z within the vector's row (rise at strength "
                  f"{s_top:g} standardised over all {n_e} emotion words under that vector); real labels vs each "
                  "shuffle's same-named pseudo vectors; Monte-Carlo p"),
            null=(f"{shuf['n_null']} shuffled-label vector sets (the same stories, emotion labels permuted within "
                  "topic, same counts, denoising and norm): exact when the stories' activations do not depend "
                  "on their emotion label"),
            statistic=shuf["statistic"], p=shuf["p"], n_null=shuf["n_null"], figure=figure,
            note=(f"per emotion (Monte-Carlo p over {shuf['n_null']} shuffles, Holm over {n_e}): "
                  f"{shuf['n_surviving_holm']}/{n_e} survive."),
            extra={"per_emotion": per("shuffled"), "n_surviving_holm": shuf["n_surviving_holm"]}))
    else:
        claims.append(make_claim(
            "steering.continuation.shuffled", "steering",
            "Steering with the emotions' vectors raises their own words more than shuffled-label pseudo vectors do",
            test="(not run)", null="shuffled-label vectors", statistic=None, p=None,
            note="no shuffled-label vectors were given, so this test was not run"))
    claims.append(make_claim(
        "steering.continuation.random", "steering",
        "Steering with the emotions' vectors raises their own words (relative to the vector's other emotion "
        "words) more than random directions of the same norm do",
        test=(f"mean over the {n_e} emotions of the own word's z within the vector's row (as in the shuffled "
              f"test); Monte-Carlo permutation p over {rand['n_null']} random assignments of {n_e} directions, "
              f"drawn from the {n_e} emotion vectors and {summary['n_random']} random directions together, to "
              "the words"),
        null=WEAK_RANDOM_NULL + "; exact if the emotion vectors behaved like uniform random directions",
        statistic=rand["statistic"], p=rand["p"] if summary["n_random"] else None,
        n_null=rand["n_null"] if summary["n_random"] else None, figure=figure,
        note=(f"per emotion (Monte-Carlo p over {summary['n_random']} random directions, Holm over {n_e}): "
              f"{rand['n_surviving_holm']}/{n_e} survive"
              + ("." if summary["n_random"] else "; no random directions were drawn.")),
        extra={"per_emotion": per("random"), "n_surviving_holm": rand["n_surviving_holm"]}))
    return [_at_floor(c) for c in claims]


def dose_claims(summary: dict, *, figure: str | None = None) -> list[Claim]:
    """The dose-response's claims against the shuffled-label null: the family (mean signed slope
    over the steered emotions) and each emotion (Holm over the emotions). The random-direction
    comparison is reported in the summary, not claimed (a weak null)."""
    t = summary["tests"]["shuffled"]
    emotions = summary["emotions"]
    n_e = len(emotions)
    k = summary["n_shuffled"]
    strengths = ", ".join(f"{s:g}" for s in summary["strengths"])
    metric = ("masked VADER (the compound score of each generation with every form of the run's emotion words "
              "masked)")
    per_cell = summary["n_prompts"] * summary["samples_per_prompt"]
    interval_of = (f"95% percentile bootstrap over generations ({per_cell} per strength, resampled within each "
                   "strength) with the steering direction held fixed: it covers the sampling of generations, not "
                   "the uncertainty of the vector itself" + ("; with so few generations per strength it is rough"
                                                             if per_cell < 8 else ""))
    null = (f"{k} shuffled-label vector sets (the same stories, emotion labels permuted within topic, same "
            "counts, denoising and norm), each steered and sampled as the real vectors: exact when the stories' "
            "activations do not depend on their emotion label")
    signs = summary["expected_signs"]

    def direction(e: str) -> str:
        return {1: "up (pleasant)", -1: "down (unpleasant)", 0: "either way"}[signs[e]]

    fam = make_claim(
        "steering.dose.shuffled", "steering",
        "Steering with the emotions' vectors moves the sentiment of free generations in each emotion's "
        "direction more than shuffled-label pseudo vectors do",
        test=(f"least-squares slope of {metric} on strength ({strengths} x residual norm), signed by each "
              f"emotion's expected valence ({', '.join(f'{e}: {direction(e)}' for e in emotions)}); statistic = "
              "mean over the emotions; real labels vs each shuffle; Monte-Carlo p"),
        null=null, statistic=t["statistic"], p=t["p"] if k else None, n_null=k if k else None,
        interval=t.get("interval"), interval_of=f"of the statistic: {interval_of}", figure=figure,
        note=("" if k else "no shuffled-label vectors were given; ")
        + f"per emotion (Holm over {n_e}): {t['n_surviving_holm']}/{n_e} survive.",
    )
    claims = [_at_floor(fam)]
    rows = {r["emotion"]: r for r in summary["slopes"]}
    for e in emotions:
        r = rows[e]
        claims.append(make_claim(
            f"steering.dose.{e}.shuffled", "steering",
            f"Steering with the vector of {e!r} moves the sentiment of free generations {direction(e)} more "
            "than its shuffled-label pseudo vectors do",
            test=(f"least-squares slope of {metric} on strength ({strengths}); one-sided in the expected "
                  "direction (two-sided for an emotion without one); Monte-Carlo p of the real vector's slope "
                  f"among its {k} same-named pseudo vectors' slopes"),
            null=null, statistic=r["vader_slope"], p=r["p_shuffled"] if k else None,
            p_adjusted=r["p_shuffled_holm"] if k else None, correction=f"Holm over {n_e} emotions",
            family=n_e, n_null=k if k else None,
            interval=[r["vader_slope_lo"], r["vader_slope_hi"]], interval_of=f"of the slope: {interval_of}",
            figure=figure,
            note=f"unmasked VADER slope {r['vader_unmasked_slope']:.3g} (descriptive).",
        ))
    return claims


# --------------------------------------------------------------------------------------------
# Figures


def dose_response_figure(curves: list[dict], path: str | Path, title: str = "") -> None:
    """Left: masked VADER against strength, one line per emotion (bootstrap bars over
    generations), its shuffled-label pseudo vectors (thin, same colour: mean and 95% range) and
    random directions (grey band). Right: the valence readout of the emotions' own generations
    (descriptive: PC1 of these same vectors)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(curves)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = {}
    own = df[df["kind"] == "emotion"]
    for name, g in own.groupby("emotion", sort=False):
        g = g.sort_values("strength")
        err = [g["vader_mean"] - g["vader_lo"], g["vader_hi"] - g["vader_mean"]]
        line = axes[0].errorbar(g["strength"], g["vader_mean"], yerr=err, marker="o", capsize=3, label=name, zorder=3)
        colours[name] = line[0].get_color()
        if g["readout_mean"].notna().any():
            axes[1].errorbar(g["strength"], g["readout_mean"],
                             yerr=[g["readout_mean"] - g["readout_lo"], g["readout_hi"] - g["readout_mean"]],
                             marker="o", capsize=3, label=name, color=colours[name])
    for name, g in df[df["kind"] == "shuffled"].groupby("emotion", sort=False):
        g = g.sort_values("strength")
        c = colours.get(name.split(":", 1)[1], "0.5")
        axes[0].plot(g["strength"], g["vader_mean"], color=c, lw=1, ls="--", alpha=0.8, zorder=2)
        axes[0].fill_between(g["strength"], g["vader_lo"], g["vader_hi"], color=c, alpha=0.08, zorder=1)
    rnd = df[df["kind"] == "random"].sort_values("strength")
    if len(rnd):
        axes[0].fill_between(rnd["strength"], rnd["vader_lo"], rnd["vader_hi"], color="0.6", alpha=0.25,
                             label="random directions (95% range)", zorder=0)
    axes[0].set_ylabel("VADER compound, emotion words masked")
    axes[0].set_title("dashed/shaded: shuffled-label pseudo vectors (mean, 95% range)", fontsize=9)
    axes[1].set_ylabel("valence readout (PC1 of these vectors)")
    axes[1].set_title("descriptive only: not independent of the vectors", fontsize=9)
    for ax in axes:
        ax.set_xlabel("strength (× residual norm)")
        ax.axvline(0, color="0.85", lw=0.8)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "Steered generation: dose-response against shuffled-label and random directions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def continuation_figure(per_strength: list[dict], path: str | Path, title: str = "",
                        per_emotion: list[dict] | None = None, null_rows: list[dict] | None = None) -> None:
    """Left: own-word log-probability rise against strength, one line per emotion, with the mean
    of the other emotions' words. Right (with ``per_emotion``/``null_rows``): the own word's z
    within the vector's row at the test strength, for each emotion's vector (dot) against its
    shuffled-label pseudo vectors and random directions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(per_strength)
    two = bool(per_emotion)
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(12 if two else 6, 4.5))
    ax = axes[0] if two else axes
    for _, g in df.groupby("emotion", sort=False):
        g = g.sort_values("strength")
        ax.plot(g["strength"], g["own_rise"], lw=1, alpha=0.7)
    mean = df.groupby("strength")[["own_rise", "mean_other_rise"]].mean()
    ax.plot(mean.index, mean["own_rise"], color="k", lw=2.5, label="mean, own word")
    ax.plot(mean.index, mean["mean_other_rise"], color="k", lw=2, ls="--", label="mean, other emotions' words")
    ax.axhline(0, color="0.85", lw=0.8)
    ax.set_xlabel("strength (× residual norm)")
    ax.set_ylabel("Δ log p(emotion word)")
    ax.legend(fontsize=8)
    ax.set_title("the steered emotion's own word", fontsize=9)
    if two:
        ax = axes[1]
        names = [r["emotion"] for r in per_emotion]
        nulls = pd.DataFrame(null_rows or [], columns=["null", "index", "emotion", "own_z"])
        for i, e in enumerate(names):
            for kind, dx, c in (("random", -0.2, "0.6"), ("shuffled", 0.2, "tab:blue")):
                v = nulls[(nulls["null"] == kind) & (nulls["emotion"] == e)]["own_z"]
                if len(v):
                    ax.scatter(np.full(len(v), i + dx), v, s=4, color=c, alpha=0.4,
                               label=f"{kind}" if i == 0 else None)
            ax.scatter([i], [per_emotion[i]["own_z"]], color="k", s=20, zorder=3,
                       label="emotion's vector" if i == 0 else None)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_ylabel("own word's z within the direction's row")
        ax.axhline(0, color="0.85", lw=0.8)
        ax.legend(fontsize=7)
        ax.set_title("test strength: vector vs shuffled-label pseudo vectors and random directions", fontsize=9)
    fig.suptitle(title or "Continuation test")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["ContinuationResult", "DoseResult", "Generation", "MASK_TOKEN", "WEAK_RANDOM_NULL",
           "bootstrap_mean_ci", "bootstrap_slope_ci", "bootstrap_slopes", "continuation_claims",
           "continuation_figure", "continuation_test", "derive_seed", "dose_claims", "dose_response",
           "dose_response_figure", "mask_emotion_words", "pool_test", "readout_scores", "render_chat",
           "row_z", "sample_batch", "set_test", "slope", "specificity_test", "steered_word_logprobs",
           "vader_scores", "word_logprobs"]
