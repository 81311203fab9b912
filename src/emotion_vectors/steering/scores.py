"""Steering judged as the field judges it: concept, fluency and relevance, against prompting.

Since AxBench (Wu et al., ICML 2025) a steering vector is shown to work by a strength sweep of
free generations scored on three axes, combined by their harmonic mean, against **prompting**
for the same concept, with the capability cost and matched controls beside it. This module does
that for the emotion vectors (rule ``steering_eval``; ``docs/steering.md``, "Steering against
prompting"). Every score comes from something independent of the vectors being tested.

The three axes (each in [0, 1], per generation)
-----------------------------------------------
- **concept**: does the text express the emotion? By default the NRC emotion lexicon (the
  ``nrclex`` package's data file, ``corpus.lexicon.load_nrc``), read on the text with every form of
  every run emotion's word masked (``steering.evaluate.mask_emotion_words``: a text that says "happy"
  must not score for saying it): among the text's affect words (words with any NRC entry), the
  share whose entry holds the emotion's NRC category (:data:`DEFAULT_CONCEPT_MAP`, a stated
  mapping: *happy* -> joy, *calm* -> positive, *sad* -> sadness, *afraid* -> fear, ...; 0 for
  a text without an affect word). Where a judge model is configured and passes its validation
  on the labelled sentences (``config/steering/concept_validation.jsonl``), its 0-2 rating / 2
  is the concept score instead (:class:`ConceptJudge`, :func:`validate_concept_scorer`).
- **fluency**: ``min(1, ppl_ref / ppl) x (1 - repetition)``. ``ppl`` is the perplexity of the
  response under the UNSTEERED model, as a reply to the plain prompt (no instruction);
  ``ppl_ref`` the median perplexity of the unsteered model's own replies; ``repetition`` the
  share of the response's word 3-grams that repeat an earlier one (a repetition loop has a low
  perplexity, so perplexity alone would reward it).
- **relevance**: does the reply answer its prompt? The unsteered model's posterior that the
  response answers its own prompt rather than another of the evaluation prompts, from equal
  priors: ``sigmoid(log p(response | own prompt) - log p(response | other prompt))`` over the
  response's first ``relevance_tokens`` tokens, averaged over ``n_other`` other prompts (0.5 =
  no more its own prompt's than another's). Over a whole reply the posterior is nearly always 0
  or 1; its opening says whether it took up the prompt.

The **steering score** of a generation is the harmonic mean of the three (0 when any is 0); a
method's score is its mean over generations.

Methods, strengths and halves
-----------------------------
The prompts are split in two fixed halves: even positions **select**, odd positions **report**.

- *unsteered*: the plain prompt, no steering;
- *prompting*: the prompt with ``instruction`` ("Answer as someone who feels {emotion}.");
- *steering*: the emotion's vector at each strength of ``strengths`` (x the layer's residual
  norm) on the selection half; the strength with the highest mean steering score there is
  chosen, and the method is generated again at that strength on the report half;
- *both*: the instruction and the vector at the strength chosen for steering.

The table reports every method on the report half only (so no number in it was used to
choose), with 95% percentile bootstrap intervals over its generations. Paired comparisons per
emotion (steering - prompting, both - prompting) pair the generations of one prompt and sample
index; their p-value is an exact one-sided sign-flip test (does the method score higher than
prompting? under "the two methods' scores are exchangeable within a pair" every sign pattern is
equally likely); Holm over the emotions. One-sided because the claim is that the vector adds
something asking does not: prompting beating a vector is shown by the difference and its
interval, and is what a vector with no emotion in it (the negative control's) is expected to
do, so a two-sided test would make the control "find" it.

Capability cost and the trade-off curve
---------------------------------------
The KL divergence ``KL(p_unsteered || p_steered)`` of the next-token distributions on the
run's neutral dialogues (the first ``kl_texts``, ``kl_tokens`` tokens each), per token, for each
direction and strength: the cost. The trade-off curve puts each strength's concept score (the
selection half's generations) beside its KL.

Controls and claims
-------------------
At the pre-specified ``test_strength`` (one of ``strengths``), on the first ``controls_prompts``
selection prompts (sample 0): each emotion's vector, its pseudo vector in each shuffled-label set
(``vectors/shuffled.zarr``) and ``n_random`` random directions of the same norm, all scored the
same way. ``steering.scores.shuffled``: the mean over emotions of the steering score, real vs
each shuffle (exact Monte-Carlo p); per emotion the same (Holm; "not testable" with fewer than
``E / 0.05`` shuffles). Random directions are the weak null (``steering.evaluate.WEAK_RANDOM_NULL``).
The masked-VADER dose-response claims (``steering.dose.*``) come from the same generations:
the slope between the unsteered replies and ``test_strength``. Every test is simulated under its
null in ``tests/test_calibration_steering.py``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emotion_vectors.core.claims import ALPHA, Claim, holm, make_claim
from emotion_vectors.steering.steer import Steer, random_steers, steering_rows

Log = Callable[[str], None]

STAGE = "steering"
METHODS = ("unsteered", "prompting", "steering", "both")

#: The tests' statistic is the steering score plus this times the mean of the three axes: a
#: continuous secondary statistic fixed in advance that breaks the ties of replies scoring 0
#: (any axis 0), so that the sign-flip and Monte-Carlo tests are exact rather than conservative.
TIE_BREAK = 1e-6

#: Steered emotion -> NRC category (a stated mapping; ``steering.scores.concept_map`` overrides
#: or adds). Emotions with one clear NRC basic emotion get it; the others their valence.
DEFAULT_CONCEPT_MAP: dict[str, str] = {
    **{e: "fear" for e in ("afraid", "scared", "terrified", "frightened", "anxious", "nervous", "worried",
                           "panicked", "horrified", "on edge", "tense", "uneasy", "alarmed", "paranoid")},
    **{e: "anger" for e in ("angry", "furious", "enraged", "hostile", "irritated", "annoyed", "frustrated",
                            "outraged", "irate", "mad", "resentful", "indignant", "exasperated", "grumpy")},
    **{e: "joy" for e in ("happy", "joyful", "cheerful", "delighted", "elated", "ecstatic", "euphoric",
                          "excited", "thrilled", "proud", "amused", "playful", "jubilant", "triumphant")},
    **{e: "sadness" for e in ("sad", "unhappy", "depressed", "miserable", "lonely", "heartbroken", "grief-stricken",
                              "gloomy", "melancholy", "nostalgic", "hopeless", "hurt", "sorry", "regretful")},
    **{e: "disgust" for e in ("disgusted", "contemptuous", "scornful")},
    **{e: "surprise" for e in ("surprised", "amazed", "astonished", "shocked", "dumbstruck", "startled")},
    **{e: "positive" for e in ("calm", "serene", "grateful", "thankful", "relieved", "content", "peaceful",
                               "at ease", "hopeful", "optimistic", "relaxed", "loving", "compassionate", "safe")},
    **{e: "negative" for e in ("desperate", "disturbed", "bored", "stubborn", "obstinate", "smug", "ashamed",
                               "guilty", "embarrassed", "humiliated", "jealous", "envious", "vulnerable", "worn out")},
}

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def _noop(_: str) -> None:
    pass


class ScoresError(ValueError):
    """Settings the evaluation cannot run with (named before any forward pass)."""


# --------------------------------------------------------------------------------------------
# The axes


def concept_map(emotions: Sequence[str], overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each emotion's NRC category (:data:`DEFAULT_CONCEPT_MAP` updated by ``overrides``); an
    emotion with none is a :class:`ScoresError` naming it (add it to ``steering.scores.concept_map``)."""
    from emotion_vectors.corpus.lexicon import NRC_CATEGORIES

    table = {**DEFAULT_CONCEPT_MAP, **dict(overrides or {})}
    bad = {e: c for e, c in table.items() if c not in NRC_CATEGORIES}
    if bad:
        raise ScoresError(f"steering.scores.concept_map: {bad} are not NRC categories {NRC_CATEGORIES}")
    missing = [e for e in emotions if e not in table]
    if missing:
        raise ScoresError(f"no NRC category for {missing}: give one in steering.scores.concept_map "
                          f"(one of {NRC_CATEGORIES})")
    return {e: table[e] for e in emotions}


