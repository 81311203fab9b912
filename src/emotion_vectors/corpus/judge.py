"""A language model as a multiple-choice judge, scored by log-probabilities.

``score_choices`` is the reusable core: for each prompt and each of its candidate continuations
it returns the total log-probability of the candidate's tokens after the prompt (and how many
tokens it has), from batched forward passes. Each prompt runs once and its candidates continue
from its KV cache (repeated per candidate), so a story of ``T`` tokens with ``k`` candidates
costs about ``T`` tokens, not ``k T``. Sequences are left-padded by hand with explicit
``position_ids`` (each sequence counts positions from its own first token), so a padded batch
gives the same numbers as one sequence at a time (tested on Llama, Gemma 3 and Gemma 4, past a
sliding window); only the last position's logits of a prompt are computed (``logits_to_keep``).

``recognisability`` is built on it: a judge reads each story and picks its emotion among the
target and ``options - 1`` distractors drawn from the run's other emotions (seeded per story; the
order of the options is shuffled too). The prompt is the story, then ``Question: Which emotion
does the main character feel? Options: a, b, c, d.`` (without the options when
``list_options`` is false: a cloze) and the answer ``The character feels`` (through the judge's
chat template when it has one: the question as the user turn, the answer opening the assistant
turn), continued by each candidate (`` terrified``).

Scores (all four are computed and reported; ``scoring`` picks the one behind ``chosen``):

- ``sum``: total log-probability of the candidate's tokens, i.e. ``log P(candidate | prompt)``.
- ``mean``: the same per token (favours words split into many tokens, whose later tokens are
  nearly certain).
- ``calibrated_sum`` (the default): ``log P(c | prompt) - log P(c | content-free prompt)``, where
  the content-free prompt is the same question with the story replaced by ``N/A`` (Zhao et al.
  2021, "Calibrate before use"). This removes the judge's prior for each word in this question
  (frequent words, the first-listed option), which a small model's choice otherwise follows; it
  is the pointwise mutual information between the story and the candidate, and with it the total
  is the right quantity (the word's length cancels out).
- ``calibrated_mean``: the same per token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.stats import stratified_subsample, wilson_interval
from ..core.common import derive_seed

QUESTION = "Question: Which emotion does the main character feel? Options: {options}."
ANSWER = "The character feels"
CONTENT_FREE = ("N/A",)
SCORINGS = ("calibrated_sum", "calibrated_mean", "sum", "mean")
RECOGNISABILITY_COLUMNS = [
    "emotion", "n", "correct", "share", "ci_low", "ci_high", "chance", "ratio_to_chance", "p_binom",
    *(f"share_{s}" for s in SCORINGS), "share_centred", "auc", "p_auc",
    "p_binom_holm", "p_binom_bh", "p_auc_holm", "p_auc_bh",
]
DEFAULTS: dict[str, Any] = {
    "options": 4,
    "max_per_emotion": None,
    "scoring": "calibrated_sum",
    "chat_template": "auto",
    "list_options": False,
    "batch_size": 8,
    "max_batch_tokens": 8192,
    "seed": 0,
}


@dataclass
class ChoiceScores:
    """Log-probabilities of candidate continuations, one array per prompt.

    Attributes:
        logprob: ``logprob[i][j]`` = total log-probability (natural log) of candidate ``j`` of
            prompt ``i`` given the prompt.
        n_tokens: number of tokens of each candidate (same shapes).
    """

    logprob: list[np.ndarray]
    n_tokens: list[np.ndarray]

    def mean(self) -> list[np.ndarray]:
        """Log-probability per candidate token."""
        return [lp / nt for lp, nt in zip(self.logprob, self.n_tokens)]


def _input_device(model: Any) -> Any:
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def score_choices(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    candidates_per_prompt: Sequence[Sequence[str]],
    *,
    batch_size: int = 8,
    max_batch_tokens: int | None = 8192,
    add_special_tokens: bool = True,
    share_prefix: bool = True,
    log: Callable[[str], None] | None = None,
) -> ChoiceScores:
    """Total log-probability of each candidate as the continuation of its prompt.

    The prompt and the candidate are tokenized separately and concatenated (so a candidate's
    tokens are the same after every prompt; give candidates their leading space, e.g.
    ``" terrified"``). Identical prompts and identical (prompt, candidate) pairs are computed once.

    With ``share_prefix`` (the default) each prompt runs once: its KV cache is repeated for its
    candidates, which then run together (a prompt of ``T`` tokens with ``k`` candidates of ``m``
    tokens costs ``T + k m`` tokens instead of ``k (T + m)``). Without it (or for a model whose
    cache cannot be repeated), every (prompt, candidate) sequence runs whole. Both pad on the left
    by hand with per-sequence ``position_ids``, and give the same numbers as one unpadded
    sequence at a time (tested).

    Args:
        model, tokenizer: a causal LM and its tokenizer (any padding side; padding is done here).
        prompts: ``P`` prompt strings.
        candidates_per_prompt: for each prompt, its candidate continuations (any number, >= 1).
        batch_size: prompts per forward pass (sequences, without ``share_prefix``).
        max_batch_tokens: bound on the padded tokens of one pass (batch size x longest).
        add_special_tokens: passed to the tokenizer for the prompts (set ``False`` for text
            already rendered through a chat template, which holds its own BOS).
        share_prefix: run each prompt once and its candidates from its cache.
        log: progress messages (every ~30 s), if given.

    Returns:
        :class:`ChoiceScores` (natural-log probabilities, float64).

    Raises:
        ValueError: a candidate that tokenizes to nothing, or mismatched lengths.
    """
    if len(prompts) != len(candidates_per_prompt):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates_per_prompt)} candidate lists")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if isinstance(pad_id, list):
        pad_id = pad_id[0]
    cand_cache: dict[str, tuple[int, ...]] = {}
    # unique prompt ids -> {unique candidate ids -> [(prompt index, candidate index)]}
    table: dict[tuple[int, ...], dict[tuple[int, ...], list[tuple[int, int]]]] = {}
    prompt_cache: dict[str, tuple[int, ...]] = {}
    for i, (prompt, cands) in enumerate(zip(prompts, candidates_per_prompt)):
        if prompt not in prompt_cache:
            prompt_cache[prompt] = tuple(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
        p_ids = prompt_cache[prompt]
        if not p_ids:
            raise ValueError(f"prompt {i} has no tokens")
        for j, cand in enumerate(cands):
            if cand not in cand_cache:
                cand_cache[cand] = tuple(tokenizer(cand, add_special_tokens=False)["input_ids"])
            if not cand_cache[cand]:
                raise ValueError(f"candidate {cand!r} has no tokens")
            table.setdefault(p_ids, {}).setdefault(cand_cache[cand], []).append((i, j))
    logprob = [np.zeros(len(c)) for c in candidates_per_prompt]
    n_tokens = [np.zeros(len(c), dtype=np.int64) for c in candidates_per_prompt]

    def record(where: list[tuple[int, int]], total: float, m: int) -> None:
        for i, j in where:
            logprob[i][j] = total
            n_tokens[i][j] = m

    run = _score_shared if share_prefix else _score_full
    run(model, table, pad_id, batch_size, max_batch_tokens, record, log)
    return ChoiceScores(logprob=logprob, n_tokens=n_tokens)


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[Any, Any, Any]:
    """``(b, T)`` ids, attention mask and per-sequence position ids, padded on the left."""
    import torch

    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, seq in enumerate(seqs):
        ids[r, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[r, width - len(seq):] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    return ids.to(device), mask.to(device), pos.to(device)


def _forward(model: Any, keep: int, **kwargs: Any) -> Any:
    """Forward pass returning only the last ``keep`` positions' logits (where supported)."""
    try:
        out = model(**kwargs, logits_to_keep=keep)
    except TypeError:  # a model without logits_to_keep
        out = model(**kwargs)
    return out


