"""The vector-store layout: its one writer (``write_store``) and its reader (``read_store``).

A vector store is a Zarr v3 group (``results/<run>/vectors/vectors.zarr``):

- arrays ``raw``, ``denoised``, ``raw_unit``, ``denoised_unit``: ``(E, L, d)`` float32, chunked
  one layer at a time (``(E, 1, d)``); ``*_unit`` rows are the rows scaled to unit L2 norm
  (a zero row stays zero). A kind whose source is not known (e.g. the raw vectors of published
  denoised vectors) is absent, never copied from another kind;
- ``residual_norm``: ``(L,)`` float32, the mean per-token L2 norm of the residual stream at each
  stored layer, the unit of steering strength. Group attribute ``residual_norm_status`` says
  ``"measured"`` (from the activations) or ``"unknown"``; unknown, the array is all NaN. No
  stand-in number is ever written;
- ``n_neutral_pcs_removed``: ``(L,)`` int64 and ``n_stories``: ``(E,)`` int64, each with a status
  attribute (``n_neutral_pcs_removed_status``, ``n_stories_status``): ``"recorded"``, or
  ``"unknown"`` with the array absent;
- group attributes ``emotions`` (list[str], row order), ``layers`` (list[int]: 0-based decoder
  block indices, layer ``i`` = output of block ``i``), ``layout_version``, the statuses above,
  and whatever the caller adds (``provenance``, definitions, ...).

``emotion_vectors.vectors.build.build_vector_store`` (the workflow) and
``emotion_vectors.analysis.store`` (tests, benchmarks, the published reference vectors) both
write through ``write_store``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.common import zarr_root

LAYOUT_VERSION = 1
KINDS = ("raw", "denoised", "raw_unit", "denoised_unit")
RESIDUAL_NORM_STATUSES = ("measured", "unknown")
_RESERVED_ATTRS = (
    "emotions", "layers", "layout_version", "residual_norm_status",
    "n_neutral_pcs_removed_status", "n_stories_status",
)


class StoreLayoutError(ValueError):
    """A vector store that does not have (or would not have) the layout described above."""


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows (last axis) scaled to unit L2 norm in float64; zero rows stay zero."""
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(norms > 0, x / np.where(norms > 0, norms, 1.0), 0.0)