def lexicon_concept(texts: Sequence[str], category: str, *, mask_words: Sequence[str],
                    lexicon: Mapping[str, frozenset[str]] | None = None) -> np.ndarray:
    """Concept score of each text for an NRC ``category``: among the words of the text (every
    form of ``mask_words`` masked first) that have an NRC entry, the share whose entry holds
    ``category``; 0 for a text with no such word."""
    from emotion_vectors.corpus.lexicon import NRC_CATEGORIES, load_nrc
    from emotion_vectors.steering.evaluate import mask_emotion_words

    if category not in NRC_CATEGORIES:
        raise ScoresError(f"NRC category {category!r} is not one of {NRC_CATEGORIES}")
    lex = load_nrc() if lexicon is None else lexicon
    out = np.zeros(len(texts))
    for i, t in enumerate(texts):
        words = _WORD.findall(mask_emotion_words(t or "", mask_words).lower())
        affect = [lex[w] for w in words if lex.get(w)]
        out[i] = sum(category in cats for cats in affect) / len(affect) if affect else 0.0
    return out


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of the text's word ``n``-grams that repeat an earlier ``n``-gram of the same text
    (0 for a text of fewer than ``n + 1`` words)."""
    words = _WORD.findall((text or "").lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def fluency_scores(perplexity: np.ndarray, repetition: np.ndarray, ppl_ref: float) -> np.ndarray:
    """``min(1, ppl_ref / ppl) x (1 - repetition)``; 0 where the perplexity is not finite (an
    empty reply)."""
    ppl = np.asarray(perplexity, dtype=float)
    rep = np.asarray(repetition, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isfinite(ppl) & (ppl > 0), np.minimum(1.0, ppl_ref / ppl), 0.0)
    return np.clip(ratio * (1.0 - rep), 0.0, 1.0)


def relevance_scores(lp_own: np.ndarray, lp_other: np.ndarray) -> np.ndarray:
    """Mean over the other prompts of ``sigmoid(lp_own - lp_other)`` (``lp_other`` ``(n, m)``);
    0 where the reply is empty (``lp_own`` NaN)."""
    own = np.asarray(lp_own, dtype=float)
    other = np.asarray(lp_other, dtype=float).reshape(own.size, -1)
    diff = np.clip(own[:, None] - other, -60, 60)
    rel = (1.0 / (1.0 + np.exp(-diff))).mean(axis=1)
    return np.where(np.isfinite(own), rel, 0.0)


def harmonic_mean(*axes: np.ndarray) -> np.ndarray:
    """Elementwise harmonic mean of the axes (0 where any axis is <= 0)."""
    a = np.stack([np.asarray(x, dtype=float) for x in axes])
    pos = np.all(a > 0, axis=0)
    with np.errstate(divide="ignore"):
        hm = len(axes) / np.sum(1.0 / np.where(a > 0, a, 1.0), axis=0)
    return np.where(pos, hm, 0.0)


# --------------------------------------------------------------------------------------------
# Statistics


#: The alternative of the steering-vs-prompting tests: the method scores higher than prompting.
VS_PROMPTING = "greater"


def sign_flip_test(diffs: Sequence[float], *, alternative: str = "two-sided", n_mc: int = 99999,
                   seed: int = 0) -> float:
    """Sign-flip test of paired differences (mean; exact enumeration up to 20 pairs, Monte-Carlo
    ``(1 + hits) / (1 + n_mc)`` beyond). Under "the two scores of a pair are exchangeable" every
    sign pattern is equally likely. ``alternative``: ``greater`` (mean > 0), ``less``,
    ``two-sided`` (|mean|). NaN without a finite pair."""
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    n = d.size
    if n == 0:
        return float("nan")
    obs = d.mean()
    if n <= 20:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1)
        null = signs @ d / n
        tol = 1e-12 * max(1.0, abs(obs))
        if alternative == "greater":
            return float(np.mean(null >= obs - tol))
        if alternative == "less":
            return float(np.mean(null <= obs + tol))
        return float(np.mean(np.abs(null) >= abs(obs) - tol))
    rng = np.random.default_rng(seed)
    null = (rng.choice([-1.0, 1.0], size=(n_mc, n)) @ d) / n
    if alternative == "greater":
        hits = np.sum(null >= obs)
    elif alternative == "less":
        hits = np.sum(null <= obs)
    else:
        hits = np.sum(np.abs(null) >= abs(obs))
    return float((1 + hits) / (1 + n_mc))


def sign_flip_floor(n_pairs: int, alternative: str = "two-sided") -> float:
    """The smallest p a sign-flip test of ``n_pairs`` pairs can give: ``2^-n`` (one-sided),
    ``2^(1-n)`` (two-sided)."""
    if n_pairs <= 0:
        return 1.0
    return min(1.0, (2.0 if alternative == "two-sided" else 1.0) / 2 ** n_pairs)


def choose_strength(strengths: Sequence[float], scores: Sequence[Sequence[float]]) -> float:
    """The strength whose scores have the highest mean (ties: the smallest magnitude, then the
    first listed)."""
    means = [float(np.mean(s)) if len(s) else -np.inf for s in scores]
    best = max(means)
    cands = [s for s, m in zip(strengths, means) if m >= best - 1e-12]
    return float(min(cands, key=abs))


def bootstrap_mean(values: Sequence[float], rng: np.random.Generator, n_boot: int = 2000) -> tuple[float, float]:
    """95% percentile bootstrap interval of a mean (NaN with fewer than 2 values)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan"), float("nan")
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


# --------------------------------------------------------------------------------------------
# The unsteered model's reading of the replies