def _cache_argument(model: Any) -> str:
    """Name of the forward argument that takes a KV cache (``cache`` in transformers >= 5.2x,
    ``past_key_values`` before)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None) -> list[list[int]]:
    """Indices sorted by length (longest first) and cut into batches within both bounds."""
    order = sorted(range(len(lengths)), key=lambda k: -lengths[k])
    batches: list[list[int]] = []
    for k in order:
        if batches:
            cur = batches[-1]
            longest = lengths[cur[0]]
            if len(cur) < batch_size and (max_batch_tokens is None or longest * (len(cur) + 1) <= max_batch_tokens):
                cur.append(k)
                continue
        batches.append([k])
    return batches


class _Progress:
    def __init__(self, log: Callable[[str], None] | None, total: int):
        self.log, self.total, self.tokens = log, total, 0
        self.started = self.last = time.perf_counter()

    def step(self, done: int, tokens: int) -> None:
        self.tokens += tokens
        now = time.perf_counter()
        if self.log and (now - self.last > 30 or done == self.total):
            self.log(f"scored {done}/{self.total} batches, {self.tokens / max(now - self.started, 1e-9):.0f} tokens/s")
            self.last = now


def _score_full(model, table, pad_id, batch_size, max_batch_tokens, record, log) -> None:
    """Every (prompt, candidate) sequence whole, in left-padded batches."""
    import torch

    items = [(where, p + c, len(c)) for p, cands in table.items() for c, where in cands.items()]
    batches = _batches([len(x[1]) for x in items], batch_size, max_batch_tokens)
    device = _input_device(model)
    progress = _Progress(log, len(batches))
    for b_idx, batch in enumerate(batches):
        seqs = [items[k][1] for k in batch]
        keep = max(items[k][2] for k in batch) + 1
        ids, mask, pos = _left_pad(seqs, pad_id, device)
        with torch.inference_mode():
            out = _forward(model, keep, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
            # (b, keep, V): positions width-keep .. width-1
            logp = torch.log_softmax(out.logits[:, -keep:, :].float(), dim=-1)
            for r, k in enumerate(batch):
                where, seq, m = items[k]
                targets = torch.tensor(seq[-m:], device=logp.device)
                # Token at position width-m+t is predicted by position width-m+t-1 = kept index keep-m-1+t.
                total = float(logp[r, keep - m - 1 : keep - 1, :].gather(-1, targets[:, None]).sum())
                record(where, total, m)
        progress.step(b_idx + 1, sum(map(len, seqs)))


def _score_shared(model, table, pad_id, batch_size, max_batch_tokens, record, log) -> None:
    """Each prompt once (left-padded batch, KV cache kept), then all its candidates from the
    cache repeated ``K`` times (``K`` = most candidates of a prompt in the batch; prompts with
    fewer repeat their first candidate, whose extra scores are dropped)."""
    import torch

    prompts = list(table)
    batches = _batches([len(p) for p in prompts], batch_size, max_batch_tokens)
    device = _input_device(model)
    progress = _Progress(log, len(batches))
    for b_idx, batch in enumerate(batches):
        seqs = [prompts[k] for k in batch]
        cands = [list(table[prompts[k]].items()) for k in batch]  # [(cand ids, where)]
        n_cand = max(len(c) for c in cands)
        m_max = max(len(c) for cs in cands for c, _ in cs)
        ids, mask, pos = _left_pad(seqs, pad_id, device)
        with torch.inference_mode():
            out = _forward(model, 1, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
            first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # (b, V): predicts token 0
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            if cache is None or not hasattr(cache, "batch_repeat_interleave"):
                sub = {prompts[k]: table[prompts[k]] for k in batch}
                _score_full(model, sub, pad_id, batch_size * n_cand, max_batch_tokens, record, None)
                progress.step(b_idx + 1, sum(map(len, seqs)))
                continue
            if m_max > 1:
                cache.batch_repeat_interleave(n_cand)
                rows = [(r, cs[min(j, len(cs) - 1)][0]) for r, cs in enumerate(cands) for j in range(n_cand)]
                c_ids = torch.full((len(rows), m_max - 1), pad_id, dtype=torch.long)
                c_mask = torch.zeros((len(rows), m_max - 1), dtype=torch.long)
                for q, (_, c) in enumerate(rows):
                    c_ids[q, : len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)  # the last token is only a target
                    c_mask[q, : len(c) - 1] = 1
                full_mask = torch.cat([mask.repeat_interleave(n_cand, dim=0), c_mask.to(device)], dim=1)
                start = mask.sum(-1).repeat_interleave(n_cand)[:, None]  # each prompt's own length
                c_pos = start + torch.arange(m_max - 1, device=device)[None, :]
                out2 = model(
                    input_ids=c_ids.to(device),
                    attention_mask=full_mask,
                    position_ids=c_pos,
                    use_cache=True,
                    **{_cache_argument(model): cache},
                )
                rest = torch.log_softmax(out2.logits.float(), dim=-1)  # (b*K, m_max-1, V)
            for r, cs in enumerate(cands):
                for j, (c, where) in enumerate(cs):
                    total = float(first[r, c[0]])
                    if len(c) > 1:
                        q = r * n_cand + j
                        targets = torch.tensor(c[1:], device=rest.device)
                        total += float(rest[q, : len(c) - 1, :].gather(-1, targets[:, None]).sum())
                    record(where, total, len(c))
        progress.step(b_idx + 1, sum(map(len, seqs)) + n_cand * len(seqs) * max(m_max - 1, 0))


# --------------------------------------------------------------------------------------------
# Recognisability of the stories' emotions


def uses_chat_template(tokenizer: Any, setting: str = "auto") -> bool:
    """Whether to render prompts through the tokenizer's chat template (``auto``: when it has one)."""
    if setting == "always":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "diagnostics.recognisability.chat_template is 'always' but the judge's tokenizer has no "
                "chat template (a base model?); set it to 'auto' or 'never'"
            )
        return True
    if setting == "never":
        return False
    return bool(getattr(tokenizer, "chat_template", None))


