"""Which layers a run stores and reads: the layer-index rules, without torch.

Layer ``i`` is the output of decoder block ``i`` (0-based; see :mod:`emotion_vectors.extraction.extract`).
These rules are used by the extraction, the analysis, steering and export, and by the
workflow's config check, which runs before any job (so this module imports neither torch nor
transformers).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral


class LayerIndexError(ValueError):
    """Requested layer indices that the model does not have."""


def main_layer(n_blocks: int) -> int:
    """The block at two-thirds of the depth, 0-based ``round(2 * n_blocks / 3) - 1`` (the
    study's main layer; 39 for Gemma 4 31B's 60 blocks, 19 for SmolLM2's 30). The one
    definition: ``default_layers`` includes it and the analysis picks it as its main layer."""
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
    return max(0, round(2 * n_blocks / 3) - 1)


def main_stored_layer(layers: Sequence[int], n_blocks: int | None = None) -> int:
    """The main layer among stored ``layers``: :func:`main_layer` of the model's ``n_blocks``
    if stored, else the stored layer nearest it (ties: the deeper). ``n_blocks`` unknown is
    taken as ``max(layers) + 1``. The one rule the analysis, steering and export use."""
    layers = [int(x) for x in layers]
    if not layers:
        raise ValueError("no stored layers")
    target = main_layer(int(n_blocks) if n_blocks else max(layers) + 1)
    return min(layers, key=lambda layer: (abs(layer - target), -layer))


def default_layers(n_blocks: int, step: int = 5) -> list[int]:
    """Default layer indices (0-based block outputs) for a stack of ``n_blocks`` blocks.

    Every ``step``-th block counted from 1, below the last block: 0-based indices
    ``step-1, 2*step-1, ...`` that are ``< n_blocks - 1`` (1-based blocks ``step, 2*step, ...``),
    plus the block at two-thirds of the depth, 0-based ``round(2 * n_blocks / 3) - 1``. Sorted,
    unique. For Gemma 4 31B (60 blocks) this is ``[4, 9, ..., 54]``, 11 layers, i.e. the earlier
    replication's "layers 5, 10, ..., 55" (its ``hidden_states`` indices), with layer 39
    (its "layer 40") at two-thirds. The last block is left out because it feeds only the final
    norm and the LM head. For SmolLM2 (30 blocks): ``[4, 9, 14, 19, 24]``.
    """
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    layers = set(range(step - 1, n_blocks - 1, step))
    layers.add(main_layer(n_blocks))
    return sorted(layers)


def validate_layers(layers: Sequence[int], n_blocks: int) -> list[int]:
    """Check that ``layers`` are distinct 0-based block indices in ``[0, n_blocks)``.

    Returns them as a list of ints, in the given order. Raises :class:`LayerIndexError` naming
    every bad index (negative, too large, non-integer or repeated).
    """
    layers = list(layers)
    if not layers:
        raise LayerIndexError("no layers requested: give at least one 0-based block index")
    bad = [x for x in layers if isinstance(x, bool) or not isinstance(x, Integral)]
    if bad:
        raise LayerIndexError(f"layer indices must be integers, got {bad!r}")
    out = [int(x) for x in layers]
    outside = [x for x in out if not 0 <= x < n_blocks]
    if outside:
        raise LayerIndexError(
            f"layer indices {outside} are outside 0..{n_blocks - 1}: the model has {n_blocks} "
            "decoder blocks and layer i means the output of block i (0-based); negative "
            "indices are not accepted"
        )
    repeated = sorted({x for x in out if out.count(x) > 1})
    if repeated:
        raise LayerIndexError(f"layer indices {repeated} are listed more than once")
    return out