def response_logprobs(model: Any, contexts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], *,
                      batch_size: int = 32, head: int | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Total log-probability of each ``responses[i]`` (token ids) after ``contexts[i]`` under
    ``model`` as it is (call it unsteered). Responses that share a context are scored together:
    the context runs once (batch 1) and its KV cache is repeated for the rows; the responses are
    right-padded. NaN for an empty response. With ``head``: also the total over each response's
    first ``head`` tokens, ``(totals, head_totals)``."""
    import torch

    from emotion_vectors.extraction.extract import _input_device
    from emotion_vectors.corpus.judge import _cache_argument
    from emotion_vectors.steering.steer import _repeat_cache_rows

    out = np.full(len(responses), np.nan)
    out_head = np.full(len(responses), np.nan)
    n_head = head
    device = _input_device(model)
    cache_arg = _cache_argument(model)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (c, r) in enumerate(zip(contexts, responses)):
        if len(r):
            groups.setdefault(tuple(int(t) for t in c), []).append(i)
    for ctx, idx in groups.items():
        if len(ctx) < 1:
            raise ScoresError("response_logprobs needs a context of at least one token")
        prefix = torch.tensor([ctx[:-1]], dtype=torch.long, device=device)
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            b = len(chunk)
            width = max(len(responses[i]) for i in chunk)
            x = torch.zeros((b, width + 1), dtype=torch.long, device=device)
            m = torch.zeros((b, width + 1), dtype=torch.long, device=device)
            for row, i in enumerate(chunk):
                r = list(responses[i])
                x[row, 0] = ctx[-1]
                x[row, 1 : 1 + len(r)] = torch.tensor(r)
                m[row, : 1 + len(r)] = 1
            with torch.inference_mode():
                kwargs: dict[str, Any] = {}
                if prefix.shape[1]:
                    o = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True)
                    cache = getattr(o, "cache", None) or getattr(o, "past_key_values", None)
                    _repeat_cache_rows(cache, b)
                    kwargs[cache_arg] = cache
                mask = torch.cat([torch.ones((b, prefix.shape[1]), dtype=torch.long, device=device), m], 1)
                pos = (prefix.shape[1] + torch.arange(width + 1, device=device)).expand(b, -1)
                logits = model(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=bool(kwargs),
                               **kwargs).logits[:, :-1].float()
                # log p(token) = its logit - logsumexp over the vocabulary (no (b, T, V) log-softmax copy)
                lp = logits.gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
                tot = (lp * m[:, 1:]).sum(-1).double().cpu().numpy()
                if n_head is not None:
                    out_head[chunk] = (lp[:, :n_head] * m[:, 1 : 1 + n_head]).sum(-1).double().cpu().numpy()
            out[chunk] = tot
    return out if n_head is None else (out, out_head)


def kl_on_texts(model: Any, tokenizer: Any, texts: Sequence[str], rows: Sequence[Sequence[Steer]], *,
                max_tokens: int = 48, batch_size: int = 16, positions: str | int = "all") -> np.ndarray:
    """Per row of steers: ``KL(p_unsteered || p_steered)`` of the next-token distributions, in nats,
    averaged over every position of every text (each cut to ``max_tokens`` tokens). The steered
    passes run ``batch_size`` rows at a time, each text once below the steered block
    (``steering_rows(broadcast=True)``)."""
    import torch

    from emotion_vectors.extraction.extract import _input_device

    device = _input_device(model)
    rows = [list(r) for r in rows]
    total = np.zeros(len(rows))
    count = 0
    for text in texts:
        ids = tokenizer(text)["input_ids"][:max_tokens]
        if len(ids) < 2:
            continue
        x = torch.tensor([ids], dtype=torch.long, device=device)
        with torch.inference_mode():
            p0 = torch.log_softmax(model(input_ids=x, use_cache=False).logits[0].float(), dim=-1)  # (T, V)
            prob0 = p0.exp()
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                with steering_rows(model, chunk, positions=positions, broadcast=True):
                    lg = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits.float()
                if lg.shape[0] != len(chunk):
                    lg = lg.expand(len(chunk), -1, -1)
                p1 = torch.log_softmax(lg, dim=-1)
                kl = (prob0.unsqueeze(0) * (p0.unsqueeze(0) - p1)).sum(-1)  # (b, T)
                total[start : start + len(chunk)] += kl.sum(-1).double().cpu().numpy()
        count += len(ids)
    if count == 0:
        raise ScoresError("no neutral text of at least two tokens to measure the KL divergence on")
    return np.maximum(total / count, 0.0)


# --------------------------------------------------------------------------------------------
# A judge as concept scorer, validated on labelled sentences first

RATING = re.compile(r"RATING\s*[:=]\s*([0-2])", re.IGNORECASE)


def concept_judge_messages(text: str, emotion: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You rate short texts for the feeling they express. You answer briefly."},
        {"role": "user", "content": (
            f'Text:\n"""\n{text}\n"""\n\nDoes this text express the feeling "{emotion}" (in what it says, its tone '
            "or what it describes)? Some words are masked as xxx; ignore them. Rate 0 (not at all), 1 (somewhat) "
            "or 2 (clearly). End your answer with one line: RATING: <0, 1 or 2>")},
    ]


def parse_rating(reply: str) -> float | None:
    """The last ``RATING: n`` of a reply, as ``n / 2`` (None when there is none)."""
    found = RATING.findall(reply or "")
    return int(found[-1]) / 2.0 if found else None


class ConceptJudge:
    """A chat backend (``backends.make_backend``: in-process or OpenAI-compatible) rating how
    clearly a text expresses an emotion, 0-2, read as ``n / 2``; unparsed replies are NaN."""

    def __init__(self, backend: Any, *, max_tokens: int = 256, seed: int = 0):
        self.backend = backend
        self.name = f"chat:{getattr(backend, 'name', type(backend).__name__)}"
        self.max_tokens, self.seed = int(max_tokens), int(seed)

    def score(self, texts: Sequence[str], emotion: str) -> np.ndarray:
        out = np.full(len(texts), np.nan)
        for i, t in enumerate(texts):
            reply = self.backend.complete(concept_judge_messages(t, emotion), max_tokens=self.max_tokens,
                                          temperature=0.0, seed=self.seed)
            r = parse_rating(reply.text)
            if r is not None:
                out[i] = r
        return out


def load_concept_validation(path: str | Path) -> list[dict[str, Any]]:
    """The labelled sentences (JSON lines: ``id``, ``text``, ``emotion``: the feeling it
    expresses, or ``none``)."""
    import json

    items = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        if not {"id", "text", "emotion"} <= set(rec):
            raise ScoresError(f"{path}:{n}: a labelled sentence needs id, text and emotion")
        items.append(rec)
    if not items:
        raise ScoresError(f"{path} holds no labelled sentence")
    return items


def validation_pairs(items: Sequence[Mapping[str, Any]], emotions: Sequence[str]) -> list[dict[str, Any]]:
    """(sentence, emotion, truth) pairs for the steered ``emotions``: each sentence labelled with
    one of them is asked about it (truth 1) and about the next steered emotion (truth 0); a
    sentence labelled with another feeling or ``none`` is asked about one steered emotion in turn
    (truth 0)."""
    emotions = list(emotions)
    pairs = []
    k = 0
    for it in items:
        lab = it["emotion"]
        if lab in emotions:
            other = emotions[(emotions.index(lab) + 1) % len(emotions)]
            pairs.append({"id": it["id"], "text": it["text"], "emotion": lab, "truth": True})
            if other != lab:
                pairs.append({"id": it["id"], "text": it["text"], "emotion": other, "truth": False})
        else:
            pairs.append({"id": it["id"], "text": it["text"], "emotion": emotions[k % len(emotions)], "truth": False})
            k += 1
    return pairs


def validate_concept_scorer(score: Callable[[Sequence[str], str], np.ndarray], items: Sequence[Mapping[str, Any]],
                            emotions: Sequence[str], *, mask_words: Sequence[str], threshold: float = 0.5,
                            n_bootstrap: int = 2000, seed: int = 0, name: str = "") -> dict[str, Any]:
    """A concept scorer on the labelled sentences (:func:`validation_pairs`, the texts masked as
    the generations are): Cohen's kappa of ``score >= threshold`` against the labels with its
    bootstrap interval (``behaviour.judging.agreement``), and the AUROC of the score. Passes when
    the kappa interval lies above ``behaviour.judging.KAPPA_FLOOR`` (the project's rule for a
    judge)."""
    from emotion_vectors.steering.behaviour.judging import KAPPA_FLOOR, agreement
    from emotion_vectors.steering.evaluate import mask_emotion_words

    pairs = validation_pairs(items, emotions)
    if not any(p["truth"] for p in pairs) or all(p["truth"] for p in pairs):
        raise ScoresError("the labelled sentences give no positive or no negative pair for the steered emotions "
                          f"{list(emotions)}")
    vals = np.full(len(pairs), np.nan)
    for e in dict.fromkeys(p["emotion"] for p in pairs):
        idx = [i for i, p in enumerate(pairs) if p["emotion"] == e]
        vals[idx] = score([mask_emotion_words(pairs[i]["text"], mask_words) for i in idx], e)
    truth = np.array([p["truth"] for p in pairs])
    pred = np.where(np.isfinite(vals), vals >= threshold, False)
    agr = agreement(truth, pred, n_bootstrap=n_bootstrap, seed=seed)
    from sklearn.metrics import roc_auc_score

    finite = np.isfinite(vals)
    auc = float(roc_auc_score(truth[finite], vals[finite])) if len(set(truth[finite].tolist())) == 2 else float("nan")
    lo = agr["kappa_ci95"][0]
    passed = bool(np.isfinite(lo) and lo > KAPPA_FLOOR)
    return {"scorer": name, "n_pairs": len(pairs), "n_positive": int(truth.sum()), "threshold": threshold,
            "n_unparsed": int((~finite).sum()), "auroc": auc, **{k: agr[k] for k in ("accuracy", "kappa", "kappa_ci95")},
            "floor": KAPPA_FLOOR, "passed": passed,
            "reason": (f"kappa {agr['kappa']:.2f} [{agr['kappa_ci95'][0]:.2f}, {agr['kappa_ci95'][1]:.2f}] "
                       + ("above" if passed else "does not lie above") + f" {KAPPA_FLOOR}")}


# --------------------------------------------------------------------------------------------
# Sampling


@dataclass
class ScoredGeneration:
    method: str  # unsteered | prompting | steering | both | shuffled | random
    emotion: str | None
    strength: float
    prompt_index: int
    sample: int
    half: str  # select | report
    seed: int
    text: str = ""
    n_tokens: int = 0
    shuffle: int | None = None
    random_index: int | None = None
    phase: int = 1
    concept: dict = field(default_factory=dict)  # emotion -> concept score (every steered emotion)
    concept_lexicon: dict = field(default_factory=dict)
    perplexity: float = float("nan")
    repetition: float = 0.0
    fluency: float = 0.0
    relevance: float = 0.0
    vader: float = float("nan")
    vader_unmasked: float = float("nan")
    ids: list = field(default_factory=list, repr=False)

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("ids")
        return d


@dataclass
class _Row:
    prompt: str  # rendered
    steers: list
    gen: ScoredGeneration


def _sample(model: Any, tokenizer: Any, plan: Sequence[_Row], *, batch_size: int, max_new_tokens: int,
            temperature: float, seed: int, phase: int, positions: str | int, log: Log) -> None:
    """Generate every row of ``plan`` (fills ``gen.text``, ``ids``, ``n_tokens``, ``seed``),
    ``batch_size`` rows per call of ``steer.sample_rows`` (one direction per row; top-k 50, top-p
    0.95 at ``temperature``, as ``generate()`` would sample them). A prompt with many rows gets
    calls of its own (its prefix runs once below the steered block); prompts with few rows are
    pooled into left-padded calls."""
    from emotion_vectors.corpus.backends import _eos_ids
    from emotion_vectors.steering.steer import sample_rows

    eos = sorted(_eos_ids(model, tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    encoded = {p: tokenizer(p, add_special_tokens=False)["input_ids"] for p in dict.fromkeys(r.prompt for r in plan)}
    groups: dict[str, list[_Row]] = {}
    for r in plan:
        groups.setdefault(r.prompt, []).append(r)
    # a prompt's rows in calls of their own (its prefix runs once below the steered block) when
    # they fill at least a quarter of a call; the rest pooled into left-padded calls
    calls: list[list[_Row]] = []
    pool: list[_Row] = []
    for g in groups.values():
        for i in range(0, len(g), batch_size):
            chunk = g[i : i + batch_size]
            (calls.append(chunk) if len(chunk) >= max(2, batch_size // 4) else pool.extend(chunk))
    calls += [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
    started = time.perf_counter()
    for ci, rows in enumerate(calls):
        s = _seed("scores", seed, phase, ci, batch_size)
        new = sample_rows(model, [encoded[r.prompt] for r in rows], [r.steers for r in rows],
                          max_new_tokens=max_new_tokens, temperature=temperature, top_k=50, top_p=0.95,
                          positions=positions, seed=s, pad_token_id=pad, eos_token_ids=eos)
        for r, toks in zip(rows, new):
            r.gen.ids = list(toks)
            r.gen.n_tokens = len(toks)
            r.gen.text = tokenizer.decode(toks, skip_special_tokens=True).strip()
            r.gen.seed = s
        shared = len({r.prompt for r in rows}) == 1
        log(f"scores phase {phase}: call {ci + 1}/{len(calls)} ({len(rows)} rows, "
            f"{'one prompt' if shared else 'padded'}) done ({time.perf_counter() - started:.0f} s)")


def _seed(*parts: Any) -> int:
    from emotion_vectors.steering.evaluate import derive_seed

    return derive_seed(*parts)


# --------------------------------------------------------------------------------------------
# The evaluation


@dataclass
class ScoresResult:
    generations: list[ScoredGeneration]
    table: list[dict]
    curves: list[dict]
    summary: dict
    dose: dict


def _render(tokenizer: Any, user: str) -> str:
    from emotion_vectors.steering.evaluate import render_chat

    return render_chat(tokenizer, user)


def steering_scores(
    model: Any,
    tokenizer: Any,
    store: Any,
    emotions: Sequence[str],
    *,
    prompts: Sequence[str],
    strengths: Sequence[float],
    test_strength: float,
    samples: int = 2,
    max_new_tokens: int = 32,
    temperature: float = 0.8,
    instruction: str = "Answer as someone who feels {emotion}.",
    concept: Mapping[str, str] | None = None,
    mask_words: Sequence[str] | None = None,
    neutral_texts: Sequence[str] = (),
    kl_tokens: int = 48,
    kl_null: int = 5,
    n_other: int = 1,
    relevance_tokens: int | None = None,
    controls_prompts: int = 2,
    signs: Mapping[str, int] | None = None,
    layer: int | None = None,
    null_store: Any = None,
    shuffle_sets: Sequence[Sequence[str]] | None = None,
    n_shuffled: int | None = None,
    n_random: int = 8,
    n_permutations: int = 9999,
    seed: int = 0,
    positions: str | int = "all",
    batch_size: int = 64,
    n_boot: int = 2000,
    judge: ConceptJudge | None = None,
    log: Log = _noop,
) -> ScoresResult:
    """Concept, fluency and relevance of steered, prompted and unsteered replies; strength chosen
    on the selection half, reported on the other; KL on neutral text; controls; the VADER dose
    numbers (module docstring)."""
    d = _design(store, emotions, prompts=prompts, strengths=strengths, test_strength=test_strength, samples=samples,
                max_new_tokens=max_new_tokens, instruction=instruction, concept=concept, mask_words=mask_words,
                neutral_texts=neutral_texts, n_other=n_other, relevance_tokens=relevance_tokens,
                controls_prompts=controls_prompts, signs=signs, layer=layer, null_store=null_store,
                shuffle_sets=shuffle_sets, n_shuffled=n_shuffled, n_random=n_random, seed=seed)
    emotions, strengths, prompts = d.emotions, d.strengths, d.prompts
    started = time.perf_counter()

    plain = [_render(tokenizer, p) for p in prompts]
    asked = {e: [_render(tokenizer, f"{p} {instruction.format(emotion=e)}") for p in prompts] for e in emotions}
    half = {p: ("select" if p in d.select_p else "report") for p in range(len(prompts))}
    sampling = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                    positions=positions, log=log)

    # ---- phase 1: unsteered (all prompts), steering sweep (selection half), controls ----------
    plan1 = _phase1_plan(d, plain, half, samples)
    log(f"scores: phase 1, {len(plan1)} replies ({len(emotions)} emotions x {len(strengths)} strengths x "
        f"{len(d.select_p)} selection prompts x {samples}; unsteered {len(prompts)} x {samples}; controls at "
        f"{test_strength:g} on {len(d.ctrl_p)} prompts: {d.n_k} shuffles x {len(emotions)}, {d.n_random} random)")
    _sample(model, tokenizer, plan1, phase=1, **sampling)
    gens = [r.gen for r in plan1]

    contexts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in plain]
    ppl_ref = _score_replies(model, d, contexts, gens, None, judge=judge, batch_size=batch_size)

    # ---- choose each emotion's strength on the selection half --------------------------------
    chosen = _choose_strengths(d, gens)
    log("scores: strengths chosen on the selection half: " + ", ".join(f"{e} {s:g}" for e, s in chosen.items()))

    # ---- phase 2: the report half ----------------------------------------------------------
    plan2 = _phase2_plan(d, plain, asked, chosen, samples)
    log(f"scores: phase 2, {len(plan2)} replies (steering, prompting, both x {len(emotions)} emotions x "
        f"{len(d.report_p)} report prompts x {samples})")
    _sample(model, tokenizer, plan2, phase=2, **sampling)
    gens2 = [r.gen for r in plan2]
    _score_replies(model, d, contexts, gens2, ppl_ref, judge=judge, batch_size=batch_size)
    gens += gens2
    gen_seconds = time.perf_counter() - started

    # ---- KL on neutral text ------------------------------------------------------------------
    kl = _kl_costs(model, tokenizer, d, kl_null=kl_null, kl_tokens=kl_tokens, batch_size=batch_size,
                   positions=positions)
    log(f"scores: KL on {len(d.neutral)} neutral texts for {kl.n_directions} directions "
        f"({time.perf_counter() - started:.0f} s so far)")

    rng = np.random.default_rng(_seed("scores-bootstrap", seed))
    table, pairs = _method_table(d, gens, chosen, kl, rng, n_boot)
    comparisons = _vs_prompting(d, pairs, table, rng, n_boot, seed=seed, samples=samples)
    ctl = _control_scores(d, gens, n_permutations=n_permutations, seed=seed)
    table += _control_rows(d, gens, ctl, kl)
    curves = _tradeoff_curves(d, gens, ctl, kl, rng, n_boot)
    dose = _dose_numbers(d, gens, rng)

    summary = {
        "emotions": emotions, "concept_map": d.cats, "concept_scorer": judge.name if judge else "nrc-lexicon (masked)",
        "strengths": strengths, "test_strength": test_strength, "chosen_strength": chosen, "layer": d.layer,
        "positions": positions, "prompts": prompts, "select_prompts": d.select_p, "report_prompts": d.report_p,
        "samples_per_prompt": samples, "max_new_tokens": max_new_tokens, "temperature": temperature,
        "instruction": instruction, "n_other": n_other, "relevance_tokens": d.head_tokens, "ppl_ref": ppl_ref, "kl_texts": len(d.neutral),
        "kl_tokens": kl_tokens, "kl_null_directions": {"shuffled_sets": kl.k, "random": kl.r}, "n_generations": len(gens), "comparisons": comparisons, "controls": ctl.summary,
        "masked_words": d.mask_words, "generation_seconds": round(gen_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    log(f"scores: {len(gens)} replies scored in {summary['seconds']:.0f} s")
    return ScoresResult(gens, table, curves, summary, dose)


# --------------------------------------------------------------------------------------------
# The evaluation's steps


@dataclass
class _Design:
    """The evaluation's checked settings and what follows from them: the prompt halves, the
    emotions' unit directions, the shuffled-label and random control directions."""

    emotions: list[str]
    cats: dict[str, str]
    strengths: list[float]
    test_strength: float
    prompts: list[str]
    n_other: int
    head_tokens: int
    select_p: list[int]
    report_p: list[int]
    ctrl_p: list[int]
    mask_words: list[str]
    signs: dict[str, int]
    layer: int
    units: dict[str, Any]
    unit_norm: float
    shuffled: list
    n_k: int
    rand_dirs: list[np.ndarray]
    n_random: int
    lex: Any
    neutral: list[str]

    def at(self, direction: np.ndarray, s: float) -> list[Steer]:
        return [Steer(layer=self.layer, direction=direction, strength=s, unit_norm=self.unit_norm)]


