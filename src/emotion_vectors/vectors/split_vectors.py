"""Split-half emotion vectors: the vectors of one subject built twice, from two disjoint halves of
each emotion's stories.

Two subjects of one run read the same stories, so comparing their vectors directly mixes shared
emotion geometry with the idiosyncrasies of the particular texts both read. Comparing one
subject's half-0 vectors with the other's half-1 vectors (and the reverse) removes the shared
texts (``emotion_vectors.analysis.compare``, "cross-fitted").

**Halves** are fixed by the story shard, not by the activation shard: within each (emotion,
topic), the stories in the story shard's order alternate half 0, half 1, half 0, ... So the same
story is in the same half for every subject, whatever texts a subject's extraction skipped as too
short; half 0 of one subject and half 1 of another never share a text. Each half keeps every
topic of the emotion (balanced like the full set).

Each half's vectors are built exactly as the full ones (``vectors.build.emotion_vectors``: emotion
mean over the half's stories minus the mean over emotions, the neutral dialogues' top PCs
projected out — the same neutral PCs for both halves). The store has the vector-store layout
(``store_layout.write_store``) with rows ``f"{emotion}@half{h}"`` (``compare.HALF_SEP``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .store_layout import write_store
from .build import _extraction_attrs, emotion_vectors, open_checked_shards

HALF_SEP = "@half"


def half_name(emotion: str, half: int) -> str:
    """Row of ``emotion``'s half-``half`` vector in a split-half store."""
    return f"{emotion}{HALF_SEP}{int(half)}"


def story_halves(story_shard: str | Path) -> dict[str, int]:
    """``{story id: half}``: within each topic, the story shard's stories alternate 0, 1, 0, ..."""
    shard = json.loads(Path(story_shard).read_text(encoding="utf-8"))
    seen: dict[int, int] = defaultdict(int)
    out = {}
    for s in shard.get("stories", []):
        topic = int(s["topic_index"])
        out[s["id"]] = seen[topic] % 2
        seen[topic] += 1
    return out


def build_split_store(
    emotion_shards: dict[str, str | Path],
    story_shards: dict[str, str | Path],
    neutral_shard: str | Path,
    out: str | Path,
    *,
    denoise_variance: float,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Read the shards, build each emotion's vectors from each half of its stories, write ``out``.

    Raises:
        ValueError: an emotion without a story shard, a shard holding stories its story shard
            does not list, or a half with no story (an emotion needs two stories).
    """
    emotions = list(emotion_shards)
    missing = [e for e in emotions if e not in story_shards]
    if missing:
        raise ValueError(f"no story shard for emotions {missing}")
    neutral, shards = open_checked_shards(emotion_shards, neutral_shard)
    layers = list(neutral.attrs["layers"])
    means = [[], []]
    counts = np.zeros((len(emotions), 2), dtype=np.int64)
    norm_sum, norm_n = 0.0, 0
    for e, emotion in enumerate(emotions):
        shard = shards[emotion]
        ids = list(shard.attrs["ids"])
        halves = story_halves(story_shards[emotion])
        unknown = [i for i in ids if i not in halves]
        if unknown:
            raise ValueError(f"activation shard {emotion_shards[emotion]} holds stories missing from "
                             f"{story_shards[emotion]} (e.g. {unknown[:3]}): rebuild it")
        half = np.asarray([halves[i] for i in ids], dtype=np.int64)
        acts = np.asarray(shard["activations"][:], dtype=np.float64)  # (n, L, d)
        for h in (0, 1):
            sel = half == h
            counts[e, h] = int(sel.sum())
            if not sel.any():
                raise ValueError(f"emotion {emotion!r}: half {h} of its stories is empty ({len(ids)} stories "
                                 "extracted); split-half vectors need at least two stories per emotion")
            means[h].append(acts[sel].mean(axis=0))
        tn = np.asarray(shard["token_norm"][:], dtype=np.float64)
        norm_sum = norm_sum + tn.sum(axis=0)
        norm_n += tn.shape[0]
    neutral_acts = np.asarray(neutral["activations"][:], dtype=np.float64)
    m = [np.stack(means[h]) for h in (0, 1)]  # (E, L, d)
    E, L, d = m[0].shape
    raw = np.zeros((2 * E, L, d), dtype=np.float32)
    den = np.zeros((2 * E, L, d), dtype=np.float32)
    k_removed = np.zeros(L, dtype=np.int64)
    for li in range(L):
        for h in (0, 1):
            res = emotion_vectors(m[h][:, li], neutral_acts[:, li], denoise_variance)
            raw[h::2, li] = res["raw"]
            den[h::2, li] = res["denoised"]
            k_removed[li] = res["k"]
    names = [half_name(e, h) for e in emotions for h in (0, 1)]
    write_store(
        out, emotions=names, layers=layers, raw=raw, denoised=den,
        residual_norm=(norm_sum / max(norm_n, 1)).astype(np.float32),
        n_neutral_pcs_removed=k_removed, n_stories=counts.reshape(-1),
        attrs={
            **_extraction_attrs(neutral, denoise_variance, int(neutral_acts.shape[0])),
            "source_emotions": emotions,
            "halves": "within each (emotion, topic) the story shard's stories alternate half 0, half 1, ...",
            "definition": "per half: emotion mean over the half's stories - mean over emotions (of that half); "
                          "denoised = the top neutral PCs (denoise_variance of neutral variance) projected out",
            "provenance": dict(provenance, subject_model=neutral.attrs["model"]),
        },
    )
    return {"emotions": len(emotions), "stories_per_half": counts.sum(axis=0).tolist(),
            "smallest_half": int(counts.min()), "layers": layers}
