"""Emotion vectors from the activation shards.

Per layer ``l`` (shapes: ``E`` emotions, ``d`` hidden size):

1. ``mean[e] = mean over emotion e's stories of the pooled activation`` -> ``(E, d)``;
2. ``raw[e] = mean[e] - mean over emotions of mean[e']`` (emotion mean minus grand mean, the
   grand mean taken over emotions so that each emotion weighs the same);
3. neutral PCA: centre the neutral dialogues' activations, take the top components that
   together explain ``denoise_variance`` of their variance (``k`` of them, ``V_k`` ``(k, d)``);
4. ``denoised = raw - raw @ V_k.T @ V_k`` (those directions projected out);
5. unit-normalised copies of both, and the mean residual-stream norm per layer (mean over all
   emotion stories of the per-token L2 norm), the unit in which steering strength is given.

All shards (the neutral one included) must come from the same model and extraction: the store
refuses a shard whose model path, revision, dtype, quantization, layers, pooling or storage type
differs from the neutral shard's, naming the shard and the setting (``check_same_origin``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..extraction.shards import open_shard
from .store_layout import write_store

# What must agree between the shards that one store averages (see ``shard_origin``).
ORIGIN_MODEL_KEYS = ("path", "revision", "dtype", "quantization", "quantization_config")
ORIGIN_EXTRACTION_KEYS = ("layers", "layer_convention", "pool_start", "pooling", "short_text_policy", "storage_dtype", "hidden_size")


class ShardMismatchError(ValueError):
    """Shards made by different models or extraction settings cannot be mixed in one store."""


def shard_origin(attrs: dict[str, Any]) -> dict[str, Any]:
    """The settings of a shard that decide what its numbers mean: ``{"model.dtype": ..., "pool_start": ...}``."""
    model = attrs.get("model") or {}
    origin = {f"model.{k}": model.get(k) for k in ORIGIN_MODEL_KEYS}
    origin.update({k: attrs.get(k) for k in ORIGIN_EXTRACTION_KEYS})
    return origin


def check_same_origin(reference: tuple[str, dict[str, Any]], other: tuple[str, dict[str, Any]]) -> None:
    """Raise ``ShardMismatchError`` naming ``other``'s shard and every setting that differs from
    ``reference``'s. Each argument is ``(shard path, shard attrs)``."""
    (ref_name, ref_attrs), (name, attrs) = reference, other
    want, got = shard_origin(ref_attrs), shard_origin(attrs)
    diffs = [f"{k}: {got[k]!r} (vs {want[k]!r})" for k in want if got[k] != want[k]]
    if diffs:
        raise ShardMismatchError(
            f"shard {name} was made with other settings than {ref_name}: " + "; ".join(diffs)
            + ". Rebuild it with the run's model and extraction settings (snakemake --force <shard>)."
        )


@dataclass
class NeutralPCs:
    """Top principal components of the neutral activations at one layer."""

    components: np.ndarray  # (k, d) orthonormal rows
    explained_ratio: np.ndarray  # (n_components_total,) variance share of every component
    k: int