def judge_prompt(tokenizer: Any, story: str, options: Sequence[str], *, chat: bool, list_options: bool = True) -> str:
    """The question about one story (see the module docstring); the candidate follows it.
    ``list_options=False`` leaves the options out of the question (a cloze: the candidates are
    only scored as continuations, so their order cannot bias the judge)."""
    question = QUESTION.format(options=", ".join(options)) if list_options else QUESTION.split(" Options:")[0]
    user = f"{story.strip()}\n\n{question}"
    if chat:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        return rendered + ANSWER
    return f"{user}\nAnswer: {ANSWER}"


def choose_options(target: str, emotions: Sequence[str], k: int, seed: int, story_id: str) -> list[str]:
    """The target and ``k - 1`` other emotions of the run, in a shuffled order (seeded per story)."""
    rng = np.random.default_rng(derive_seed(seed, "judge", story_id))
    others = [e for e in emotions if e != target]
    k = min(k, len(others) + 1)
    picked = [others[i] for i in rng.choice(len(others), size=k - 1, replace=False)]
    options = [target, *picked]
    return [options[i] for i in rng.permutation(len(options))]


def judge_stories(
    model: Any,
    tokenizer: Any,
    stories: Sequence[Mapping[str, Any]],
    emotions: Sequence[str],
    settings: Mapping[str, Any],
    *,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Judge ``stories`` (dicts with ``id``, ``emotion``, ``text``, optional ``topic_index``).

    Returns one record per story: ``id``, ``emotion``, ``topic_index``, ``candidates`` (as
    offered), ``scores`` (``{scoring: [one per candidate]}``), ``content_free`` (the candidates'
    log-probabilities without the story), ``chosen`` (by ``settings["scoring"]``), ``correct``
    and ``correct_by`` (per scoring).
    """
    s = {**DEFAULTS, **dict(settings)}
    if s["scoring"] not in SCORINGS:
        raise ValueError(f"scoring {s['scoring']!r} is not one of {SCORINGS}")
    chat = uses_chat_template(tokenizer, s["chat_template"])
    options = [choose_options(st["emotion"], emotions, int(s["options"]), int(s["seed"]), st["id"]) for st in stories]
    cands = [[f" {o}" for o in opts] for opts in options]
    listed = bool(s["list_options"])
    prompts = [judge_prompt(tokenizer, st["text"], opts, chat=chat, list_options=listed) for st, opts in zip(stories, options)]
    kw = dict(batch_size=int(s["batch_size"]), max_batch_tokens=s["max_batch_tokens"], add_special_tokens=not chat)
    main = score_choices(model, tokenizer, prompts, cands, log=log, **kw)
    free = [
        score_choices(
            model, tokenizer, [judge_prompt(tokenizer, cf, opts, chat=chat, list_options=listed) for opts in options], cands, **kw
        )
        for cf in CONTENT_FREE
    ]
    records = []
    for i, st in enumerate(stories):
        lp, nt = main.logprob[i], main.n_tokens[i]
        cf = np.mean([f.logprob[i] for f in free], axis=0)
        scores = {"sum": lp, "mean": lp / nt, "calibrated_sum": lp - cf, "calibrated_mean": (lp - cf) / nt}
        target = options[i].index(st["emotion"])
        correct_by = {name: bool(int(np.argmax(v)) == target) for name, v in scores.items()}
        records.append(
            {
                "id": st["id"],
                "emotion": st["emotion"],
                "topic_index": st.get("topic_index"),
                "candidates": options[i],
                "n_tokens": nt.tolist(),
                "scores": {name: [round(float(x), 5) for x in v] for name, v in scores.items()},
                "content_free": [round(float(x), 5) for x in cf],
                "chosen": options[i][int(np.argmax(scores[s["scoring"]]))],
                "correct": correct_by[s["scoring"]],
                "correct_by": correct_by,
            }
        )
    return records


def word_bias_corrected(records: Sequence[Mapping[str, Any]], scoring: str) -> tuple[list[bool], dict[str, dict]]:
    """Two views of the records that a judge's preference for some words cannot inflate.

    - *Centred choice*: each candidate's score minus its mean score on the stories of the other
      emotions it was offered for (leave-one-out), then the best; a word the judge likes after
      every story no longer wins by default. Returns whether each record is then correct.
    - *AUC* per emotion ``w``: the probability that ``w``'s score after a story of ``w`` beats its
      score after a story of another emotion (ties count half), with the one-sided Mann-Whitney
      p-value; a constant preference for ``w`` cancels out.

    Both compare one word's scores across stories, which is exact in the cloze form
    (``list_options: false``: the prompt does not depend on the other options) and approximate
    when the options are listed.
    """
    from scipy.stats import mannwhitneyu

    own: dict[str, list[float]] = {}
    other: dict[str, list[float]] = {}
    for r in records:
        for w, v in zip(r["candidates"], r["scores"][scoring]):
            (own if w == r["emotion"] else other).setdefault(w, []).append(float(v))
    total = {w: (sum(v), len(v)) for w, v in other.items()}
    correct = []
    for r in records:
        centred = []
        for w, v in zip(r["candidates"], r["scores"][scoring]):
            t, c = total.get(w, (0.0, 0))
            if w != r["emotion"]:
                t, c = t - v, c - 1  # leave this story out of its own baseline
            centred.append(v - (t / c if c > 0 else 0.0))
        correct.append(r["candidates"][int(np.argmax(centred))] == r["emotion"])
    auc = {}
    for w, mine in own.items():
        theirs = other.get(w, [])
        if not mine or not theirs:
            auc[w] = {"auc": float("nan"), "p_auc": float("nan")}
            continue
        a, b = np.array(mine)[:, None], np.array(theirs)[None, :]
        value = float(np.mean((a > b) + 0.5 * (a == b)))
        auc[w] = {"auc": value, "p_auc": float(mannwhitneyu(mine, theirs, alternative="greater").pvalue)}
    return correct, auc


def recognisability_table(records: Sequence[Mapping[str, Any]], emotions: Sequence[str], scoring: str) -> list[dict]:
    """Share of stories whose emotion the judge recovered, per emotion and overall (``(all)``),
    with a Wilson 95% interval, chance ``1/k`` and a one-sided binomial test against chance;
    the share under each scoring (``share_<scoring>``); and the word-bias-free views of
    ``word_bias_corrected``: ``share_centred`` and ``auc`` / ``p_auc`` (overall: the mean AUC
    over emotions and a sign test of how many emotions have AUC > 0.5). The per-emotion p-values
    are a family: ``p_binom_holm``, ``p_binom_bh``, ``p_auc_holm``, ``p_auc_bh`` are adjusted
    over the emotions (NaN in the ``(all)`` row).

    What each test is valid for (``tests/test_calibration_diagnostics.py`` simulates them):
    the overall binomial test is valid when every emotion has as many stories — then, for any
    judge whose choice does not depend on the story's emotion, each story's target is equally
    likely to be any of its candidates, so it is correct with probability ``1/k`` even if the
    judge prefers some words. The per-emotion binomial test is not: a judge that prefers a word
    after every story "recognises" that word's stories. The per-emotion AUC test compares one
    word's scores across stories, so a constant preference cancels out."""
    from scipy.stats import binomtest

    centred, auc = word_bias_corrected(records, scoring)
    centred_of = {id(r): c for r, c in zip(records, centred)}

    def row(name: str, recs: Sequence[Mapping[str, Any]], overall: bool = False) -> dict:
        n = len(recs)
        correct = sum(bool(r["correct_by"][scoring]) for r in recs)
        chance = float(np.mean([1 / len(r["candidates"]) for r in recs])) if n else float("nan")
        lo, hi = wilson_interval(correct, n)
        out = {
            "emotion": name,
            "n": n,
            "correct": correct,
            "share": correct / n if n else float("nan"),
            "ci_low": lo,
            "ci_high": hi,
            "chance": chance,
            "ratio_to_chance": (correct / n) / chance if n else float("nan"),
            "p_binom": float(binomtest(correct, n, chance, alternative="greater").pvalue) if n else float("nan"),
        }
        for name_s in SCORINGS:
            out[f"share_{name_s}"] = float(np.mean([r["correct_by"][name_s] for r in recs])) if n else float("nan")
        out["share_centred"] = float(np.mean([centred_of[id(r)] for r in recs])) if n else float("nan")
        if not overall:
            out.update(auc.get(name, {"auc": float("nan"), "p_auc": float("nan")}))
        else:
            values = [v["auc"] for v in auc.values() if np.isfinite(v["auc"])]
            above = sum(v > 0.5 for v in values)
            decided = sum(v != 0.5 for v in values)
            out["auc"] = float(np.mean(values)) if values else float("nan")
            out["p_auc"] = float(binomtest(above, decided, 0.5, alternative="greater").pvalue) if decided else float("nan")
        return out

    rows = [row(e, [r for r in records if r["emotion"] == e]) for e in emotions]
    _correct_family(rows)
    overall_row = row("(all)", list(records), overall=True)
    overall_row.update({f"{t}_{c}": float("nan") for t in ("p_binom", "p_auc") for c in ("holm", "bh")})
    rows.append(overall_row)
    return rows


def _correct_family(rows: list[dict]) -> None:
    """Holm (family-wise) and Benjamini-Hochberg (false discovery rate) adjusted p-values of the
    per-emotion tests, over the emotions (``p_binom_holm`` ... ``p_auc_bh``), in place. The
    per-emotion binomial test is not a test of the stories: a judge that prefers a word after
    every story passes it for that word's stories; the AUC test is (see ``word_bias_corrected``)."""
    from ..core.claims import bh, holm

    for test in ("p_binom", "p_auc"):
        p = np.array([r[test] for r in rows], dtype=float)
        for name, adjusted in (("holm", holm(p)), ("bh", bh(p))):
            for r, a in zip(rows, adjusted):
                r[f"{test}_{name}"] = float(a)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _write_json_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False))
    os.replace(tmp, path)