def write_store(
    out: str | Path,
    *,
    emotions: Sequence[str],
    layers: Sequence[int],
    raw: np.ndarray | None,
    denoised: np.ndarray | None,
    residual_norm: np.ndarray | None,
    n_neutral_pcs_removed: np.ndarray | None,
    n_stories: np.ndarray | None,
    attrs: dict[str, Any] | None = None,
    chunk_layers: int = 1,
) -> Path:
    """Write a vector store at ``out`` (replacing what is there); the only writer of the layout.

    Args:
        out: the store's directory (or its ``zarr.json``, see ``core.common.zarr_root``).
        emotions: ``E`` emotion words, in row order.
        layers: ``L`` 0-based decoder block indices.
        raw, denoised: ``(E, L, d)`` arrays (any float dtype; anything sliceable as
            ``a[:, l, :]``), or ``None`` when that kind is not known (at least one is needed).
            Written one layer at a time with their unit-normalised copies (computed in float64,
            stored float32).
        residual_norm: ``(L,)`` measured mean residual-stream norms, or ``None`` = unknown
            (written as NaN with ``residual_norm_status = "unknown"``). Must be finite and > 0.
        n_neutral_pcs_removed: ``(L,)`` ints, or ``None`` = unknown (array absent).
        n_stories: ``(E,)`` ints, or ``None`` = unknown (array absent).
        attrs: further group attributes (JSON-serialisable); may not set the reserved keys
            ``emotions``, ``layers``, ``layout_version`` or the ``*_status`` keys.
        chunk_layers: layers per chunk along the layer axis (1 = one chunk per layer).
    """
    import zarr

    out = zarr_root(out)
    emotions = [str(e) for e in emotions]
    layers = [int(x) for x in layers]
    n_e, n_l = len(emotions), len(layers)
    if len(set(emotions)) != n_e:
        raise StoreLayoutError("emotions are not unique")
    if len(set(layers)) != n_l:
        raise StoreLayoutError("layers are not unique")
    given = {k: v for k, v in (("raw", raw), ("denoised", denoised)) if v is not None}
    if not given:
        raise StoreLayoutError("write_store needs raw or denoised vectors (or both)")
    shapes = {k: tuple(v.shape) for k, v in given.items()}
    d = next(iter(shapes.values()))[-1] if all(len(s) == 3 for s in shapes.values()) else None
    for k, shape in shapes.items():
        if d is None or shape != (n_e, n_l, d):
            raise StoreLayoutError(f"{k}: shape {shape} is not (E={n_e}, L={n_l}, d) with one d")
    clash = sorted(set(attrs or {}) & set(_RESERVED_ATTRS))
    if clash:
        raise StoreLayoutError(f"attrs may not set {clash}: write_store sets them")

    rn_status = "unknown"
    if residual_norm is not None:
        rn = np.asarray(residual_norm, dtype=np.float64)
        if rn.shape != (n_l,):
            raise StoreLayoutError(f"residual_norm: shape {rn.shape}, expected ({n_l},)")
        if not (np.isfinite(rn).all() and (rn > 0).all()):
            raise StoreLayoutError("residual_norm must be finite and > 0; pass None if unknown")
        rn_status = "measured"
    else:
        rn = np.full(n_l, np.nan)
    ints: dict[str, np.ndarray | None] = {}
    for name, value, n in (("n_neutral_pcs_removed", n_neutral_pcs_removed, n_l),
                           ("n_stories", n_stories, n_e)):
        if value is None:
            ints[name] = None
            continue
        a = np.asarray(value)
        integral = np.issubdtype(a.dtype, np.integer) or (
            np.issubdtype(a.dtype, np.floating) and bool(np.all(a == np.round(a))))
        if a.shape != (n,) or not integral:
            raise StoreLayoutError(f"{name}: expected ({n},) integers, got {a.shape} {a.dtype}")
        ints[name] = a.astype(np.int64)

    group = zarr.open_group(str(out), mode="w")
    chunks = (n_e, max(1, min(int(chunk_layers), n_l)), d)
    for kind, data in given.items():
        arr = group.create_array(kind, shape=(n_e, n_l, d), dtype="float32", chunks=chunks)
        uarr = group.create_array(f"{kind}_unit", shape=(n_e, n_l, d), dtype="float32",
                                  chunks=chunks)
        step = chunks[1]
        for start in range(0, n_l, step):
            block = np.asarray(data[:, start : start + step, :], dtype=np.float64)
            arr[:, start : start + step, :] = block.astype(np.float32)
            uarr[:, start : start + step, :] = unit_rows(block).astype(np.float32)
    group.create_array("residual_norm", data=rn.astype(np.float32))
    for name, a in ints.items():
        if a is not None:
            group.create_array(name, data=a)
    group.attrs.update(
        {
            **(attrs or {}),
            "emotions": emotions,
            "layers": layers,
            "layout_version": LAYOUT_VERSION,
            "residual_norm_status": rn_status,
            "n_neutral_pcs_removed_status":
                "recorded" if ints["n_neutral_pcs_removed"] is not None else "unknown",
            "n_stories_status": "recorded" if ints["n_stories"] is not None else "unknown",
        }
    )
    return Path(out)


