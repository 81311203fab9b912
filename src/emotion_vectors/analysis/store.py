"""Read (and, for tests and benchmarks, write) the emotion-vector store.

The vectors rule writes a Zarr v3 group ``results/<run>/vectors/vectors.zarr``:

- arrays ``raw``, ``denoised``, ``raw_unit``, ``denoised_unit``: ``(n_emotions, n_layers, d)``
  float32 (``*_unit`` rows have unit L2 norm);
- ``residual_norm``: ``(n_layers,)`` float32, mean per-token L2 norm of the residual stream at
  each stored layer;
- ``n_neutral_pcs_removed``: ``(n_layers,)`` int;
- group attributes ``emotions`` (list[str]), ``layers`` (list[int], 0-based decoder block
  indices: layer ``i`` is the output of block ``i``), ``provenance`` (dict; ``subject_model``
  holds at least ``path``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("raw", "denoised", "raw_unit", "denoised_unit")


class VectorStoreError(ValueError):
    """A vector store that does not have the layout the analysis needs."""


@dataclass
class VectorSet:
    """An opened vector store. Arrays are read lazily from Zarr.

    Attributes:
        path: the store's directory.
        emotions: emotion words, in row order.
        layers: 0-based decoder block index of each stored layer (output of that block).
        provenance: the store's provenance record (may be empty).
        attrs: all group attributes.
    """

    path: Path
    emotions: list[str]
    layers: list[int]
    provenance: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    _group: Any = field(default=None, repr=False)

    @property
    def kinds(self) -> list[str]:
        """Vector kinds present in the store (subset of ``KINDS``)."""
        names = set(self._group.array_keys())
        return [k for k in KINDS if k in names]

    @property
    def d(self) -> int:
        """Width of the residual stream."""
        return int(self.array(self.kinds[0]).shape[2])

    def array(self, kind: str = "denoised"):
        """The lazy Zarr array ``(n_emotions, n_layers, d)`` of one vector kind."""
        if kind not in KINDS:
            raise VectorStoreError(f"vector kind {kind!r} is not one of {KINDS}")
        if kind not in self.kinds:
            raise VectorStoreError(
                f"{self.path}: no array {kind!r} (present: {self.kinds}); rerun the vectors rule "
                "or pick another `analysis.vector_kind`."
            )
        return self._group[kind]

    def layer(self, kind: str, layer: int) -> np.ndarray:
        """Vectors of one stored layer (block index, not position): ``(n_emotions, d)`` float32."""
        return np.asarray(self.array(kind)[:, self.layer_position(layer), :], dtype=np.float32)

    def iter_layers(self, kind: str = "denoised") -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(layer, vectors (n_emotions, d) float32)`` for every stored layer.

        Reads blocks of layers aligned with the array's chunks, so each chunk is decoded once
        whatever the chunk layout; peak memory is one block of layers.
        """
        arr = self.array(kind)
        step = max(1, int(arr.chunks[1]))
        for start in range(0, len(self.layers), step):
            block = np.asarray(arr[:, start : start + step, :], dtype=np.float32)
            for offset in range(block.shape[1]):
                yield self.layers[start + offset], np.ascontiguousarray(block[:, offset, :])

    def layer_position(self, layer: int) -> int:
        """Position along the layer axis of block index ``layer``."""
        try:
            return self.layers.index(int(layer))
        except ValueError:
            raise VectorStoreError(
                f"layer {layer} is not in the store {self.path} (stored layers: {self.layers})"
            ) from None

    @property
    def residual_norm(self) -> np.ndarray | None:
        """Mean per-token residual-stream L2 norm per stored layer ``(n_layers,)``, if stored."""
        if "residual_norm" not in set(self._group.array_keys()):
            return None
        return np.asarray(self._group["residual_norm"][:], dtype=np.float64)

    @property
    def n_neutral_pcs_removed(self) -> np.ndarray | None:
        """Number of neutral principal components projected out, per stored layer, if stored."""
        if "n_neutral_pcs_removed" not in set(self._group.array_keys()):
            return None
        return np.asarray(self._group["n_neutral_pcs_removed"][:])

    @property
    def n_model_layers(self) -> int | None:
        """The subject model's number of decoder blocks, if the store records it (group attr
        ``num_hidden_layers``, or ``num_hidden_layers``/``n_layers`` in
        ``provenance.subject_model``)."""
        subject = self.provenance.get("subject_model") or {}
        for source in (self.attrs, subject if isinstance(subject, dict) else {}):
            for key in ("num_hidden_layers", "n_layers", "num_layers"):
                if source.get(key):
                    return int(source[key])
        return None

    @property
    def subject_model_path(self) -> str | None:
        """``provenance.subject_model.path``, or ``None``."""
        subject = self.provenance.get("subject_model") or {}
        return subject.get("path") if isinstance(subject, dict) else None


