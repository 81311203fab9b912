"""Logit lens on emotion vectors: which tokens does each direction promote and suppress?

Each vector's unit direction is scaled to a typical residual-stream norm at its layer (the
store's ``residual_norm``: the mean per-token L2 norm there), passed through the model's final
norm (``model.get_decoder().norm``) and the unembedding (``model.get_output_embeddings()``).
The scale matters only through the norm's epsilon (RMSNorm and LayerNorm are otherwise
scale-invariant); a typical norm keeps epsilon as small relative to the input as it is in
real activations. Gemma's final logit soft-capping is monotone and does not change rankings, so
it is not applied. Logits are reported as computed (no bias, no centring).

A token "is" an emotion's word when its decoded text, with SentencePiece ``▁`` and byte-level
BPE ``Ġ`` markers read as spaces and surrounding whitespace removed, equals one of the word's
forms ignoring case. The forms of ``at ease`` are ``at ease`` and its content word ``ease``;
of ``grief-stricken``: ``grief-stricken``, ``grief``, ``stricken`` (see ``word_forms``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Opposite pairs checked for mutual suppression (from the study's behavioural pairs).
OPPOSITE_PAIRS: tuple[tuple[str, str], ...] = (
    ("happy", "sad"),
    ("calm", "desperate"),
    ("proud", "ashamed"),
    ("excited", "bored"),
    ("loving", "hostile"),
)
_FUNCTION_WORDS = {"at", "on", "out", "in", "self", "of", "the", "a"}
_MARKERS = {"\u2581": " ", "\u0120": " ", "\u010a": "\n", "\u0109": "\t"}


def normalise_token(token: str | None) -> str:
    """Token string -> plain text: ``▁``/``Ġ`` markers to spaces, stripped, lower-cased."""
    if token is None:
        return ""
    for marker, repl in _MARKERS.items():
        token = token.replace(marker, repl)
    return token.strip().lower()


def word_forms(emotion: str) -> set[str]:
    """Lower-case strings a token may equal to count as ``emotion``'s own word.

    The emotion itself, and for phrases and hyphenated compounds each part that is not a
    function word or ``self`` (``worn out`` -> {``worn out``, ``worn``}).
    """
    word = emotion.lower()
    forms = {word}
    parts = word.replace("-", " ").split()
    if len(parts) > 1:
        forms.update(p for p in parts if p not in _FUNCTION_WORDS)
    return forms


def final_norm(model):
    """The final norm before the unembedding (``model.get_decoder().norm``)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    candidates = (decoder, getattr(decoder, "language_model", None), getattr(model, "model", None))
    for candidate in candidates:
        norm = getattr(candidate, "norm", None) if candidate is not None else None
        if norm is not None:
            return norm
    raise AttributeError(
        f"{type(model).__name__}: no final norm at model.get_decoder().norm; the logit lens "
        "supports Llama- and Gemma-style decoders."
    )


def vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[str]]:
    """Raw token strings and their normalised text for ids ``0..vocab_size-1``.

    The unembedding may have more rows than the tokenizer has tokens (padding rows): those get
    ``""``.
    """
    n = min(vocab_size, len(tokenizer))
    raw = [t if isinstance(t, str) else "" for t in tokenizer.convert_ids_to_tokens(list(range(n)))]
    raw += [""] * (vocab_size - n)
    return raw, [normalise_token(t) for t in raw]


@dataclass
class LensResult:
    """Logit-lens output for one layer.

    Attributes:
        tokens: long table layer, emotion, direction (``promoted``/``suppressed``), rank (1 =
            strongest), token_id, token (raw string), text (normalised), logit,
            is_own_word.
        summary: per emotion: layer, emotion, scale (residual norm used), own_word_in_vocab
            (a token equals one of its forms), own_word_rank (best rank of such a token among
            the top-k promoted, empty if absent), own_word_promoted (bool), own_word_logit_pct
            (percentile of the best such token among all logits, 100 = top).
        pairs: per ordered opposite pair: layer, vector (a), word_of (b), word_tokens (tokens
            that are b's word), in_top_k_suppressed (one of them is among a's top-k suppressed),
            min_percentile / mean_percentile (percentile of those tokens' logits under a over
            the vocabulary; 0 = most suppressed), own_word_percentile (a's own word under a,
            best token; 100 = top).
    """

    tokens: pd.DataFrame
    summary: pd.DataFrame
    pairs: pd.DataFrame


def lens_logits(directions: np.ndarray, model, scale: float):
    """Logits ``(n, vocab)`` float32 torch tensor on the model's device for unit ``directions``
    ``(n, d)`` scaled to ``scale``, through the final norm and the unembedding."""
    import torch

    norm = final_norm(model)
    head = model.get_output_embeddings()
    param = next(norm.parameters(), None) if hasattr(norm, "parameters") else None
    ref = param if param is not None else head.weight
    x = torch.as_tensor(np.asarray(directions, dtype=np.float32) * float(scale))
    with torch.no_grad():
        h = norm(x.to(device=ref.device, dtype=ref.dtype)[:, None, :])[:, 0, :]
        logits = head(h.to(device=head.weight.device, dtype=head.weight.dtype))
    return logits.float()


