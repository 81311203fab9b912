"""Corpus diagnostics: does the story corpus carry its emotions at all?

Emotion vectors are differences of means, and a mean difference exists for any labelling, even
a random one. Before reading geometry into the vectors, these statistics ask whether the stories'
activations can be told apart by emotion better than by chance, and how much of their variance
follows the emotion rather than the topic. (``judge`` asks the complementary question of the
texts: can a reader recover each story's emotion?)

**Separability** (per layer, stories' pooled activations ``x_i`` ``(d,)``, labels = emotions):

- *Nearest centroid, leave-one-out*: centre the activations by their mean over all stories
  (label-free), then give each story the emotion whose centroid (mean of that emotion's other
  stories — the story itself is left out of its own centroid) has the highest cosine with it.
- *Logistic probe*: standardise, PCA to ``max_dim`` components when ``d > max_dim`` (both fitted
  inside each training fold), L2-regularised multinomial logistic regression; accuracy of the
  out-of-fold predictions of a stratified k-fold cross-validation. Standardisation and PCA do
  not see the labels, so they are fitted once per fold and reused by the permutation null
  (which keeps the true labels' split: the null is conditional on it).
- Each accuracy comes with a Wilson 95% interval over the ``n`` stories, chance (the majority
  class's share, ``1/E`` for a balanced corpus), and a permutation null: the same procedure on
  emotion labels shuffled within each topic (so that the null keeps the corpus's balance over
  topics; the same permutations at every layer), its mean and 95th percentile,
  and ``p_perm = (1 + #{null >= observed}) / (1 + n_permutations)``. The layer-max version of the
  test (``p_perm_max_layer``: observed best layer against the best layer of each permutation)
  corrects for choosing the best of the layers afterwards.

**Variance shares** (per layer, pooled activations ``X`` ``(n, d)``): for a grouping ``g`` (the
emotion, the topic, or the emotion × topic cell), ``share_g = SS_between(g) / SS_total`` with
``SS_total = sum_i ||x_i - xbar||^2`` and ``SS_between(g) = sum_groups n_k ||xbar_k - xbar||^2``.
Under labels that carry nothing its expectation is not zero (``chance_expected``): shuffled
among all stories, exactly ``(G - 1) / (n - 1)`` for ``G`` groups, large when groups are small
(24 emotions of 6 stories: 0.16). The null keeps the design: emotions are shuffled within topics
and topics within emotions (``expected_between_share`` gives the exact expectation; in a
balanced design, for emotions, ``(G - 1) / (n - T) * (1 - topic share)``), because a shuffle
across topics unbalances them and lets the topic's variance into the emotion groups.
``adjusted_share = (share - chance) / (1 - chance)`` is the share beyond chance. With a
balanced emotion × topic design the two main effects are orthogonal and ``cell - emotion -
topic`` is the interaction (its ``n_groups`` is its degrees of freedom, its chance
``df / (n - 1)``). Computed on the raw activations and on
standardised ones (each dimension z-scored, so that the few very large residual dimensions do not
dominate).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .shards import open_shard

Z95 = 1.959963984540054
METHODS = ("nearest_centroid", "logistic_probe")
SEPARABILITY_COLUMNS = [
    "layer", "method", "accuracy", "ci_low", "ci_high", "chance", "null_mean", "null_p95",
    "p_perm", "n_permutations", "n_stories", "n_emotions",
]
VARIANCE_COLUMNS = [
    "layer", "scale", "factor", "n_groups", "share", "chance_expected", "adjusted_share",
    "null_mean", "null_p95", "p_perm", "n_permutations", "permuted_within", "n_stories",
]


@dataclass
class Corpus:
    """Pooled story activations with their labels.

    Attributes:
        activations: ``(n, n_layers, d)`` float32.
        emotion: ``(n,)`` index into ``emotions``.
        topic: ``(n,)`` topic index (as in the story shards' ``topic_index``).
        ids: story ids, row order.
        layers: stored decoder block indices (0-based).
        emotions: emotion words, label order.
        available: stories per emotion in the shards before subsampling.
    """

    activations: np.ndarray
    emotion: np.ndarray
    topic: np.ndarray
    ids: list[str]
    layers: list[int]
    emotions: list[str]
    available: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Small statistics


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); ``(nan, nan)`` for ``n = 0``."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def permutation_p(observed: float, null: np.ndarray) -> float:
    """One-sided permutation p-value ``(1 + #{null >= observed}) / (1 + len(null))``."""
    null = np.asarray(null, dtype=float)
    if null.size == 0:
        return float("nan")
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + null.size))