def _design(store: Any, emotions: Sequence[str], *, prompts: Sequence[str], strengths: Sequence[float],
            test_strength: float, samples: int, max_new_tokens: int, instruction: str,
            concept: Mapping[str, str] | None, mask_words: Sequence[str] | None, neutral_texts: Sequence[str],
            n_other: int, relevance_tokens: int | None, controls_prompts: int, signs: Mapping[str, int] | None,
            layer: int | None, null_store: Any, shuffle_sets: Sequence[Sequence[str]] | None,
            n_shuffled: int | None, n_random: int, seed: int) -> _Design:
    """Check :func:`steering_scores`'s settings (:class:`ScoresError` naming the one at fault) and
    derive the halves (even prompts select, odd report; the controls on the first
    ``controls_prompts`` selection prompts) and the directions."""
    from emotion_vectors.steering.evaluate import _layer_for, _null_directions, _unit_steer
    from emotion_vectors.vectors.store_layout import Store, read_store
    from emotion_vectors.corpus.lexicon import load_nrc

    store = store if isinstance(store, Store) else read_store(store)
    emotions = list(emotions)
    missing = [e for e in emotions if e not in store.emotions]
    if missing:
        raise ScoresError(f"steered emotions {missing} are not in the store {store.path}")
    cats = concept_map(emotions, concept)
    strengths = sorted({float(s) for s in strengths})
    if not strengths or any(s <= 0 for s in strengths):
        raise ScoresError(f"steering.scores.strengths must be positive (the sweep towards the emotion), got {strengths}")
    if float(test_strength) not in strengths:
        raise ScoresError(f"steering.scores.test_strength {test_strength} must be one of the strengths {strengths}")
    prompts = list(prompts)
    if len(prompts) < 2:
        raise ScoresError("steering.scores needs at least 2 prompts (one to choose the strength on, one to report on)")
    if samples < 1 or max_new_tokens < 1 or n_other < 1:
        raise ScoresError(f"samples, max_new_tokens and n_other must be >= 1, got {samples}, {max_new_tokens}, {n_other}")
    if n_other > len(prompts) - 1:
        raise ScoresError(f"n_other = {n_other} but there are only {len(prompts) - 1} other prompts")
    if "{emotion}" not in instruction:
        raise ScoresError("steering.scores.instruction must contain {emotion}")
    if relevance_tokens is not None and relevance_tokens < 1:
        raise ScoresError(f"relevance_tokens must be >= 1 (or None: the whole reply), got {relevance_tokens}")
    head_tokens = max_new_tokens if relevance_tokens is None else min(int(relevance_tokens), max_new_tokens)
    select_p = list(range(0, len(prompts), 2))
    report_p = list(range(1, len(prompts), 2))
    ctrl_p = select_p[: max(0, int(controls_prompts))]
    if not ctrl_p:
        raise ScoresError("steering.scores.controls_prompts must be >= 1")
    mask_words = list(store.emotions if mask_words is None else mask_words)
    signs = {e: int(np.sign((signs or {}).get(e, 0))) for e in emotions}
    layer = _layer_for(store, layer)
    units = {e: _unit_steer(store, e, layer) for e in emotions}
    unit_norm = units[emotions[0]].unit_norm
    shuffled = _null_directions(store, null_store, shuffle_sets, emotions, layer, n_shuffled)
    like = [Steer(layer=layer, direction=units[emotions[0]].direction, strength=1.0, unit_norm=unit_norm)]
    rand_dirs = [random_steers(like, _seed("scores-null", seed, r))[0].direction for r in range(n_random)]
    lex = load_nrc()
    neutral = list(neutral_texts)
    if not neutral:
        raise ScoresError("no neutral texts for the capability cost (KL divergence)")
    return _Design(emotions=emotions, cats=cats, strengths=strengths, test_strength=test_strength, prompts=prompts,
                   n_other=n_other, head_tokens=head_tokens, select_p=select_p, report_p=report_p, ctrl_p=ctrl_p,
                   mask_words=mask_words, signs=signs, layer=layer, units=units, unit_norm=unit_norm,
                   shuffled=shuffled, n_k=len(shuffled), rand_dirs=rand_dirs, n_random=n_random, lex=lex,
                   neutral=neutral)


