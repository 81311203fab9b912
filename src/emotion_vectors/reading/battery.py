"""Validation battery: do the emotion vectors read emotion in text they were not built from?

Three checks, each scored against thresholds stated before any result was seen
(``config/battery/thresholds.yaml``) and against a null (docs/battery.md):

- **implicit scenarios** (``config/battery/implicit.yaml``): short situations that evoke one
  emotion without naming it. Each is scored on every emotion vector (``score.score_texts``,
  corpus z-scores); the target emotion's rank among all E, top-1 / top-3 hit rates against
  chance (1/E, 3/E) with Wilson 95% intervals, and a confusion matrix by emotion cluster;
- **intensity** (``config/battery/intensity.yaml``): one situation at rising intensity; the
  Spearman correlation of the target emotion's score with the level, per template;
- **logit-lens self-recognition**: for how many emotions the vector's top promoted tokens
  include its own word or an inflection of it (the leak filter's forms).

Two nulls, each recomputing every score on the same pooled activations:

- the **shuffled-label vectors** (the matched null, :func:`shuffled_null`): the run's vectors
  rebuilt from the same stories with the emotion labels permuted within topic
  (``vectors/shuffled.zarr``); under "the stories' activations do not depend on their label"
  the real vectors and each shuffle are exchangeable, so the p-value is an exact permutation p;
- **random unit directions** (uniform on the sphere, seeded, ``n_draws`` times): the weaker
  null, kept for comparison (any mean-difference direction may beat it).

Each check's claim (``battery.<check>``, :func:`evaluate_checks`) uses the shuffled-label null
when it is given, with Holm's correction over the checks; a null too small to reach
``alpha / n_checks`` gives no p-value and the claim says "not testable". Ties of the discrete
check values are broken by a continuous second statistic (:data:`TIEBREAK`, :func:`lex_p`), so
the p-values are exact rather than conservative (``tests/test_calibration_behaviour.py``).

Everything but :func:`run_battery` is a pure function over arrays and DataFrames.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[3]
BATTERY_DIR = PROJECT_ROOT / "config" / "battery"
EMOTIONS_FILE = PROJECT_ROOT / "config" / "emotions.txt"

#: check name -> (direction, how the threshold is given). "higher": the value must be >= the
#: threshold and above the null's upper quantile; "lower": <= and below the lower quantile.
CHECKS: dict[str, str] = {
    "implicit_top1_hit_rate": "higher",
    "implicit_top3_hit_rate": "higher",
    "implicit_median_rank": "lower",
    "implicit_cluster_hit_rate": "higher",
    "intensity_median_spearman": "higher",
    "logit_lens_self_recognition": "higher",
}


class BatteryError(ValueError):
    """Bad battery input (unknown emotion, missing rows, malformed data file)."""


# --------------------------------------------------------------------------------------------
# Data files


def _yaml(path: str | Path) -> Any:
    import yaml

    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_emotions(path: str | Path = EMOTIONS_FILE) -> list[str]:
    """The study's emotion words (one per line)."""
    return [w.strip() for w in Path(path).read_text(encoding="utf-8").splitlines() if w.strip()]


def load_implicit(path: str | Path | None = None) -> list[dict[str, str]]:
    """Implicit scenarios: ``[{id, emotion, text}]`` (ids unique)."""
    data = _yaml(path or BATTERY_DIR / "implicit.yaml")
    items = [dict(id=str(x["id"]), emotion=str(x["emotion"]), text=str(x["text"]))
             for x in data["items"]]
    ids = [x["id"] for x in items]
    if len(set(ids)) != len(ids):
        raise BatteryError("implicit item ids are not unique")
    return items