def logit_lens(
    vectors: np.ndarray,
    emotions: Sequence[str],
    model,
    tokenizer,
    *,
    scale: float,
    layer: int = -1,
    top_k: int = 20,
    pairs: Sequence[tuple[str, str]] = OPPOSITE_PAIRS,
    batch_size: int = 16,
) -> LensResult:
    """Top promoted and suppressed tokens of each vector ``(n_emotions, d)`` of one layer.

    ``scale`` is the residual-stream norm the unit directions are scaled to (the store's
    ``residual_norm`` at ``layer``). Opposite ``pairs`` whose emotions are not both present are
    skipped. Work is batched (``batch_size`` vectors at a time, ``batch_size x vocab`` logits).
    """
    import torch

    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = x / np.where(norms > 0, norms, 1.0)
    vocab = model.get_output_embeddings().weight.shape[0]
    raw_tokens, text = vocabulary(tokenizer, vocab)
    index = {e: i for i, e in enumerate(emotions)}
    forms = [word_forms(e) for e in emotions]
    own_ids: list[np.ndarray] = []
    lookup: dict[str, list[int]] = {}
    for tid, t in enumerate(text):
        if t:
            lookup.setdefault(t, []).append(tid)
    for fs in forms:
        own_ids.append(np.array(sorted({i for f in fs for i in lookup.get(f, [])}), dtype=np.int64))
    wanted_pairs = [(a, b) for a, b in pairs if a in index and b in index]
    pair_rows_needed = {index[a] for pair in wanted_pairs for a in pair}

    token_rows, summary_rows = [], []
    percentiles: dict[int, np.ndarray] = {}  # emotion row -> (vocab,) logit percentile
    bottoms: dict[int, set[int]] = {}  # emotion row -> its top-k suppressed token ids
    k = min(top_k, vocab)
    for start in range(0, len(emotions), batch_size):
        logits = lens_logits(unit[start : start + batch_size], model, scale)
        top_val, top_idx = torch.topk(logits, k, dim=1)
        bot_val, bot_idx = torch.topk(-logits, k, dim=1)
        for b in range(logits.shape[0]):
            e = start + b
            row = logits[b]
            own = own_ids[e]
            own_set = set(own.tolist())
            for direction, vals, ids in (
                ("promoted", top_val[b], top_idx[b]),
                ("suppressed", -bot_val[b], bot_idx[b]),
            ):
                for rank, (v, tid) in enumerate(zip(vals.tolist(), ids.tolist()), start=1):
                    token_rows.append(
                        (layer, emotions[e], direction, rank, tid,
                         raw_tokens[tid], text[tid], v,
                         tid in own_set)
                    )
            promoted = top_idx[b].tolist()
            ranks = [r for r, tid in enumerate(promoted, start=1) if tid in own_set]
            pct = float("nan")
            if own.size:
                best = row[torch.as_tensor(own, device=row.device)].max()
                pct = float((row < best).float().mean().item() * 100)
            summary_rows.append(
                {
                    "layer": layer, "emotion": emotions[e], "scale": float(scale),
                    "own_word_in_vocab": bool(own.size),
                    "own_word_rank": min(ranks) if ranks else None,
                    "own_word_promoted": bool(ranks), "own_word_logit_pct": pct,
                }
            )
            if e in pair_rows_needed:
                order = torch.argsort(torch.argsort(row))
                percentiles[e] = (order.float() / max(vocab - 1, 1) * 100).cpu().numpy()
                bottoms[e] = set(bot_idx[b].tolist())

    pair_rows = []
    for a, b in wanted_pairs:
        for x_, y_ in ((a, b), (b, a)):
            ix, iy = index[x_], index[y_]
            ids = own_ids[iy]
            pcts = percentiles[ix][ids] if ids.size else np.array([])
            pair_rows.append(
                {
                    "layer": layer, "vector": x_, "word_of": y_,
                    "word_tokens": int(ids.size),
                    "in_top_k_suppressed": bool(set(ids.tolist()) & bottoms[ix]),
                    "min_percentile": float(pcts.min()) if pcts.size else float("nan"),
                    "mean_percentile": float(pcts.mean()) if pcts.size else float("nan"),
                    "own_word_percentile": float(percentiles[ix][own_ids[ix]].max())
                    if own_ids[ix].size else float("nan"),
                }
            )
    tokens = pd.DataFrame(
        token_rows,
        columns=["layer", "emotion", "direction", "rank", "token_id", "token", "text", "logit",
                 "is_own_word"],
    )
    return LensResult(tokens, pd.DataFrame(summary_rows), pd.DataFrame(pair_rows))


def summarise(result: LensResult, top_k: int) -> dict:
    """Counts for the JSON summary: emotions whose own word is a token / is promoted in the
    top-k, and opposite pairs whose words are suppressed (each direction and both)."""
    s = result.summary
    p = result.pairs
    both = 0
    n_pairs = 0
    if len(p):
        keyed = {(r.vector, r.word_of): r.in_top_k_suppressed for r in p.itertuples()}
        seen = set()
        for (a, b) in keyed:
            if (b, a) in seen:
                continue
            seen.add((a, b))
            n_pairs += 1
            both += bool(keyed[(a, b)] and keyed.get((b, a), False))
    return {
        "top_k": top_k,
        "n_emotions": int(len(s)),
        "own_word_in_vocab": int(s["own_word_in_vocab"].sum()) if len(s) else 0,
        "own_word_promoted": int(s["own_word_promoted"].sum()) if len(s) else 0,
        "opposite_directions_checked": int(len(p)),
        "opposite_directions_suppressed": int(p["in_top_k_suppressed"].sum()) if len(p) else 0,
        "opposite_pairs": n_pairs,
        "opposite_pairs_mutually_suppressed": int(both),
        "opposite_median_min_percentile":
            float(np.nanmedian(p["min_percentile"])) if len(p) else None,
    }