def _row(prompt: str, steers: list, **g: Any) -> _Row:
    return _Row(prompt, steers, ScoredGeneration(seed=0, **g))


def _phase1_plan(d: _Design, plain: Sequence[str], half: Mapping[int, str], samples: int) -> list[_Row]:
    """Phase 1's rows: the unsteered replies (every prompt), the steering sweep (selection half)
    and the controls at the test strength (the controls' prompts, sample 0)."""
    test_strength = d.test_strength
    plan1: list[_Row] = []
    for p in range(len(d.prompts)):
        for j in range(samples):
            plan1.append(_row(plain[p], [], method="unsteered", emotion=None, strength=0.0, prompt_index=p, sample=j,
                              half=half[p]))
    for p in d.select_p:
        for e in d.emotions:
            for s in d.strengths:
                for j in range(samples):
                    plan1.append(_row(plain[p], d.at(d.units[e].direction, s), method="steering", emotion=e,
                                      strength=s, prompt_index=p, sample=j, half="select"))
        if p in d.ctrl_p:
            for k in range(d.n_k):
                for i, e in enumerate(d.emotions):
                    plan1.append(_row(plain[p], d.at(d.shuffled[k][i], test_strength), method="shuffled", emotion=e,
                                      strength=test_strength, prompt_index=p, sample=0, half="select", shuffle=k))
            for r in range(d.n_random):
                plan1.append(_row(plain[p], d.at(d.rand_dirs[r], test_strength), method="random", emotion=None,
                                  strength=test_strength, prompt_index=p, sample=0, half="select", random_index=r))
    return plan1


def _phase2_plan(d: _Design, plain: Sequence[str], asked: Mapping[str, Sequence[str]], chosen: Mapping[str, float],
                 samples: int) -> list[_Row]:
    """Phase 2's rows, the report half: steering at the chosen strength, prompting, and both."""
    plan2: list[_Row] = []
    for p in d.report_p:
        for e in d.emotions:
            for j in range(samples):
                plan2.append(_row(plain[p], d.at(d.units[e].direction, chosen[e]), method="steering", emotion=e,
                                  strength=chosen[e], prompt_index=p, sample=j, half="report", phase=2))
                plan2.append(_row(asked[e][p], [], method="prompting", emotion=e, strength=0.0, prompt_index=p,
                                  sample=j, half="report", phase=2))
                plan2.append(_row(asked[e][p], d.at(d.units[e].direction, chosen[e]), method="both", emotion=e,
                                  strength=chosen[e], prompt_index=p, sample=j, half="report", phase=2))
    return plan2


def _score_replies(model: Any, d: _Design, contexts: Sequence[Sequence[int]], batch: list[ScoredGeneration],
                   ppl_ref: float | None, *, judge: ConceptJudge | None, batch_size: int) -> float:
    """Fill every generation's concept (per run emotion), fluency, relevance and VADER scores;
    returns ``ppl_ref``, the median perplexity of the batch's unsteered replies when not given."""
    from emotion_vectors.steering.evaluate import mask_emotion_words, vader_scores

    texts = [g.text for g in batch]
    masked = [mask_emotion_words(t, d.mask_words) for t in texts]
    for e in d.emotions:
        lx = lexicon_concept(masked, d.cats[e], mask_words=[], lexicon=d.lex)
        for g, v in zip(batch, lx):
            g.concept_lexicon[e] = float(v)
    if judge is not None:
        for e in d.emotions:
            js = judge.score(masked, e)
            for g, v in zip(batch, js):
                g.concept[e] = float(v) if np.isfinite(v) else 0.0
    else:
        for g in batch:
            g.concept = dict(g.concept_lexicon)
    own, own_head = response_logprobs(model, [contexts[g.prompt_index] for g in batch], [g.ids for g in batch],
                                      batch_size=min(batch_size, 64), head=d.head_tokens)
    others = np.zeros((len(batch), d.n_other))
    for m in range(d.n_other):
        others[:, m] = response_logprobs(
            model, [contexts[(g.prompt_index + 1 + m) % len(d.prompts)] for g in batch],
            [g.ids[:d.head_tokens] for g in batch], batch_size=min(batch_size, 64))
    n_tok = np.array([max(len(g.ids), 1) for g in batch])
    ppl = np.where(np.isfinite(own), np.exp(-own / n_tok), np.nan)
    if ppl_ref is None:
        base = ppl[[i for i, g in enumerate(batch) if g.method == "unsteered"]]
        base = base[np.isfinite(base)]
        if base.size == 0:
            raise ScoresError("every unsteered reply is empty: no reference perplexity")
        ppl_ref = float(np.median(base))
    rep = np.array([repetition_rate(t) for t in texts])
    flu = fluency_scores(ppl, rep, ppl_ref)
    rel = relevance_scores(own_head, others)
    vm, vr = vader_scores(masked), vader_scores(texts)
    for i, g in enumerate(batch):
        g.perplexity, g.repetition = float(ppl[i]), float(rep[i])
        g.fluency, g.relevance = float(flu[i]), float(rel[i])
        g.vader, g.vader_unmasked = float(vm[i]), float(vr[i])
    return ppl_ref


def _hm(g: ScoredGeneration, e: str) -> float:
    """The steering score of ``g`` for emotion ``e``: the harmonic mean of the three axes."""
    return float(harmonic_mean(np.array([g.concept.get(e, 0.0)]), np.array([g.fluency]),
                               np.array([g.relevance]))[0])


def _tv(g: ScoredGeneration, e: str) -> float:
    """The tests' value: the score, ties broken (:data:`TIE_BREAK`)."""
    return _hm(g, e) + TIE_BREAK * (g.concept.get(e, 0.0) + g.fluency + g.relevance) / 3


def _choose_strengths(d: _Design, gens: Sequence[ScoredGeneration]) -> dict[str, float]:
    """Each emotion's strength: the one with the highest mean steering score on the selection half."""
    chosen: dict[str, float] = {}
    for e in d.emotions:
        by_s = [[_hm(g, e) for g in gens if g.method == "steering" and g.emotion == e and g.strength == s]
                for s in d.strengths]
        chosen[e] = choose_strength(d.strengths, by_s)
    return chosen


@dataclass
class _KL:
    """The capability cost: ``of[(method, emotion, strength, index)]`` the KL per token on the
    neutral texts; ``k`` shuffled-label sets and ``r`` random directions of the controls measured."""

    of: dict[tuple, float]
    k: int
    r: int
    n_directions: int


