"""Evidence that steering with the emotion vectors steers: two measurements with a random null.

1. **Continuation test** (:func:`continuation_test`). Prompts that ask for a feeling ("Asked how
   she felt, she answered that she felt") are scored under steering along each emotion's vector
   at a grid of strengths: the log-probability of the emotion's own word as the continuation,
   and of every other emotion's word. Per emotion: the slope of its own word's log-probability
   against strength, its rank among all words' rises at the largest strength (specificity), and
   a permutation-free null: the same word's slope under ``n_random`` random directions of the
   same norm (:func:`emotion_vectors.steer.random_steers`).
2. **Dose-response of free generation** (:func:`dose_response`). Neutral chat prompts are
   answered with steering along valenced emotions at a grid of strengths (seeded sampling), and
   along random directions of the same norm. Every generation is scored by an independent
   sentiment scorer (VADER compound, from ``vaderSentiment``) and by the project's own valence
   readout (the text re-read by the unsteered subject, mean-pooled at the readout layer and
   projected on :mod:`emotion_vectors.readout`'s valence direction). Per emotion: mean score per
   strength with bootstrap intervals, the slope with a bootstrap interval, and the slope's place
   in the random directions' slopes.

Strength is in units of the layer's residual norm (``steer.Steer``). Nothing here is tuned on the
numbers it reports: prompts, strengths and the random null are fixed in the config.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emotion_vectors.judge import _input_device
from emotion_vectors.steer import Steer, random_steers, steering, steers_from_store

Log = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from ``parts`` (their JSON), the same on every machine."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF




def slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` on ``x`` (NaN if ``x`` is constant)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    xc = x - x.mean()
    den = float(xc @ xc)
    return float(xc @ (y - y.mean()) / den) if den > 0 else float("nan")


def upper_p(observed: float, null: np.ndarray) -> float:
    """One-sided ``(1 + #{null >= observed}) / (1 + n)``: how unusual a rise is under the null."""
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if not math.isfinite(observed) or null.size == 0:
        return float("nan")
    return float((1 + np.sum(null >= observed)) / (1 + null.size))


# --------------------------------------------------------------------------------------------
# 1. Continuation test


def word_logprobs(model: Any, tokenizer: Any, prompts: Sequence[str], words: Sequence[str],
                  *, batch_size: int = 8) -> np.ndarray:
    """``(n_prompts, n_words)`` log-probability of ``" " + word`` (all its tokens) after each
    prompt (``judge.score_choices``: each prompt runs once and the words continue from its
    cache). The model is called as it is, so an active
    :func:`~emotion_vectors.steer.steering` context applies to prompt and word tokens alike."""
    from emotion_vectors.judge import score_choices

    cands = [" " + w for w in words]
    scores = score_choices(model, tokenizer, list(prompts), [cands] * len(prompts),
                           batch_size=batch_size)
    return np.stack(scores.logprob)


@dataclass
class ContinuationResult:
    """Per-emotion rows and per-(emotion, strength) rows of the continuation test."""

    per_emotion: list[dict]
    per_strength: list[dict]
    summary: dict


def continuation_test(
    model: Any,
    tokenizer: Any,
    store: Any,
    emotions: Sequence[str],
    *,
    prompts: Sequence[str],
    strengths: Sequence[float],
    layer: int | None = None,
    n_random: int = 20,
    seed: int = 0,
    positions: str | int = "all",
    log: Log = _noop,
) -> ContinuationResult:
    """Own-word log-probability of every emotion under steering along its vector (see module).

    ``strengths`` must include 0 and at least one positive value.
    """
    strengths = sorted(float(s) for s in strengths)
    if 0.0 not in strengths or max(strengths) <= 0:
        raise ValueError(f"continuation strengths must include 0 and a positive value, got {strengths}")
    emotions = list(emotions)
    words = emotions
    started = time.perf_counter()
    base = word_logprobs(model, tokenizer, prompts, words).mean(axis=0)  # (W,)
    steer_sets: dict[str, list[Steer]] = {e: steers_from_store(store, e, [layer] if layer is not None else None, 1.0)
                                          for e in emotions}
    strength_grid = [s for s in strengths if s != 0.0]

    def curve(unit_steers: list[Steer]) -> np.ndarray:
        """``(n_strengths, W)`` mean log-prob of every word, strength 0 included."""
        rows = []
        for s in strengths:
            if s == 0.0:
                rows.append(base)
                continue
            scaled = [Steer(layer=u.layer, direction=u.direction, strength=s * u.strength,
                            unit_norm=u.unit_norm) for u in unit_steers]
            with steering(model, scaled, positions=positions):
                rows.append(word_logprobs(model, tokenizer, prompts, words).mean(axis=0))
        return np.stack(rows)

    x = np.array(strengths)
    per_strength, per_emotion = [], []
    emo_curves = {}
    for i, e in enumerate(emotions):
        c = curve(steer_sets[e])
        emo_curves[e] = c
        for si, s in enumerate(strengths):
            rise = c[si] - base
            per_strength.append({"emotion": e, "strength": s, "own_logprob": float(c[si, i]),
                                 "own_rise": float(rise[i]),
                                 "mean_other_rise": float(np.delete(rise, i).mean())})
        log(f"continuation: {e} ({i + 1}/{len(emotions)}) own-word log-prob "
            + " ".join(f"{s:+g}:{c[si, i]:.2f}" for si, s in enumerate(strengths)))
    # random null: n_random directions of the same norm, each applied at the same strengths;
    # each gives a slope for every word
    null_slopes = np.zeros((n_random, len(words)))
    like = steer_sets[emotions[0]]
    for r in range(n_random):
        rc = curve(random_steers(like, derive_seed("continuation-null", seed, r)))
        null_slopes[r] = [slope(x, rc[:, w]) for w in range(len(words))]
    smax = len(strengths) - 1
    for i, e in enumerate(emotions):
        c = emo_curves[e]
        own = slope(x, c[:, i])
        rise_max = c[smax] - base
        rank = int(1 + np.sum(rise_max > rise_max[i]))
        per_emotion.append({
            "emotion": e, "slope": own, "rises": bool(own > 0),
            "monotone": bool(np.all(np.diff(c[:, i]) > 0)),
            "rise_at_max": float(rise_max[i]),
            "specificity_rank": rank,
            "null_slope_mean": float(null_slopes[:, i].mean()) if n_random else float("nan"),
            "null_slope_p95": float(np.quantile(null_slopes[:, i], 0.95)) if n_random else float("nan"),
            "p_random": upper_p(own, null_slopes[:, i]),
        })
    n = len(emotions)
    rises = sum(r["rises"] for r in per_emotion)
    # above the 95th percentile of the same word's slopes under random directions: 5% of
    # emotions by chance; binomial test against that share
    above = sum(1 for r in per_emotion if r["slope"] > r["null_slope_p95"]) if n_random else 0
    from scipy.stats import binomtest

    p_above = float(binomtest(above, n, 0.05, alternative="greater").pvalue) if n_random else float("nan")
    null_rise_share = float(np.mean(null_slopes > 0)) if n_random else float("nan")
    summary = {
        "n_emotions": n, "strengths": strengths, "layer": steer_sets[emotions[0]][0].layer,
        "positions": positions, "prompts": list(prompts), "n_random": n_random,
        "n_rising": rises, "share_rising": rises / n,
        "share_rising_random_directions": null_rise_share,
        "n_above_random_p95": above,
        "p_above_random_p95": p_above,
        "n_top1_specific": sum(1 for r in per_emotion if r["specificity_rank"] == 1),
        "median_specificity_rank": float(np.median([r["specificity_rank"] for r in per_emotion])),
        "seconds": round(time.perf_counter() - started, 1),
    }
    log(f"continuation: own word rises with strength for {rises}/{n} emotions "
        f"(random directions: {null_rise_share:.2f} of words rise); slope above the random 95th "
        f"percentile: {above}/{n} (binomial p {p_above:.2g} against 5%); own word the top riser: {summary['n_top1_specific']}/{n}")
    return ContinuationResult(per_emotion, per_strength, summary)


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
    vader: float = float("nan")
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


def readout_scores(model: Any, tokenizer: Any, texts: Sequence[str], direction) -> np.ndarray:
    """The texts re-read by the (unsteered) model: mean activation over the tokens from the
    second on (the first is an attention sink whose residual norm is ~100x the others' in
    SmolLM2 and would dominate the mean) at the direction's layer, projected on the valence
    direction (NaN for empty texts; a one-token text has nothing to pool and gets NaN)."""
    from emotion_vectors.extract import extract_pooled

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
    """Percentile interval of the slope, resampling generations within each strength."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    groups = [np.flatnonzero(x == s) for s in np.unique(x)]
    if len(groups) < 2:
        return float("nan"), float("nan")
    slopes = np.empty(n_boot)
    for b in range(n_boot):
        pick = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
        slopes[b] = slope(x[pick], y[pick])
    return float(np.quantile(slopes, 0.025)), float(np.quantile(slopes, 0.975))


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
    direction,
    layer: int | None = None,
    n_random: int = 6,
    seed: int = 0,
    positions: str | int = "all",
    n_boot: int = 1000,
    log: Log = _noop,
) -> tuple[list[Generation], list[dict], list[dict], dict]:
    """Steered generations scored by VADER and the valence readout (see module docstring).

    Returns ``(generations, curve_rows, slope_rows, summary)``.
    """
    strengths = sorted(float(s) for s in strengths)
    if 0.0 not in strengths:
        strengths = sorted(strengths + [0.0])
    rendered = [render_chat(tokenizer, p) for p in prompts]
    batch_prompts = [rendered[p] for p in range(len(prompts)) for _ in range(samples)]
    unit = {e: steers_from_store(store, e, [layer] if layer is not None else None, 1.0) for e in emotions}
    like = unit[emotions[0]]
    conditions: list[tuple[str, str | None, int | None, float, list[Steer]]] = [("baseline", None, None, 0.0, [])]
    for e in emotions:
        for s in strengths:
            if s != 0.0:
                conditions.append((f"{e}@{s:+g}", e, None, s, unit[e]))
    for r in range(n_random):
        rnd = random_steers(like, derive_seed("dose-null", seed, r))
        for s in strengths:
            if s != 0.0:
                conditions.append((f"random{r}@{s:+g}", None, r, s, rnd))
    gens: list[Generation] = []
    started = time.perf_counter()
    for ci, (name, emo, ridx, s, units) in enumerate(conditions):
        scaled = [Steer(layer=u.layer, direction=u.direction, strength=s, unit_norm=u.unit_norm)
                  for u in units]
        cseed = derive_seed("dose", seed, name)
        with steering(model, scaled, positions=positions):
            replies = sample_batch(model, tokenizer, batch_prompts, seed=cseed,
                                   max_new_tokens=max_new_tokens, temperature=temperature)
        for k, (text, n) in enumerate(replies):
            gens.append(Generation(condition=name, emotion=emo, random_index=ridx, strength=s,
                                   prompt_index=k // samples, sample=k % samples, seed=cseed,
                                   text=text, n_tokens=n))
        if (ci + 1) % 5 == 0 or ci + 1 == len(conditions):
            el = time.perf_counter() - started
            log(f"dose-response: {ci + 1}/{len(conditions)} conditions generated "
                f"({el:.0f} s, ~{el / (ci + 1) * (len(conditions) - ci - 1):.0f} s left)")
    texts = [g.text for g in gens]
    vs = vader_scores(texts)
    rs = readout_scores(model, tokenizer, texts, direction)
    for g, v, r in zip(gens, vs, rs):
        g.vader, g.readout = float(v), float(r)
    rng = np.random.default_rng(derive_seed("dose-bootstrap", seed))
    base = [g for g in gens if g.condition == "baseline"]
    curves, slopes_rows = [], []

    def series(emo: str | None, ridx: int | None) -> list[Generation]:
        own = [g for g in gens if g.condition != "baseline" and g.emotion == emo and g.random_index == ridx]
        return base + own

    null = {"vader": [], "readout": []}
    for r in range(n_random):
        ser = series(None, r)
        x = np.array([g.strength for g in ser])
        for m in null:
            null[m].append(slope(x, np.array([getattr(g, m) for g in ser])))
    for e in emotions:
        ser = series(e, None)
        x = np.array([g.strength for g in ser])
        for s in strengths:
            grp = [g for g in ser if g.strength == s]
            row = {"emotion": e, "strength": s, "n": len(grp)}
            for m in ("vader", "readout"):
                vals = np.array([getattr(g, m) for g in grp])
                lo, hi = bootstrap_mean_ci(vals, rng, n_boot)
                row.update({f"{m}_mean": float(np.nanmean(vals)), f"{m}_lo": lo, f"{m}_hi": hi})
            curves.append(row)
        row = {"emotion": e}
        for m in ("vader", "readout"):
            y = np.array([getattr(g, m) for g in ser])
            sl = slope(x, y)
            lo, hi = bootstrap_slope_ci(x, y, rng, n_boot)
            nl = np.array(null[m])
            row.update({f"{m}_slope": sl, f"{m}_slope_lo": lo, f"{m}_slope_hi": hi,
                        f"{m}_null_abs_p95": float(np.quantile(np.abs(nl), 0.95)) if nl.size else float("nan"),
                        f"{m}_p_random_abs": upper_p(abs(sl), np.abs(nl))})
        slopes_rows.append(row)
    for r in range(n_random):
        ser = series(None, r)
        x = np.array([g.strength for g in ser])
        for s in strengths:
            grp = [g for g in ser if g.strength == s]
            curves.append({"emotion": f"random{r}", "strength": s, "n": len(grp),
                           "vader_mean": float(np.nanmean([g.vader for g in grp])),
                           "readout_mean": float(np.nanmean([g.readout for g in grp]))})
    summary = {
        "emotions": list(emotions), "strengths": strengths, "layer": like[0].layer,
        "positions": positions, "samples_per_prompt": samples, "n_prompts": len(prompts),
        "max_new_tokens": max_new_tokens, "temperature": temperature, "n_random": n_random,
        "n_generations": len(gens), "seconds": round(time.perf_counter() - started, 1),
        "slopes": slopes_rows,
        "null_slopes": {m: [float(v) for v in null[m]] for m in null},
    }
    return gens, curves, slopes_rows, summary


def dose_response_figure(curves: list[dict], path: str | Path, title: str = "") -> None:
    """Mean VADER compound and valence readout against strength, one line per emotion (with
    bootstrap bars) and the random directions in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(curves)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, m, label in ((axes[0], "vader", "VADER compound"), (axes[1], "readout", "valence readout")):
        for name, g in df.groupby("emotion", sort=False):
            g = g.sort_values("strength")
            if str(name).startswith("random"):
                ax.plot(g["strength"], g[f"{m}_mean"], color="0.7", lw=1, zorder=1)
                continue
            err = None
            if f"{m}_lo" in g and g[f"{m}_lo"].notna().all():
                err = [g[f"{m}_mean"] - g[f"{m}_lo"], g[f"{m}_hi"] - g[f"{m}_mean"]]
            ax.errorbar(g["strength"], g[f"{m}_mean"], yerr=err, marker="o", capsize=3, label=name, zorder=2)
        ax.set_xlabel("strength (× residual norm)")
        ax.set_ylabel(label)
        ax.axvline(0, color="0.85", lw=0.8)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "Steered generation: dose-response (grey: random directions of the same norm)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def continuation_figure(per_strength: list[dict], path: str | Path, title: str = "") -> None:
    """Own-word log-probability rise against strength, one line per emotion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(per_strength)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, g in df.groupby("emotion", sort=False):
        g = g.sort_values("strength")
        ax.plot(g["strength"], g["own_rise"], lw=1, alpha=0.7)
    mean = df.groupby("strength")[["own_rise", "mean_other_rise"]].mean()
    ax.plot(mean.index, mean["own_rise"], color="k", lw=2.5, label="mean, own word")
    ax.plot(mean.index, mean["mean_other_rise"], color="k", lw=2, ls="--", label="mean, other emotions' words")
    ax.axhline(0, color="0.85", lw=0.8)
    ax.set_xlabel("strength (× residual norm)")
    ax.set_ylabel("Δ log p(emotion word)")
    ax.legend(fontsize=8)
    ax.set_title(title or "Continuation test: the steered emotion's own word")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["ContinuationResult", "Generation", "bootstrap_mean_ci", "bootstrap_slope_ci",
           "continuation_figure", "continuation_test", "derive_seed", "dose_response",
           "dose_response_figure", "readout_scores", "render_chat", "sample_batch", "slope",
           "upper_p", "vader_scores", "word_logprobs"]