@dataclass
class Store:
    """An opened vector store (arrays are read lazily).

    Attributes:
        path: the store's directory.
        emotions: emotion words, in row order.
        layers: 0-based decoder block index of each stored layer.
        attrs: all group attributes.
        kinds: vector kinds present (subset of ``KINDS``, in that order).
        residual_norm_status: ``"measured"`` or ``"unknown"``.
    """

    path: Path
    emotions: list[str]
    layers: list[int]
    attrs: dict[str, Any]
    kinds: list[str]
    residual_norm_status: str
    group: Any = field(default=None, repr=False)

    def array(self, kind: str):
        """The lazy Zarr array ``(E, L, d)`` of one vector kind."""
        if kind not in KINDS:
            raise StoreLayoutError(f"vector kind {kind!r} is not one of {KINDS}")
        if kind not in self.kinds:
            raise StoreLayoutError(f"{self.path}: no array {kind!r} (present: {self.kinds})")
        return self.group[kind]

    @property
    def residual_norm(self) -> np.ndarray | None:
        """``(L,)`` float64 measured residual norms, or ``None`` when unknown."""
        if self.residual_norm_status != "measured":
            return None
        return np.asarray(self.group["residual_norm"][:], dtype=np.float64)

    def _ints(self, name: str) -> np.ndarray | None:
        if name not in set(self.group.array_keys()):
            return None
        return np.asarray(self.group[name][:], dtype=np.int64)

    @property
    def n_neutral_pcs_removed(self) -> np.ndarray | None:
        """``(L,)`` neutral PCs projected out per layer, or ``None`` when unknown."""
        return self._ints("n_neutral_pcs_removed")

    @property
    def n_stories(self) -> np.ndarray | None:
        """``(E,)`` stories per emotion, or ``None`` when unknown."""
        return self._ints("n_stories")


#: Open counters of ``counting_opens`` blocks in progress (``read_store`` adds to each).
_OPEN_COUNTERS: list[Counter] = []


@contextmanager
def counting_opens() -> Iterator[Counter]:
    """Count the ``read_store`` calls made while the block runs, per resolved store path (the
    check that a job opens each store once and passes it down)."""
    counts: Counter = Counter()
    _OPEN_COUNTERS.append(counts)
    try:
        yield counts
    finally:
        _OPEN_COUNTERS.remove(counts)


def read_store(path: str | Path) -> Store:
    """Open a vector store (its directory or its ``zarr.json``) and check its layout (attributes,
    array shapes, statuses).

    A store written before ``residual_norm_status`` existed (``layout_version`` absent) counts
    its ``residual_norm`` as measured when the array is present, finite and positive.
    Every call is counted by the ``counting_opens`` blocks in progress.
    """
    import zarr

    path = zarr_root(path)
    for counts in _OPEN_COUNTERS:
        counts[path.resolve()] += 1
    if not path.exists():
        raise StoreLayoutError(f"vector store {path} does not exist; run the vectors rule first.")
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    for key in ("emotions", "layers"):
        if key not in attrs:
            raise StoreLayoutError(f"{path}: group attribute {key!r} is missing.")
    emotions = [str(e) for e in attrs["emotions"]]
    layers = [int(x) for x in attrs["layers"]]
    names = set(group.array_keys())
    kinds = [k for k in KINDS if k in names]
    if not kinds:
        raise StoreLayoutError(f"{path}: none of the arrays {KINDS} is present.")
    d = None
    for kind in kinds:
        shape = tuple(group[kind].shape)
        wrong = len(shape) != 3 or shape[:2] != (len(emotions), len(layers))
        if wrong or d not in (None, shape[2]):
            raise StoreLayoutError(
                f"{path}/{kind}: shape {shape} does not match {len(emotions)} emotions x "
                f"{len(layers)} layers from the group attributes (and one width d)."
            )
        d = shape[2]
    status = attrs.get("residual_norm_status")
    if status is None:  # stores from before the status attribute
        status = "unknown"
        if "residual_norm" in names:
            rn = np.asarray(group["residual_norm"][:], dtype=np.float64)
            if rn.shape == (len(layers),) and np.isfinite(rn).all() and (rn > 0).all():
                status = "measured"
    elif status not in RESIDUAL_NORM_STATUSES:
        raise StoreLayoutError(f"{path}: residual_norm_status {status!r} is not one of "
                               f"{RESIDUAL_NORM_STATUSES}")
    if status == "measured":
        if "residual_norm" not in names or tuple(group["residual_norm"].shape) != (len(layers),):
            raise StoreLayoutError(f"{path}: residual_norm is 'measured' but missing or misshapen")
    return Store(path, emotions, layers, attrs, kinds, status, group)


__all__ = ["KINDS", "LAYOUT_VERSION", "Store", "StoreLayoutError", "counting_opens", "read_store",
           "unit_rows", "write_store"]