def _kl_costs(model: Any, tokenizer: Any, d: _Design, *, kl_null: int, kl_tokens: int, batch_size: int,
              positions: str | int) -> _KL:
    """KL on the neutral texts for each emotion's direction at every strength and a few control
    directions (at most ``kl_null`` of each kind) at the test strength."""
    test_strength = d.test_strength
    kl_rows: list[list[Steer]] = []
    kl_keys: list[tuple] = []
    for e in d.emotions:
        for s in d.strengths:
            kl_rows.append(d.at(d.units[e].direction, s))
            kl_keys.append(("steering", e, s, None))
    kl_k, kl_r = min(d.n_k, kl_null), min(d.n_random, kl_null)  # the controls' cost: a few directions suffice
    for k in range(kl_k):
        for i, e in enumerate(d.emotions):
            kl_rows.append(d.at(d.shuffled[k][i], test_strength))
            kl_keys.append(("shuffled", e, test_strength, k))
    for r in range(kl_r):
        kl_rows.append(d.at(d.rand_dirs[r], test_strength))
        kl_keys.append(("random", None, test_strength, r))
    kl = kl_on_texts(model, tokenizer, d.neutral, kl_rows, max_tokens=kl_tokens, batch_size=min(batch_size, 16),
                     positions=positions)
    return _KL(of=dict(zip(kl_keys, kl.tolist())), k=kl_k, r=kl_r, n_directions=len(kl_rows))


def _pick(gens: Sequence[ScoredGeneration], method: str, e: str | None, hlf: str) -> list[ScoredGeneration]:
    out = [g for g in gens if g.method == method and g.half == hlf and (method == "unsteered" or g.emotion == e)]
    return sorted(out, key=lambda g: (g.prompt_index, g.sample))


def _method_table(d: _Design, gens: Sequence[ScoredGeneration], chosen: Mapping[str, float], kl: _KL,
                  rng: np.random.Generator, n_boot: int) -> tuple[list[dict], dict[str, dict[str, np.ndarray]]]:
    """The table's rows for every method on the report half (means and bootstrap intervals), and
    per emotion the paired differences of the tests' values, steering and both minus prompting."""
    table: list[dict] = []
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for e in d.emotions:
        per = {}
        for mth in METHODS:
            gs = _pick(gens, mth, e, "report")
            per[mth] = gs
            vals = {"concept": [g.concept.get(e, 0.0) for g in gs], "fluency": [g.fluency for g in gs],
                    "relevance": [g.relevance for g in gs], "score": [_hm(g, e) for g in gs],
                    "concept_lexicon": [g.concept_lexicon.get(e, 0.0) for g in gs]}
            rowd: dict[str, Any] = {"emotion": e, "method": mth, "nrc_category": d.cats[e],
                                    "strength": chosen[e] if mth in ("steering", "both") else 0.0,
                                    "n": len(gs)}
            for k2, v in vals.items():
                lo, hi = bootstrap_mean(v, rng, n_boot)
                rowd.update({k2: float(np.mean(v)) if v else float("nan"), f"{k2}_lo": lo, f"{k2}_hi": hi})
            rowd["kl"] = kl.of.get(("steering", e, chosen[e], None)) if mth in ("steering", "both") else (
                0.0 if mth == "unsteered" else float("nan"))
            table.append(rowd)
        base_p = np.array([_tv(g, e) for g in per["prompting"]])
        pairs[e] = {m: np.array([_tv(g, e) for g in per[m]]) - base_p for m in ("steering", "both")}
    return table, pairs


def _vs_prompting(d: _Design, pairs: Mapping[str, Mapping[str, np.ndarray]], table: list[dict],
                  rng: np.random.Generator, n_boot: int, *, seed: int, samples: int) -> dict[str, Any]:
    """The paired comparisons with prompting, per emotion (Holm) and over the family, for steering
    and both; each emotion's result is also written into its table row."""
    emotions = d.emotions
    n_pairs = len(d.report_p) * samples
    comparisons = {}
    for m in ("steering", "both"):
        ps = np.array([sign_flip_test(pairs[e][m], alternative=VS_PROMPTING) for e in emotions])
        ph = holm(ps)
        fam_d = np.concatenate([pairs[e][m] for e in emotions])
        comparisons[m] = {
            "per_emotion": {e: {"difference": float(np.mean(pairs[e][m])),
                                "interval": list(bootstrap_mean(pairs[e][m], rng, n_boot)),
                                "p": float(ps[i]), "p_holm": float(ph[i])} for i, e in enumerate(emotions)},
            "family": {"difference": float(fam_d.mean()), "interval": list(bootstrap_mean(fam_d, rng, n_boot)),
                       "p": sign_flip_test(fam_d, alternative=VS_PROMPTING, seed=_seed("flip", seed, m)),
                       "n_pairs": int(fam_d.size)},
            "n_pairs": n_pairs, "floor": sign_flip_floor(n_pairs, VS_PROMPTING),
            "n_surviving_holm": int(np.sum(ph < ALPHA)),
        }
        for e in emotions:
            for r in table:
                if r["emotion"] == e and r["method"] == m:
                    c = comparisons[m]["per_emotion"][e]
                    r.update({"vs_prompting": c["difference"], "vs_prompting_lo": c["interval"][0],
                              "vs_prompting_hi": c["interval"][1], "p_vs_prompting": c["p"],
                              "p_vs_prompting_holm": c["p_holm"]})
    return comparisons


def _ctrl(d: _Design, gens: Sequence[ScoredGeneration], method: str, e: str | None, k: int | None = None,
          r: int | None = None) -> list[ScoredGeneration]:
    """The controls' generations: phase 1, the controls' prompts, sample 0, at the test strength."""
    out = [g for g in gens if g.method == method and g.prompt_index in d.ctrl_p and g.sample == 0
           and g.phase == 1 and (method == "unsteered" or g.strength == d.test_strength)]
    if method in ("steering", "shuffled"):
        out = [g for g in out if g.emotion == e]
    if k is not None:
        out = [g for g in out if g.shuffle == k]
    if r is not None:
        out = [g for g in out if g.random_index == r]
    return sorted(out, key=lambda g: g.prompt_index)


@dataclass
class _Controls:
    """The controls at the test strength: the real, shuffled-label and random directions' mean
    tests' values (per emotion), their tests, and the summary's ``controls`` entry."""

    real: np.ndarray
    shuffled: np.ndarray
    random: np.ndarray
    shuf_t: dict[str, Any]
    rand_t: dict[str, Any] | None
    summary: dict[str, Any]


def _control_scores(d: _Design, gens: Sequence[ScoredGeneration], *, n_permutations: int, seed: int) -> _Controls:
    """Real vs shuffled-label vectors (``set_test``) and vs the random directions' pool
    (``pool_test``) at the test strength."""
    from emotion_vectors.steering.evaluate import pool_test, set_test

    emotions, n_k, n_random, test_strength = d.emotions, d.n_k, d.n_random, d.test_strength
    real_score = np.array([np.mean([_tv(g, e) for g in _ctrl(d, gens, "steering", e)]) for e in emotions])
    shuf_score = np.array([[np.mean([_tv(g, e) for g in _ctrl(d, gens, "shuffled", e, k=k)]) for e in emotions]
                           for k in range(n_k)]).reshape(n_k, len(emotions))
    rand_score = np.array([[np.mean([_tv(g, e) for g in _ctrl(d, gens, "random", None, r=r)]) for e in emotions]
                           for r in range(n_random)]).reshape(n_random, len(emotions))
    shuf_t = set_test(real_score, shuf_score)
    # the emotions' vectors under every emotion's concept (the pooled null reads the off-diagonal too)
    real_matrix = np.array([[np.mean([_tv(g, e) for g in _ctrl(d, gens, "steering", v)]) for e in emotions]
                            for v in emotions])
    rand_t = pool_test(np.vstack([real_matrix, rand_score]), len(emotions), n_permutations=n_permutations,
                       seed=_seed("scores-pool", seed)) if n_random else None
    controls = {
        "test_strength": test_strength, "prompts": [d.prompts[p] for p in d.ctrl_p], "n_shuffled": n_k,
        "n_random": n_random, "real": real_score.tolist(),
        "shuffled": {k2: shuf_t.get(k2) for k2 in ("statistic", "p", "n_null", "null_mean", "null_q95", "p_emotion",
                                                   "p_emotion_holm", "n_null_emotion")}
        | {"n_surviving_holm": int(np.sum(np.asarray(shuf_t["p_emotion_holm"], float) < ALPHA)),
           "null": shuf_score.tolist()},
        "random": ({k2: rand_t.get(k2) for k2 in ("statistic", "p", "n_null", "p_emotion", "p_emotion_holm",
                                                  "n_null_emotion")} | {"null": rand_score.tolist()})
        if rand_t else None,
    }
    return _Controls(real_score, shuf_score, rand_score, shuf_t, rand_t, controls)


