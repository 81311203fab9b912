"""Corpus diagnostics: does the story corpus carry its emotions at all?

Emotion vectors are differences of means, and a mean difference exists for any labelling, even
a random one. Before reading geometry into the vectors, these statistics ask whether the stories'
activations can be told apart by emotion better than by chance, and how much of their variance
follows the emotion rather than the topic. (``judge`` asks the complementary question of the
texts: can a reader recover each story's emotion?) Every p-value here is a test of a stated
null, and ``tests/test_calibration_diagnostics.py`` simulates each null and checks that the test
rejects at alpha = 0.05 as often as it should.

**The null of the separability tests**: the activations carry nothing about the emotion, given
the topic. Emotion labels are shuffled within each topic (so that the null keeps the corpus's
balance over topics; a shuffle across topics unbalances them and lets topic differences into
the emotion groups); under the null the true labelling and every shuffled one are exchangeable,
so ``p = (1 + #{null >= observed}) / (1 + permutations)`` is exact (it rejects at alpha at most
alpha of the time). This holds only when the whole procedure is the same function of the labels
for the true and the shuffled labellings; hence:

- *Nearest centroid, leave-one-out*: centre the activations by their mean over all stories
  (label-free), then give each story the emotion whose centroid (mean of that emotion's other
  stories — the story itself is left out of its own centroid) has the highest cosine with it.
- *Logistic probe*: standardise, PCA to ``max_dim`` components when ``d > max_dim`` (both fitted
  inside each training fold), L2-regularised multinomial logistic regression; accuracy of the
  out-of-fold predictions of a ``k``-fold cross-validation whose folds are **stratified on the
  topic, not on the emotion**: folds stratified on the true labels would be balanced for the
  true labelling only, so the observed accuracy and the permuted ones would not be exchangeable
  (a shuffled labelling's unbalanced folds lower its accuracy, and the test over-rejects). The
  folds, the standardisation and the PCA do not see the labels, so they are fitted once per fold
  and reused by every permutation.
- The accuracy moves in steps of ``1/n``, and ties with the null make a permutation test
  conservative; the test statistic breaks ties by a continuous secondary statistic (nearest
  centroid: the mean cosine of each story with its own leave-one-out centroid; probe: the mean
  out-of-fold probability of each story's own label), added as ``secondary / (4 n)`` so that it
  orders labellings only among equal accuracies. The table reports the accuracy itself.
- Each accuracy comes with a Wilson 95% interval over the ``n`` stories, chance (the majority
  class's share, ``1/E`` for a balanced corpus), the null's mean and 95th percentile and the
  per-layer ``p_perm``. The **layer-max** test (``p_perm_max_layer``: the observed best layer's
  statistic against the best layer of each permutation, the same permutations at every layer) is
  exact and corrects for choosing the best of the layers; it is what the claims use.

**Variance shares** (per layer, pooled activations ``X`` ``(n, d)``): for a grouping ``g`` (the
emotion, the topic, or the emotion × topic cell), ``share_g = SS_between(g) / SS_total`` with
``SS_total = sum_i ||x_i - xbar||^2`` and ``SS_between(g) = sum_groups n_k ||xbar_k - xbar||^2``.
Labels that carry nothing do not give zero. Each factor's null keeps the design:

- ``emotion``: emotions shuffled within topics (null: the emotion carries nothing; topic effects
  kept). ``chance_expected`` is the exact expectation of the share under that shuffle
  (``expected_between_share``; balanced design: ``(G - 1) / (n - T) * (1 - topic share)``).
- ``topic``: topics shuffled within emotions (descriptive: topics are expected to differ).
- ``emotion x topic`` (the cell): emotions shuffled within topics (null: the emotion carries
  nothing, neither main effect nor interaction); exact chance expectation under that shuffle.
- ``interaction`` = cell − emotion − topic (exact when every cell has as many stories; its
  ``n_groups`` is its degrees of freedom ``df``). Its chance level is what it is expected to be
  with no interaction whatever the main effects, ``df / df_within * (SS_within cells / SS_total)``
  (``E[SS_int] = df * sigma^2 = df / df_within * E[SS_within]`` in a balanced design with the same
  noise in every cell; the ``df / (n - 1)`` of a design without main effects is wrong here). Its
  p-value permutes emotions within topics as well, so its exact null is "the emotion carries
  nothing, neither main effect nor interaction"; its statistic is the F-type ratio
  ``(SS_int / df) / (SS_within / df_within)``, which an emotion main effect does not enter, and
  which shuffling spreads over the interaction and within-cell degrees of freedom alike, so that
  with a main effect and no interaction the test stays close to nominal (simulated in the
  calibration tests). ``null_mean``/``null_p95`` are those of the share under the shuffle.

``adjusted_share = (share - chance) / (1 - chance)`` is the share beyond chance. Computed on the
raw activations and on standardised ones (each dimension z-scored, so that the few very large
residual dimensions do not dominate). ``variance_analysis`` adds, per scale and factor, the
layer-max test (statistic: the share beyond chance; the F-type ratio for the interaction) and a
delete-half jackknife interval of the share beyond chance at the best layer.

**The verdict** combines three tests — the two separability methods' layer-max p-values and the
judge's overall recognisability (binomial) p — Holm-corrected together; ``separable`` and
``recognisable`` follow the corrected p-values, and :func:`diagnostics_claims` states each as a
claim (``emotion_vectors.core.claims``).
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

from ..core.claims import json_safe
from ..core.stats import Z95, stratified_subsample, wilson_interval
from ..extraction.shards import open_shard

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


def permute_within(labels: np.ndarray, strata: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """``labels`` shuffled among the members of each stratum (all of them when ``strata`` is None).

    The null of "the emotion carries nothing" must keep the design: in a corpus balanced over
    topics, shuffling emotions across topics unbalances them, so topic differences leak into the
    emotion groups and the null runs higher than any real labelling can (seen on the default run).
    """
    return permute_within_many(labels, strata, 1, rng)[0]


def permute_within_many(labels: np.ndarray, strata: np.ndarray | None, n_perm: int,
                        rng: np.random.Generator) -> np.ndarray:
    """``n_perm`` independent shuffles ``(n_perm, n)`` of ``labels`` within ``strata`` at once:
    each row sorts the stories by stratum and, inside a stratum, by a uniform random key."""
    labels = np.asarray(labels)
    n = len(labels)
    if n_perm <= 0:
        return np.zeros((0, n), dtype=labels.dtype)
    strata = np.zeros(n, dtype=np.int64) if strata is None else np.asarray(strata)
    base = np.argsort(strata, kind="stable")  # positions, stratum by stratum
    keys = rng.random((n_perm, n))
    order = np.lexsort((keys, np.broadcast_to(strata, (n_perm, n))), axis=-1)  # stratum blocks, random inside
    out = np.empty((n_perm, n), dtype=labels.dtype)
    out[:, base] = labels[order]
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


def _tie_break(accuracy: np.ndarray, secondary: np.ndarray, n: int) -> np.ndarray:
    """``accuracy`` with ties broken by ``secondary`` (a value in [-1, 1]): the accuracy moves in
    steps of ``1/n``, so adding ``secondary / (4 n)`` orders labellings by accuracy first and by
    the secondary statistic only among equal accuracies (see the module docstring)."""
    return np.asarray(accuracy, dtype=float) + np.clip(np.asarray(secondary, dtype=float), -1, 1) / (4 * n)


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

    def predict_many(self, labels: np.ndarray, n_classes: int, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Predictions ``(P, n)`` for ``P`` labellings ``(P, n)`` at once, and each story's cosine
        with its own class's leave-one-out centroid ``(P, n)`` (``-1`` for a class of one)."""
        labels = np.atleast_2d(np.asarray(labels, dtype=np.int64))
        n_lab, n = labels.shape
        if chunk is None:  # bound the (chunk, n, E) work arrays to ~4M elements
            chunk = max(1, int(4_000_000 // max(1, n * n_classes)))
        preds = np.empty((n_lab, n), dtype=np.int64)
        owns = np.empty((n_lab, n))
        norm_x = np.sqrt(np.maximum(self.sq, 1e-300))
        rows = np.arange(n)
        for start in range(0, n_lab, chunk):
            lab = labels[start : start + chunk]
            p = len(lab)
            y = np.zeros((p, n, n_classes))
            y[np.arange(p)[:, None], rows[None, :], lab] = 1.0
            counts = y.sum(axis=1)  # (p, E)
            if self.gram is not None:
                gy = np.matmul(self.gram, y)  # (p, n, E): x_i . (sum of class c)
            else:
                sums = np.matmul(y.transpose(0, 2, 1), self.xc)  # (p, E, d) class sums
                gy = np.matmul(self.xc, sums.transpose(0, 2, 1))  # (p, n, E)
            safe = np.maximum(counts, 1)
            dots = gy / safe[:, None, :]  # x_i . m_c
            mm = np.sum(y * gy, axis=1) / safe**2  # ||m_c||^2
            cos = dots / (norm_x[None, :, None] * np.sqrt(np.maximum(mm, 1e-300))[:, None, :])
            cos = np.where(counts[:, None, :] == 0, -np.inf, cos)
            # The story's own class, its centroid recomputed without it.
            n_c = np.take_along_axis(counts, lab, axis=1)
            own_dot = np.take_along_axis(dots, lab[:, :, None], axis=2)[:, :, 0]
            own_mm = np.take_along_axis(mm, lab, axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                num = (n_c * own_dot - self.sq) / (n_c - 1)
                own_sq = (n_c**2 * own_mm - 2 * n_c * own_dot + self.sq) / (n_c - 1) ** 2
                own_cos = num / (norm_x * np.sqrt(np.maximum(own_sq, 1e-300)))
            own_cos = np.where(n_c > 1, own_cos, -np.inf)
            np.put_along_axis(cos, lab[:, :, None], own_cos[:, :, None], axis=2)
            preds[start : start + p] = np.argmax(cos, axis=2)
            owns[start : start + p] = np.where(np.isfinite(own_cos), own_cos, -1.0)
        return preds, owns

    def predict(self, labels: np.ndarray, n_classes: int) -> np.ndarray:
        return self.predict_many(np.asarray(labels)[None, :], n_classes)[0][0]

    def statistics(self, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """Accuracy ``(P,)`` of each labelling ``(P, n)`` and the tie-broken test statistic
        (accuracy, then the mean cosine with the own leave-one-out centroid)."""
        labels = np.atleast_2d(labels)
        pred, own = self.predict_many(labels, n_classes)
        acc = np.mean(pred == labels, axis=1)
        return acc, _tie_break(acc, own.mean(axis=1), labels.shape[1])


def nearest_centroid_loo(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Leave-one-out nearest-centroid predictions ``(n,)`` for activations ``x`` ``(n, d)``
    (centred by the mean over all rows, cosine similarity; see the module docstring)."""
    labels = np.asarray(labels)
    return _NearestCentroid(x).predict(labels, int(labels.max()) + 1)


def probe_folds_of(n: int, strata: np.ndarray | None, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds that do not depend on the emotion labels: stratified on ``strata``
    (the topics; shuffled, seeded), or plain shuffled k-fold without strata. ``min(folds, n)``
    folds; a stratum smaller than the fold count is spread as far as it goes."""
    from sklearn.model_selection import KFold, StratifiedKFold

    k = max(2, min(int(folds), n))
    if n < 2:
        raise ValueError(f"logistic probe: {n} story; need at least 2")
    if strata is None or len(np.unique(strata)) < 2:
        return list(KFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(n)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(n), np.asarray(strata)))


class _Probe:
    """Cross-validation folds of one layer's activations, chosen without the emotion labels
    (stratified on the topics), with the label-free steps (standardisation, PCA) fitted on each
    training fold once; ``predict`` fits the logistic regression of every fold for a labelling
    and returns the out-of-fold predictions and each story's out-of-fold probability of its own
    label. Because neither the folds nor the transforms see the labels, the accuracy of the
    true labels and of each permuted labelling are the same function of the labels: the
    permutation null is exact (exchangeable with the observed accuracy under the null)."""

    def __init__(self, x: np.ndarray, labels: np.ndarray, *, folds: int, C: float, max_dim: int, seed: int,
                 strata: np.ndarray | None = None):
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        labels = np.asarray(labels)
        smallest = int(np.bincount(labels)[np.unique(labels)].min())
        if smallest < 2:
            raise ValueError(f"logistic probe: a class has {smallest} story; need at least 2 per class")
        x = np.asarray(x, dtype=np.float64)
        self.C, self.n = C, len(labels)
        self.folds = []
        for train, test in probe_folds_of(len(labels), strata, folds, seed):
            scaler = StandardScaler().fit(x[train])
            ztr, zte = scaler.transform(x[train]), scaler.transform(x[test])
            if x.shape[1] > max_dim:
                pca = PCA(n_components=max(1, min(max_dim, len(train) - 1)), whiten=True, random_state=seed).fit(ztr)
                ztr, zte = pca.transform(ztr), pca.transform(zte)
            self.folds.append((train, test, ztr, zte))

    def predict_proba_own(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(labels)
        pred = np.empty(self.n, dtype=labels.dtype)
        own = np.zeros(self.n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for train, test, ztr, zte in self.folds:
                y = labels[train]
                if len(np.unique(y)) == 1:
                    pred[test] = y[0]
                    own[test] = (labels[test] == y[0]).astype(float)
                    continue
                model = LogisticRegression(C=self.C, max_iter=2000).fit(ztr, y)
                proba = model.predict_proba(zte)
                pred[test] = model.classes_[np.argmax(proba, axis=1)]
                col = np.searchsorted(model.classes_, labels[test])
                known = (col < len(model.classes_)) & (model.classes_[np.minimum(col, len(model.classes_) - 1)] == labels[test])
                own[test] = np.where(known, proba[np.arange(len(test)), np.minimum(col, len(model.classes_) - 1)], 0.0)
        return pred, own

    def predict(self, labels: np.ndarray) -> np.ndarray:
        return self.predict_proba_own(labels)[0]

    def statistics(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Accuracy and tie-broken statistic (accuracy, then the mean out-of-fold probability of
        the own label) of each labelling ``(P, n)``."""
        labels = np.atleast_2d(labels)
        acc, stat = np.empty(len(labels)), np.empty(len(labels))
        for i, lab in enumerate(labels):
            pred, own = self.predict_proba_own(lab)
            acc[i] = np.mean(pred == lab)
            stat[i] = _tie_break(acc[i], own.mean(), len(lab))
        return acc, stat


def probe_cv_predictions(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    folds: int = 5,
    C: float = 1.0,
    max_dim: int = 64,
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> np.ndarray:
    """Out-of-fold predictions ``(n,)`` of a standardised (PCA-reduced when ``d > max_dim``)
    L2 logistic regression under ``folds``-fold cross-validation whose folds do not depend on
    the labels (stratified on ``strata``, e.g. the topics, when given; every step is fitted
    inside the training fold).

    Raises:
        ValueError: a class with fewer than 2 stories.
    """
    return _Probe(x, labels, folds=folds, C=C, max_dim=max_dim, seed=seed, strata=strata).predict(labels)


def _score_row(layer: int, method: str, acc: float, p: float, n: int, chance: float, null: np.ndarray,
               n_classes: int) -> dict:
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
        "p_perm": p,
        "n_permutations": int(null.size),
        "n_stories": n,
        "n_emotions": n_classes,
    }


def separability(
    corpus: Corpus,
    *,
    nc_permutations: int = 200,
    probe_permutations: int = 200,
    probe_folds: int = 5,
    probe_C: float = 1.0,
    probe_max_dim: int = 64,
    seed: int = 0,
    methods: Sequence[str] = METHODS,
    log: Callable[[str], None] = logging.getLogger(__name__).info,
) -> tuple[list[dict], dict]:
    """Cross-validated accuracy of telling the stories' emotions apart, per layer and method
    (``methods``: both by default; the calibration tests run one at a time).

    Returns:
        ``(rows, extra)``: one row per layer and method with ``SEPARABILITY_COLUMNS``, and
        ``{method: {"best_layer", "best_accuracy", "p_perm_max_layer", "n_permutations"}}``
        (the layer-max permutation test: the observed best layer's statistic against the best
        layer of each permutation; the same permutations at every layer, so it is exact).
    """
    labels = np.asarray(corpus.emotion)
    n = len(labels)
    n_classes = len(corpus.emotions)
    present = len(np.unique(labels))
    chance = majority_share(labels)
    rng = np.random.default_rng(seed)

    def perms(k: int) -> np.ndarray:
        return np.vstack([labels[None, :], permute_within_many(labels, corpus.topic, k, rng)])

    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"separability methods {unknown} are not among {list(METHODS)}")
    lab_nc = perms(nc_permutations)  # row 0: the true labels
    lab_probe = perms(probe_permutations)
    rows: list[dict] = []
    stats: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    probe_ok = int(np.bincount(labels)[np.unique(labels)].min()) >= 2
    for li, layer in enumerate(corpus.layers):
        x = corpus.activations[:, li, :]
        said = []
        if "nearest_centroid" in methods:
            acc, stat = _NearestCentroid(x).statistics(lab_nc, n_classes)
            rows.append(_score_row(layer, "nearest_centroid", float(acc[0]), permutation_p(stat[0], stat[1:]), n,
                                   chance, acc[1:], present))
            stats["nearest_centroid"].append(stat)
            said.append(f"nearest centroid {acc[0]:.3f} (null {rows[-1]['null_mean']:.3f}, p {rows[-1]['p_perm']:.3g})")
        if "logistic_probe" in methods:
            if probe_ok:
                probe = _Probe(x, labels, folds=probe_folds, C=probe_C, max_dim=probe_max_dim, seed=seed,
                               strata=corpus.topic)
                acc_p, stat_p = probe.statistics(lab_probe)
                p_probe = permutation_p(stat_p[0], stat_p[1:])
            else:
                acc_p = stat_p = np.full(len(lab_probe), np.nan)
                p_probe = float("nan")
            rows.append(_score_row(layer, "logistic_probe", float(acc_p[0]), p_probe, n, chance,
                                   acc_p[1:] if probe_ok else np.zeros(0), present))
            stats["logistic_probe"].append(stat_p)
            said.append(f"probe {acc_p[0]:.3f} (null {rows[-1]['null_mean']:.3f}, p {rows[-1]['p_perm']:.3g})")
        log(f"layer {layer}: " + "; ".join(said) + f"; chance {chance:.3f}")
    extra: dict[str, Any] = {}
    for m in methods:
        s = np.stack(stats[m]) if stats[m] else np.zeros((0, 1))  # (layers, 1 + P)
        best, p_max = layer_max_p(s)
        if best is None:
            extra[m] = {"best_layer": None, "best_accuracy": float("nan"), "p_perm_max_layer": float("nan"),
                        "n_permutations": 0}
            continue
        best_row = [r for r in rows if r["method"] == m][best]
        extra[m] = {
            "best_layer": int(corpus.layers[best]),
            "best_accuracy": float(best_row["accuracy"]),
            "p_perm_max_layer": p_max,
            "n_permutations": int(s.shape[1] - 1),
        }
    return rows, extra


def layer_max_p(stats: np.ndarray) -> tuple[int | None, float]:
    """The layer-max permutation test of a ``(layers, 1 + P)`` table of statistics (column 0:
    the observed labelling, then one column per permutation, the same permutations at every
    layer): the best layer's index and ``p = (1 + #{max over layers of a permutation >=
    observed max}) / (1 + P)``, exact whatever the dependence between layers. ``(None, nan)``
    when no layer has a finite statistic."""
    stats = np.asarray(stats, dtype=float)
    if stats.ndim != 2 or not stats.size or not np.isfinite(stats[:, 0]).any():
        return None, float("nan")
    best = int(np.nanargmax(stats[:, 0]))
    null_max = np.max(stats[:, 1:], axis=0) if stats.shape[1] > 1 else np.zeros(0)
    return best, permutation_p(float(stats[best, 0]), null_max)


# --------------------------------------------------------------------------------------------
# Variance shares


def between_share(xc: np.ndarray, labels: np.ndarray, total_ss: float) -> float:
    """``SS_between / SS_total`` of centred rows ``xc`` ``(n, d)`` grouped by ``labels``."""
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(np.asarray(labels)[order], return_index=True, return_counts=True)
    sums = np.add.reduceat(xc[order], starts, axis=0)  # (G, d) per-group sums, O(n d)
    ss_between = float(np.sum(np.einsum("gd,gd->g", sums, sums) / counts))
    return ss_between / total_ss if total_ss > 0 else float("nan")


def between_shares(xc: np.ndarray, labels: np.ndarray, total_ss: float) -> np.ndarray:
    """:func:`between_share` of many labellings ``(P, n)`` at once ``(P,)``."""
    labels = np.atleast_2d(np.asarray(labels))
    _, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    n_groups = int(inv.max()) + 1
    p_all, n = inv.shape
    if n * n_groups > 4_000_000:  # full scale (e.g. 17,100 cells of 10,260 stories): one labelling at a time
        return np.array([between_share(xc, lab, total_ss) for lab in inv])
    chunk = max(1, int(4_000_000 // max(1, n * n_groups)))
    out = np.empty(p_all)
    rows = np.arange(n)
    for start in range(0, p_all, chunk):
        lab = inv[start : start + chunk]
        p = len(lab)
        y = np.zeros((p, n_groups, n))
        y[np.arange(p)[:, None], lab, rows[None, :]] = 1.0
        counts = y.sum(axis=2)  # (p, G)
        sums = np.matmul(y, xc)  # (p, G, d) per-group sums
        out[start : start + p] = np.sum(np.sum(sums * sums, axis=2) / np.maximum(counts, 1), axis=1)
    return out / total_ss if total_ss > 0 else np.full(p_all, np.nan)


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


def _cells(emotion: np.ndarray, topic: np.ndarray) -> np.ndarray:
    return np.asarray(emotion) * (int(np.max(topic)) + 1) + np.asarray(topic)


def _factor_shares(data: np.ndarray, emotion: np.ndarray, topic: np.ndarray, emo_perms: np.ndarray,
                   topic_perms: np.ndarray) -> dict[str, dict[str, Any]]:
    """For one layer and scale: each factor's observed share, its chance level, its null draws
    and its test statistic (observed first, then one per permutation; see the module docstring
    for which null each factor uses)."""
    n = len(emotion)
    total = float(np.einsum("ij,ij->", data, data))
    cells = _cells(emotion, topic)
    topic_share = between_share(data, topic, total)
    emo_lab = np.vstack([emotion, emo_perms]) if len(emo_perms) else emotion[None, :]
    cell_lab = _cells(emo_lab, np.broadcast_to(topic, emo_lab.shape))
    emo_all = between_shares(data, emo_lab, total)
    cell_all = between_shares(data, cell_lab, total)
    topic_all = between_shares(data, np.vstack([topic, topic_perms]) if len(topic_perms) else topic[None, :], total)
    chance = {
        "emotion": expected_between_share(data, emotion, topic, total),
        "topic": expected_between_share(data, topic, emotion, total),
        "emotion x topic": expected_between_share(data, cells, topic, total),
    }
    out: dict[str, dict[str, Any]] = {}
    for name, values, groups, within in (
        ("emotion", emo_all, len(np.unique(emotion)), "topic"),
        ("topic", topic_all, len(np.unique(topic)), "emotion"),
        ("emotion x topic", cell_all, len(np.unique(cells)), "topic"),
    ):
        out[name] = {"share": float(values[0]), "null": values[1:], "chance": chance[name], "n_groups": groups,
                     "within": within, "stat": _adjusted(values, chance[name])}
    # Interaction = cell - emotion - topic (emotions shuffled within topics leave the topic share
    # as it is). Its chance level is what it is expected to be without an interaction, with any
    # main effects: E[SS_int] = df_int / df_within * E[SS_within cells] (balanced design, the same
    # noise in every cell). Its test statistic is the F-type ratio of the interaction's and the
    # within-cell sums of squares per degree of freedom, which main effects do not enter.
    df = out["emotion x topic"]["n_groups"] - out["emotion"]["n_groups"] - out["topic"]["n_groups"] + 1
    df_within = n - out["emotion x topic"]["n_groups"]
    interaction_all = cell_all - emo_all - topic_share
    within_all = 1.0 - cell_all
    if df > 0 and df_within > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            f_ratio = (interaction_all / df) / (within_all / df_within)
        chance_int = df / df_within * float(within_all[0])
    else:
        f_ratio = np.full(len(interaction_all), np.nan)
        chance_int = float("nan")
    out["interaction"] = {"share": float(interaction_all[0]), "null": interaction_all[1:], "chance": chance_int,
                          "n_groups": df, "within": "topic", "stat": f_ratio}
    return out


def _adjusted(share: np.ndarray | float, chance: float) -> np.ndarray | float:
    """Share beyond chance ``(share - chance) / (1 - chance)``."""
    return (share - chance) / (1 - chance) if chance < 1 else share * np.nan


VARIANCE_FACTORS = ("emotion", "topic", "emotion x topic", "interaction")
SCALES = ("raw", "standardised")


def _scaled(x: np.ndarray) -> dict[str, np.ndarray]:
    xc = np.asarray(x, dtype=np.float64)
    xc = xc - xc.mean(axis=0, keepdims=True)
    sd = xc.std(axis=0)
    return {"raw": xc, "standardised": xc / np.where(sd > 0, sd, 1.0)}


def _half_sample_interval(data: np.ndarray, emotion: np.ndarray, topic: np.ndarray, factor: str, n_draws: int,
                          rng: np.random.Generator) -> list[float]:
    """Normal 95% interval of a factor's share beyond chance by the delete-half jackknife: keep
    half of the stories of each emotion x topic cell (without replacement, so no story counts
    twice), recompute the share and its exact chance on the half, and use the spread of the
    halves around their mean as the variance of the whole-sample estimate (with half kept, the
    delete-d jackknife's factor is 1). Approximate; ``[nan, nan]`` when cells have one story."""
    cells = _cells(emotion, topic)
    members = [np.flatnonzero(cells == c) for c in np.unique(cells)]
    if max(len(m) for m in members) < 2 or n_draws < 2:
        return [float("nan"), float("nan")]
    values = []
    for _ in range(n_draws):
        keep = np.sort(np.concatenate([rng.choice(m, size=max(1, len(m) // 2), replace=False) for m in members]))
        xs = data[keep] - data[keep].mean(axis=0, keepdims=True)
        e, t = emotion[keep], topic[keep]
        f = _factor_shares(xs, e, t, np.zeros((0, len(keep)), dtype=np.int64), np.zeros((0, len(keep)), dtype=np.int64))
        values.append(float(_adjusted(f[factor]["share"], f[factor]["chance"])))
    values = np.asarray(values)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return [float("nan"), float("nan")]
    whole = _factor_shares(data, emotion, topic, np.zeros((0, len(emotion)), dtype=np.int64),
                           np.zeros((0, len(emotion)), dtype=np.int64))[factor]
    centre = float(_adjusted(whole["share"], whole["chance"]))
    half = Z95 * float(values.std(ddof=1))
    return [centre - half, centre + half]


def variance_analysis(
    corpus: Corpus,
    *,
    n_permutations: int = 200,
    seed: int = 0,
    n_interval_draws: int = 200,
) -> tuple[list[dict], dict]:
    """Variance shares per layer (``variance_shares``) and, per scale and factor, the
    layer-max permutation test of the share beyond chance (the same permutations at every
    layer: exact) with a delete-half jackknife interval at the best layer.

    Returns:
        ``(rows, extra)``: ``rows`` as :func:`variance_shares`; ``extra[scale][factor]`` =
        ``{best_layer, share, chance_expected, adjusted_share, ci, null_mean, null_p95,
        p_perm_max_layer, n_permutations, permuted_within}``.
    """
    emotion, topic = np.asarray(corpus.emotion), np.asarray(corpus.topic)
    n = len(emotion)
    rng = np.random.default_rng(seed)
    # One set of emotion permutations within topics for emotion, cell and interaction; topics
    # permuted within emotions for the topic.
    emo_perms = permute_within_many(emotion, topic, n_permutations, rng).astype(np.int64)
    topic_perms = permute_within_many(topic, emotion, n_permutations, rng).astype(np.int64)
    rows: list[dict] = []
    adjusted: dict[tuple[str, str], list[np.ndarray]] = {}
    found: dict[tuple[str, str], list[dict]] = {}
    for li, layer in enumerate(corpus.layers):
        for scale, data in _scaled(corpus.activations[:, li, :]).items():
            shares = _factor_shares(data, emotion, topic, emo_perms, topic_perms)
            for name in VARIANCE_FACTORS:
                f = shares[name]
                stat = np.asarray(f["stat"], dtype=float)
                p = permutation_p(float(stat[0]), stat[1:]) if np.isfinite(stat[0]) else float("nan")
                rows.append(_variance_row(layer, scale, name, f["n_groups"], f["share"], f["chance"], f["null"], n,
                                          f["within"], p))
                adjusted.setdefault((scale, name), []).append(stat)
                found.setdefault((scale, name), []).append(rows[-1])
    extra: dict[str, dict[str, Any]] = {s: {} for s in SCALES}
    for (scale, name), per_layer in adjusted.items():
        a = np.stack(per_layer)  # (layers, 1 + P)
        best, p_max = layer_max_p(a)
        if best is None:
            continue
        row = found[(scale, name)][best]
        ci = (  # the claims' interval: the emotion and the interaction, raw scale
            _half_sample_interval(_scaled(corpus.activations[:, best, :])[scale], emotion, topic, name,
                                  n_interval_draws, np.random.default_rng([seed, best, len(name)]))
            if scale == "raw" and name in ("emotion", "interaction") else [float("nan"), float("nan")]
        )
        extra[scale][name] = {
            "best_layer": int(corpus.layers[best]),
            "statistic": float(a[best, 0]),
            "statistic_name": "F ratio (interaction / within-cell sums of squares per df)" if name == "interaction"
            else "share beyond chance",
            "share": row["share"],
            "chance_expected": row["chance_expected"],
            "adjusted_share": row["adjusted_share"],
            "ci": ci,
            "null_mean": row["null_mean"],
            "null_p95": row["null_p95"],
            "p_perm": row["p_perm"],
            "p_perm_max_layer": p_max,
            "n_permutations": int(a.shape[1] - 1),
            "permuted_within": row["permuted_within"],
        }
    return rows, extra


def variance_shares(
    corpus: Corpus,
    *,
    n_permutations: int = 200,
    seed: int = 0,
) -> list[dict]:
    """Share of the stories' activation variance explained by emotion, topic and their cells.

    Returns one row per layer, scale (``raw``, ``standardised``) and factor (``emotion``,
    ``topic``, ``emotion x topic``, and the derived ``interaction`` = cell − emotion − topic)
    with ``VARIANCE_COLUMNS`` (see the module docstring for each factor's null and chance).
    """
    return variance_analysis(corpus, n_permutations=n_permutations, seed=seed, n_interval_draws=0)[0]


def _variance_row(layer, scale, factor, g, share, chance, null, n, within, p) -> dict:
    null = np.asarray(null, dtype=float)
    adjusted = _adjusted(share, chance)
    return {
        "layer": layer,
        "scale": scale,
        "factor": factor,
        "n_groups": int(g),
        "share": share,
        "chance_expected": chance,
        "adjusted_share": float(adjusted),
        "null_mean": float(null.mean()) if null.size else float("nan"),
        "null_p95": float(np.percentile(null, 95)) if null.size else float("nan"),
        "p_perm": p,
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


# --------------------------------------------------------------------------------------------
# Headline, claims and verdict

FAMILY = ("nearest_centroid", "logistic_probe", "recognisability")
CLAIM_IDS = {
    "nearest_centroid": "diagnostics.separability.nearest_centroid",
    "logistic_probe": "diagnostics.separability.logistic_probe",
    "recognisability": "diagnostics.recognisability",
    "per_emotion": "diagnostics.recognisability.per_emotion",
    "emotion": "diagnostics.variance.emotion",
    "interaction": "diagnostics.variance.interaction",
    "verdict": "diagnostics.verdict",
}
FIGURE = "diagnostics/separability.png"


def headline(
    sep_rows: list[dict],
    sep_extra: dict,
    var_rows: list[dict],
    recog_rows: list[dict] | None = None,
    *,
    var_extra: dict | None = None,
    alpha: float = 0.05,
) -> dict:
    """The headline numbers of ``summary.json`` and the verdict after correction.

    - ``separability[method]``: the best layer's accuracy (Wilson 95%), chance, ratio, its null,
      its per-layer p, the layer-max permutation p (``p_perm_max_layer``) and that p after Holm
      over the verdict's family (``p_holm``).
    - ``variance_shares[factor]`` (raw scale): the layer-max test of the share beyond chance
      (``var_extra``; without it, the rows at the nearest centroid's best layer).
    - ``recognisability``: the judge's overall share, its binomial p against chance and
      ``p_holm``; ``per_emotion``: the AUC tests corrected over the emotions (Holm, BH).
    - ``family``: the tests the verdict combines (each method's layer-max p and the overall
      recognisability p), Holm-corrected together; ``separable`` / ``recognisable`` and
      ``verdict`` follow the corrected p-values.
    """
    out: dict[str, Any] = {"separability": {}, "variance_shares": {}, "recognisability": None, "alpha": alpha}
    for method in METHODS:
        rows = [r for r in sep_rows if r["method"] == method and np.isfinite(r["accuracy"])]
        if not rows:
            continue
        ex = sep_extra.get(method, {}) or {}
        at = [r for r in rows if r["layer"] == ex.get("best_layer")]
        best = at[0] if at else max(rows, key=lambda r: r["accuracy"])
        out["separability"][method] = {
            "best_layer": best["layer"],
            "accuracy": best["accuracy"],
            "ci": [best["ci_low"], best["ci_high"]],
            "chance": best["chance"],
            "ratio_to_chance": best["accuracy"] / best["chance"] if best["chance"] else float("nan"),
            "null_mean": best["null_mean"],
            "null_p95": best["null_p95"],
            "p_perm": best["p_perm"],
            "p_perm_max_layer": ex.get("p_perm_max_layer"),
            "n_permutations": int(best["n_permutations"]),
            "layers_above_null_p95": sum(1 for r in rows if r["accuracy"] > r["null_p95"]),
            "n_layers": len(rows),
        }
    if var_extra and var_extra.get("raw"):
        for factor, v in var_extra["raw"].items():
            out["variance_shares"][factor] = dict(v)
        out["variance_shares"]["scale"] = "raw"
    else:
        nc = out["separability"].get("nearest_centroid")
        if nc:
            layer = nc["best_layer"]
            for r in var_rows:
                if r["layer"] == layer and r["scale"] == "raw":
                    out["variance_shares"][r["factor"]] = {
                        k: r[k] for k in ("share", "chance_expected", "adjusted_share", "p_perm", "n_permutations")
                    }
            out["variance_shares"]["layer"] = layer
    if recog_rows:
        overall = next((r for r in recog_rows if r["emotion"] == "(all)"), None)
        if overall:
            keys = ("n", "correct", "share", "ci_low", "ci_high", "chance", "p_binom", "share_centred", "auc", "p_auc")
            out["recognisability"] = {k: overall[k] for k in keys if k in overall}
            out["recognisability"]["ratio_to_chance"] = overall["share"] / overall["chance"]
            out["recognisability"]["per_emotion"] = _per_emotion(recog_rows, alpha)
    claims = diagnostics_claims(out)
    by_id = {c.id: c for c in claims}
    family = {}
    for name in FAMILY:
        c = by_id.get(CLAIM_IDS[name])
        if c is None:
            continue
        family[name] = {"p": c.p, "p_holm": c.p_adjusted, "verdict": c.verdict, "note": c.note}
        target = out["recognisability"] if name == "recognisability" else out["separability"].get(name)
        if target is not None:
            target["p_holm"] = c.p_adjusted
            target["verdict"] = c.verdict
    verdict_claim = by_id[CLAIM_IDS["verdict"]]
    out["family"] = {
        "tests": family,
        "correction": verdict_claim.correction,
        "m": verdict_claim.family,
        "p_family": verdict_claim.p_adjusted,
        "verdict": verdict_claim.verdict,
    }
    sep_verdicts = [family[m]["verdict"] for m in METHODS if m in family and m in out["separability"]]
    out["separable"] = any(v == "effect" for v in sep_verdicts)
    out["separability_testable"] = any(v != "not testable" for v in sep_verdicts)
    out["recognisable"] = (family["recognisability"]["verdict"] == "effect") if out["recognisability"] else None
    for factor in ("emotion", "interaction"):
        c = by_id.get(CLAIM_IDS[factor])
        if c is not None and factor in out["variance_shares"]:
            out["variance_shares"][factor]["verdict"] = c.verdict
    out["verdict"] = _verdict(out)
    return json_safe(out)


def _per_emotion(recog_rows: list[dict], alpha: float) -> dict:
    """The per-emotion family of recognisability tests, corrected over the emotions: Holm and BH
    of the AUC test (what the claim uses: a judge's preference for a word cannot inflate it) and
    of the binomial test (shown, not claimed: a judge that prefers a word after every story
    "recognises" that word's stories)."""
    from ..core.claims import bh, holm

    rows = [r for r in recog_rows if r["emotion"] != "(all)"]
    out: dict[str, Any] = {"n_emotions": len(rows)}
    for test in ("p_auc", "p_binom"):
        p = np.array([float(r.get(test, np.nan)) for r in rows], dtype=float)
        ok = np.isfinite(p)
        h, b = holm(p), bh(p)
        out[test] = {
            "n_tested": int(ok.sum()),
            "n_uncorrected": int(np.sum(p[ok] < alpha)),
            "n_holm": int(np.sum(h[ok] < alpha)),
            "n_bh": int(np.sum(b[ok] < alpha)),
            "emotions_holm": [r["emotion"] for r, v in zip(rows, h) if np.isfinite(v) and v < alpha],
            "min_p_holm": float(np.nanmin(h)) if ok.any() else float("nan"),
        }
    aucs = np.array([float(r.get("auc", np.nan)) for r in rows], dtype=float)
    aucs = aucs[np.isfinite(aucs)]
    out["mean_auc"] = float(aucs.mean()) if aucs.size else float("nan")
    if aucs.size > 1:
        from scipy.stats import t

        half = float(t.ppf(0.975, aucs.size - 1) * aucs.std(ddof=1) / np.sqrt(aucs.size))
        out["mean_auc_ci"] = [out["mean_auc"] - half, out["mean_auc"] + half]
    else:
        out["mean_auc_ci"] = [float("nan"), float("nan")]
    return out


def _num(v: Any) -> float | None:
    return float(v) if v is not None and np.isfinite(float(v)) else None


def diagnostics_claims(summary: Mapping[str, Any]) -> list[Any]:
    """The corpus diagnostics' claims (``emotion_vectors.core.claims.Claim``) from a headline
    (:func:`headline`'s dict, before or after JSON): each separability method and the overall
    recognisability, Holm-corrected together (the verdict's family); the family's verdict; the
    emotion and interaction variance shares (raw scale, layer-max tests); and the per-emotion
    recognisability family (AUC tests, Holm over the emotions)."""
    from ..core.claims import family_claims

    alpha = float(summary.get("alpha", 0.05) or 0.05)
    sep = summary.get("separability", {}) or {}
    rec = summary.get("recognisability")
    fam = _separability_family(sep, rec, alpha)
    fam = family_claims(fam, method="holm") if fam else []
    out = [_family_verdict(fam, alpha), *fam]
    out += _variance_claims(summary.get("variance_shares", {}) or {}, alpha)
    out.append(_per_emotion_claim(rec, alpha))
    return out


def _separability_family(sep: Mapping[str, Any], rec: Mapping[str, Any] | None, alpha: float) -> list[Any]:
    """The verdict's family before correction: one claim per separability method (layer-max
    permutation tests) and the judge's recognisability (exact binomial test)."""
    from ..core.claims import make_claim

    members = [m for m in METHODS if m in sep] + (["recognisability"] if rec else [])
    m_family = max(1, len(members))
    fam: list[Any] = []
    texts = {
        "nearest_centroid": ("the stories' activations tell their emotions apart above chance: leave-one-out "
                             "nearest centroid (cosine, centred activations), at the best layer"),
        "logistic_probe": ("the stories' activations tell their emotions apart above chance: cross-validated "
                           "logistic probe (standardised, PCA, L2; folds stratified on topic), at the best layer"),
    }
    for m in METHODS:
        if m not in sep:
            fam.append(make_claim(CLAIM_IDS[m], "diagnostics", texts[m], test="layer-max permutation test",
                                  null="emotion labels shuffled within topics", statistic=None, p=None, alpha=alpha,
                                  figure=FIGURE, note="not testable: no finite accuracy (a class with fewer than 2 "
                                  "stories, or the method was not run)"))
            continue
        s = sep[m]
        n_perm = int(s.get("n_permutations") or 0)
        fam.append(make_claim(
            CLAIM_IDS[m], "diagnostics", texts[m],
            test=("layer-max permutation test: the best layer's accuracy (ties broken by the mean "
                  f"{'cosine with the own leave-one-out centroid' if m == 'nearest_centroid' else 'out-of-fold probability of the own label'}) "
                  "against the best layer of each permutation, the same permutations at every layer; "
                  "p = (1 + #null >= observed) / (1 + permutations)"),
            null=f"emotion labels shuffled within topics ({n_perm} permutations): the activations carry nothing about the emotion",
            statistic=_num(s.get("accuracy")), p=_num(s.get("p_perm_max_layer")), n_null=n_perm,
            family=m_family, interval=[_num(x) for x in s.get("ci", [None, None])],
            interval_of=(f"accuracy at the best layer (block {s.get('best_layer')}), Wilson 95%; chance "
                         f"{_fmt(s.get('chance'))}, null mean {_fmt(s.get('null_mean'))}"),
            alpha=alpha, figure=FIGURE,
            extra={k: s.get(k) for k in ("best_layer", "chance", "ratio_to_chance", "null_mean", "null_p95", "p_perm",
                                         "layers_above_null_p95", "n_layers")},
        ))
    rec_text = ("a judge model recovers the stories' emotions above chance (multiple choice among the target and "
                "random other emotions of the run)")
    if not rec:
        fam.append(make_claim(CLAIM_IDS["recognisability"], "diagnostics", rec_text,
                              test="one-sided exact binomial test against chance", null="the judge's choice does not "
                              "depend on the story's emotion", statistic=None, p=None, alpha=alpha,
                              note="not testable: no recognisability table"))
    else:
        fam.append(make_claim(
            CLAIM_IDS["recognisability"], "diagnostics", rec_text,
            test="one-sided exact binomial test of the stories judged correctly against chance (1 / options)",
            null=("the judge's choice does not depend on the story's emotion: each story correct with probability "
                  "1 / options (exact for a corpus with as many stories per emotion, whatever the judge prefers)"),
            statistic=_num(rec.get("share")), p=_num(rec.get("p_binom")), family=m_family,
            interval=[_num(rec.get("ci_low")), _num(rec.get("ci_high"))],
            interval_of=f"share of stories recognised, Wilson 95% (chance {_fmt(rec.get('chance'))}, n = {rec.get('n')})",
            alpha=alpha, extra={k: rec.get(k) for k in ("n", "correct", "chance", "ratio_to_chance", "share_centred", "auc")},
        ))
    return fam


def _family_verdict(fam: list[Any], alpha: float) -> Any:
    """The family's verdict: its smallest Holm-adjusted p (not testable when no member has one)."""
    from ..core.claims import EFFECT, make_claim

    tested = [c for c in fam if c.p_adjusted is not None]
    n_effect = sum(c.verdict == EFFECT for c in fam)
    verdict_text = ("the corpus carries its emotions: at least one of the separability methods or the judge's "
                    "recognisability rejects its null after Holm correction over the family")
    common = dict(
        test="the smallest Holm-adjusted p of the family (" + ", ".join(c.id for c in fam) + ")",
        null="none of the family's nulls is false (global null: the corpus carries nothing about the emotions)",
        alpha=alpha, figure=FIGURE,
        extra={"members": {c.id: {"p": c.p, "p_adjusted": c.p_adjusted, "verdict": c.verdict} for c in fam},
               "n_effect_after_holm": n_effect},
    )
    if tested:
        best = min(tested, key=lambda c: c.p_adjusted)
        verdict = make_claim(CLAIM_IDS["verdict"], "diagnostics", verdict_text, statistic=float(n_effect),
                             p=best.p_adjusted, correction=f"Holm over {len(tested)} tests", family=len(tested),
                             interval=best.interval, interval_of=f"{best.id}: {best.interval_of}",
                             note=f"statistic: tests with an effect after Holm ({n_effect} of {len(fam)}); smallest: {best.id}",
                             **common)
    else:
        why = "; ".join(f"{c.id}: {c.note}" for c in fam if c.note) or "no test of the family has a p-value"
        verdict = make_claim(CLAIM_IDS["verdict"], "diagnostics", verdict_text, statistic=float(n_effect), p=None,
                             note=f"not testable: {why}", **common)
    return verdict


def _variance_claims(var: Mapping[str, Any], alpha: float) -> list[Any]:
    """The emotion and interaction variance shares (raw scale, layer-max permutation tests)."""
    from ..core.claims import make_claim

    out: list[Any] = []
    var_text = {
        "emotion": "the emotion explains more of the stories' activation variance (raw) than labels shuffled within topics",
        "interaction": "the emotion's effect on the activations differs between topics (emotion x topic interaction, raw)",
    }
    var_test = {
        "emotion": ("layer-max permutation test of the emotion's share of variance beyond its exact chance "
                    "expectation; p = (1 + #null >= observed) / (1 + permutations)"),
        "interaction": ("layer-max permutation test of the F-type ratio (interaction / within-cell sums of squares "
                        "per degree of freedom); p = (1 + #null >= observed) / (1 + permutations)"),
    }
    var_null = {
        "emotion": "emotion labels shuffled within topics: the emotion carries nothing (topic effects kept)",
        "interaction": ("emotion labels shuffled within topics: the emotion carries nothing, neither main effect nor "
                        "interaction (exact); with an emotion main effect and no interaction the ratio's null stays "
                        "close to nominal (simulated)"),
    }
    for factor in ("emotion", "interaction"):
        v = var.get(factor) or {}
        if v.get("p_perm_max_layer") is None:
            out.append(make_claim(CLAIM_IDS[factor], "diagnostics", var_text[factor], test=var_test[factor],
                                  null=var_null[factor], statistic=_num(v.get("adjusted_share")), p=None, alpha=alpha,
                                  figure=FIGURE, note="not testable: no layer-max test (too few stories per cell, "
                                  "or no permutations)"))
            continue
        n_perm = int(v.get("n_permutations") or 0)
        out.append(make_claim(
            CLAIM_IDS[factor], "diagnostics", var_text[factor], test=var_test[factor],
            null=f"{var_null[factor]} ({n_perm} permutations)",
            statistic=_num(v.get("adjusted_share")), p=_num(v.get("p_perm_max_layer")), n_null=n_perm,
            interval=[_num(x) for x in v.get("ci", [None, None])],
            interval_of=(f"share beyond chance at the best layer (block {v.get('best_layer')}): delete-half "
                         "jackknife (half of each emotion x topic cell), normal 95%, approximate"),
            alpha=alpha, figure=FIGURE,
            extra={k: v.get(k) for k in ("best_layer", "share", "chance_expected", "null_mean", "null_p95", "p_perm",
                                         "statistic", "statistic_name")},
        ))
    return out


def _per_emotion_claim(rec: Mapping[str, Any] | None, alpha: float) -> Any:
    """The per-emotion recognisability family (AUC tests, Holm over the emotions) as one claim."""
    from ..core.claims import make_claim

    per = (rec or {}).get("per_emotion") or {}
    per_text = ("for at least one emotion, the judge scores the emotion's word higher after that emotion's stories "
                "than after other emotions' stories")
    per_test = ("per emotion, one-sided Mann-Whitney test of the word's (calibrated) score after its own stories "
                "against after other stories it was offered for (AUC); the family's smallest Holm-adjusted p")
    per_null = "the stories carry nothing about their emotion (a word's score does not depend on the story's label)"
    if not (per.get("p_auc") or {}).get("n_tested"):
        return make_claim(CLAIM_IDS["per_emotion"], "diagnostics", per_text, test=per_test, null=per_null,
                          statistic=None, p=None, alpha=alpha, note="not testable: no per-emotion AUC test")
    a = per["p_auc"]
    m = int(a["n_tested"])
    p_min = _num(a.get("min_p_holm"))
    return make_claim(
        CLAIM_IDS["per_emotion"], "diagnostics", per_text, test=per_test, null=per_null,
        statistic=float(a["n_holm"]), p=p_min, p_adjusted=p_min, correction=f"Holm over {m} emotions", family=m,
        interval=[_num(x) for x in per.get("mean_auc_ci", [None, None])],
        interval_of="mean AUC over emotions, t 95% interval (0.5 = nothing)",
        alpha=alpha,
        note=(f"statistic: emotions whose AUC test survives Holm ({a['n_holm']} of {m}; BH: {a['n_bh']}; "
              f"uncorrected: {a['n_uncorrected']}). The per-emotion binomial test is not claimed: a judge that "
              f"prefers a word after every story passes it for that word's stories"),
        extra={"emotions_holm": a.get("emotions_holm", []), "n_bh": a.get("n_bh"),
               "binomial": per.get("p_binom"), "mean_auc": per.get("mean_auc")},
    )


def _fmt(v: Any) -> str:
    return f"{float(v):.3g}" if v is not None and np.isfinite(float(v)) else "n/a"


def _verdict(h: dict) -> str:
    sep = h.get("separable")
    rec = h.get("recognisable")
    after = " (after Holm correction over the verdict's tests)"
    if not h.get("separability_testable", True) and not rec:
        return ("not testable: the permutation nulls are too small to reject after correction" + after +
                ("; the judge does not recognise the emotions above chance" if rec is False else ""))
    if sep and rec:
        return "the corpus carries its emotions: activations separate them and a judge recognises them above chance" + after
    if sep and rec is False:
        return ("activations separate the emotions above chance, but the judge does not recognise them: check what "
                "separates them (topic, length, style)" + after)
    if rec and not sep:
        return "a judge recognises the emotions, but the subject's activations do not separate them above chance" + after
    if rec is None:
        return ("activations separate the emotions above chance" if sep else "activations do not separate the emotions above chance") + after
    return ("the corpus carries nothing measurable about its emotions: neither the activations nor the judge tell "
            "them apart above chance" + after + "; do not read the vectors' geometry")
