"""Reading emotion out of activations with a run's own vectors: the valence direction.

The valence direction of a layer is the first principal component of that layer's unit emotion
vectors (centred over emotions), its sign fixed so that a set of clearly pleasant anchor
emotions projects higher than a set of clearly unpleasant ones. It comes from the vectors alone:
no human rating and no text being scored is used to fit it (the anchors only choose the sign),
so scores made with it can be checked against ratings, sentiment labels or VADER without
circularity.

Used by the steering evaluation (the valence of steered generations) and by text scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Default sign anchors: emotions whose valence sign no reader disputes. Only those present in a
#: store are used; at least one of each side must be present.
PLEASANT = ("happy", "calm", "grateful", "proud", "excited", "serene", "joyful", "content",
            "delighted", "relieved")
UNPLEASANT = ("sad", "afraid", "angry", "ashamed", "lonely", "desperate", "terrified",
              "miserable", "furious", "hostile")


class ReadoutError(ValueError):
    """A valence direction that cannot be built from the given store and anchors."""


@dataclass(frozen=True)
class ValenceDirection:
    """A unit valence direction at one layer.

    Attributes:
        layer: 0-based decoder block index (the output of that block).
        direction: ``(d,)`` float64 unit vector; higher projection = more pleasant.
        explained: share of the emotion vectors' variance along it (PC1's share).
        pleasant, unpleasant: the anchors used to orient it.
        anchor_gap: mean projection of the pleasant anchors minus the unpleasant ones
            (unit vectors; > 0 by construction).
    """

    layer: int
    direction: np.ndarray
    explained: float
    pleasant: tuple[str, ...]
    unpleasant: tuple[str, ...]
    anchor_gap: float

    def score(self, activations: np.ndarray, baseline: np.ndarray | None = None) -> np.ndarray:
        """Projection of ``activations`` ``(..., d)`` (minus ``baseline``) on the direction."""
        x = np.asarray(activations, dtype=np.float64)
        if baseline is not None:
            x = x - np.asarray(baseline, dtype=np.float64)
        return x @ self.direction


def valence_direction(
    vectors: np.ndarray,
    emotions: Sequence[str],
    layer: int,
    *,
    pleasant: Sequence[str] = PLEASANT,
    unpleasant: Sequence[str] = UNPLEASANT,
) -> ValenceDirection:
    """PC1 of one layer's emotion vectors ``(E, d)``, oriented by the anchors.

    Raises:
        ReadoutError: fewer than 3 emotions, no pleasant or no unpleasant anchor among
            ``emotions``, or anchors that do not separate along PC1 (gap 0).
    """
    v = np.asarray(vectors, dtype=np.float64)
    emotions = list(emotions)
    if v.ndim != 2 or v.shape[0] != len(emotions):
        raise ReadoutError(f"vectors must be (n_emotions, d) with n_emotions = {len(emotions)}, "
                           f"got shape {v.shape}")
    if len(emotions) < 3:
        raise ReadoutError(f"a valence direction needs at least 3 emotions, got {len(emotions)}")
    pos = [e for e in pleasant if e in emotions]
    neg = [e for e in unpleasant if e in emotions]
    if not pos or not neg:
        raise ReadoutError(
            "the valence direction is oriented by pleasant and unpleasant anchor emotions; "
            f"present pleasant {pos or 'none'} of {list(pleasant)}, unpleasant {neg or 'none'} "
            f"of {list(unpleasant)}: set readout anchors that the store holds"
        )
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    u = np.where(norms > 0, v / np.where(norms > 0, norms, 1.0), 0.0)
    centred = u - u.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    pc1 = vt[0]
    proj = u @ pc1
    gap = float(np.mean([proj[emotions.index(e)] for e in pos])
                - np.mean([proj[emotions.index(e)] for e in neg]))
    if gap == 0.0:
        raise ReadoutError(f"layer {layer}: the anchors do not separate along PC1")
    if gap < 0:
        pc1, gap = -pc1, -gap
    explained = float(s[0] ** 2 / np.sum(s**2)) if np.sum(s**2) > 0 else float("nan")
    return ValenceDirection(layer=int(layer), direction=pc1, explained=explained,
                            pleasant=tuple(pos), unpleasant=tuple(neg), anchor_gap=gap)


def store_valence_direction(store, layer: int, *, kind: str = "denoised_unit",
                            pleasant: Sequence[str] = PLEASANT,
                            unpleasant: Sequence[str] = UNPLEASANT) -> ValenceDirection:
    """:func:`valence_direction` from a vector store (path or ``store_layout.Store``)."""
    from emotion_vectors.store_layout import Store, read_store

    st = store if isinstance(store, Store) else read_store(store)
    if layer not in st.layers:
        raise ReadoutError(f"layer {layer} not stored; stored layers {st.layers}")
    li = st.layers.index(layer)
    vecs = np.asarray(st.array(kind)[:, li, :], dtype=np.float64)
    return valence_direction(vecs, st.emotions, layer, pleasant=pleasant, unpleasant=unpleasant)


__all__ = ["PLEASANT", "UNPLEASANT", "ReadoutError", "ValenceDirection", "store_valence_direction",
           "valence_direction"]
