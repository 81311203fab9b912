"""Reading emotion out of activations with a run's own vectors: the valence direction.

The valence direction of a layer is the first principal component of that layer's unit emotion
vectors (centred over emotions), its sign fixed so that a set of clearly pleasant anchor
emotions projects higher than a set of clearly unpleasant ones. It comes from the vectors alone:
no human rating and no text being scored is used to fit it (the anchors only choose the sign),
so scores made with it can be checked against ratings, sentiment labels or VADER without
circularity.

Used by the steering evaluation (the valence of steered generations) and by text scoring.

PC1 is valence in the paper (r = 0.81 with human ratings), but nothing makes it so in a given
run: a run whose stories carry little emotion (the negative control) has a PC1 that is mostly
noise, and the anchors then only choose a sign for it. :func:`check_valence_direction` measures
whether it is valence *for this run*: the Pearson correlation between the emotions' scores on
the oriented direction and the Warriner et al. (2013) valence of the emotion words, with a
percentile bootstrap interval over emotions in which PC1 is refitted each time
(``analysis.stats.pca_bootstrap``). The direction counts as valence when that interval lies
above 0 and ``r >= min_r`` (default :data:`VALENCE_MIN_R`); otherwise every score made with it
is a PC1 score, and every claim that reads it as valence is "not testable".
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


#: Smallest PC1-valence correlation for which the direction is read as valence (with its 95%
#: interval above 0). The paper reports 0.81; the default miniature 0.40-0.82 by layer, and the
#: negative control (stories without emotion) 0.22-0.31.
VALENCE_MIN_R = 0.5


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
    from emotion_vectors.vectors.store_layout import Store, read_store

    st = store if isinstance(store, Store) else read_store(store)
    if layer not in st.layers:
        raise ReadoutError(f"layer {layer} not stored; stored layers {st.layers}")
    li = st.layers.index(layer)
    vecs = np.asarray(st.array(kind)[:, li, :], dtype=np.float64)
    return valence_direction(vecs, st.emotions, layer, pleasant=pleasant, unpleasant=unpleasant)


def check_valence_direction(
    vectors: np.ndarray,
    emotions: Sequence[str],
    direction: ValenceDirection,
    *,
    min_r: float = VALENCE_MIN_R,
    n_bootstrap: int = 1000,
    seed: int = 0,
    norms=None,
) -> dict:
    """Is ``direction`` (PC1 of ``vectors`` ``(E, d)``, oriented by the anchors) valence here?

    Pearson ``r`` between each emotion's score on the direction (unit vectors, centred over
    emotions) and the human valence of the emotion word (``analysis.norms.match_ratings``:
    the word itself or its reviewed headword; unrated emotions are left out), with a 95%
    percentile bootstrap interval (emotions resampled, PC1 refitted in each resample and
    sign-aligned with the full-sample direction: ``analysis.stats``). ``is_valence`` is True
    when ``ci_low > 0`` and ``r >= min_r``; False otherwise, with ``note`` saying why (also
    when fewer than 5 emotions are rated: nothing can be checked).
    """
    from emotion_vectors.analysis import norms as norms_mod
    from emotion_vectors.analysis import stats

    v = np.asarray(vectors, dtype=np.float64)
    emotions = list(emotions)
    ratings = norms_mod.match_ratings(emotions, norms)
    valence = ratings.valence
    rated = int(np.isfinite(valence).sum())
    out = {"layer": direction.layer, "method": "pearson", "n_rated": rated, "min_r": float(min_r),
           "n_bootstrap": int(n_bootstrap), "seed": int(seed), "r": None, "ci_low": None,
           "ci_high": None, "p": None, "pc1_explained": direction.explained,
           "ratings": "Warriner, Kuperman & Brysbaert (2013) valence of the emotion words",
           "interval": "95% percentile bootstrap over emotions, PC1 refitted per resample",
           "rule": f"valence when the interval lies above 0 and r >= {min_r}"}
    if rated < 5:
        return {**out, "is_valence": False,
                "note": f"{rated} of the run's {len(emotions)} emotions have a human valence rating "
                        "(at least 5 are needed): the direction cannot be checked, so it is not read "
                        "as valence"}
    norms_ = np.linalg.norm(v, axis=1, keepdims=True)
    u = np.where(norms_ > 0, v / np.where(norms_ > 0, norms_, 1.0), 0.0)
    centred = u - u.mean(axis=0)
    scores = centred @ direction.direction
    boot = stats.pca_bootstrap(u, direction.direction[None, :], scores[:, None],
                               n_bootstrap=n_bootstrap, seed=seed)
    corr, align = stats.correlate_pc(boot, 0, valence, method="pearson")
    r, lo, hi = corr.r, corr.ci_low, corr.ci_high
    out.update(r=_f(r), ci_low=_f(lo), ci_high=_f(hi), p=_f(corr.p), pc_alignment=_f(align))
    ok = bool(np.isfinite(r) and np.isfinite(lo) and lo > 0 and r >= min_r)
    if ok:
        note = (f"PC1 of layer {direction.layer} is valence for this run: r = {r:.2f} "
                f"[{lo:.2f}, {hi:.2f}] with human valence over {rated} emotions")
    else:
        why = []
        if not (np.isfinite(lo) and lo > 0):
            why.append("its 95% interval reaches 0")
        if not (np.isfinite(r) and r >= min_r):
            why.append(f"r is below {min_r}")
        note = (f"PC1 of layer {direction.layer} is not shown to be valence for this run: r = "
                f"{r:.2f} [{lo:.2f}, {hi:.2f}] with human valence over {rated} emotions "
                f"({' and '.join(why)}); scores on it are PC1 scores, not a valence reading")
    return {**out, "is_valence": ok, "note": note}


def store_valence_check(store, layer: int, *, kind: str = "denoised_unit",
                        min_r: float = VALENCE_MIN_R, n_bootstrap: int = 1000, seed: int = 0,
                        pleasant: Sequence[str] = PLEASANT,
                        unpleasant: Sequence[str] = UNPLEASANT) -> dict:
    """:func:`check_valence_direction` for a store's valence direction at ``layer``."""
    from emotion_vectors.vectors.store_layout import Store, read_store

    st = store if isinstance(store, Store) else read_store(store)
    direction = store_valence_direction(st, layer, kind=kind, pleasant=pleasant, unpleasant=unpleasant)
    vecs = np.asarray(st.array(kind)[:, st.layers.index(layer), :], dtype=np.float64)
    return check_valence_direction(vecs, st.emotions, direction, min_r=min_r,
                                   n_bootstrap=n_bootstrap, seed=seed)


def _f(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


__all__ = ["PLEASANT", "UNPLEASANT", "VALENCE_MIN_R", "ReadoutError", "ValenceDirection",
           "check_valence_direction", "store_valence_check", "store_valence_direction",
           "valence_direction"]
