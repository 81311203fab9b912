"""Read (and, for tests, benchmarks and the published reference vectors, write) the
emotion-vector store.

The layout is defined, written and checked in one place, ``emotion_vectors.vectors.store_layout``
(``write_store`` / ``read_store``; see its docstring). In short: arrays ``raw``, ``denoised``,
``raw_unit``, ``denoised_unit`` ``(n_emotions, n_layers, d)`` (a kind may be absent),
``residual_norm`` ``(n_layers,)`` with ``residual_norm_status`` ``measured`` or ``unknown``
(NaN), ``n_neutral_pcs_removed`` and ``n_stories`` (absent when unknown); group attributes
``emotions``, ``layers`` (0-based decoder block indices: layer ``i`` is the output of block
``i``), ``provenance`` (``subject_model`` holds at least ``path``).

This module adds the analysis's view (``VectorSet``: lazy per-layer reads) and two writers built
on ``write_store``: ``write_vector_store`` (synthetic vectors for tests and benchmarks) and
``store_from_reference_npz`` (the replication's published vectors). Neither invents a number
the source does not give: an unknown residual norm is stored as unknown.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emotion_vectors.vectors.store_layout import KINDS, Store, StoreLayoutError, read_store, write_store

#: The replication's published vectors are its "layer 40" of gemma-4-31B-it, i.e.
#: ``hidden_states[40]`` = the output of decoder block 39 (0-based), layer 39 here.
REFERENCE_LAYER = 39
REFERENCE_SOURCE_LABEL = "layer 40 (hidden_states[40], output of 0-based block 39)"
REFERENCE_N_BLOCKS = 60


class VectorStoreError(StoreLayoutError):
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
    _store: Store | None = field(default=None, repr=False)

    @property
    def kinds(self) -> list[str]:
        """Vector kinds present in the store (subset of ``KINDS``)."""
        return list(self._store.kinds)

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
        return self._store.array(kind)

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
    def residual_norm_status(self) -> str:
        """``measured`` or ``unknown`` (see ``store_layout``)."""
        return self._store.residual_norm_status

    @property
    def residual_norm(self) -> np.ndarray | None:
        """Mean per-token residual-stream L2 norm per stored layer ``(n_layers,)``; ``None``
        when the store records it as unknown."""
        return self._store.residual_norm

    @property
    def n_neutral_pcs_removed(self) -> np.ndarray | None:
        """Number of neutral principal components projected out, per stored layer, if known."""
        return self._store.n_neutral_pcs_removed

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
    """Open a vector store (``store_layout.read_store`` checks the layout)."""
    try:
        store = read_store(path)
    except StoreLayoutError as err:
        raise VectorStoreError(str(err)) from None
    return VectorSet(store.path, store.emotions, store.layers,
                     dict(store.attrs.get("provenance") or {}), store.attrs, store)


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
    """Write a store of synthetic vectors (tests, benchmarks) through ``write_store``.

    ``vectors`` ``(n_emotions, n_layers, d)`` are stored as both ``raw`` and ``denoised`` with
    no neutral PCs removed (true of synthetic vectors: nothing was projected out), with their
    unit-normalised copies. ``residual_norm`` is stored as measured when given, else as
    unknown; ``n_stories`` is unknown.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 3 or vectors.shape[:2] != (len(emotions), len(layers)):
        raise ValueError("emotions/layers do not match the vectors' shape")
    return write_store(
        path, emotions=emotions, layers=layers, raw=vectors, denoised=vectors,
        residual_norm=residual_norm,
        n_neutral_pcs_removed=np.zeros(len(layers), dtype=np.int64), n_stories=None,
        attrs={"provenance": provenance or {"subject_model": {"path": None}},
               "source": "synthetic vectors (write_vector_store)"},
        chunk_layers=chunk_layers,
    )


def store_from_reference_npz(
    npz_path: str | Path,
    store_path: str | Path,
    layer: int = REFERENCE_LAYER,
    *,
    n_model_layers: int | None = REFERENCE_N_BLOCKS,
) -> Path:
    """Build a one-layer store from the replication's published ``{emotion: (d,)}`` npz.

    The file holds its "layer 40" of gemma-4-31B-it, ``hidden_states[40]`` = the output of
    decoder block 39: ``layer`` 39 in this project's convention (the default). The vectors are
    denoised (its neutral PCs projected out) and not unit-normalised; they are stored as
    ``denoised`` only (their raw vectors were not published), and what the file does not give
    is stored as unknown, not filled in: the residual-stream norm (the unit of steering
    strength), the number of neutral PCs removed and the story counts.
    """
    data = np.load(npz_path)
    emotions = sorted(data.keys())
    vectors = np.stack([data[e] for e in emotions])[:, None, :]
    subject = {"path": None, "name": "google/gemma-4-31B-it"}
    if n_model_layers:
        subject["num_hidden_layers"] = int(n_model_layers)
    return write_store(
        store_path, emotions=emotions, layers=[int(layer)], raw=None, denoised=vectors,
        residual_norm=None, n_neutral_pcs_removed=None, n_stories=None,
        attrs={
            "provenance": {"subject_model": subject, "source": str(npz_path),
                           "source_layer_label": REFERENCE_SOURCE_LABEL},
            "num_hidden_layers": int(n_model_layers) if n_model_layers else None,
            "layer_convention": "layer i = output of decoder block i (0-based); the source's "
                                "'layer 40' is hidden_states[40] = output of block 39",
            "source": "published replication vectors (gemotions), denoised, not unit-normalised",
        },
    )