def load_intensity(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Intensity templates: ``[{id, emotion, levels: [text, ...]}]`` (level 1 = mildest)."""
    data = _yaml(path or BATTERY_DIR / "intensity.yaml")
    out = []
    for t in data["templates"]:
        levels = [str(x) for x in t["levels"]]
        if len(levels) < 2:
            raise BatteryError(f"template {t['id']!r} needs at least two levels")
        out.append({"id": str(t["id"]), "emotion": str(t["emotion"]), "levels": levels})
    return out


def load_thresholds(path: str | Path | None = None) -> dict[str, Any]:
    """The pre-stated thresholds (``config/battery/thresholds.yaml``)."""
    return _yaml(path or BATTERY_DIR / "thresholds.yaml")


def intensity_rows(templates: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per template level: ``{id: "<template>:<level>", template, emotion, level, text}``."""
    return [{"id": f"{t['id']}:{k}", "template": t["id"], "emotion": t["emotion"], "level": k,
             "text": text}
            for t in templates for k, text in enumerate(t["levels"], start=1)]


def leak_report(items: Sequence[Mapping[str, Any]], templates: Sequence[Mapping[str, Any]],
                emotions: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Screen every battery text with the leak filter against ``emotions`` (default all 171).

    Returns ``{"own": [...], "other": [...]}``: texts naming their own target emotion (must be
    empty) and texts naming some other emotion word, each ``{id, emotion, named: {word: forms}}``.
    """
    from emotion_vectors.corpus.leak import screen

    emotions = list(emotions) if emotions is not None else load_emotions()
    texts = [(x["id"], x["emotion"], x["text"]) for x in items]
    texts += [(r["id"], r["emotion"], r["text"]) for r in intensity_rows(templates)]
    own, other = [], []
    for tid, emo, text in texts:
        hits = screen(text, sorted(set(emotions) | {emo}))
        if emo in hits:
            own.append({"id": tid, "emotion": emo, "named": {emo: hits[emo]}})
        rest = {k: v for k, v in hits.items() if k != emo}
        if rest:
            other.append({"id": tid, "emotion": emo, "named": rest})
    return {"own": own, "other": other}


# --------------------------------------------------------------------------------------------
# Statistics


def wilson(successes: int, n: int) -> tuple[float, float]:
    from emotion_vectors.core.stats import wilson_interval

    return wilson_interval(int(successes), int(n))


def target_ranks(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rank (1 = highest) of each row's target column; ties with other columns count half."""
    s = np.asarray(scores, dtype=float)
    t = s[np.arange(len(s)), np.asarray(target, dtype=int)][:, None]
    greater = (s > t).sum(axis=1)
    ties = (s == t).sum(axis=1) - 1
    return 1.0 + greater + 0.5 * ties


def _implicit_many(z: np.ndarray, target: np.ndarray, cluster_of: np.ndarray) -> dict[str, np.ndarray]:
    """The implicit scores of ``m`` score matrices at once: ``z`` is ``(m, n_items, E)``; each
    value is an ``(m,)`` array. ``implicit_mean_target_z`` (the mean z-score of the items'
    targets) is the continuous tie-breaker of the permutation p-values (:func:`lex_p`)."""
    z = np.asarray(z, dtype=float)
    target = np.asarray(target, dtype=int)
    t = z[:, np.arange(z.shape[1]), target][..., None]  # (m, n, 1)
    ranks = 1.0 + (z > t).sum(axis=2) + 0.5 * ((z == t).sum(axis=2) - 1)
    top1 = np.argmax(z, axis=2)
    return {
        "implicit_top1_hit_rate": np.mean(ranks <= 1.0, axis=1),
        "implicit_top3_hit_rate": np.mean(ranks <= 3.0, axis=1),
        "implicit_median_rank": np.median(ranks, axis=1),
        "implicit_cluster_hit_rate": np.mean(cluster_of[top1] == cluster_of[target][None, :], axis=1),
        "implicit_mean_target_z": np.mean(t[..., 0], axis=1),
    }


def _implicit_core(scores: np.ndarray, target: np.ndarray, cluster_of: np.ndarray) -> dict[str, float]:
    """The implicit scores of one ``(n_items, E)`` score matrix (real or null)."""
    many = _implicit_many(np.asarray(scores, dtype=float)[None], target, cluster_of)
    return {k: float(many[k][0]) for k in ("implicit_top1_hit_rate", "implicit_top3_hit_rate",
                                            "implicit_median_rank", "implicit_cluster_hit_rate")}


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(y) == 0 or np.ptp(x) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _score_matrix(scores_df: pd.DataFrame, ids: Sequence[str], emotions: Sequence[str]) -> np.ndarray:
    """``(len(ids), E)`` z-scores of the rows with those ids (NaN rows where not scored)."""
    missing = [e for e in emotions if e not in scores_df.columns]
    if missing:
        raise BatteryError(f"scores have no column for {missing}")
    if "id" in scores_df.columns:
        indexed = scores_df.assign(id=scores_df["id"].astype(str)).set_index("id")
        absent = [i for i in ids if i not in indexed.index]
        if absent:
            raise BatteryError(f"scores have no row for ids {absent[:5]}")
        return indexed.loc[list(ids), list(emotions)].to_numpy(dtype=float)
    if len(scores_df) != len(ids):
        raise BatteryError(f"{len(scores_df)} score rows for {len(ids)} texts and no id column")
    return scores_df[list(emotions)].to_numpy(dtype=float)


def _cluster_index(emotions: Sequence[str], clusters: Mapping[str, Any] | None) -> tuple[np.ndarray, list[str]]:
    if clusters is None:
        labels = list(emotions)  # every emotion its own cluster
    else:
        missing = [e for e in emotions if e not in clusters]
        if missing:
            raise BatteryError(f"no cluster for {missing}")
        labels = [str(clusters[e]) for e in emotions]
    names = sorted(set(labels), key=lambda c: labels.index(c))
    return np.array([names.index(c) for c in labels]), names


# --------------------------------------------------------------------------------------------
# The three checks


def implicit_scenarios(scores_df: pd.DataFrame, items: Sequence[Mapping[str, Any]],
                       emotions: Sequence[str], clusters: Mapping[str, Any] | None = None,
                       *, cluster_source: str | None = None) -> dict[str, Any]:
    """Rank of each item's target emotion among all ``emotions`` on its scores.

    Args:
        scores_df: one row per item (matched by an ``id`` column equal to the item ids, else by
            order) with one z-score column per emotion (``score.score_texts``' output).
        items: ``[{id, emotion, text}]``; every target emotion must be in ``emotions``.
        emotions: the E emotions ranked (columns of ``scores_df``).
        clusters: emotion -> cluster label (e.g. the run's ``analysis/clusters.tsv`` at the
            layer, or valence sign); None: each emotion is its own cluster.

    Returns:
        ``n_items``, ``n_scored``, ``n_emotions``, ``top1`` / ``top3`` (``rate``, ``hits``,
        ``ci95`` (Wilson), ``chance``, ``times_chance``, ``binom_p`` (one-sided)),
        ``median_rank`` / ``mean_rank`` with their chance ``(E+1)/2``, per-emotion mean rank,
        per-item rows, and ``clusters`` (labels, confusion matrix of target cluster (rows) by
        top-1 cluster (columns), hit rate and its chance: the mean over items of |cluster|/E).
    """
    from scipy.stats import binomtest

    emotions = list(emotions)
    unknown = sorted({x["emotion"] for x in items} - set(emotions))
    if unknown:
        raise BatteryError(f"items target emotions not scored: {unknown}")
    ids = [str(x["id"]) for x in items]
    s = _score_matrix(scores_df, ids, emotions)
    ok = np.isfinite(s).all(axis=1)
    target = np.array([emotions.index(x["emotion"]) for x in items])
    cl, names = _cluster_index(emotions, clusters)
    s_ok, t_ok = s[ok], target[ok]
    n, e = int(ok.sum()), len(emotions)
    if n == 0:
        raise BatteryError("no implicit item was scored")
    core = _implicit_core(s_ok, t_ok, cl)
    ranks = target_ranks(s_ok, t_ok)
    top1 = np.argmax(s_ok, axis=1)
    order = np.argsort(-s_ok, axis=1)

    def hit(k: int) -> dict[str, Any]:
        hits = int(np.sum(ranks <= k))
        chance = min(k, e) / e
        return {"k": k, "hits": hits, "rate": hits / n, "ci95": list(wilson(hits, n)),
                "chance": chance, "times_chance": (hits / n) / chance,
                "binom_p": float(binomtest(hits, n, chance, alternative="greater").pvalue)}

    sizes = np.bincount(cl, minlength=len(names))
    confusion = np.zeros((len(names), len(names)), dtype=int)
    for a, b in zip(cl[t_ok], cl[top1]):
        confusion[a, b] += 1
    per_item = []
    j = 0
    for i, x in enumerate(items):
        row = {"id": ids[i], "emotion": x["emotion"], "scored": bool(ok[i])}
        if ok[i]:
            row.update(rank=float(ranks[j]), top1=emotions[top1[j]],
                       top3=[emotions[k] for k in order[j, :3]],
                       target_cluster=names[cl[target[i]]], top1_cluster=names[cl[top1[j]]])
            j += 1
        per_item.append(row)
    per_emotion = {em: float(np.mean(ranks[t_ok == k])) for k, em in enumerate(emotions)
                   if np.any(t_ok == k)}
    return {
        "n_items": len(items), "n_scored": n, "n_emotions": e,
        "top1": hit(1), "top3": hit(3),
        "median_rank": core["implicit_median_rank"], "mean_rank": float(np.mean(ranks)),
        "rank_chance": (e + 1) / 2,
        "per_emotion_mean_rank": per_emotion,
        "clusters": {"source": cluster_source or ("given" if clusters is not None else "none"),
                     "labels": names, "sizes": sizes.tolist(), "matrix": confusion.tolist(),
                     "hit_rate": core["implicit_cluster_hit_rate"],
                     "chance": float(np.mean(sizes[cl[t_ok]] / e))},
        "items": per_item,
        "scores": core,
    }


def intensity(scores_df: pd.DataFrame, templates: Sequence[Mapping[str, Any]],
              emotions: Sequence[str] | None = None) -> dict[str, Any]:
    """Spearman correlation of each template's target-emotion score with its level.

    ``scores_df`` has one row per template level, with an ``id`` column ``"<template>:<level>"``
    (``intensity_rows``; else rows in that order) and a column per target emotion.
    Returns per-template rho, the median over templates (NaN templates left out), how many are
    positive and how many are perfectly monotone.
    """
    rows = intensity_rows(templates)
    targets = sorted({t["emotion"] for t in templates})
    emos = list(emotions) if emotions is not None else targets
    unknown = sorted(set(targets) - set(emos))
    if unknown:
        raise BatteryError(f"templates target emotions not scored: {unknown}")
    s = _score_matrix(scores_df, [r["id"] for r in rows], emos)
    per = []
    for t in templates:
        idx = [i for i, r in enumerate(rows) if r["template"] == t["id"]]
        y = s[idx, emos.index(t["emotion"])]
        lv = np.arange(1, len(idx) + 1, dtype=float)
        ok = np.isfinite(y)
        rho = _spearman(lv[ok], y[ok]) if ok.sum() >= 3 else float("nan")
        per.append({"template": t["id"], "emotion": t["emotion"], "n_levels": len(idx),
                    "n_scored": int(ok.sum()), "spearman": rho, "scores": y.tolist()})
    rhos = np.array([p["spearman"] for p in per], dtype=float)
    good = rhos[np.isfinite(rhos)]
    return {
        "n_templates": len(templates),
        "median_spearman": float(np.median(good)) if good.size else float("nan"),
        "mean_spearman": float(np.mean(good)) if good.size else float("nan"),
        "n_positive": int(np.sum(good > 0)),
        "n_monotone": int(np.sum(good >= 1.0 - 1e-12)),
        "templates": per,
        "scores": {"intensity_median_spearman":
                   float(np.median(good)) if good.size else float("nan")},
    }


def _intensity_many(z: np.ndarray, groups: Sequence[tuple[np.ndarray, int]]) -> dict[str, np.ndarray]:
    """The intensity score of ``m`` score matrices at once (``z``: ``(m, n_rows, E)``; groups:
    (row indices in level order, target column) per template): the median over templates of the
    Spearman correlation of score with level (NaN templates, constant scores, left out), and its
    continuous tie-breaker ``intensity_mean_pearson`` (the mean Pearson correlation)."""
    from scipy.stats import rankdata

    z = np.asarray(z, dtype=float)
    m = z.shape[0]
    if not groups:
        nan = np.full(m, np.nan)
        return {"intensity_median_spearman": nan, "intensity_mean_pearson": nan.copy()}
    # templates of equal length in one block (m, n_templates, L), else one at a time
    blocks: dict[int, list[tuple[int, np.ndarray, int]]] = {}
    for t, (idx, col) in enumerate(groups):
        idx = np.asarray(idx, dtype=int)
        blocks.setdefault(idx.size, []).append((t, idx, col))
    rho = np.full((m, len(groups)), np.nan)
    r = np.full((m, len(groups)), np.nan)
    for length, members in blocks.items():
        ts = [t for t, _, _ in members]
        y = z[:, np.stack([idx for _, idx, _ in members]), np.array([c for _, _, c in members])[:, None]]
        lv = np.arange(length, dtype=float)
        rho[:, ts] = _corr_last(rankdata(y, axis=2), lv)
        r[:, ts] = _corr_last(y, lv)
    return {"intensity_median_spearman": _nan_reduce(np.median, np.nanmedian, rho),
            "intensity_mean_pearson": _nan_reduce(np.mean, np.nanmean, r)}


def _nan_reduce(plain: Callable, nan_aware: Callable, x: np.ndarray) -> np.ndarray:
    """``plain(x, axis=1)`` where a row has no NaN, ``nan_aware`` where it has some, NaN where all are."""
    bad = np.isnan(x)
    out = plain(np.where(bad, 0.0, x), axis=1)
    some = bad.any(axis=1)
    if some.any():
        rows = x[some]
        ok = ~np.isnan(rows).all(axis=1)
        vals = np.full(rows.shape[0], np.nan)
        if ok.any():
            vals[ok] = nan_aware(rows[ok], axis=1)
        out[some] = vals
    return out


def _corr_last(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis of ``y`` with ``x`` (NaN for a constant slice)."""
    yc = y - y.mean(axis=-1, keepdims=True)
    xc = x - x.mean()
    den = np.sqrt((yc * yc).sum(axis=-1) * (xc * xc).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (yc @ xc) / den
    out[~(np.ptp(y, axis=-1) > 0) | ~np.isfinite(out)] = np.nan
    return np.clip(out, -1.0, 1.0)


def _intensity_core(scores: np.ndarray, groups: Sequence[tuple[np.ndarray, int]]) -> float:
    """Median Spearman over templates; ``groups``: (row indices in level order, target column)."""
    return float(_intensity_many(np.asarray(scores, dtype=float)[None], groups)["intensity_median_spearman"][0])


@lru_cache(maxsize=1 << 16)
def token_names_emotion(token: str, emotion: str) -> bool:
    """Whether a (decoded) token is ``emotion``'s own word or a form of it.

    The token's text (``▁``/``Ġ`` read as spaces, stripped, lower case) counts when it equals a
    logit-lens form of the word (the word; a content part of a phrase or compound) or when the
    leak filter finds a form of the emotion in it (inflections, participle verbs, irregulars).
    """
    from emotion_vectors.analysis.logit_lens import word_forms as lens_forms
    from emotion_vectors.corpus.leak import find_leaks
    from emotion_vectors.extraction.lens import normalise_token

    t = normalise_token(token)
    if not t:
        return False
    return t in lens_forms(emotion) or bool(find_leaks(t, emotion))


def _top_tokens(lens_tokens: Any, emotions: Sequence[str], top_k: int,
                layer: int | None) -> dict[str, list[str]]:
    if isinstance(lens_tokens, Mapping):
        return {e: [str(t) for t in lens_tokens.get(e, [])][:top_k] for e in emotions}
    df = lens_tokens if isinstance(lens_tokens, pd.DataFrame) else pd.read_csv(
        lens_tokens, sep="\t", keep_default_na=False)
    if "direction" in df.columns:
        df = df[df["direction"] == "promoted"]
    if layer is not None and "layer" in df.columns:
        df = df[df["layer"].astype(int) == int(layer)]
    if "rank" in df.columns:
        df = df.sort_values(["emotion", "rank"])
    col = "text" if "text" in df.columns else "token"
    out = {}
    for e in emotions:
        sub = df[df["emotion"] == e]
        out[e] = [str(x) for x in sub[col].tolist()][:top_k]
    return out


def logit_lens_self_recognition(lens_tokens: Any, emotions: Sequence[str], *, top_k: int = 20,
                                layer: int | None = None) -> dict[str, Any]:
    """For how many ``emotions`` the vector's top ``top_k`` promoted tokens include its own word.

    ``lens_tokens``: the run's ``analysis/logit_lens_tokens.tsv`` (path or DataFrame; promoted
    rows at ``layer`` if given) or a mapping emotion -> top tokens in rank order. Emotions with
    no tokens listed count as not recognised and are listed in ``no_tokens``.
    """
    top = _top_tokens(lens_tokens, emotions, top_k, layer)
    found = {e: [t for t in toks if token_names_emotion(t, e)] for e, toks in top.items()}
    n = len(emotions)
    hits = sorted(e for e, f in found.items() if f)
    return {
        "n_emotions": n, "top_k": top_k, "layer": layer,
        "n_recognised": len(hits), "rate": len(hits) / n if n else float("nan"),
        "ci95": list(wilson(len(hits), n)),
        "recognised": {e: found[e] for e in hits},
        "no_tokens": sorted(e for e, toks in top.items() if not toks),
        "scores": {"logit_lens_self_recognition": len(hits) / n if n else float("nan")},
    }


# --------------------------------------------------------------------------------------------
# The random-direction null


def zscore_projections(x: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """``score.score_texts``' corpus z-scores: ``(x − mean x)·u / sd(x·u)`` per direction."""
    p = np.asarray(x, dtype=np.float64) @ np.asarray(directions, dtype=np.float64).T
    sd = p.std(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, (p - p.mean(axis=0)) / np.where(sd > 0, sd, 1.0), np.nan)


def random_unit_directions(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """``n`` directions uniform on the unit sphere in R^d (normalised standard normals)."""
    v = rng.standard_normal((n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def null_summary(values: np.ndarray, direction: str, quantile: float = 0.95) -> dict[str, Any]:
    """The null's bound in the check's direction (upper ``quantile`` for "higher", lower
    ``1 − quantile`` for "lower"), mean, sd and count."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"n": 0, "bound": float("nan"), "mean": float("nan"), "sd": float("nan")}
    q = quantile if direction == "higher" else 1.0 - quantile
    return {"n": int(v.size), "quantile": q, "bound": float(np.quantile(v, q)),
            "mean": float(v.mean()), "sd": float(v.std())}


#: The continuous statistic that breaks ties of each check's (discrete) value in the
#: permutation p-values (:func:`lex_p`); higher is better for all of them. The logit-lens check
#: has none: its ties count against it (a conservative p).
TIEBREAK: dict[str, str | None] = {
    "implicit_top1_hit_rate": "implicit_mean_target_z",
    "implicit_top3_hit_rate": "implicit_mean_target_z",
    "implicit_median_rank": "implicit_mean_target_z",
    "implicit_cluster_hit_rate": "implicit_mean_target_z",
    "intensity_median_spearman": "intensity_mean_pearson",
    "logit_lens_self_recognition": None,
}


def lex_p(observed: float, null: np.ndarray, direction: str, observed_tiebreak: float | None = None,
          null_tiebreak: np.ndarray | None = None) -> float:
    """One-sided Monte-Carlo p ``(1 + #{null at least as good}) / (1 + n)`` of a check's value,
    with ties broken by a continuous second statistic.

    "At least as good" is lexicographic: a null draw counts when its value is better than the
    observed one (higher, or lower for ``direction="lower"``), or equal with a tie-breaker at
    least as high (tie-breakers: higher is better). The pair is a statistic like any other, so
    the p is valid whenever the observed data and the null draws are exchangeable; breaking the
    ties of a discrete value (hit rates move in steps of 1/n) makes it exact instead of
    conservative. Without a tie-breaker, ties count as hits (``claims.mc_p``). Non-finite null
    draws are dropped; NaN when none is left or the observed value is not finite.
    """
    from emotion_vectors.core.claims import mc_p

    sign = 1.0 if direction == "higher" else -1.0
    v = sign * np.asarray(null, dtype=float)
    obs = sign * float(observed)
    if observed_tiebreak is None or null_tiebreak is None:
        return mc_p(obs, v, alternative="greater")
    tb = np.asarray(null_tiebreak, dtype=float)
    keep = np.isfinite(v)
    v, tb = v[keep], tb[keep]
    if v.size == 0 or not np.isfinite(obs):
        return float("nan")
    otb = float(observed_tiebreak)
    hits = (v > obs) | ((v == obs) & ~(tb < otb))
    return float((1 + np.sum(hits)) / (1 + v.size))


def null_p(observed: float, values: np.ndarray, direction: str, observed_tiebreak: float | None = None,
           null_tiebreak: np.ndarray | None = None) -> float:
    """:func:`lex_p` (kept under its old name)."""
    return lex_p(observed, values, direction, observed_tiebreak, null_tiebreak)


def _groups(templates: Sequence[Mapping[str, Any]], emotions: Sequence[str]) -> list[tuple[np.ndarray, int]]:
    rows = intensity_rows(templates)
    out = []
    for t in templates:
        idx = np.array([i for i, r in enumerate(rows) if r["template"] == t["id"]])
        out.append((idx, list(emotions).index(t["emotion"])))
    return out


def check_values(x_implicit: np.ndarray | None, items: Sequence[Mapping[str, Any]],
                 x_intensity: np.ndarray | None, templates: Sequence[Mapping[str, Any]],
                 emotions: Sequence[str], clusters: Mapping[str, Any] | None,
                 directions: np.ndarray) -> dict[str, np.ndarray]:
    """Every implicit and intensity score (and their tie-breakers) for ``m`` sets of directions
    at once: ``directions`` is ``(m, E, d)``, set ``j``'s row ``i`` standing for emotion ``i``;
    the texts' pooled activations are z-scored on each direction as ``score.score_texts`` does
    (:func:`zscore_projections`). Returns ``{name: (m,) array}``."""
    emotions = list(emotions)
    dirs = np.asarray(directions, dtype=np.float64)
    m, e, d = dirs.shape
    flat = dirs.reshape(m * e, d)
    out: dict[str, np.ndarray] = {}
    if x_implicit is not None and items:
        cl, _ = _cluster_index(emotions, clusters)
        target = np.array([emotions.index(x["emotion"]) for x in items])
        z = zscore_projections(x_implicit, flat).reshape(len(x_implicit), m, e).transpose(1, 0, 2)
        out.update(_implicit_many(z, target, cl))
    if x_intensity is not None and templates:
        z = zscore_projections(x_intensity, flat).reshape(len(x_intensity), m, e).transpose(1, 0, 2)
        out.update(_intensity_many(z, _groups(templates, emotions)))
    return out


def random_direction_null(
    x_implicit: np.ndarray | None,
    items: Sequence[Mapping[str, Any]],
    x_intensity: np.ndarray | None,
    templates: Sequence[Mapping[str, Any]],
    emotions: Sequence[str],
    clusters: Mapping[str, Any] | None = None,
    *,
    n_draws: int = 1000,
    seed: int = 0,
    lens_fn: Callable[[np.ndarray], list[list[str]]] | None = None,
    n_draws_lens: int = 20,
    lens_top_k: int = 20,
    quantile: float = 0.95,
    chunk: int = 50,
) -> dict[str, Any]:
    """Every battery score computed with random unit directions in place of the emotion vectors
    (the weaker null: it tests "no better than directions uniform on the sphere", which any
    mean-difference direction of the activations may beat; :func:`shuffled_null` is the matched one).

    Each draw takes E directions uniform on the sphere (``numpy.random.default_rng`` seeded by
    ``steering.evaluate.derive_seed("battery-null", seed)``; lens draws by ``"battery-null-lens"``),
    direction i standing for emotion i, and recomputes the scores on the same pooled
    activations: ``x_implicit`` ``(n_items, d)`` in item order, ``x_intensity``
    ``(n_levels, d)`` in ``intensity_rows`` order, z-scored over each corpus as
    ``score_texts`` does. ``lens_fn`` maps ``(m, d)`` unit directions to each one's top promoted
    token texts; without it the lens null is not computed.

    Returns ``{"n_draws", "seed", "values": {check: (n_draws,) array}, "tiebreak": {name:
    (n_draws,) array}, "summary": {check: null_summary}}``.
    """
    from emotion_vectors.steering.evaluate import derive_seed

    emotions = list(emotions)
    e = len(emotions)
    collected: dict[str, list[np.ndarray]] = {}
    d = None
    for x in (x_implicit, x_intensity):
        if x is not None:
            d = np.asarray(x).shape[1]
    _cluster_index(emotions, clusters)  # checks every emotion has a cluster
    if d is not None:
        rng = np.random.default_rng(derive_seed("battery-null", seed))
        done = 0
        while done < n_draws:
            m = min(chunk, n_draws - done)
            dirs = random_unit_directions(rng, m * e, d).reshape(m, e, d)
            for name, v in check_values(x_implicit, items, x_intensity, templates, emotions, clusters, dirs).items():
                collected.setdefault(name, []).append(v)
            done += m
    if lens_fn is not None and n_draws_lens > 0:
        if d is None:
            raise BatteryError("the lens null needs the activations' width (give activations)")
        rng = np.random.default_rng(derive_seed("battery-null-lens", seed))
        lens = []
        for _ in range(n_draws_lens):
            top = lens_fn(random_unit_directions(rng, e, d))
            res = logit_lens_self_recognition(
                {em: top[i] for i, em in enumerate(emotions)}, emotions, top_k=lens_top_k)
            lens.append(res["rate"])
        collected["logit_lens_self_recognition"] = [np.asarray(lens, dtype=float)]
    arrays = {k: np.concatenate(v).astype(float) for k, v in collected.items()}
    values = {k: v for k, v in arrays.items() if k in CHECKS}
    return {
        "n_draws": int(n_draws), "n_draws_lens": int(n_draws_lens if lens_fn else 0),
        "seed": int(seed), "quantile": quantile,
        "values": values,
        "tiebreak": {k: v for k, v in arrays.items() if k not in CHECKS},
        "summary": {k: null_summary(v, CHECKS[k], quantile) for k, v in values.items()},
    }


def shuffled_null(
    x_implicit: np.ndarray | None,
    items: Sequence[Mapping[str, Any]],
    x_intensity: np.ndarray | None,
    templates: Sequence[Mapping[str, Any]],
    emotions: Sequence[str],
    clusters: Mapping[str, Any] | None,
    real_units: np.ndarray,
    shuffled_units: np.ndarray,
    *,
    lens_fn: Callable[[np.ndarray], list[list[str]]] | None = None,
    lens_top_k: int = 20,
    quantile: float = 0.95,
) -> dict[str, Any]:
    """The matched null: every battery score with the shuffled-label vectors in place of the
    emotion vectors, and the observed scores computed the same way.

    ``real_units`` ``(E, d)``: the run's unit vectors (emotion order); ``shuffled_units``
    ``(K, E, d)``: shuffle ``k``'s pseudo vector of each emotion (``vectors.build.shuffled_sets``),
    built from the same stories with the emotion labels permuted within topic. Under the null
    "the stories' activations do not depend on their emotion label", the real set and each
    shuffled set are exchangeable, so ``lex_p(observed, null)`` is an exact permutation p-value
    (smallest possible ``1 / (1 + K)``). ``lens_fn`` (as in :func:`random_direction_null`) gives
    the lens check, observed and null, from the same function.

    Returns ``{"n_shuffles", "observed": {name: float}, "values": {check: (K,)}, "tiebreak":
    {name: (K,)}, "summary": {check: null_summary}}``.
    """
    real = np.asarray(real_units, dtype=np.float64)[None]
    shuf = np.asarray(shuffled_units, dtype=np.float64)
    if shuf.ndim != 3 or shuf.shape[1:] != real.shape[1:]:
        raise BatteryError(f"shuffled vectors of shape {shuf.shape} do not match the real {real.shape[1:]} (K, E, d)")
    both = check_values(x_implicit, items, x_intensity, templates, emotions, clusters,
                        np.concatenate([real, shuf]))
    if lens_fn is not None:
        rates = []
        for dirs in np.concatenate([real, shuf]):
            top = lens_fn(dirs)
            rates.append(logit_lens_self_recognition({em: top[i] for i, em in enumerate(emotions)}, emotions,
                                                     top_k=lens_top_k)["rate"])
        both["logit_lens_self_recognition"] = np.asarray(rates, dtype=float)
    observed = {k: float(v[0]) for k, v in both.items()}
    values = {k: v[1:] for k, v in both.items() if k in CHECKS}
    return {
        "n_shuffles": int(shuf.shape[0]),
        "observed": observed,
        "values": values,
        "tiebreak": {k: v[1:] for k, v in both.items() if k not in CHECKS},
        "summary": {k: null_summary(v, CHECKS[k], quantile) for k, v in values.items()},
    }


def shuffled_units_from_store(shuffled: Any, emotions: Sequence[str], layer: int, kind: str) -> np.ndarray:
    """``(K, E, d)`` unit pseudo vectors of a shuffled-label store (``vectors.build.shuffled_sets``) at
    ``layer``, in the order of ``emotions`` (the real store's), of vector ``kind`` (e.g.
    ``denoised_unit``). Errors name what does not match."""
    from emotion_vectors.vectors.store_layout import Store, read_store
    from emotion_vectors.vectors.build import shuffled_name, shuffled_sets

    st = shuffled if isinstance(shuffled, Store) else read_store(shuffled)
    sets = shuffled_sets(st)
    source = list(st.attrs.get("source_emotions") or [])
    missing = [e for e in emotions if e not in source]
    if missing:
        raise BatteryError(f"the shuffled-label store has no pseudo vectors for {missing}")
    if layer not in st.layers:
        raise BatteryError(f"the shuffled-label store has no layer {layer} (it has {st.layers})")
    if kind not in [f"{k}_unit" for k in st.kinds] and kind not in st.kinds:
        raise BatteryError(f"the shuffled-label store has no vector kind {kind!r} (kinds {st.kinds})")
    arr = np.asarray(st.array(kind)[:, st.layers.index(layer), :], dtype=np.float64)
    index = {name: i for i, name in enumerate(st.emotions)}
    out = np.stack([arr[[index[shuffled_name(e, k)] for e in emotions]] for k in range(len(sets))])
    norms = np.linalg.norm(out, axis=2, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


# --------------------------------------------------------------------------------------------
# Thresholds


def observed_scores(results: Mapping[str, Any]) -> dict[str, float]:
    """The battery scores in ``results`` (keys of ``CHECKS`` that were computed)."""
    out: dict[str, float] = {}
    for part in ("implicit", "intensity", "lens"):
        if results.get(part):
            out.update(results[part]["scores"])
    return out


def resolve_threshold(spec: Mapping[str, Any], check: str, results: Mapping[str, Any]) -> float:
    """A threshold spec as a number: ``min`` / ``max``, ``min_times_chance`` (× the check's
    chance level) or ``max_fraction_of_E``."""
    e = int(results.get("n_emotions") or results["implicit"]["n_emotions"])
    spec = dict(spec)
    if "min" in spec:
        return float(spec["min"])
    if "max" in spec:
        return float(spec["max"])
    if "max_fraction_of_E" in spec:
        return float(spec["max_fraction_of_E"]) * e
    if "min_times_chance" in spec:
        imp = results["implicit"]
        chance = {"implicit_top1_hit_rate": imp["top1"]["chance"],
                  "implicit_top3_hit_rate": imp["top3"]["chance"],
                  "implicit_cluster_hit_rate": imp["clusters"]["chance"]}.get(check)
        if chance is None:
            raise BatteryError(f"{check}: no chance level for min_times_chance")
        return float(spec["min_times_chance"]) * chance
    raise BatteryError(f"{check}: threshold spec {dict(spec)} not understood")


#: What each check claims when it comes out as an effect (claim ids ``battery.<check>``).
CLAIM_TEXT: dict[str, str] = {
    "implicit_top1_hit_rate": "the emotion vectors rank the target emotion first in hand-written scenarios that never name it",
    "implicit_top3_hit_rate": "the emotion vectors rank the target emotion in the top 3 in hand-written scenarios that never name it",
    "implicit_median_rank": "the emotion vectors rank the target emotion high (median rank) in hand-written scenarios that never name it",
    "implicit_cluster_hit_rate": "the emotion vectors' top emotion falls in the target's cluster in hand-written scenarios",
    "intensity_median_spearman": "the target emotion's score rises with the intensity of the same situation",
    "logit_lens_self_recognition": "the emotion vectors promote their own emotion word through the logit lens",
}


def evaluate(results: Mapping[str, Any], thresholds: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per check in ``thresholds["checks"]`` (:func:`evaluate_checks` without the claims)."""
    return evaluate_checks(results, thresholds)[0]


def evaluate_checks(results: Mapping[str, Any], thresholds: Mapping[str, Any], *,
                    alpha: float | None = None) -> tuple[list[dict[str, Any]], list[Any]]:
    """One row per check in ``thresholds["checks"]``, and the claims ``battery.<check>``.

    Each row: ``check``, ``direction`` (higher/lower is better), ``value``, ``threshold``,
    ``meets_threshold``; the random-direction null (the weaker one): ``null_p95`` (its bound in
    the check's direction: 95th percentile, or 5th for the median rank; None when not computed),
    ``null_mean``, ``null_p`` (:func:`lex_p`) and ``beats_null``; then the test the claim uses:
    ``null_used`` (the shuffled-label vectors when ``results["shuffled"]`` holds them, else the
    random directions, and then the claim says so), ``n_null``, ``p`` (that null's :func:`lex_p`;
    None when the null is too small: its smallest p cannot go below ``alpha / n_checks``),
    ``p_holm`` (Holm over the checks with a p), ``verdict`` (:mod:`emotion_vectors.core.claims`) and
    ``passed``: the value meets its pre-stated threshold **and** the Holm-corrected test finds an
    effect; False when either fails, None when the threshold is met but the test cannot tell
    (no value, no null, or a null too small), so that a check never passes by default.
    """
    from emotion_vectors.core.claims import ALPHA, binomial_interval, family_claims, make_claim

    alpha = ALPHA if alpha is None else float(alpha)
    obs = observed_scores(results)
    rnd = results.get("null") or {}
    null, values, r_tb = rnd.get("summary", {}), rnd.get("values", {}), rnd.get("tiebreak", {})
    obs_tb = dict(results.get("tiebreak_observed") or {})
    shuf = results.get("shuffled") or None
    checks = dict(thresholds.get("checks") or {})
    for check in checks:
        if check not in CHECKS:
            raise BatteryError(f"unknown check {check!r}; known: {sorted(CHECKS)}")
    n_checks = len(checks)
    rows, claims = [], []
    for check, spec in checks.items():
        direction = CHECKS[check]
        value = obs.get(check)
        value = None if value is None or not np.isfinite(value) else float(value)
        try:
            thr = resolve_threshold(spec, check, results)
        except (KeyError, TypeError):
            thr = None
        meets = None
        if value is not None and thr is not None:
            meets = bool(value >= thr if direction == "higher" else value <= thr)
        ns = null.get(check)
        bound = ns["bound"] if ns and ns.get("n") else None
        beats = p_random = None
        tb = TIEBREAK[check]
        if bound is not None and value is not None:
            beats = bool(value > bound if direction == "higher" else value < bound)
            if check in values:
                p_random = lex_p(value, values[check], direction, obs_tb.get(tb) if tb else None,
                                 r_tb.get(tb) if tb else None)
        # the test the claim uses: shuffled-label vectors if given, else the random directions
        if shuf and check in shuf.get("values", {}):
            sv = np.asarray(shuf["values"][check], dtype=float)
            so = shuf["observed"].get(check)
            p_test = (lex_p(so, sv, direction, shuf["observed"].get(tb) if tb else None,
                            shuf["tiebreak"].get(tb) if tb else None) if so is not None else None)
            n_null = int(np.isfinite(sv).sum())
            null_used = f"shuffled-label vectors ({shuf.get('n_shuffles', len(sv))} shuffles within topic)"
            null_text = ("the stories' activations do not depend on their emotion label: the run's vectors "
                         "are exchangeable with vectors built from the same stories with the labels permuted "
                         "within topic")
            note = ""
        elif check in values:
            sv = np.asarray(values[check], dtype=float)
            p_test, n_null = p_random, int(np.isfinite(sv).sum())
            null_used = f"random unit directions ({n_null} draws; the weaker null)"
            null_text = ("the emotion vectors read these texts no better than directions uniform on the "
                         "sphere (a weak null: any mean-difference direction may beat it)")
            note = "no shuffled-label vectors given: tested against random directions only (weaker null)"
        else:
            p_test, n_null, null_used, null_text = None, None, "none", "no null computed"
            note = "no null computed"
        test = (f"one-sided Monte-Carlo p of {check} ({'higher' if direction == 'higher' else 'lower'} is "
                f"better) against the null draws" + (f", ties broken by {tb}" if tb else ", ties counted against"))
        interval, interval_of = _check_interval(check, results, binomial_interval)
        claim = make_claim(
            f"battery.{check}", "battery", CLAIM_TEXT[check], test=test, null=null_text,
            statistic=value, p=p_test if p_test is not None and np.isfinite(p_test) else None,
            n_null=n_null, family=n_checks, interval=interval, interval_of=interval_of, alpha=alpha,
            note=note, extra={"threshold": thr, "meets_threshold": meets, "null_used": null_used,
                              "random_direction_p": p_random, "random_direction_p95": bound})
        claims.append(claim)
        rows.append({"check": check, "direction": direction, "value": value, "threshold": thr,
                     "meets_threshold": meets, "null_p95": bound,
                     "null_mean": ns["mean"] if ns and ns.get("n") else None,
                     "null_p": p_random, "beats_null": beats, "null_used": null_used, "n_null": n_null})
    claims = family_claims(claims, method="holm")
    for row, c in zip(rows, claims):
        row.update(p=c.p, p_holm=c.p_adjusted, verdict=c.verdict)
        if row["meets_threshold"] is False or c.verdict == "no effect":
            row["passed"] = False
        elif row["meets_threshold"] and c.verdict == "effect":
            row["passed"] = True
        else:
            row["passed"] = None
        c.extra["passed"] = row["passed"]
    return rows, claims


def _check_interval(check: str, results: Mapping[str, Any], binomial_interval: Callable) -> tuple[Any, str]:
    """The Clopper-Pearson 95% interval of a rate check (None for the median rank and the
    intensity correlation)."""
    imp = results.get("implicit") or {}
    if check in ("implicit_top1_hit_rate", "implicit_top3_hit_rate") and imp.get("top1"):
        part = imp["top1" if check.endswith("top1_hit_rate") else "top3"]
        n = int(imp.get("n_scored", 0))
        if "hits" in part and n:
            return list(binomial_interval(int(part["hits"]), n)), f"Clopper-Pearson 95% interval of the hit rate ({part['hits']}/{n} items)"
    if check == "implicit_cluster_hit_rate" and (imp.get("clusters") or {}).get("hit_rate") is not None \
            and imp.get("n_scored"):
        n = int(imp["n_scored"])
        k = int(round(imp["clusters"]["hit_rate"] * n))
        return list(binomial_interval(k, n)), f"Clopper-Pearson 95% interval of the cluster hit rate ({k}/{n} items)"
    lens = results.get("lens") or {}
    if check == "logit_lens_self_recognition" and lens.get("n_emotions"):
        k, n = int(lens["n_recognised"]), int(lens["n_emotions"])
        return list(binomial_interval(k, n)), f"Clopper-Pearson 95% interval of the share recognised ({k}/{n} emotions)"
    return None, ""


# --------------------------------------------------------------------------------------------
# Clusters


def clusters_from_tsv(path: str | Path | pd.DataFrame, layer: int, cut: str = "fixed") -> dict[str, str]:
    """emotion -> cluster at ``layer`` from the run's ``analysis/clusters.tsv`` (``cut`` rows
    when the table has a ``cut`` column: ``fixed`` = the config's k)."""
    df = path if isinstance(path, pd.DataFrame) else pd.read_csv(path, sep="\t")
    df = df[df["layer"].astype(int) == int(layer)]
    if "cut" in df.columns:
        df = df[df["cut"] == cut]
    if df.empty:
        raise BatteryError(f"no clusters at layer {layer} (cut {cut})")
    return {str(r.emotion): str(r.cluster) for r in df.itertuples()}


def valence_clusters(store: Any, layer: int, kind: str = "denoised_unit") -> dict[str, str]:
    """emotion -> ``pleasant`` / ``unpleasant`` by the sign of its vector on the store's
    valence direction (``readout.store_valence_direction``)."""
    from emotion_vectors.steering.readout import store_valence_direction
    from emotion_vectors.vectors.store_layout import Store, read_store

    st = store if isinstance(store, Store) else read_store(store)
    kind = kind if kind in [f"{k}_unit" for k in st.kinds] else f"{st.kinds[0]}_unit"
    li = st.layers.index(layer)
    units = np.asarray(st.array(kind)[:, li, :], dtype=np.float64)
    v = store_valence_direction(st, layer, kind=kind).direction
    return {e: ("pleasant" if s >= 0 else "unpleasant") for e, s in zip(st.emotions, units @ v)}


# --------------------------------------------------------------------------------------------
# Running it on a store


def _pooled(reader: Any, texts: Sequence[str], layer: int, pool_start: int, batch_size: int) -> np.ndarray:
    """``(n, d)`` pooled activations in input order (NaN rows for texts too short)."""
    from emotion_vectors.extraction.reading import gather

    return gather(reader, texts, layer=layer, pool_start=pool_start, batch_size=batch_size)[0]


def _lens_fn(reader: Any, scale: float, top_k: int) -> Callable[[np.ndarray], list[list[str]]]:
    return lambda directions: reader.top_tokens(directions, scale, top_k)


def run_battery(
    store: Any,
    model: Any = None,
    tokenizer: Any = None,
    *,
    layer: int | None = None,
    items: Sequence[Mapping[str, Any]] | None = None,
    templates: Sequence[Mapping[str, Any]] | None = None,
    thresholds: Mapping[str, Any] | None = None,
    clusters: Mapping[str, Any] | str | Path | None = None,
    lens_tokens: Any = None,
    pool: str = "from:1",
    n_draws: int | None = None,
    n_draws_lens: int | None = None,
    seed: int | None = None,
    batch_size: int = 16,
    kind: str | None = None,
    reader: Any = None,
    shuffled: Any = None,
) -> dict[str, Any]:
    """Score the battery's texts on ``store`` and run every check.

    Texts are scored with ``score.score_texts`` (corpus baseline, the implicit items and the
    intensity levels as two corpora); their pooled activations are read once more
    (``extract.extract_pooled``, same layer and pool) for the random-direction null, and the
    scores recomputed from them must match ``score_texts`` (``consistency_max_abs``).
    Items and templates whose emotion is not in the store are left out (listed in
    ``dropped``). ``clusters``: a mapping, a ``clusters.tsv`` path, or None for valence sign.
    ``lens_tokens``: the run's ``logit_lens_tokens.tsv`` (or None: the lens is computed here).
    The model is the store's subject model unless given (``model`` and ``tokenizer``, or a
    ``reader`` from ``emotion_vectors.extraction.reading``, e.g. the run's model server).
    ``shuffled``: the run's shuffled-label store (``vectors/shuffled.zarr``; path or ``Store``):
    the matched null of every check's claim (:func:`shuffled_null`); without it the claims are
    tested against the random directions only, and say so.

    Returns ``{layer, emotions, n_emotions, implicit, intensity, lens, null (random directions),
    shuffled (the matched null), tiebreak_observed, checks (evaluate_checks rows), claims (dicts,
    ids ``battery.<check>``), leaks, scoring, dropped, thresholds}``.
    """
    from emotion_vectors.reading.score import default_layer, parse_pool
    from emotion_vectors.vectors.store_layout import Store, read_store

    st = store if isinstance(store, Store) else read_store(store)
    layer = default_layer(st) if layer is None else int(layer)
    emotions = list(st.emotions)
    thresholds = dict(thresholds) if thresholds is not None else load_thresholds()
    nconf = thresholds.get("null") or {}
    n_draws = int(nconf.get("n_draws", 1000) if n_draws is None else n_draws)
    n_draws_lens = int(nconf.get("n_draws_lens", 20) if n_draws_lens is None else n_draws_lens)
    seed = int(nconf.get("seed", 0) if seed is None else seed)
    quantile = float(nconf.get("quantile", 0.95))
    top_k = int(thresholds.get("lens_top_k", 20))
    all_items = list(items) if items is not None else load_implicit()
    all_templates = list(templates) if templates is not None else load_intensity()
    items = [x for x in all_items if x["emotion"] in emotions]
    templates = [t for t in all_templates if t["emotion"] in emotions]
    dropped = {"items": [x["id"] for x in all_items if x["emotion"] not in emotions],
               "templates": [t["id"] for t in all_templates if t["emotion"] not in emotions]}
    reader = _battery_reader(st, reader, model, tokenizer)

    if isinstance(clusters, (str, Path)):
        cluster_map, source = clusters_from_tsv(clusters, layer), f"clusters.tsv ({clusters})"
    elif clusters is not None:
        cluster_map, source = dict(clusters), "given"
    else:
        cluster_map, source = valence_clusters(st, layer), "valence sign"

    pool_start = parse_pool(pool)
    res: dict[str, Any] = {"layer": layer, "emotions": emotions, "n_emotions": len(emotions),
                           "dropped": dropped, "scoring": {}, "pool": pool}
    units_kind, x_imp, x_int, units = _score_battery_texts(
        st, reader, res, items, templates, cluster_map, source, layer=layer, pool=pool, pool_start=pool_start,
        kind=kind, batch_size=batch_size)
    li = st.layers.index(layer)
    rn = st.residual_norm
    scale = float(rn[li]) if rn is not None else float("nan")
    if not np.isfinite(scale):
        xs = [x for x in (x_imp, x_int) if x is not None]
        scale = float(np.mean(np.linalg.norm(np.vstack(xs), axis=1)))
    if lens_tokens is not None:
        res["lens"] = logit_lens_self_recognition(lens_tokens, emotions, top_k=top_k, layer=layer)
        res["lens"]["source"] = str(lens_tokens) if isinstance(lens_tokens, (str, Path)) else "given"
    else:
        unit = units / np.linalg.norm(units, axis=1, keepdims=True)
        tops = dict(zip(emotions, reader.top_tokens(unit, scale, top_k)))
        res["lens"] = logit_lens_self_recognition(tops, emotions, top_k=top_k, layer=layer)
        res["lens"]["source"] = "computed"
    res["lens"]["scale"] = scale

    lens_fn = _lens_fn(reader, scale, top_k)
    null = random_direction_null(
        x_imp, items, x_int, templates, emotions, cluster_map, n_draws=n_draws, seed=seed,
        lens_fn=lens_fn, n_draws_lens=n_draws_lens,
        lens_top_k=top_k, quantile=quantile)
    res["null"] = null
    real_units = units / np.linalg.norm(units, axis=1, keepdims=True)
    res["tiebreak_observed"] = {k: float(v[0]) for k, v in check_values(
        x_imp, items, x_int, templates, emotions, cluster_map, real_units[None]).items() if k not in CHECKS}
    if shuffled is not None:
        shuf_units = shuffled_units_from_store(shuffled, emotions, layer, units_kind)
        res["shuffled"] = shuffled_null(x_imp, items, x_int, templates, emotions, cluster_map, real_units,
                                        shuf_units, lens_fn=lens_fn, lens_top_k=top_k, quantile=quantile)
        res["shuffled"]["source"] = str(shuffled) if isinstance(shuffled, (str, Path)) else "given"
    rows, claims = evaluate_checks(res, thresholds)
    res["checks"] = rows
    res["claims"] = [c.to_dict() for c in claims]
    res["leaks"] = leak_report(items, templates)
    res["thresholds"] = thresholds
    return res


def _battery_reader(st: Any, reader: Any, model: Any, tokenizer: Any) -> Any:
    """The reader given, else one on the model given, else on the store's subject loaded here."""
    if reader is None:
        from emotion_vectors.extraction.reading import LocalReader
        from emotion_vectors.reading.score import load_subject

        if model is None or tokenizer is None:
            lm = load_subject(st)
            model, tokenizer = lm.model, lm.tokenizer
        reader = LocalReader(model, tokenizer)
    return reader


def _score_battery_texts(st: Any, reader: Any, res: dict[str, Any], items: list[Mapping[str, Any]],
                         templates: list[Mapping[str, Any]], cluster_map: Mapping[str, str], source: str, *,
                         layer: int, pool: str, pool_start: int, kind: str | None,
                         batch_size: int) -> tuple[str, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """The implicit items and the intensity levels scored (``score.score_texts``, two corpora)
    and their checks added to ``res`` (``scoring``, ``implicit``, ``intensity``,
    ``consistency_max_abs``); returns the unit-vector kind scored, the pooled activations of
    the items and of the levels (read once more, for the nulls) and the unit vectors at ``layer``."""
    from emotion_vectors.reading.score import score_texts

    emotions = res["emotions"]
    kw = dict(reader=reader, layer=layer, pool=pool, kind=kind,
              batch_size=batch_size, keep_text=False)
    units_kind = None
    x_imp = x_int = None
    consistency = []
    if items:
        df = score_texts(st, [x["text"] for x in items], ids=[x["id"] for x in items], **kw)
        res["scoring"]["implicit"] = {k: df.attrs["scoring"][k] for k in
                                      ("vector_kind", "n_scored", "seconds")}
        units_kind = df.attrs["scoring"]["vector_kind"]
        res["implicit"] = implicit_scenarios(df, items, emotions, cluster_map, cluster_source=source)
        x_imp = _pooled(reader, [x["text"] for x in items], layer, pool_start, batch_size)
        consistency.append((x_imp, df[emotions].to_numpy(dtype=float)))
    if templates:
        rows = intensity_rows(templates)
        df = score_texts(st, [r["text"] for r in rows], ids=[r["id"] for r in rows], **kw)
        res["scoring"]["intensity"] = {k: df.attrs["scoring"][k] for k in
                                       ("vector_kind", "n_scored", "seconds")}
        units_kind = df.attrs["scoring"]["vector_kind"]
        res["intensity"] = intensity(df, templates, emotions)
        x_int = _pooled(reader, [r["text"] for r in rows], layer, pool_start, batch_size)
        consistency.append((x_int, df[emotions].to_numpy(dtype=float)))
    li = st.layers.index(layer)
    units_kind = units_kind or f"{_default_kind(st)}_unit"
    units = np.asarray(st.array(units_kind)[:, li, :], dtype=np.float64)
    diffs = [float(np.nanmax(np.abs(zscore_projections(x[np.isfinite(x).all(1)], units)
                                    - z[np.isfinite(x).all(1)]))) for x, z in consistency]
    res["consistency_max_abs"] = max(diffs) if diffs else None
    for name, x in (("implicit", x_imp), ("intensity", x_int)):
        if x is not None and not np.isfinite(x).all():
            raise BatteryError(f"some {name} texts were too short for the pool {pool}")
    return units_kind, x_imp, x_int, units


def _default_kind(st: Any) -> str:
    return "denoised" if "denoised" in st.kinds else st.kinds[0]


def summary_json(res: Mapping[str, Any]) -> dict[str, Any]:
    """``run_battery``'s result without the nulls' raw draws (for JSON)."""
    out = {k: v for k, v in res.items() if k not in ("null", "shuffled")}
    for key in ("null", "shuffled"):
        if res.get(key):
            out[key] = {k: v for k, v in res[key].items() if k not in ("values", "tiebreak")}
    return _jsonable(out)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    return x


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m emotion_vectors.reading.battery screen`` (leak report of the data files) or
    ``python -m emotion_vectors.reading.battery run VECTORS_ZARR [--clusters TSV] [--lens TSV]
    [--layer L] [--shuffled SHUFFLED_ZARR] [--out JSON]``."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m emotion_vectors.reading.battery")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("screen")
    r = sub.add_parser("run")
    r.add_argument("vectors")
    r.add_argument("--layer", type=int)
    r.add_argument("--clusters")
    r.add_argument("--lens")
    r.add_argument("--n-draws", type=int)
    r.add_argument("--shuffled", help="the run's shuffled-label store (vectors/shuffled.zarr): the matched null")
    r.add_argument("--out")
    args = ap.parse_args(argv)
    if args.cmd == "screen":
        print(json.dumps(leak_report(load_implicit(), load_intensity()), indent=1))
        return 0
    res = run_battery(args.vectors, layer=args.layer, clusters=args.clusters,
                      lens_tokens=args.lens, n_draws=args.n_draws, shuffled=args.shuffled)
    print(pd.DataFrame(res["checks"]).to_string(index=False))
    if args.out:
        Path(args.out).write_text(json.dumps(summary_json(res), indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