def _control_rows(d: _Design, gens: Sequence[ScoredGeneration], ctl: _Controls, kl: _KL) -> list[dict]:
    """The table's lines for the shuffled-label and random controls, per emotion."""
    test_strength, n_k, n_random = d.test_strength, d.n_k, d.n_random
    shuf_score, rand_score, real_score = ctl.shuffled, ctl.random, ctl.real
    kl_k, kl_r = kl.k, kl.r
    rows: list[dict] = []
    for i, e in enumerate(d.emotions):
        rows.append({"emotion": e, "method": f"shuffled-label @{test_strength:g}", "nrc_category": d.cats[e],
                     "strength": test_strength, "n": n_k,
                     "score": float(shuf_score[:, i].mean()) if n_k else float("nan"),
                     "score_lo": float(np.quantile(shuf_score[:, i], 0.025)) if n_k else float("nan"),
                     "score_hi": float(np.quantile(shuf_score[:, i], 0.975)) if n_k else float("nan"),
                     "concept": float(np.mean([g.concept.get(e, 0.0) for g in gens if g.method == "shuffled"
                                               and g.emotion == e])) if n_k else float("nan"),
                     "kl": float(np.mean([kl.of[("shuffled", e, test_strength, k)] for k in range(kl_k)]))
                     if kl_k else float("nan"),
                     "real_at_test": float(real_score[i]), "p_vs_null": ctl.shuf_t["p_emotion"][i],
                     "p_vs_null_holm": ctl.shuf_t["p_emotion_holm"][i]})
        if n_random:
            rows.append({"emotion": e, "method": f"random @{test_strength:g} (weak null)", "nrc_category": d.cats[e],
                         "strength": test_strength, "n": n_random, "score": float(rand_score[:, i].mean()),
                         "score_lo": float(np.quantile(rand_score[:, i], 0.025)),
                         "score_hi": float(np.quantile(rand_score[:, i], 0.975)),
                         "concept": float(np.mean([g.concept.get(e, 0.0) for g in gens if g.method == "random"])),
                         "kl": float(np.mean([kl.of[("random", None, test_strength, r)] for r in range(kl_r)]))
                         if kl_r else float("nan"),
                         "real_at_test": float(real_score[i]), "p_vs_null": ctl.rand_t["p_emotion"][i],
                         "p_vs_null_holm": ctl.rand_t["p_emotion_holm"][i]})
    return rows


def _tradeoff_curves(d: _Design, gens: Sequence[ScoredGeneration], ctl: _Controls, kl: _KL,
                     rng: np.random.Generator, n_boot: int) -> list[dict]:
    """The trade-off curves (selection half): concept, axes and KL per strength, with prompting and
    the controls beside them."""
    emotions, test_strength, n_k, n_random = d.emotions, d.test_strength, d.n_k, d.n_random
    kl_of, kl_k, kl_r = kl.of, kl.k, kl.r
    curves: list[dict] = []
    for e in emotions:
        base = _pick(gens, "unsteered", None, "select")
        pts = [(0.0, base, 0.0)] + [(s, [g for g in gens if g.method == "steering" and g.emotion == e
                                         and g.strength == s and g.half == "select"], kl_of[("steering", e, s, None)])
                                    for s in d.strengths]
        for s, gs, k in pts:
            c = [g.concept.get(e, 0.0) for g in gs]
            lo, hi = bootstrap_mean(c, rng, n_boot)
            curves.append({"emotion": e, "kind": "steering" if s else "unsteered", "strength": s, "n": len(gs),
                           "kl": k, "concept": float(np.mean(c)), "concept_lo": lo, "concept_hi": hi,
                           "fluency": float(np.mean([g.fluency for g in gs])),
                           "relevance": float(np.mean([g.relevance for g in gs])),
                           "score": float(np.mean([_hm(g, e) for g in gs])),
                           "vader": float(np.mean([g.vader for g in gs]))})
        pr = _pick(gens, "prompting", e, "report")
        curves.append({"emotion": e, "kind": "prompting", "strength": 0.0, "n": len(pr), "kl": float("nan"),
                       "concept": float(np.mean([g.concept.get(e, 0.0) for g in pr])),
                       "score": float(np.mean([_hm(g, e) for g in pr]))})
        if n_k:
            curves.append({"emotion": e, "kind": "shuffled", "strength": test_strength, "n": n_k,
                           "kl": float(np.mean([kl_of[("shuffled", e, test_strength, k)] for k in range(kl_k)]))
                           if kl_k else float("nan"),
                           "concept": float(np.mean([g.concept.get(e, 0.0) for g in gens
                                                     if g.method == "shuffled" and g.emotion == e])),
                           "score": float(ctl.shuffled[:, emotions.index(e)].mean())})
        if n_random:
            curves.append({"emotion": e, "kind": "random", "strength": test_strength, "n": n_random,
                           "kl": float(np.mean([kl_of[("random", None, test_strength, r)] for r in range(kl_r)]))
                           if kl_r else float("nan"),
                           "concept": float(np.mean([g.concept.get(e, 0.0) for g in gens if g.method == "random"])),
                           "score": float(ctl.random[:, emotions.index(e)].mean())})
    return curves


def _dose_numbers(d: _Design, gens: Sequence[ScoredGeneration], rng: np.random.Generator) -> dict[str, Any]:
    """The masked-VADER dose numbers (``steering.evaluate.dose_claims``): the slope between the
    unsteered replies and the test strength on the controls' prompts, real vs shuffled-label."""
    from emotion_vectors.steering.evaluate import _signed, bootstrap_slopes, set_test

    emotions, signs, test_strength, n_k, ctrl_p = d.emotions, d.signs, d.test_strength, d.n_k, d.ctrl_p
    sgn = [signs[e] for e in emotions]
    base_v = np.array([g.vader for g in _ctrl(d, gens, "unsteered", None) if g.sample == 0])

    def dslope(gs: list[ScoredGeneration]) -> float:
        return (float(np.mean([g.vader for g in gs])) - float(base_v.mean())) / test_strength

    real_sl = np.array([dslope(_ctrl(d, gens, "steering", e)) for e in emotions])
    shuf_sl = np.array([[dslope(_ctrl(d, gens, "shuffled", e, k=k)) for e in emotions] for k in range(n_k)]).reshape(
        n_k, len(emotions))
    dshuf = set_test(_signed(real_sl, sgn), _signed(shuf_sl, sgn))
    x = np.concatenate([np.zeros(base_v.size), np.full(len(ctrl_p), test_strength)])
    boots = np.stack([bootstrap_slopes(x, np.concatenate([base_v, [g.vader for g in _ctrl(d, gens, "steering", e)]]),
                                       rng, 1000)
                      for e in emotions])
    fam_boot = _signed(boots.T, sgn).mean(axis=1)
    slopes_rows = []
    for i, e in enumerate(emotions):
        gs = _ctrl(d, gens, "steering", e)
        unm = (float(np.mean([g.vader_unmasked for g in gs]))
               - float(np.mean([g.vader_unmasked for g in _ctrl(d, gens, "unsteered", None)]))) / test_strength
        slopes_rows.append({
            "emotion": e, "expected_sign": sgn[i], "vader_slope": float(real_sl[i]),
            "vader_slope_lo": float(np.quantile(boots[i], 0.025)), "vader_slope_hi": float(np.quantile(boots[i], 0.975)),
            "null_shuffled_q025": float(np.quantile(shuf_sl[:, i], 0.025)) if n_k else float("nan"),
            "null_shuffled_q975": float(np.quantile(shuf_sl[:, i], 0.975)) if n_k else float("nan"),
            "p_shuffled": dshuf["p_emotion"][i], "p_shuffled_holm": dshuf["p_emotion_holm"][i],
            "vader_unmasked_slope": unm})
    return {
        "emotions": emotions, "expected_signs": signs, "strengths": [0.0, test_strength], "layer": d.layer,
        "n_prompts": len(ctrl_p), "samples_per_prompt": 1, "n_shuffled": n_k, "n_random": d.n_random,
        "metric": "VADER compound of the text with every form of every run emotion's word masked",
        "design": (f"the unsteered replies and the replies at {test_strength:g} x residual norm on the controls' "
                   f"{len(ctrl_p)} prompts (sample 0): slope = difference of the means / strength"),
        "tests": {"shuffled": {k2: dshuf.get(k2) for k2 in ("statistic", "p", "n_null", "null_mean", "null_q95")}
                  | {"interval": [float(np.quantile(fam_boot, 0.025)), float(np.quantile(fam_boot, 0.975))],
                     "n_surviving_holm": int(np.sum(np.asarray(dshuf["p_emotion_holm"], float) < ALPHA)),
                     "n_null_emotion": dshuf["n_null_emotion"]}},
        "slopes": slopes_rows, "null_slopes": {"shuffled": shuf_sl.tolist()},
    }


# --------------------------------------------------------------------------------------------
# Claims