def majority_share(labels: np.ndarray) -> float:
    """Share of the most frequent label (the accuracy of always guessing it)."""
    counts = np.bincount(np.asarray(labels))
    return float(counts.max() / counts.sum())


def stratified_subsample(groups: Sequence[int], cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``cap`` items, spread over ``groups`` (e.g. topics) as evenly as possible.

    Items are shuffled within each group and taken round-robin over the groups (one of each group,
    then a second of each, ...), so a cap below the count keeps every group it can. Returned sorted.
    """
    groups = np.asarray(groups)
    n = len(groups)
    if cap is None or cap >= n:
        return np.arange(n)
    rank = np.empty(n, dtype=np.int64)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        rank[rng.permutation(members)] = np.arange(len(members))
    tiebreak = rng.permutation(n)
    order = np.lexsort((tiebreak, rank))
    return np.sort(order[:cap])


def permute_within(labels: np.ndarray, strata: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """``labels`` shuffled among the members of each stratum (all of them when ``strata`` is None).

    The null of "the emotion carries nothing" must keep the design: in a corpus balanced over
    topics, shuffling emotions across topics unbalances them, so topic differences leak into the
    emotion groups and the null runs higher than any real labelling can (seen on the default run).
    """
    labels = np.asarray(labels)
    if strata is None:
        return rng.permutation(labels)
    out = labels.copy()
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        out[members] = labels[rng.permutation(members)]
    return out


# --------------------------------------------------------------------------------------------
# Loading


def read_story_topics(story_shard: str | Path) -> dict[str, int]:
    """``{story id: topic index}`` of one story shard (``results/<run>/stories/<slug>.json``)."""
    shard = json.loads(Path(story_shard).read_text(encoding="utf-8"))
    return {s["id"]: int(s["topic_index"]) for s in shard.get("stories", [])}


def load_corpus(
    emotion_shards: Mapping[str, str | Path],
    story_shards: Mapping[str, str | Path],
    *,
    max_per_emotion: int | None = None,
    seed: int = 0,
) -> Corpus:
    """Read the emotion activation shards (and the stories' topics) into one :class:`Corpus`.

    Args:
        emotion_shards: ``{emotion word: activation shard}`` in label order.
        story_shards: ``{emotion word: story shard JSON}`` (for each story's topic).
        max_per_emotion: keep at most this many stories per emotion, spread over topics
            (seeded); ``None`` keeps all. Bounds memory and time at full scale.
        seed: seed of the subsample.

    Raises:
        ValueError: a shard whose stories are missing from its story shard, or shards with
            different layers or widths.
    """
    rng = np.random.default_rng(seed)
    blocks, emo, top, ids = [], [], [], []
    layers: list[int] | None = None
    available: dict[str, int] = {}
    emotions = list(emotion_shards)
    for e_idx, emotion in enumerate(emotions):
        group = open_shard(emotion_shards[emotion])
        shard_ids = list(group.attrs["ids"])
        shard_layers = [int(x) for x in group.attrs["layers"]]
        if layers is None:
            layers = shard_layers
        elif shard_layers != layers:
            raise ValueError(
                f"shard {emotion_shards[emotion]} has layers {shard_layers}, others {layers}: "
                "rebuild the activation shards with one extraction setting"
            )
        topics_of = read_story_topics(story_shards[emotion])
        missing = [i for i in shard_ids if i not in topics_of]
        if missing:
            raise ValueError(
                f"activation shard {emotion_shards[emotion]} holds stories missing from "
                f"{story_shards[emotion]} (e.g. {missing[:3]}): the shard is older than the "
                "stories; rebuild it"
            )
        topics = np.array([topics_of[i] for i in shard_ids], dtype=np.int64)
        available[emotion] = len(shard_ids)
        rows = stratified_subsample(topics, max_per_emotion, rng)
        if len(rows) == 0:
            continue
        acts = group["activations"]
        x = np.asarray(acts[:]) if len(rows) == len(shard_ids) else np.asarray(acts.oindex[rows.tolist()])
        blocks.append(x.astype(np.float32, copy=False))
        emo.append(np.full(len(rows), e_idx, dtype=np.int64))
        top.append(topics[rows])
        ids += [shard_ids[r] for r in rows]
    if not blocks:
        raise ValueError("no stories in the activation shards")
    widths = {b.shape[2] for b in blocks}
    if len(widths) > 1:
        raise ValueError(f"activation shards of different widths {sorted(widths)}")
    return Corpus(
        activations=np.concatenate(blocks),
        emotion=np.concatenate(emo),
        topic=np.concatenate(top),
        ids=ids,
        layers=list(layers or []),
        emotions=emotions,
        available=available,
    )


# --------------------------------------------------------------------------------------------
# Separability


def _onehot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), n_classes))
    out[np.arange(len(labels)), labels] = 1.0
    return out


class _NearestCentroid:
    """Leave-one-out nearest-centroid (cosine, centred) predictions for many labellings of one
    layer's activations, from the Gram matrix (``n <= d``) or the data (``n > d``)."""

    def __init__(self, x: np.ndarray):
        xc = np.asarray(x, dtype=np.float64)
        xc = xc - xc.mean(axis=0, keepdims=True)
        self.sq = np.einsum("ij,ij->i", xc, xc)  # ||x_i||^2
        n, d = xc.shape
        self.gram = xc @ xc.T if n <= d else None
        self.xc = xc

    def predict(self, labels: np.ndarray, n_classes: int) -> np.ndarray:
        y = _onehot(labels, n_classes)
        counts = y.sum(axis=0)  # (E,)
        safe = np.maximum(counts, 1)
        if self.gram is not None:
            gy = self.gram @ y  # (n, E): x_i . (sum of class c)
        else:
            gy = self.xc @ (y.T @ self.xc).T
        dots = gy / safe  # x_i . m_c
        mm = np.einsum("ic,ic->c", y, gy) / safe**2  # ||m_c||^2
        norm_x = np.sqrt(np.maximum(self.sq, 1e-300))[:, None]
        cos = dots / (norm_x * np.sqrt(np.maximum(mm, 1e-300))[None, :])
        cos[:, counts == 0] = -np.inf
        # The story's own class, its centroid recomputed without it.
        idx = np.arange(len(labels))
        n_c = counts[labels]
        own_dot = dots[idx, labels]
        with np.errstate(divide="ignore", invalid="ignore"):
            num = (n_c * own_dot - self.sq) / (n_c - 1)
            own_sq = (n_c**2 * mm[labels] - 2 * n_c * own_dot + self.sq) / (n_c - 1) ** 2
            own_cos = num / (norm_x[:, 0] * np.sqrt(np.maximum(own_sq, 1e-300)))
        own_cos = np.where(n_c > 1, own_cos, -np.inf)
        cos[idx, labels] = own_cos
        return np.argmax(cos, axis=1)


def nearest_centroid_loo(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Leave-one-out nearest-centroid predictions ``(n,)`` for activations ``x`` ``(n, d)``
    (centred by the mean over all rows, cosine similarity; see the module docstring)."""
    labels = np.asarray(labels)
    return _NearestCentroid(x).predict(labels, int(labels.max()) + 1)


class _Probe:
    """Stratified k-fold splits of one layer's activations, with the label-free steps
    (standardisation, PCA) fitted on each training fold once; ``predict`` fits the logistic
    regression of every fold for a labelling and returns the out-of-fold predictions. The
    permutation null reuses the splits and transforms (the split is made from the true labels;
    the null is conditional on it)."""

    def __init__(self, x: np.ndarray, labels: np.ndarray, *, folds: int, C: float, max_dim: int, seed: int):
        from sklearn.decomposition import PCA
        from sklearn.model_selection import StratifiedKFold
        from sklearn.preprocessing import StandardScaler

        labels = np.asarray(labels)
        smallest = int(np.bincount(labels)[np.unique(labels)].min())
        k = min(folds, smallest)
        if k < 2:
            raise ValueError(f"logistic probe: a class has {smallest} story; need at least 2 per class")
        x = np.asarray(x, dtype=np.float64)
        self.C, self.n = C, len(labels)
        self.folds = []
        for train, test in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, labels):
            scaler = StandardScaler().fit(x[train])
            ztr, zte = scaler.transform(x[train]), scaler.transform(x[test])
            if x.shape[1] > max_dim:
                pca = PCA(n_components=max(1, min(max_dim, len(train) - 1)), random_state=seed).fit(ztr)
                ztr, zte = pca.transform(ztr), pca.transform(zte)
            self.folds.append((train, test, ztr, zte))

    def predict(self, labels: np.ndarray) -> np.ndarray:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(labels)
        pred = np.empty(self.n, dtype=labels.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for train, test, ztr, zte in self.folds:
                y = labels[train]
                if len(np.unique(y)) == 1:
                    pred[test] = y[0]
                    continue
                pred[test] = LogisticRegression(C=self.C, max_iter=2000).fit(ztr, y).predict(zte)
        return pred


def probe_cv_predictions(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    folds: int = 5,
    C: float = 1.0,
    max_dim: int = 64,
    seed: int = 0,
) -> np.ndarray:
    """Out-of-fold predictions ``(n,)`` of a standardised (PCA-reduced when ``d > max_dim``)
    L2 logistic regression under stratified ``folds``-fold cross-validation (fewer folds when
    the smallest class has fewer stories; every step is fitted inside the training fold).

    Raises:
        ValueError: a class with fewer than 2 stories (nothing to train and test on).
    """
    return _Probe(x, labels, folds=folds, C=C, max_dim=max_dim, seed=seed).predict(labels)


def _score_row(layer: int, method: str, acc: float, n: int, chance: float, null: np.ndarray, n_classes: int) -> dict:
    lo, hi = wilson_interval(int(round(acc * n)), n) if np.isfinite(acc) else (float("nan"), float("nan"))
    return {
        "layer": layer,
        "method": method,
        "accuracy": acc,
        "ci_low": lo,
        "ci_high": hi,
        "chance": chance,
        "null_mean": float(null.mean()) if null.size else float("nan"),
        "null_p95": float(np.percentile(null, 95)) if null.size else float("nan"),
        "p_perm": permutation_p(acc, null),
        "n_permutations": int(null.size),
        "n_stories": n,
        "n_emotions": n_classes,
    }


def separability(
    corpus: Corpus,
    *,
    nc_permutations: int = 200,
    probe_permutations: int = 20,
    probe_folds: int = 5,
    probe_C: float = 1.0,
    probe_max_dim: int = 64,
    seed: int = 0,
    log: Callable[[str], None] = logging.getLogger(__name__).info,
) -> tuple[list[dict], dict]:
    """Cross-validated accuracy of telling the stories' emotions apart, per layer and method.

    Returns:
        ``(rows, extra)``: one row per layer and method with ``SEPARABILITY_COLUMNS``, and
        ``{method: {"p_perm_max_layer": ..., "best_layer": ...}}`` (the layer-max permutation
        test; the same label permutations are used at every layer).
    """
    labels = corpus.emotion
    n = len(labels)
    n_classes = len(corpus.emotions)
    present = len(np.unique(labels))
    chance = majority_share(labels)
    rng = np.random.default_rng(seed)
    perms_nc = [permute_within(labels, corpus.topic, rng) for _ in range(nc_permutations)]
    perms_probe = [permute_within(labels, corpus.topic, rng) for _ in range(probe_permutations)]
    rows: list[dict] = []
    obs = {m: [] for m in METHODS}
    nulls = {m: [] for m in METHODS}
    probe_ok = int(np.bincount(labels)[np.unique(labels)].min()) >= 2
    for li, layer in enumerate(corpus.layers):
        x = corpus.activations[:, li, :]
        nc = _NearestCentroid(x)
        acc = float(np.mean(nc.predict(labels, n_classes) == labels))
        null = np.array([np.mean(nc.predict(p, n_classes) == p) for p in perms_nc])
        rows.append(_score_row(layer, "nearest_centroid", acc, n, chance, null, present))
        obs["nearest_centroid"].append(acc)
        nulls["nearest_centroid"].append(null)
        if probe_ok:
            probe = _Probe(x, labels, folds=probe_folds, C=probe_C, max_dim=probe_max_dim, seed=seed)
            acc_p = float(np.mean(probe.predict(labels) == labels))
            null_p = np.array([np.mean(probe.predict(p) == p) for p in perms_probe])
        else:
            acc_p, null_p = float("nan"), np.zeros(0)
        rows.append(_score_row(layer, "logistic_probe", acc_p, n, chance, null_p, present))
        obs["logistic_probe"].append(acc_p)
        nulls["logistic_probe"].append(null_p)
        log(
            f"layer {layer}: nearest centroid {acc:.3f} (null {rows[-2]['null_mean']:.3f}, "
            f"p {rows[-2]['p_perm']:.3g}); probe {acc_p:.3f} (null {rows[-1]['null_mean']:.3f}, "
            f"p {rows[-1]['p_perm']:.3g}); chance {chance:.3f}"
        )
    extra: dict[str, Any] = {}
    for m in METHODS:
        o = np.array(obs[m], dtype=float)
        if not np.isfinite(o).any():
            extra[m] = {"best_layer": None, "p_perm_max_layer": float("nan")}
            continue
        best = int(np.nanargmax(o))
        null_max = np.max(np.stack(nulls[m]), axis=0) if nulls[m] and nulls[m][0].size else np.zeros(0)
        extra[m] = {
            "best_layer": int(corpus.layers[best]),
            "best_accuracy": float(o[best]),
            "p_perm_max_layer": permutation_p(float(o[best]), null_max),
        }
    return rows, extra


# --------------------------------------------------------------------------------------------
# Variance shares


def between_share(xc: np.ndarray, labels: np.ndarray, total_ss: float) -> float:
    """``SS_between / SS_total`` of centred rows ``xc`` ``(n, d)`` grouped by ``labels``."""
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(np.asarray(labels)[order], return_index=True, return_counts=True)
    sums = np.add.reduceat(xc[order], starts, axis=0)  # (G, d) per-group sums, O(n d)
    ss_between = float(np.sum(np.einsum("gd,gd->g", sums, sums) / counts))
    return ss_between / total_ss if total_ss > 0 else float("nan")


def expected_between_share(
    xc: np.ndarray, labels: np.ndarray, strata: np.ndarray | None, total_ss: float
) -> float:
    """Exact expectation of ``between_share`` when ``labels`` are shuffled within ``strata``.

    With ``strata = None``: ``(G - 1) / (n - 1)``. Otherwise, writing ``n_gs`` for the members
    of group ``g`` in stratum ``s`` (``n_s`` members, mean ``m_s``, within-stratum sum of squares
    ``W_s``), ``E[SS_between] = sum_g (1/n_g) [ ||sum_s n_gs (m_s - xbar)||^2 +
    sum_s n_gs (n_s - n_gs) / (n_s - 1) * W_s / n_s ]`` (sampling without replacement inside each
    stratum). In a balanced emotion x topic design, for the emotion factor within topics, this is
    ``(G - 1) / (n - T) * SS_within_topics``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if strata is None:
        g = len(np.unique(labels))
        return (g - 1) / (n - 1) if n > 1 else float("nan")
    groups, g_idx = np.unique(labels, return_inverse=True)
    strat, s_idx = np.unique(strata, return_inverse=True)
    counts = np.zeros((len(groups), len(strat)))
    np.add.at(counts, (g_idx, s_idx), 1)
    n_s = counts.sum(axis=0)
    n_g = counts.sum(axis=1)
    means = np.stack([xc[s_idx == k].mean(axis=0) for k in range(len(strat))])  # xc is centred: xbar = 0
    within = np.array([float(((xc[s_idx == k] - means[k]) ** 2).sum()) for k in range(len(strat))])
    fixed = counts @ means  # (G, d): sum_s n_gs m_s
    fixed_ss = float(np.sum(np.einsum("gd,gd->g", fixed, fixed) / n_g))
    with np.errstate(divide="ignore", invalid="ignore"):
        var_part = np.where(n_s > 1, counts * (n_s - counts) / (n_s - 1) * within / n_s, 0.0)
    expected = fixed_ss + float(np.sum(var_part.sum(axis=1) / n_g))
    return expected / total_ss if total_ss > 0 else float("nan")


def variance_shares(
    corpus: Corpus,
    *,
    n_permutations: int = 200,
    seed: int = 0,
) -> list[dict]:
    """Share of the stories' activation variance explained by emotion, topic and their cells.

    Returns one row per layer, scale (``raw``, ``standardised``) and factor (``emotion``,
    ``topic``, ``emotion x topic``, and the derived ``interaction`` = cell − emotion − topic,
    whose chance is derived the same way) with ``VARIANCE_COLUMNS`` (see the module docstring).
    """
    n = len(corpus.emotion)
    cells = corpus.emotion * (int(corpus.topic.max()) + 1) + corpus.topic
    factors = {"emotion": corpus.emotion, "topic": corpus.topic, "emotion x topic": cells}
    # Each main effect's null keeps the other factor: emotions shuffled within topics, topics
    # within emotions; the cells among all stories.
    strata = {"emotion": corpus.topic, "topic": corpus.emotion, "emotion x topic": None}
    rng = np.random.default_rng(seed)
    perms = {
        name: [permute_within(lab, strata[name], rng) for _ in range(n_permutations)] for name, lab in factors.items()
    }
    rows: list[dict] = []
    for li, layer in enumerate(corpus.layers):
        x = np.asarray(corpus.activations[:, li, :], dtype=np.float64)
        xc = x - x.mean(axis=0, keepdims=True)
        sd = xc.std(axis=0)
        for scale, data in (("raw", xc), ("standardised", xc / np.where(sd > 0, sd, 1.0))):
            total = float(np.einsum("ij,ij->", data, data))
            found = {}
            for name, lab in factors.items():
                g = len(np.unique(lab))
                share = between_share(data, lab, total)
                chance = expected_between_share(data, lab, strata[name], total)
                null = np.array([between_share(data, p, total) for p in perms[name]])
                found[name] = (g, share)
                within = {"emotion": "topic", "topic": "emotion", "emotion x topic": "all"}[name]
                rows.append(_variance_row(layer, scale, name, g, share, chance, null, n, within))
            ge, se = found["emotion"]
            gt, st = found["topic"]
            gc, sc = found["emotion x topic"]
            df = gc - ge - gt + 1  # interaction degrees of freedom, (E - 1)(T - 1) when every cell is filled
            rows.append(_variance_row(layer, scale, "interaction", df, sc - se - st, df / (n - 1), np.zeros(0), n, "all"))
    return rows


def _variance_row(layer, scale, factor, g, share, chance, null, n, within) -> dict:
    adjusted = (share - chance) / (1 - chance) if chance < 1 else float("nan")
    return {
        "layer": layer,
        "scale": scale,
        "factor": factor,
        "n_groups": int(g),
        "share": share,
        "chance_expected": chance,
        "adjusted_share": adjusted,
        "null_mean": float(null.mean()) if null.size else float("nan"),
        "null_p95": float(np.percentile(null, 95)) if null.size else float("nan"),
        "p_perm": permutation_p(share, null),
        "n_permutations": int(null.size),
        "permuted_within": within,
        "n_stories": n,
    }


# --------------------------------------------------------------------------------------------
# Figure and summary


def separability_figure(sep_rows: list[dict], var_rows: list[dict], path: str | Path, title: str = "") -> None:
    """Accuracy by layer (Wilson 95% bars) over the permutation null (mean to 95th percentile,
    shaded) and chance (top); emotion and topic variance shares with their chance (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    sep = pd.DataFrame(sep_rows)
    var = pd.DataFrame(var_rows)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    colours = {"nearest_centroid": "tab:blue", "logistic_probe": "tab:orange"}
    labels = {"nearest_centroid": "nearest centroid (LOO, cosine)", "logistic_probe": "logistic probe (k-fold CV)"}
    offsets = {"nearest_centroid": -0.15, "logistic_probe": 0.15}  # side by side, so the bars stay readable
    for method, df in sep.groupby("method", sort=False):
        df = df.sort_values("layer")
        c = colours.get(method, None)
        if df["n_permutations"].max() > 0:
            ax.fill_between(df["layer"], df["null_mean"], df["null_p95"], color=c, alpha=0.18, lw=0,
                            label=f"{method.replace('_', ' ')} null (mean–95th pct)")
        yerr = np.vstack([df["accuracy"] - df["ci_low"], df["ci_high"] - df["accuracy"]])
        ax.errorbar(df["layer"] + offsets.get(method, 0.0), df["accuracy"], yerr=yerr, color=c, marker="o", ms=4,
                    capsize=3, label=labels.get(method, method) + ", Wilson 95%")
    if len(sep):
        ax.axhline(sep["chance"].iloc[0], color="grey", ls="--", lw=1, label="chance (majority share)")
    ax.set_ylabel("accuracy (emotion of story)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    raw = var[var["scale"] == "raw"] if len(var) else var
    for factor, c in (("emotion", "tab:red"), ("topic", "tab:green")):
        df = raw[raw["factor"] == factor].sort_values("layer") if len(raw) else raw
        if not len(df):
            continue
        ax2.plot(df["layer"], df["share"], marker="o", ms=4, color=c, label=f"{factor} share")
        ax2.plot(df["layer"], df["chance_expected"], ls="--", color=c, lw=1, label=f"{factor} chance")
    ax2.set_xlabel("layer (output of decoder block, 0-based)")
    ax2.set_ylabel("share of variance (raw)")
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=7, loc="best", ncol=2)
    if len(sep):
        ax2.set_xticks(sorted(sep["layer"].unique()))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def headline(
    sep_rows: list[dict],
    sep_extra: dict,
    var_rows: list[dict],
    recog_rows: list[dict] | None = None,
    *,
    alpha: float = 0.05,
) -> dict:
    """The headline numbers of ``summary.json``: best-layer accuracy / chance per method (with
    the layer-max permutation p), variance shares at that layer, and recognisability / chance."""
    out: dict[str, Any] = {"separability": {}, "variance_shares": {}, "recognisability": None}
    for method in METHODS:
        rows = [r for r in sep_rows if r["method"] == method and np.isfinite(r["accuracy"])]
        if not rows:
            continue
        best = max(rows, key=lambda r: r["accuracy"])
        out["separability"][method] = {
            "best_layer": best["layer"],
            "accuracy": best["accuracy"],
            "ci": [best["ci_low"], best["ci_high"]],
            "chance": best["chance"],
            "ratio_to_chance": best["accuracy"] / best["chance"] if best["chance"] else float("nan"),
            "null_mean": best["null_mean"],
            "null_p95": best["null_p95"],
            "p_perm": best["p_perm"],
            "p_perm_max_layer": sep_extra.get(method, {}).get("p_perm_max_layer"),
            "layers_above_null_p95": sum(1 for r in rows if r["accuracy"] > r["null_p95"]),
            "n_layers": len(rows),
        }
    nc = out["separability"].get("nearest_centroid")
    if nc:
        layer = nc["best_layer"]
        for r in var_rows:
            if r["layer"] == layer and r["scale"] == "raw":
                out["variance_shares"][r["factor"]] = {
                    k: r[k] for k in ("share", "chance_expected", "adjusted_share", "p_perm")
                }
        out["variance_shares"]["layer"] = layer
    p_values = [v.get("p_perm_max_layer") for v in out["separability"].values()]
    out["separable"] = any(p is not None and np.isfinite(p) and p < alpha for p in p_values)
    if recog_rows:
        overall = next((r for r in recog_rows if r["emotion"] == "(all)"), None)
        if overall:
            keys = ("n", "correct", "share", "ci_low", "ci_high", "chance", "p_binom", "share_centred", "auc", "p_auc")
            out["recognisability"] = {k: overall[k] for k in keys if k in overall}
            out["recognisability"]["ratio_to_chance"] = overall["share"] / overall["chance"]
            out["recognisable"] = bool(overall["p_binom"] < alpha)
    out["verdict"] = _verdict(out)
    return _finite_or_none(out)


def _finite_or_none(obj: Any) -> Any:
    """The same structure with NaN and infinities as ``None`` (valid JSON) and numpy scalars as Python's."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def _verdict(h: dict) -> str:
    sep = h.get("separable")
    rec = h.get("recognisable")
    if sep and rec:
        return "the corpus carries its emotions: activations separate them and a judge recognises them above chance"
    if sep and rec is False:
        return "activations separate the emotions above chance, but the judge does not recognise them: check what separates them (topic, length, style)"
    if rec and not sep:
        return "a judge recognises the emotions, but the subject's activations do not separate them above chance"
    if rec is None:
        return "activations separate the emotions above chance" if sep else "activations do not separate the emotions above chance"
    return "the corpus carries nothing measurable about its emotions: neither the activations nor the judge tell them apart above chance; do not read the vectors' geometry"