def load_vectors(path: str | Path) -> VectorSet:
    """Open a vector store written by the vectors rule (see the module docstring)."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise VectorStoreError(f"vector store {path} does not exist; run the vectors rule first.")
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    for key in ("emotions", "layers"):
        if key not in attrs:
            raise VectorStoreError(f"{path}: group attribute {key!r} is missing.")
    emotions = [str(e) for e in attrs["emotions"]]
    layers = [int(x) for x in attrs["layers"]]
    vs = VectorSet(path, emotions, layers, dict(attrs.get("provenance") or {}), attrs, group)
    if not vs.kinds:
        raise VectorStoreError(f"{path}: none of the arrays {KINDS} is present.")
    for kind in vs.kinds:
        shape = tuple(group[kind].shape)
        if shape[:2] != (len(emotions), len(layers)):
            raise VectorStoreError(
                f"{path}/{kind}: shape {shape} does not match {len(emotions)} emotions x "
                f"{len(layers)} layers from the group attributes."
            )
    return vs


def write_vector_store(
    path: str | Path,
    vectors: np.ndarray,
    emotions: Sequence[str],
    layers: Sequence[int],
    *,
    residual_norm: np.ndarray | None = None,
    provenance: dict[str, Any] | None = None,
    chunk_layers: int = 1,
) -> Path:
    """Write a store in the vectors rule's layout, from denoised vectors (tests, benchmarks).

    ``vectors`` is ``(n_emotions, n_layers, d)``; it is stored as both ``raw`` and ``denoised``
    (no neutral PCs removed), with unit-normalised copies. ``residual_norm`` defaults to 10x the
    mean vector norm per layer.
    """
    import zarr

    vectors = np.asarray(vectors, dtype=np.float32)
    n, n_layers, d = vectors.shape
    if len(emotions) != n or len(layers) != n_layers:
        raise ValueError("emotions/layers do not match the vectors' shape")
    norms = np.linalg.norm(vectors, axis=2, keepdims=True)
    unit = vectors / np.where(norms == 0, 1, norms)
    if residual_norm is None:
        residual_norm = 10 * norms[..., 0].mean(axis=0)
    group = zarr.open_group(str(path), mode="w")
    chunks = (n, max(1, min(chunk_layers, n_layers)), d)
    arrays = (("raw", vectors), ("denoised", vectors), ("raw_unit", unit), ("denoised_unit", unit))
    for name, data in arrays:
        arr = group.create_array(name, shape=data.shape, dtype="float32", chunks=chunks)
        arr[...] = data
    rn = group.create_array("residual_norm", shape=(n_layers,), dtype="float32")
    rn[...] = np.asarray(residual_norm, dtype=np.float32)
    npc = group.create_array("n_neutral_pcs_removed", shape=(n_layers,), dtype="int32")
    npc[...] = np.zeros(n_layers, dtype=np.int32)
    group.attrs.update(
        {
            "emotions": list(map(str, emotions)),
            "layers": [int(x) for x in layers],
            "provenance": provenance or {"subject_model": {"path": None}},
        }
    )
    return Path(path)


def store_from_reference_npz(npz_path: str | Path, store_path: str | Path, layer: int = 40) -> Path:
    """Build a one-layer store from the published ``{emotion: (d,)}`` npz (e.g. layer 40)."""
    data = np.load(npz_path)
    emotions = sorted(data.keys())
    vectors = np.stack([data[e] for e in emotions])[:, None, :]
    return write_vector_store(
        store_path,
        vectors,
        emotions,
        [layer],
        provenance={"subject_model": {"path": None}, "source": str(npz_path)},
    )