def scores_claims(summary: Mapping[str, Any], *, figure: str | None = None) -> list[Claim]:
    """The steering-score claims: each emotion's steering and steering + prompting against
    prompting (one-sided sign-flip tests: higher than prompting; Holm over the emotions; the family
    over all pairs), and
    the emotions' vectors against the shuffled-label vectors (family and per emotion, Holm) and
    random directions (weak null) at the test strength."""
    from emotion_vectors.steering.evaluate import WEAK_RANDOM_NULL, _at_floor

    emotions = list(summary["emotions"])
    n_e = len(emotions)
    s_t = summary["test_strength"]
    scorer = summary["concept_scorer"]
    axes = (f"steering score = harmonic mean of concept ({scorer}, NRC categories {summary['concept_map']}), "
            "fluency (perplexity under the unsteered model against its own replies' median, times 1 - 3-gram "
            "repetition) and relevance (the unsteered model's posterior of the reply's own prompt against "
            f"{summary['n_other']} other prompt(s)), per reply")
    claims: list[Claim] = []
    names = {"steering": "Steering with the vector of", "both": "Prompting plus steering with the vector of"}
    for m in ("steering", "both"):
        comp = summary["comparisons"][m]
        n_pairs = comp["n_pairs"]
        floor = comp["floor"]
        n_null = int(round(1 / floor)) - 1 if floor > 0 else None
        fam = comp["family"]
        who = lambda d: "higher" if d > 0 else "lower" if d < 0 else "equal"  # noqa: E731
        claims.append(make_claim(
            f"steering.scores.{m}_vs_prompting", STAGE,
            f"{names[m].replace(' of', 's of')} the emotions reaches higher steering scores than prompting for them "
            f"(\"{summary['instruction']}\") on held-out prompts",
            test=(f"{axes}; paired by prompt and sample on the report half ({fam['n_pairs']} pairs over {n_e} "
                  f"emotions, strength chosen on the selection half); mean difference {m} - prompting; "
                  "one-sided sign-flip test (higher than prompting)"),
            null="the two methods' scores are exchangeable within each pair (every sign pattern equally likely)",
            statistic=fam["difference"], p=fam["p"], interval=fam["interval"],
            interval_of="of the mean difference: 95% percentile bootstrap over pairs",
            figure=figure,
            note=(f"{m} {who(fam['difference'])} than prompting on average; per emotion (Holm over {n_e}): "
                  f"{comp['n_surviving_holm']}/{n_e} differ."),
            extra={"per_emotion": comp["per_emotion"]}))
        need = next(k for k in range(1, 64) if sign_flip_floor(k, VS_PROMPTING) < ALPHA / n_e)
        for e in emotions:
            c = comp["per_emotion"][e]
            claims.append(_pairs_note(make_claim(
                f"steering.scores.{e}.{m}_vs_prompting", STAGE,
                f"{names[m]} {e!r} reaches a higher steering score than prompting for {e!r} on held-out prompts",
                test=(f"{axes}; {n_pairs} pairs (report-half prompt x sample); mean difference {m} - prompting; "
                      "one-sided exact sign-flip test (higher than prompting)"),
                null="the two methods' scores are exchangeable within each pair",
                statistic=c["difference"], p=c["p"], p_adjusted=c["p_holm"], correction=f"Holm over {n_e} emotions",
                family=n_e, n_null=n_null, interval=c["interval"],
                interval_of=f"of the mean difference: 95% percentile bootstrap over {n_pairs} pairs"
                + (" (rough with so few)" if n_pairs < 16 else ""),
                figure=figure, note=f"{m} {who(c['difference'])} than prompting."), n_pairs, floor, need, n_e))
    ctrl = summary["controls"]
    k = ctrl["n_shuffled"]
    sh = ctrl["shuffled"]
    null_sh = (f"{k} shuffled-label vector sets (the same stories, emotion labels permuted within topic, same "
               "counts, denoising and norm), each steered, sampled and scored as the real vectors: exact when the "
               "stories' activations do not depend on their emotion label")
    test_ctrl = (f"{axes}; mean over the replies to {len(ctrl['prompts'])} prompt(s) (sample 0) at strength "
                 f"{s_t:g} x residual norm (pre-specified, no selection)")
    claims.append(_at_floor(make_claim(
        "steering.scores.shuffled", STAGE,
        "Steering with the emotions' vectors reaches a higher steering score for their emotions than "
        "steering with shuffled-label pseudo vectors of the same norm",
        test=test_ctrl + "; statistic = mean over the emotions; real labels vs each shuffle; Monte-Carlo p",
        null=null_sh, statistic=sh["statistic"], p=sh["p"] if k else None, n_null=k if k else None, figure=figure,
        note=(f"per emotion (Holm over {n_e}): {sh['n_surviving_holm']}/{n_e} survive."
              if k else "no shuffled-label vectors were given."))))
    for i, e in enumerate(emotions):
        claims.append(make_claim(
            f"steering.scores.{e}.shuffled", STAGE,
            f"Steering with the vector of {e!r} reaches a higher steering score for {e!r} than its shuffled-label "
            "pseudo vectors",
            test=test_ctrl + f"; Monte-Carlo p of the real vector's score among its {k} pseudo vectors'",
            null=null_sh, statistic=ctrl["real"][i], p=sh["p_emotion"][i] if k else None,
            p_adjusted=sh["p_emotion_holm"][i] if k else None, correction=f"Holm over {n_e} emotions", family=n_e,
            n_null=k if k else None, figure=figure))
    rnd = ctrl.get("random")
    if rnd:
        claims.append(_at_floor(make_claim(
            "steering.scores.random", STAGE,
            "Steering with the emotions' vectors reaches a higher steering score for their emotions than random "
            "directions of the same norm",
            test=test_ctrl + (f"; mean over the emotions; Monte-Carlo permutation p over random assignments of "
                              f"{n_e} directions drawn from the emotions' vectors and {ctrl['n_random']} random "
                              "directions together"),
            null=WEAK_RANDOM_NULL, statistic=rnd["statistic"], p=rnd["p"], n_null=rnd["n_null"], figure=figure,
            note=(f"per emotion (Monte-Carlo p over {ctrl['n_random']} random directions, Holm over {n_e}): "
                  f"{int(np.sum(np.asarray(rnd['p_emotion_holm'], float) < ALPHA))}/{n_e} survive."))))
    return claims


def _pairs_note(claim: Claim, n_pairs: int, floor: float, need: int, family: int) -> Claim:
    """A sign-flip claim that cannot reach its Holm threshold says so in pairs, not draws."""
    if claim.p is None and claim.verdict == "not testable":
        claim.note = (f"{claim.note} With {n_pairs} pairs the exact one-sided sign-flip test's smallest p is "
                      f"{floor:.3g}, which cannot go below {ALPHA / family:.3g} (Holm over {family}); at least "
                      f"{need} pairs are needed, so no p-value is given.")
    return claim


# --------------------------------------------------------------------------------------------
# Figures


def tradeoff_figure(curves: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> None:
    """Per emotion: concept score against the KL divergence on neutral text, one point per strength
    (the emotion's vector; unsteered at KL 0), prompting as a horizontal line (no KL: the
    instruction is not in the neutral text), shuffled-label and random directions at the test
    strength (grey marks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(list(curves))
    emotions = list(dict.fromkeys(df["emotion"]))
    fig, axes = plt.subplots(1, len(emotions), figsize=(3.6 * len(emotions), 3.6), squeeze=False)
    for ax, e in zip(axes[0], emotions):
        d = df[df["emotion"] == e]
        st = d[d["kind"].isin(["unsteered", "steering"])].sort_values("strength")
        ax.errorbar(st["kl"], st["concept"], yerr=[st["concept"] - st["concept_lo"], st["concept_hi"] - st["concept"]],
                    marker="o", capsize=3, color="tab:blue", label="vector (strength)")
        for _, r in st.iterrows():
            ax.annotate(f"{r['strength']:g}", (r["kl"], r["concept"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        pr = d[d["kind"] == "prompting"]
        if len(pr):
            ax.axhline(float(pr["concept"].iloc[0]), color="tab:orange", ls="--", label="prompting")
        for kind, mk in (("shuffled", "s"), ("random", "x")):
            c = d[d["kind"] == kind]
            if len(c):
                ax.scatter(c["kl"], c["concept"], marker=mk, color="0.4", label=f"{kind} (test strength)", zorder=3)
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlabel("KL from unsteered on neutral text (nats/token)")
        ax.set_title(e, fontsize=10)
    axes[0][0].set_ylabel("concept score (selection half)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title or "Trade-off: concept expressed against capability cost, per strength")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def methods_figure(table: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> None:
    """Per emotion, the steering score (and its three axes) of unsteered, prompting, steering and
    both on the report half, with 95% bootstrap intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame([r for r in table if r["method"] in METHODS])
    emotions = list(dict.fromkeys(df["emotion"]))
    metrics = ["score", "concept", "fluency", "relevance"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.8), squeeze=False)
    width = 0.8 / len(METHODS)
    for ax, met in zip(axes[0], metrics):
        for j, mth in enumerate(METHODS):
            d = df[df["method"] == mth].set_index("emotion").reindex(emotions)
            x = np.arange(len(emotions)) + (j - 1.5) * width
            ax.bar(x, d[met], width, label=mth,
                   yerr=[np.maximum(d[met] - d[f"{met}_lo"], 0).fillna(0), np.maximum(d[f"{met}_hi"] - d[met], 0).fillna(0)],
                   capsize=2)
        ax.set_xticks(range(len(emotions)), emotions, fontsize=8)
        ax.set_title("steering score (harmonic mean)" if met == "score" else met, fontsize=9)
        ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title or "Held-out prompts: unsteered, prompting, steering, both (95% bootstrap intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["ConceptJudge", "DEFAULT_CONCEPT_MAP", "METHODS", "ScoredGeneration", "ScoresError", "ScoresResult",
           "bootstrap_mean", "choose_strength", "concept_judge_messages", "concept_map", "fluency_scores",
           "harmonic_mean", "kl_on_texts", "lexicon_concept", "load_concept_validation", "methods_figure",
           "parse_rating", "relevance_scores", "repetition_rate", "response_logprobs", "scores_claims",
           "sign_flip_floor", "sign_flip_test", "steering_scores", "tradeoff_figure", "validate_concept_scorer",
           "validation_pairs"]
