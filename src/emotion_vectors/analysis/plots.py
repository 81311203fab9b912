"""Figures of the analysis (matplotlib, Agg backend), readable with 171 labelled emotions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.cluster.hierarchy import dendrogram  # noqa: E402

# Candidate label offsets in points (right, left, above, below, diagonals; then farther).
_OFFSETS = [(4, -2), (-4, -2), (0, 5), (0, -9), (4, 4), (-4, 4), (4, -8), (-4, -8)]
_OFFSETS = [(m * dx, m * dy) for m in (1, 2, 3) for dx, dy in _OFFSETS]


def _padded(v: np.ndarray, frac: float = 0.06) -> tuple[float, float]:
    lo, hi = float(np.min(v)), float(np.max(v))
    pad = (hi - lo) * frac or 1.0
    return lo - pad, hi + pad


def _place_labels(
    ax, fig, x: np.ndarray, y: np.ndarray, labels: Sequence[str], size: float
) -> None:
    """Greedy label placement: each label (densest points first) takes the first candidate
    offset whose estimated box overlaps no label already placed and no other point, else the
    offset with the least overlap. Boxes are estimated in display pixels from the font size."""
    fig.canvas.draw()
    pts = ax.transData.transform(np.column_stack([x, y]))
    px = fig.dpi / 72.0
    char_w, h = 0.55 * size * px, 1.1 * size * px
    placed: list[tuple[float, float, float, float]] = []
    r_pt = 2.5 * px
    # Points with many neighbours first, so they get the best slots.
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    crowd = (d2 < (40 * px) ** 2).sum(1)
    for i in np.argsort(-crowd, kind="stable"):
        w = char_w * len(labels[i])
        best, best_cost = _OFFSETS[0], np.inf
        for dx, dy in _OFFSETS:
            ox, oy = pts[i, 0] + dx * px, pts[i, 1] + dy * px
            x0 = ox if dx > 0 else (ox - w if dx < 0 else ox - w / 2)
            box = (x0, oy, x0 + w, oy + h)
            cost = sum(max(0.0, min(box[2], b[2]) - max(box[0], b[0]))
                       * max(0.0, min(box[3], b[3]) - max(box[1], b[1])) for b in placed)
            inside = ((pts[:, 0] > box[0] - r_pt) & (pts[:, 0] < box[2] + r_pt)
                      & (pts[:, 1] > box[1] - r_pt) & (pts[:, 1] < box[3] + r_pt))
            cost += inside.sum() * h * h * 0.5 + 0.01 * (abs(dx) + abs(dy))
            if cost < best_cost:
                best, best_cost = (dx, dy), cost
            if cost < 1.0:
                break
        dx, dy = best
        ox, oy = pts[i, 0] + dx * px, pts[i, 1] + dy * px
        x0 = ox if dx > 0 else (ox - w if dx < 0 else ox - w / 2)
        placed.append((x0, oy, x0 + w, oy + h))
        far = abs(dx) > 8 or abs(dy) > 10
        ax.annotate(labels[i], (x[i], y[i]), xytext=(dx, dy), textcoords="offset points",
                    fontsize=size, ha="left" if dx > 0 else ("right" if dx < 0 else "center"),
                    va="bottom", zorder=4,
                    arrowprops={"arrowstyle": "-", "lw": 0.3, "color": "0.5"} if far else None)


def _label_font(n: int) -> float:
    """Label size in points: 9 for a handful of emotions, down to 5 at 171."""
    return float(np.clip(11 - n / 30, 5, 9))


def pc_scatter(
    scores: np.ndarray,
    emotions: Sequence[str],
    valence: np.ndarray,
    explained: Sequence[float],
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """PC1 x PC2 scatter of ``scores`` ``(n, >=2)``, coloured by human valence ``(n,)`` (NaN =
    unrated, drawn grey and hollow), every point labelled with its emotion word."""
    n = len(emotions)
    fig, ax = plt.subplots(figsize=(20, 16) if n > 60 else (10, 8), dpi=100)
    rated = np.isfinite(valence)
    sc = ax.scatter(scores[rated, 0], scores[rated, 1], c=valence[rated], cmap="RdYlBu",
                    vmin=1, vmax=9, s=28, edgecolors="k", linewidths=0.3, zorder=3)
    ax.scatter(scores[~rated, 0], scores[~rated, 1], facecolors="none", edgecolors="grey",
               s=28, linewidths=0.8, zorder=3, label="no human rating")
    size = _label_font(n)
    ax.set_xlim(*_padded(scores[:, 0]))
    ax.set_ylim(*_padded(scores[:, 1]))
    _place_labels(ax, fig, scores[:, 0], scores[:, 1], emotions, size)
    cbar = fig.colorbar(sc, ax=ax, shrink=0.6, pad=0.01)
    cbar.set_label("human valence (Warriner et al. 2013; 1 = unpleasant, 9 = pleasant)")
    ax.axhline(0, color="0.8", lw=0.6, zorder=1)
    ax.axvline(0, color="0.8", lw=0.6, zorder=1)
    ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f}% of variance)")
    if (~rated).any():
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def layer_profile(
    variance: pd.DataFrame, correlations: pd.DataFrame, path: str | Path, *,
    main_layer: int | None = None, n_pcs: int = 3,
) -> Path:
    """Two panels by layer: variance share of PCs 1..``n_pcs``; Pearson r (95% CI band) of
    PC1 with valence and of PC2 and PC3 with arousal (all covered words).

    ``variance``: columns layer, pc, explained_ratio. ``correlations``: columns layer, pc,
    rating, method, words, r, ci_low, ci_high.
    """
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True, dpi=110)
    for pc in range(1, n_pcs + 1):
        v = variance[variance["pc"] == pc].sort_values("layer")
        ax1.plot(v["layer"], 100 * v["explained_ratio"], marker="o", ms=3, label=f"PC{pc}")
    ax1.set_ylabel("variance explained (%)")
    ax1.legend(fontsize=8)
    sel = correlations[(correlations["method"] == "pearson") & (correlations["words"] == "covered")]
    for pc, rating, colour in ((1, "valence", "C3"), (2, "arousal", "C0"), (3, "arousal", "C2")):
        c = sel[(sel["pc"] == pc) & (sel["rating"] == rating)].sort_values("layer")
        if c.empty:
            continue
        ax2.plot(c["layer"], c["r"], marker="o", ms=3, color=colour, label=f"PC{pc} vs {rating}")
        ax2.fill_between(c["layer"], c["ci_low"], c["ci_high"], color=colour, alpha=0.2, lw=0)
    ax2.axhline(0, color="0.6", lw=0.6)
    ax2.set_ylim(-1, 1)
    ax2.set_ylabel("Pearson r with human rating\n(PC sign set by that rating)")
    ax2.set_xlabel("layer (output of decoder block)")
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        if main_layer is not None:
            ax.axvline(main_layer, color="0.5", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def similarity_heatmap(
    cosine: np.ndarray, emotions: Sequence[str], tree: np.ndarray, labels: np.ndarray,
    path: str | Path, *, title: str = "",
) -> Path:
    """Cosine matrix ``(n, n)`` ordered by the dendrogram of ``tree``, with the dendrogram on
    the left and cluster ``labels`` ``(n,)`` as a colour strip; every row and column labelled."""
    n = len(emotions)
    side = 18 if n > 60 else 9
    fig = plt.figure(figsize=(side + 2, side), dpi=150 if n > 60 else 100)
    ax_d = fig.add_axes([0.02, 0.08, 0.12, 0.84])
    ax_s = fig.add_axes([0.145, 0.08, 0.012, 0.84])
    ax_h = fig.add_axes([0.2, 0.08, 0.62, 0.84])
    ax_c = fig.add_axes([0.935, 0.3, 0.012, 0.4])
    dn = dendrogram(tree, orientation="left", no_labels=True, ax=ax_d, color_threshold=0,
                    above_threshold_color="0.3")
    ax_d.invert_yaxis()
    ax_d.axis("off")
    leaves = dn["leaves"]
    ordered = cosine[np.ix_(leaves, leaves)]
    im = ax_h.imshow(ordered, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest",
                     aspect="auto")
    row_pt = 0.84 * side * 72 / n  # height of one heatmap row in points
    size = float(np.clip(0.75 * row_pt, 3.5, 8))
    names = [emotions[i] for i in leaves]
    ax_h.set_yticks(range(n), names, fontsize=size)
    ax_h.set_xticks(range(n), names, fontsize=size, rotation=90)
    ax_h.yaxis.tick_right()
    strip = np.asarray(labels)[leaves][:, None]
    ax_s.imshow(strip, cmap="tab20", aspect="auto", interpolation="nearest")
    ax_s.axis("off")
    fig.colorbar(im, cax=ax_c, label="cosine similarity")
    ax_h.set_title(title)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def layer_agreement(
    layers: Sequence[int], ari: np.ndarray, structure_r: np.ndarray, path: str | Path, *, k: int,
) -> Path:
    """Two ``(L, L)`` heatmaps: adjusted Rand index of the clusterings at ``k``, and the
    correlation of the cosine matrices' upper triangles, between every pair of layers."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4), dpi=110)
    for ax, mat, name in ((axes[0], ari, f"adjusted Rand index, k = {k}"),
                          (axes[1], structure_r, "r of cosine similarities")):
        im = ax.imshow(mat, vmin=min(0.0, float(np.nanmin(mat))), vmax=1, cmap="viridis",
                       origin="lower")
        step = max(1, len(layers) // 12)
        ticks = list(range(0, len(layers), step))
        ax.set_xticks(ticks, [layers[t] for t in ticks], fontsize=7)
        ax.set_yticks(ticks, [layers[t] for t in ticks], fontsize=7)
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
        ax.set_title(name)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