def select_stories(shard: Mapping[str, Any], max_per_emotion: int | None, seed: int) -> list[dict]:
    """The stories of one story shard to judge: all, or at most ``max_per_emotion`` spread over
    topics (seeded by the emotion)."""
    stories = list(shard.get("stories", []))
    if max_per_emotion is None or len(stories) <= max_per_emotion:
        return stories
    rng = np.random.default_rng(derive_seed(seed, "judge-sample", shard.get("emotion")))
    keep = stratified_subsample([s.get("topic_index", 0) for s in stories], max_per_emotion, rng)
    return [stories[i] for i in keep]


def recognisability(
    model: Any,
    tokenizer: Any,
    story_shards: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, Any],
    *,
    checkpoint_dir: str | Path,
    judge_info: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = logging.getLogger(__name__).info,
) -> tuple[list[dict], list[dict]]:
    """Judge every emotion's stories, one emotion at a time, checkpointing after each.

    Args:
        story_shards: ``{emotion word: story shard content}`` (the run's emotions, in order).
        settings: ``diagnostics.recognisability`` (see ``DEFAULTS``).
        checkpoint_dir: where finished emotions are kept (one JSON each, written atomically);
            a rerun reuses those whose stories, judge and settings are unchanged. Removed by the
            caller once the outputs are written.
        judge_info: ``LoadedModel.info`` of the judge (part of the checkpoint fingerprint).

    Returns:
        ``(records, table)``: per-story records (``judge_stories``) and ``recognisability_table``.
    """
    s = {**DEFAULTS, **dict(settings)}
    emotions = list(story_shards)
    ckpt = Path(checkpoint_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    info = {k: (judge_info or {}).get(k) for k in ("name", "path", "revision", "dtype", "quantization")}
    fingerprint = _digest([info, s, emotions])
    records: list[dict] = []
    started = time.perf_counter()
    for e_idx, emotion in enumerate(emotions):
        stories = [
            {"id": st["id"], "emotion": emotion, "text": st["text"], "topic_index": st.get("topic_index")}
            for st in select_stories(story_shards[emotion], s["max_per_emotion"], int(s["seed"]))
        ]
        digest = _digest([fingerprint, [(st["id"], st["text"]) for st in stories]])
        path = ckpt / f"{_digest(emotion)}.json"
        if path.exists():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                saved = {}
            if saved.get("digest") == digest:
                records += saved["records"]
                log(f"{emotion}: {len(saved['records'])} stories from the checkpoint")
                continue
        t0 = time.perf_counter()
        recs = judge_stories(model, tokenizer, stories, emotions, s) if stories else []
        _write_json_atomic({"emotion": emotion, "digest": digest, "records": recs}, path)
        records += recs
        hits = sum(r["correct"] for r in recs)
        log(
            f"{emotion} ({e_idx + 1}/{len(emotions)}): {hits}/{len(recs)} recognised "
            f"in {time.perf_counter() - t0:.1f} s (total {time.perf_counter() - started:.0f} s)"
        )
    return records, recognisability_table(records, emotions, s["scoring"])


def clear_checkpoint(checkpoint_dir: str | Path) -> None:
    """Remove the per-emotion checkpoints (after the outputs are written)."""
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