def neutral_components(neutral: np.ndarray, share: float) -> NeutralPCs:
    """The fewest principal components of ``neutral`` ``(n, d)`` that explain ``share`` of its
    variance (``share = 0``: none). Computed by SVD of the centred data (no ``d x d`` matrix)."""
    x = np.asarray(neutral, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    var = s**2
    total = var.sum()
    ratio = var / total if total > 0 else np.zeros_like(var)
    if share <= 0 or total == 0:
        k = 0
    else:
        k = int(np.searchsorted(np.cumsum(ratio), share - 1e-12) + 1)
        k = min(k, len(ratio))
    return NeutralPCs(components=vt[:k], explained_ratio=ratio, k=k)


def project_out(vectors: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Remove the span of orthonormal ``components`` ``(k, d)`` from ``vectors`` ``(n, d)``."""
    if components.shape[0] == 0:
        return vectors.copy()
    return vectors - (vectors @ components.T) @ components


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.where(norms > 0, vectors / np.where(norms > 0, norms, 1), 0.0)


def emotion_vectors(means: np.ndarray, neutral: np.ndarray, share: float) -> dict[str, Any]:
    """Vectors for one layer.

    Args:
        means: ``(E, d)`` mean activation per emotion.
        neutral: ``(n_neutral, d)`` pooled activations of the neutral dialogues.
        share: ``denoise_variance``.

    Returns:
        dict with ``raw``, ``denoised``, ``raw_unit``, ``denoised_unit`` ``(E, d)`` float32,
        ``k`` (components removed) and ``neutral_explained`` (variance share of each).
    """
    means = np.asarray(means, dtype=np.float64)
    raw = means - means.mean(axis=0, keepdims=True)
    pcs = neutral_components(neutral, share)
    denoised = project_out(raw, pcs.components)
    return {
        "raw": raw.astype(np.float32),
        "denoised": denoised.astype(np.float32),
        "raw_unit": unit(raw).astype(np.float32),
        "denoised_unit": unit(denoised).astype(np.float32),
        "k": pcs.k,
        "neutral_explained": pcs.explained_ratio[: max(pcs.k, 10)].astype(np.float32),
    }


def _extraction_attrs(neutral: Any, denoise_variance: float, n_neutral: int) -> dict[str, Any]:
    """The store attributes that say how its vectors were read and denoised (from the neutral
    shard, whose origin every emotion shard shares)."""
    return {
        "layer_convention": neutral.attrs["layer_convention"],
        "num_hidden_layers": neutral.attrs.get("num_hidden_layers"),
        "pool_start": neutral.attrs["pool_start"],
        "denoise_variance": denoise_variance,
        "n_neutral": n_neutral,
    }


def open_checked_shards(emotion_shards: dict[str, str | Path], neutral_shard: str | Path) -> tuple[Any, dict[str, Any]]:
    """Open the neutral shard and every emotion's shard, checking each emotion shard's origin
    against the neutral one's before any activations are read (a mismatch fails in seconds).
    Returns ``(neutral, {emotion: shard})``."""
    neutral = open_shard(neutral_shard)
    reference = (str(neutral_shard), dict(neutral.attrs))
    shards = {}
    for emotion, path in emotion_shards.items():
        shards[emotion] = open_shard(path)
        check_same_origin(reference, (str(path), dict(shards[emotion].attrs)))
    return neutral, shards


def build_vector_store(
    emotion_shards: dict[str, str | Path],
    neutral_shard: str | Path,
    out: str | Path,
    *,
    denoise_variance: float,
    provenance: dict[str, Any],
) -> list[dict[str, Any]]:
    """Read the shards, compute the vectors at every layer, write the store ``out``.

    Reads one shard at a time (memory ~ one emotion's activations). Writes the store through
    ``store_layout.write_store`` (the one writer of the layout; the residual norm is measured
    here) and returns tidy rows (one per emotion and layer) for the table.
    """
    emotions = list(emotion_shards)
    neutral, shards = open_checked_shards(emotion_shards, neutral_shard)
    layers = list(neutral.attrs["layers"])
    model = neutral.attrs["model"]
    means, n_stories, norm_sum, norm_n = [], [], 0.0, 0
    for emotion in emotions:
        shard = shards[emotion]
        acts = np.asarray(shard["activations"][:], dtype=np.float64)  # (n, L, d)
        if acts.shape[0] == 0:
            raise ValueError(f"emotion {emotion!r}: no stories survived extraction (all too short?)")
        means.append(acts.mean(axis=0))
        n_stories.append(acts.shape[0])
        tn = np.asarray(shard["token_norm"][:], dtype=np.float64)
        norm_sum = norm_sum + tn.sum(axis=0)
        norm_n += tn.shape[0]
    means_arr = np.stack(means)  # (E, L, d)
    neutral_acts = np.asarray(neutral["activations"][:], dtype=np.float64)  # (n, L, d)
    E, L, d = means_arr.shape
    raw_all = np.zeros((E, L, d), dtype=np.float32)
    denoised_all = np.zeros((E, L, d), dtype=np.float32)
    k_removed = np.zeros(L, dtype=np.int64)
    rows = []
    for li in range(L):
        res = emotion_vectors(means_arr[:, li], neutral_acts[:, li], denoise_variance)
        raw_all[:, li], denoised_all[:, li] = res["raw"], res["denoised"]
        k_removed[li] = res["k"]
        raw_n = np.linalg.norm(res["raw"], axis=1)
        den_n = np.linalg.norm(res["denoised"], axis=1)
        cos = np.einsum("ij,ij->i", res["raw_unit"], res["denoised_unit"])
        for e, emotion in enumerate(emotions):
            rows.append(
                {
                    "emotion": emotion,
                    "layer": layers[li],
                    "n_stories": n_stories[e],
                    "raw_norm": float(raw_n[e]),
                    "denoised_norm": float(den_n[e]),
                    "cos_raw_denoised": float(cos[e]),
                    "neutral_pcs_removed": int(res["k"]),
                    "neutral_variance_removed": float(res["neutral_explained"][: res["k"]].sum()),
                }
            )
    write_store(
        out,
        emotions=emotions,
        layers=layers,
        raw=raw_all,
        denoised=denoised_all,
        residual_norm=(norm_sum / max(norm_n, 1)).astype(np.float32),
        n_neutral_pcs_removed=k_removed,
        n_stories=np.asarray(n_stories, dtype=np.int64),
        attrs={
            **_extraction_attrs(neutral, denoise_variance, int(neutral_acts.shape[0])),
            "definition": "raw = emotion mean - mean over emotions; denoised = raw with the top neutral PCs (denoise_variance of neutral variance) projected out; *_unit = L2-normalised rows",
            "residual_norm_definition": "mean over emotion stories of the mean per-token L2 norm of the residual stream over the pooled window",
            "provenance": dict(provenance, subject_model=model),
        },
    )
    return rows


# --------------------------------------------------------------------------------------------
# Shuffled-label vectors: the matched null of "emotion-specific"

#: Row names of a shuffled-label store: ``f"{emotion}{SHUFFLE_SEP}{k}"``.
SHUFFLE_SEP = "@shuffle"


def shuffled_name(emotion: str, k: int) -> str:
    """The row of ``emotion``'s pseudo vector in shuffle ``k`` of a shuffled-label store."""
    return f"{emotion}{SHUFFLE_SEP}{int(k)}"


def shuffled_sets(store: Any) -> list[list[str]]:
    """For each shuffle ``k`` of a shuffled-label store (``read_store`` result or its
    ``emotions`` list), its row names in the real store's emotion order."""
    names = list(getattr(store, "emotions", store))
    attrs = getattr(store, "attrs", {}) or {}
    source = list(attrs.get("source_emotions") or [])
    n = attrs.get("n_shuffles")
    if not source or n is None:
        raise ValueError("not a shuffled-label store: attributes source_emotions / n_shuffles are missing")
    sets = [[shuffled_name(e, k) for e in source] for k in range(int(n))]
    missing = [r for s in sets for r in s if r not in names]
    if missing:
        raise ValueError(f"shuffled-label store lacks rows {missing[:3]} (of {len(missing)})")
    return sets


def shuffle_labels(emotion: np.ndarray, topic: np.ndarray, n_shuffles: int, seed: int) -> np.ndarray:
    """``(n_shuffles, n)`` emotion labels permuted among the stories of each topic: every
    emotion keeps its number of stories in every topic (same counts, same topic balance), and
    under the null "activations do not depend on the emotion label" each shuffle's groups are
    distributed exactly as the real ones. Shuffle ``k`` is the same for every seed-``seed`` call."""
    from .diagnostics import permute_within

    emotion = np.asarray(emotion)
    topic = np.asarray(topic)
    out = np.empty((int(n_shuffles), emotion.size), dtype=emotion.dtype)
    for k in range(int(n_shuffles)):
        out[k] = permute_within(emotion, topic, np.random.default_rng([int(seed), k]))
    return out


def _story_labels(emotions: list[str], emotion_shards: dict[str, str | Path], shards: dict[str, Any],
                  story_shards: dict[str, str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """Each activation row's emotion index and topic index, in shard order (ids only, no
    activations read)."""
    from .diagnostics import read_story_topics

    emo, top = [], []
    for e_idx, emotion in enumerate(emotions):
        ids = list(shards[emotion].attrs["ids"])
        topics_of = read_story_topics(story_shards[emotion])
        missing = [i for i in ids if i not in topics_of]
        if missing:
            raise ValueError(f"activation shard {emotion_shards[emotion]} holds stories missing from "
                             f"{story_shards[emotion]} (e.g. {missing[:3]}): rebuild it")
        emo += [e_idx] * len(ids)
        top += [topics_of[i] for i in ids]
    return np.asarray(emo, dtype=np.int64), np.asarray(top, dtype=np.int64)


def build_shuffled_store(
    emotion_shards: dict[str, str | Path],
    story_shards: dict[str, str | Path],
    neutral_shard: str | Path,
    out: str | Path,
    *,
    n_shuffles: int,
    seed: int,
    denoise_variance: float,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Shuffled-label vectors: ``n_shuffles`` stores' worth of pseudo-emotion vectors, built
    exactly as the real ones (``emotion_vectors``: emotion mean − mean over emotions, the same
    neutral PCs projected out, the same residual norm) from the same story activations with the
    emotion labels permuted within topic (:func:`shuffle_labels`).

    The store ``out`` has the vector-store layout; its rows are :func:`shuffled_name` ``(e, k)``
    for every shuffle ``k`` and run emotion ``e`` (:func:`shuffled_sets`). Memory: the sums
    ``(n_shuffles, E, L, d)`` float64 plus one shard's activations. Returns a summary.
    """
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be at least 1, got {n_shuffles}")
    emotions = list(emotion_shards)
    missing = [e for e in emotions if e not in story_shards]
    if missing:
        raise ValueError(f"no story shard for emotions {missing}")
    neutral, shards = open_checked_shards(emotion_shards, neutral_shard)
    layers = list(neutral.attrs["layers"])
    emo, top = _story_labels(emotions, emotion_shards, shards, story_shards)
    labels = shuffle_labels(emo, top, n_shuffles, seed)  # (K, n)
    E, K = len(emotions), int(n_shuffles)
    sums = None
    counts = np.zeros((K, E), dtype=np.int64)
    norm_sum, norm_n, start = 0.0, 0, 0
    for emotion in emotions:
        shard = shards[emotion]
        acts = np.asarray(shard["activations"][:], dtype=np.float64)  # (n, L, d)
        n = acts.shape[0]
        if sums is None:
            sums = np.zeros((K, E, *acts.shape[1:]), dtype=np.float64)
        for k in range(K):
            lab = labels[k, start:start + n]
            np.add.at(sums[k], lab, acts)
            counts[k] += np.bincount(lab, minlength=E)
        tn = np.asarray(shard["token_norm"][:], dtype=np.float64)
        norm_sum = norm_sum + tn.sum(axis=0)
        norm_n += tn.shape[0]
        start += n
    if sums is None or start != emo.size:
        raise ValueError("the activation shards changed while they were read")
    if np.any(counts == 0):
        raise ValueError("an emotion has no stories: shuffled-label vectors need every emotion")
    means = sums / counts[:, :, None, None]  # (K, E, L, d)
    neutral_acts = np.asarray(neutral["activations"][:], dtype=np.float64)
    L, d = means.shape[2], means.shape[3]
    raw_all = np.zeros((K * E, L, d), dtype=np.float32)
    den_all = np.zeros((K * E, L, d), dtype=np.float32)
    k_removed = np.zeros(L, dtype=np.int64)
    for li in range(L):
        pcs = neutral_components(neutral_acts[:, li], denoise_variance)
        k_removed[li] = pcs.k
        for k in range(K):
            raw = means[k, :, li] - means[k, :, li].mean(axis=0, keepdims=True)
            raw_all[k * E:(k + 1) * E, li] = raw
            den_all[k * E:(k + 1) * E, li] = project_out(raw, pcs.components)
    names = [shuffled_name(e, k) for k in range(K) for e in emotions]
    write_store(
        out, emotions=names, layers=layers, raw=raw_all, denoised=den_all,
        residual_norm=(norm_sum / max(norm_n, 1)).astype(np.float32),
        n_neutral_pcs_removed=k_removed, n_stories=counts.reshape(-1),
        attrs={
            **_extraction_attrs(neutral, denoise_variance, int(neutral_acts.shape[0])),
            "source_emotions": emotions,
            "n_shuffles": K,
            "shuffle_seed": int(seed),
            "shuffled_within": "topic",
            "definition": ("shuffled-label vectors: the run's emotion vectors rebuilt with the stories' "
                           "emotion labels permuted within topic (same counts per emotion and topic), "
                           "n_shuffles times; rows '<emotion>@shuffle<k>'; same neutral denoising and "
                           "residual norm as the real store"),
            "provenance": dict(provenance, subject_model=neutral.attrs["model"]),
        },
    )
    return {"n_shuffles": K, "n_emotions": E, "n_stories": int(emo.size), "layers": layers,
            "share_relabelled": float(np.mean(labels != emo[None, :]))}
