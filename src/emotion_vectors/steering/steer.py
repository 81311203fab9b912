"""Activation steering: add a scaled unit vector to the residual stream during a forward pass.

What is added, and where
------------------------
A :class:`Steer` adds ``strength * unit_norm * direction`` (``direction`` of unit length) to the
OUTPUT of decoder block ``layer`` (0-based, ``emotion_vectors.core.models.decoder_layers(model)``),
which is exactly the residual-stream vector that extraction reads as layer ``layer``
(``emotion_vectors.extraction.extract``). ``unit_norm`` is the typical size of the residual stream at that
layer, the mean per-token L2 norm that the vector store keeps as ``residual_norm``; so
``strength`` is in units of "a typical token's residual norm" (0.1 adds a vector a tenth as
long as a typical token's residual vector). Several steers are summed (at one layer or many).
A steer of strength 0 adds nothing and registers no hook, so an all-zero (or empty) list gives
bit-identical outputs to no steering at all.

Which tokens
------------
The token policy is decided by each token's ABSOLUTE position in its own sequence, never by its
index inside one forward call: ``generate()`` with the KV cache runs the whole prompt first and
then one token per call, so "the 10th token of this call" means nothing there. The absolute
position of a token is its index among the real (unpadded) tokens of its row, i.e. the cache
position minus the row's left padding. It is computed once per top-level forward call by a
forward pre-hook on the model, from the 2-D ``attention_mask`` (which, during ``generate()``,
covers the past and the current tokens): ``position = cumsum(mask) - 1`` over the whole mask,
read at the current tokens. Without an attention mask there is no padding and the position is
``past + 0, 1, ...`` where ``past`` is ``cache_position[0]`` if the call has one (transformers
before 5.x), else the cache's ``get_seq_length()``, else 0.

Policies (``positions``):

- ``"all"``: every real token, prompt included;
- ``"generated"``: tokens at position ``>= prompt_length``; by default ``prompt_length`` is, per
  row, the number of real tokens in the FIRST forward call made inside the context (the prompt
  of a ``generate()`` call). So use one ``generate()`` call per context, or pass
  ``prompt_length``. The first generated token is predicted from the (unsteered) prompt; it is
  steered from the moment it is fed back in, so the effect shows from the second generated
  token on;
- an int ``K``: tokens at position ``>= K``.

Padding positions (attention mask 0) are never steered. Positions that are not steered keep
their exact values (``torch.where``, not a multiply by a 0/1 mask).

One direction per sequence
--------------------------
:func:`steering_rows` adds a DIFFERENT set of steers to each row of the batch (row ``i`` of every
forward call gets the sum of ``rows[i]``), so that many directions (an emotion's vector, its
shuffled-label and random nulls, several strengths) are evaluated in one forward pass. The token
policy, padding and KV-cache rules are those above, row by row; a row whose steers all have
strength 0 (or none) is not touched at all (its states are bit-identical to the same batch
without steering), and with no active row no hook is registered. Every forward call inside the
context must have exactly ``len(rows)`` rows (a call with another batch size is refused, never
guessed: e.g. ``generate(num_return_sequences=k)`` or a cache repeated for candidates needs its
rows listed in that order).

The shared prefix, computed once
------------------------------------
Every row of a ``steering_rows`` batch that continues ONE prompt reads the same residual stream
up to the first steered block: a steer added at block ``L`` changes nothing below it. With
``broadcast=True`` a forward call of batch 1 is accepted: blocks ``0 .. L`` run once, and the
output of block ``L`` is repeated to ``len(rows)`` rows before the rows' steers are added, so
every block above ``L`` (and the logits) sees one row per entry of ``rows``; after the call the KV
cache of blocks ``0 .. L`` is repeated to ``len(rows)`` rows, so that the next calls (a
``generate()`` continuing from that cache, the further tokens of a multi-token word) run with
one row per entry, as usual. :func:`generate_rows` does this for sampling: the prompt's shared
part costs one row below the steered block instead of ``len(rows)``. Same numbers as the
batch of ``len(rows)`` identical prompts, up to floating-point rounding of the batched matrix
products (tested on tiny Llama, Gemma 3, Gemma 4 text and its multimodal wrapper).

What transformers passes (5.24, checked for Llama/SmolLM2, Gemma 3 and Gemma 4 text and its
multimodal wrapper): ``generate()`` calls ``model.forward`` with keyword arguments only:
``input_ids``, ``position_ids`` (already counted from each row's first real token), ``cache``
(a ``DynamicCache``; absent with ``use_cache=False``, where every call re-reads the whole
sequence), ``attention_mask`` (2-D, past + current tokens; absent if the caller gave none),
``logits_to_keep``, ``use_cache``, ``return_dict``. There is no ``cache_position`` any more
(it is still read here when present, for older versions and remote code). With
``cache_implementation="static"`` the mask is instead a 4-D boolean causal mask
``(b, 1, T, max_cache_len)`` (Llama) or a dict of them (``"full_attention"``,
``"sliding_attention"``: Gemma); positions are then read from the full-attention mask, which
must be a plain causal mask with padding (anything else is refused, never guessed).
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch

from emotion_vectors.extraction.extract import LayerIndexError, _block_hidden, main_stored_layer
from emotion_vectors.core.models import decoder_layers

Positions = Union[Literal["all", "generated"], int]


class SteeringUnitError(ValueError):
    """The unit of steering strength (the residual norm) is not known for a vector store."""


class SteeringPositionError(RuntimeError):
    """The token positions of a forward call cannot be worked out (or do not fit the context)."""


def _unit_direction(direction: Any) -> np.ndarray:
    if isinstance(direction, torch.Tensor):
        arr = direction.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        arr = np.asarray(direction, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"steering direction must be a 1-D vector (d,), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("steering direction has non-finite (NaN or inf) entries")
    norm = float(np.linalg.norm(arr))
    if not norm > 0:
        raise ValueError("steering direction is the zero vector: it has no direction to steer along")
    out = arr / norm
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class Steer:
    """One steering vector: ``strength * unit_norm * direction`` added to block ``layer``'s output.

    Attributes:
        layer: 0-based decoder block index (layer ``i`` = output of block ``i``).
        direction: ``(d,)`` vector (NumPy or torch); stored as a read-only float64 NumPy array
            of unit length.
        strength: multiple of ``unit_norm`` to add (any finite sign; 0 adds nothing).
        unit_norm: the unit of strength, the layer's mean per-token residual norm (finite, > 0).
    """

    layer: int
    direction: np.ndarray | torch.Tensor
    strength: float
    unit_norm: float

    def __post_init__(self) -> None:
        layer = self.layer
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
            raise ValueError(f"steer layer must be a 0-based block index (int >= 0), got {layer!r}")
        strength = float(self.strength)
        if not math.isfinite(strength):
            raise ValueError(f"steer strength must be finite, got {self.strength!r}")
        unit_norm = float(self.unit_norm)
        if not (math.isfinite(unit_norm) and unit_norm > 0):
            raise ValueError(
                f"steer unit_norm (the residual norm that strength is measured in) must be "
                f"finite and > 0, got {self.unit_norm!r}"
            )
        object.__setattr__(self, "layer", int(layer))
        object.__setattr__(self, "direction", _unit_direction(self.direction))
        object.__setattr__(self, "strength", strength)
        object.__setattr__(self, "unit_norm", unit_norm)

    @property
    def added_norm(self) -> float:
        """L2 norm of the vector added to each steered token: ``strength * unit_norm`` (signed)."""
        return self.strength * self.unit_norm

    @property
    def vector(self) -> np.ndarray:
        """The ``(d,)`` float64 vector added: ``strength * unit_norm * direction``."""
        return self.added_norm * self.direction

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Steer):
            return NotImplemented
        return (
            self.layer == other.layer
            and self.strength == other.strength
            and self.unit_norm == other.unit_norm
            and np.array_equal(self.direction, other.direction)
        )

    def __hash__(self) -> int:
        return hash((self.layer, self.strength, self.unit_norm, self.direction.tobytes()))

    def __repr__(self) -> str:
        return (f"Steer(layer={self.layer}, d={self.direction.shape[0]}, strength={self.strength}, "
                f"unit_norm={self.unit_norm})")


def steers_from_store(
    store: Any,
    emotion: str,
    layers: Sequence[int] | None,
    strength: float,
    *,
    kind: str = "denoised_unit",
    absolute_scale: float | None = None,
) -> list[Steer]:
    """Steers along one emotion's vector from a vector store, one per layer.

    Args:
        store: a store directory or an opened ``emotion_vectors.vectors.store_layout.Store``.
        emotion: one of the store's emotions.
        layers: 0-based block indices, each one of the store's layers; ``None`` = the study's
            main layer, as the analysis and the export pick it (``extract.main_stored_layer``:
            the block at two-thirds of the model's depth, ``extract.main_layer`` of the store's
            ``num_hidden_layers`` attribute, or the stored layer nearest it, ties to the deeper;
            with the depth unknown, ``max(layers) + 1`` blocks are assumed).
        strength: in units of the layer's residual norm (the store's ``residual_norm``).
        kind: which vectors give the direction (``"denoised_unit"`` by default; any kind of the
            store; the direction is normalised anyway).
        absolute_scale: if given, the unit instead of the residual norm, for every layer
            (added norm = ``strength * absolute_scale``); needed for a store whose residual
            norm is not measured.

    Raises:
        SteeringUnitError: the store's ``residual_norm_status`` is not ``"measured"`` and no
            ``absolute_scale`` was given.
        ValueError: unknown emotion, layer or kind (the message lists what exists), a zero
            vector, a bad strength or scale.
    """
    from emotion_vectors.vectors.store_layout import Store, read_store

    if not isinstance(store, Store):
        store = read_store(Path(store))
    if emotion not in store.emotions:
        raise ValueError(f"emotion {emotion!r} is not in the store {store.path}; it has: "
                         f"{', '.join(store.emotions)}")
    if kind not in store.kinds:
        raise ValueError(f"vector kind {kind!r} is not in the store {store.path}; it has: "
                         f"{', '.join(store.kinds)}")
    if layers is None:
        n_blocks = store.attrs.get("num_hidden_layers")
        n_blocks = int(n_blocks) if isinstance(n_blocks, (int, np.integer)) and n_blocks > 0 else None
        layers = [_main_stored_layer(list(store.layers), n_blocks)]
    layers = list(layers)
    if not layers:
        raise ValueError("no layers requested: give at least one of the store's layers, or None")
    missing = [x for x in layers if x not in store.layers]
    if missing:
        raise ValueError(f"layers {missing} are not in the store {store.path}; its layers "
                         f"(0-based block outputs) are {store.layers}")
    if absolute_scale is not None:
        scale = float(absolute_scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"absolute_scale must be finite and > 0, got {absolute_scale!r}")
        units = [scale] * len(layers)
    else:
        norms = store.residual_norm
        if store.residual_norm_status != "measured" or norms is None:
            raise SteeringUnitError(
                f"the vector store {store.path} has no measured residual norm "
                f"(residual_norm_status={store.residual_norm_status!r}), so a strength in units "
                "of the residual norm has no size. Pass absolute_scale=<a norm> (the added norm "
                "is then strength x absolute_scale), or rebuild the store from activations."
            )
        units = [float(norms[store.layers.index(x)]) for x in layers]
    e = store.emotions.index(emotion)
    array = store.array(kind)
    steers = []
    for layer, unit in zip(layers, units):
        vec = np.asarray(array[e, store.layers.index(layer), :], dtype=np.float64)
        try:
            steers.append(Steer(layer=int(layer), direction=vec, strength=strength, unit_norm=unit))
        except ValueError as err:
            raise ValueError(f"{store.path}: {kind} vector of {emotion!r} at layer {layer}: {err}") from err
    return steers


def _main_stored_layer(layers: list[int], n_blocks: int | None) -> int:
    """The study's main layer among the stored ones (one rule with the analysis and export)."""
    return main_stored_layer(layers, n_blocks)


def random_steers(like: Sequence[Steer], seed: int) -> list[Steer]:
    """The random-direction null: the same layers, strengths and unit norms as ``like``, with
    directions drawn uniformly on the unit sphere (normalised standard normals from
    ``numpy.random.default_rng(seed)``, one per steer, in order)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in like:
        d = s.direction.shape[0]
        v = rng.standard_normal(d)
        while not np.linalg.norm(v) > 0:  # pragma: no cover - probability zero
            v = rng.standard_normal(d)
        out.append(Steer(layer=s.layer, direction=v, strength=s.strength, unit_norm=s.unit_norm))
    return out


def _positional(args: tuple, kwargs: dict, name: str, index: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    if len(args) > index and isinstance(args[index], torch.Tensor):
        return args[index]
    return None


def call_positions(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute positions and real-token mask of the tokens of one top-level forward call.

    ``args``/``kwargs`` are what the model's ``forward`` receives. Returns ``(pos, real)``, both
    ``(batch, T)`` (long, bool), on the input's device: ``pos`` counts each row's real tokens
    from 0 (left padding ignored); ``real`` is False at padding.
    """
    input_ids = _positional(args, kwargs, "input_ids", 0)
    embeds = kwargs.get("inputs_embeds")
    source = input_ids if isinstance(input_ids, torch.Tensor) else embeds
    if not isinstance(source, torch.Tensor) or source.dim() < 2:
        raise SteeringPositionError(
            "steering needs input_ids (batch, T) or inputs_embeds (batch, T, d) to place tokens")
    b, t = int(source.shape[0]), int(source.shape[1])
    device = source.device
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    past: int | None = None
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, torch.Tensor) and cache_position.numel():
        past = int(cache_position.reshape(-1)[0])
    elif cache is not None and hasattr(cache, "get_seq_length"):
        past = int(cache.get_seq_length())
    mask = _positional(args, kwargs, "attention_mask", 1)
    if mask is None:
        start = 0 if past is None else past
        pos = (torch.arange(t, device=device) + start).unsqueeze(0).expand(b, t)
        return pos, torch.ones((b, t), dtype=torch.bool, device=device)
    if isinstance(mask, dict):  # per-attention-type masks (Gemma with a static cache)
        if "full_attention" not in mask:
            raise SteeringPositionError(
                f"attention_mask is a dict without a 'full_attention' mask (keys {sorted(mask)}); "
                "steering cannot tell the padding: use the default dynamic cache")
        mask = mask["full_attention"]
    if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 4):
        raise SteeringPositionError(
            "steering reads padding from a 2-D attention_mask (batch, past + current tokens) or a "
            f"4-D full causal mask; got {type(mask).__name__} of shape "
            f"{tuple(getattr(mask, 'shape', ()))}")
    if mask.dim() == 4:
        return _positions_from_4d(mask.to(device), b, t, 0 if past is None else past)
    if int(mask.shape[0]) != b or int(mask.shape[1]) < t:
        raise SteeringPositionError(
            f"attention_mask {tuple(mask.shape)} does not cover the {b} x {t} tokens of the call")
    if past is not None and int(mask.shape[1]) != past + t:
        raise SteeringPositionError(
            f"attention_mask covers {int(mask.shape[1])} tokens but the call has {past} past + "
            f"{t} current tokens; pass a mask over the past and current tokens, as generate() does")
    on = mask.to(device) != 0
    pos = on.long().cumsum(-1)[:, -t:] - 1
    return pos, on[:, -t:]


def _positions_from_4d(mask: torch.Tensor, b: int, t: int, past: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pos, real)`` from a 4-D full causal mask ``(b, 1 or heads, T, K)`` (``generate()`` with a
    static cache passes one): True / 0.0 = may attend. Which keys are real tokens is read from
    the last query's row; every real query must then see exactly the real keys up to itself
    (a full causal mask with padding), otherwise (sliding window, custom masks) this refuses."""
    if int(mask.shape[0]) != b or int(mask.shape[2]) != t or int(mask.shape[3]) < past + t:
        raise SteeringPositionError(
            f"4-D attention_mask {tuple(mask.shape)} does not fit {b} x {t} tokens after {past} "
            "past tokens")
    allowed = mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] == 0  # (b, T, K)
    width = past + t
    allowed = allowed[:, :, :width]
    keys = torch.arange(width, device=mask.device)
    own = keys[past:]  # (T,) each query's own column
    # Under a full causal mask the last query may attend to every real key, itself included
    # (a padding query, e.g. under right padding, attends to the real keys but not itself).
    key_real = allowed[:, -1, :]  # (b, K)
    real = key_real[:, past:]
    causal = keys.unsqueeze(0) <= own.unsqueeze(-1)  # (T, K)
    expected = key_real.unsqueeze(1) & causal.unsqueeze(0)  # (b, T, K)
    if not bool(((allowed == expected) | ~real.unsqueeze(-1)).all()):
        raise SteeringPositionError(
            "the 4-D attention_mask is not a full causal mask with padding (a sliding window or a "
            "custom mask?), so token positions cannot be read from it: use the default dynamic "
            "cache or pass a 2-D attention_mask")
    pos = key_real.long().cumsum(-1)[:, past:] - 1
    return pos, real


class _SteeringHooks:
    """The state of one ``steering`` context: per-call token selection and the block hooks."""

    def __init__(self, model: torch.nn.Module, per_layer: dict[int, np.ndarray],
                 positions: Positions, prompt_length: int | None,
                 row_active: dict[int, np.ndarray] | None = None, broadcast: bool = False,
                 n_rows: int | None = None, expand_layer: int | None = None) -> None:
        self.model = model
        self.broadcast = broadcast and row_active is not None
        self.expand_layer = expand_layer if expand_layer is not None else (min(per_layer) if per_layer else None)
        self.expanding = False  # the current call has fewer rows, repeated at ``expand_layer``
        self.call_rows = 1
        self.repeat_cache = True
        self.call_cache: Any = None
        # (d,) per layer (every row alike), or (n_rows, d) with ``row_active`` (n_rows,) per layer
        self.per_layer = per_layer
        self.row_active = row_active
        self.n_rows = n_rows if n_rows is not None else (
            None if row_active is None else int(next(iter(row_active.values())).shape[0]))
        self.positions = positions
        self.prompt_length = prompt_length
        self.first_prompt: torch.Tensor | None = None  # (b,) real tokens in the first call
        self.select: torch.Tensor | None = None  # (b, T) bool, the current call's steered tokens
        self.any_selected = False
        self._cast: dict[tuple, torch.Tensor] = {}

    def pre_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        pos, real = call_positions(args, kwargs)
        self.expanding = False
        if self.n_rows is not None and pos.shape[0] != self.n_rows:
            if not (self.broadcast and self.n_rows % pos.shape[0] == 0):
                raise SteeringPositionError(
                    f"steering_rows was given {self.n_rows} rows of steers but the model is called with "
                    f"a batch of {pos.shape[0]}: call it with one row per entry of rows, in order"
                    + (" (or with one row, or m rows for m dividing the rows, repeated at the steered block)"
                       if self.broadcast else ""))
            self.expanding = True
            self.call_rows = int(pos.shape[0])
            self.call_cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if self.positions == "all":
            select = real
        elif self.positions == "generated":
            if self.prompt_length is not None:
                threshold: torch.Tensor | int = self.prompt_length
            else:
                if self.first_prompt is None:
                    self.first_prompt = torch.where(real, pos + 1, 0).amax(-1)  # (b,)
                elif self.first_prompt.shape[0] == 1 and self.broadcast:
                    pass  # a prompt run once for every row: its length holds for each
                elif self.first_prompt.shape[0] != pos.shape[0]:
                    raise SteeringPositionError(
                        f"positions='generated' took the prompt lengths from the first forward "
                        f"call in this context ({self.first_prompt.shape[0]} rows) but this call "
                        f"has {pos.shape[0]} rows: use one generate() call per steering context, "
                        "or pass prompt_length")
                threshold = self.first_prompt.to(pos.device).unsqueeze(-1)
            select = real & (pos >= threshold)
        else:
            select = real & (pos >= int(self.positions))
        self.select = select
        self.any_selected = bool(select.any())

    def post_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        self.select = None
        self.any_selected = False
        if self.expanding:
            self.expanding = False
            cache = self.call_cache
            if cache is None:
                cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
            self.call_cache = None
            if cache is not None and self.repeat_cache:
                _repeat_cache_rows(cache, self.n_rows)

    def _delta(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        key = (layer, like.dtype, like.device)
        if key not in self._cast:
            self._cast[key] = torch.as_tensor(self.per_layer[layer]).to(device=like.device, dtype=like.dtype)
        return self._cast[key]

    def _rows(self, layer: int, device: torch.device) -> torch.Tensor:
        key = ("rows", layer, device)
        if key not in self._cast:
            self._cast[key] = torch.as_tensor(self.row_active[layer]).to(device=device)
        return self._cast[key]

    def block_hook(self, layer: int):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            if self.select is None:
                raise SteeringPositionError(
                    f"decoder block {layer} ran outside a forward call of the model given to "
                    "steering(); call that model (not a submodule) while steering")
            hidden = _block_hidden(output)
            select = self.select
            if self.expanding:
                k = self.n_rows // self.call_rows  # row r * m + q of the rows is row q of the call
                if layer == self.expand_layer and hidden.shape[0] == self.call_rows:
                    hidden = hidden.repeat(k, *([1] * (hidden.dim() - 1)))
                    if not self.any_selected or layer not in self.per_layer:
                        return _replace_hidden(output, hidden)
                select = select.repeat(k, 1)
            if not self.any_selected or layer not in self.per_layer:
                return None
            if tuple(hidden.shape[:2]) != tuple(select.shape):
                raise SteeringPositionError(
                    f"block {layer} output has shape {tuple(hidden.shape)} but the call's tokens "
                    f"are {tuple(select.shape)}")
            delta = self._delta(layer, hidden)
            if delta.shape[-1] != hidden.shape[-1]:
                raise ValueError(f"steer at layer {layer} has d={delta.shape[-1]} but the "
                                 f"residual stream has d={hidden.shape[-1]}")
            select = select.to(hidden.device)
            if delta.dim() == 2:  # one vector per row; inactive rows are left exactly as they are
                select = select & self._rows(layer, hidden.device).unsqueeze(-1)
                delta = delta.unsqueeze(1)
            sel = select.unsqueeze(-1)
            steered = torch.where(sel, hidden + delta, hidden)
            return _replace_hidden(output, steered)

        return hook


def _filled_cache_layers(cache: Any, needed_by: str) -> Iterator[Any]:
    """The cache layers that hold keys (``needed_by`` names the caller in the error when the cache
    has no per-layer storage)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise SteeringPositionError(
            f"{needed_by} needs a KV cache with per-layer storage (transformers' DynamicCache), "
            f"got {type(cache).__name__}")
    for lay in layers:
        keys = getattr(lay, "keys", None)
        if getattr(lay, "is_initialized", keys is not None) and isinstance(keys, torch.Tensor) and keys.numel():
            yield lay


def _repeat_cache_rows(cache: Any, n_rows: int) -> None:
    """Tile every cache layer that holds ``m`` rows (``m`` dividing ``n_rows``) to ``n_rows`` rows,
    row ``r * m + q`` a copy of row ``q`` (the blocks below the steered one, run once by a
    broadcast call); layers already at ``n_rows`` are left alone."""
    for lay in _filled_cache_layers(cache, f"a broadcast call (batch 1 for {n_rows} rows)"):
        keys = lay.keys
        m = int(keys.shape[0])
        if m != n_rows and n_rows % m == 0:  # tiled: row r * m + q is row q
            lay.keys = keys.repeat(n_rows // m, *([1] * (keys.dim() - 1)))
            lay.values = lay.values.repeat(n_rows // m, *([1] * (lay.values.dim() - 1)))
        elif m != n_rows:
            raise SteeringPositionError(
                f"a cache layer holds {keys.shape[0]} rows after a broadcast call for {n_rows} rows")


def _distinct_rows(rows: Sequence[Sequence[Steer]]) -> tuple[list[list[Steer]], list[int]]:
    """The distinct rows (first occurrence order, steers of strength 0 dropped) and, for each row,
    the index of its distinct row: rows with the same steers read the same prompt identically."""
    first: dict[frozenset, int] = {}
    unique: list[list[Steer]] = []
    index = []
    for r in rows:
        key = frozenset(Counter(s for s in r if s.strength != 0).items())  # the row's steers, as a multiset
        if key not in first:
            first[key] = len(unique)
            unique.append(list(r))
        index.append(first[key])
    return unique, index


def _select_cache_rows(cache: Any, index: Sequence[int]) -> None:
    """Make row ``i`` of every cache layer a copy of its row ``index[i]``."""
    for lay in _filled_cache_layers(cache, "sharing a prompt between equal rows"):
        keys = lay.keys
        idx = torch.as_tensor(list(index), dtype=torch.long, device=keys.device)
        lay.keys = keys.index_select(0, idx)
        lay.values = lay.values.index_select(0, idx.to(lay.values.device))


def _replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden states replaced, in the same structure (see ``_block_hidden``)."""
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden,) + tuple(output[1:])
    if isinstance(output, list):
        return [hidden] + list(output[1:])
    output.hidden_states = hidden
    return output


def _checked_policy(positions: Any, prompt_length: Any) -> tuple[Positions, int | None]:
    if not (positions in ("all", "generated") or (
            isinstance(positions, (int, np.integer)) and not isinstance(positions, bool)
            and positions >= 0)):
        raise ValueError(f"positions must be 'all', 'generated' or an int >= 0, got {positions!r}")
    if prompt_length is not None:
        if positions != "generated":
            raise ValueError("prompt_length is only used with positions='generated'")
        if isinstance(prompt_length, bool) or not isinstance(prompt_length, (int, np.integer)) \
                or prompt_length < 0:
            raise ValueError(f"prompt_length must be an int >= 0, got {prompt_length!r}")
        prompt_length = int(prompt_length)
    if not isinstance(positions, str):
        positions = int(positions)
    return positions, prompt_length


def _checked_steers(model: torch.nn.Module, steers: Sequence[Any]) -> list[Steer]:
    """The active steers (strength != 0) after checking types, layers and widths."""
    bad = [s for s in steers if not isinstance(s, Steer)]
    if bad:
        raise TypeError(f"steers must be Steer objects, got {type(bad[0]).__name__}")
    active = [s for s in steers if s.strength != 0]
    if not active:
        return active
    n_blocks = len(decoder_layers(model))
    outside = sorted({s.layer for s in active if s.layer >= n_blocks})
    if outside:
        raise LayerIndexError(f"steer layers {outside} are outside 0..{n_blocks - 1}: the model "
                              f"has {n_blocks} decoder blocks (layer i = output of block i)")
    widths = {s.direction.shape[0] for s in active}
    if len(widths) > 1:
        raise ValueError(f"steers have different widths d: {sorted(widths)}")
    return active


@contextlib.contextmanager
def _hooked(model: torch.nn.Module, state: _SteeringHooks) -> Iterator[None]:
    blocks = decoder_layers(model)
    handles = []
    try:
        handles.append(model.register_forward_pre_hook(state.pre_forward, with_kwargs=True))
        handles.append(model.register_forward_hook(state.post_forward, with_kwargs=True,
                                                   always_call=True))
        hooked = set(state.per_layer)
        if state.broadcast and state.expand_layer is not None:
            hooked.add(state.expand_layer)
        for layer in sorted(hooked):
            handles.append(blocks[layer].register_forward_hook(state.block_hook(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def steering(
    model: torch.nn.Module,
    steers: Sequence[Steer],
    *,
    positions: Positions = "all",
    prompt_length: int | None = None,
) -> Iterator[None]:
    """Add ``steers`` to the residual stream of ``model`` for the duration of the block.

    Args:
        model: the model that will be called (a causal LM or a multimodal wrapper whose
            ``decoder_layers`` are the blocks); call it (or its ``generate``) inside the block.
        steers: :class:`Steer` s, summed per layer; steers of strength 0 are dropped, and with
            none left no hook is registered at all.
        positions: ``"all"``, ``"generated"`` or an int ``K`` (tokens at absolute position
            ``>= K``); see the module docstring.
        prompt_length: only with ``positions="generated"``: tokens at positions
            ``>= prompt_length`` are steered (default: each row's real tokens in the first
            forward call inside the context).

    Hooks are removed on exit, also when the block raises.
    """
    positions, prompt_length = _checked_policy(positions, prompt_length)
    active = _checked_steers(model, list(steers))
    if not active:
        yield
        return
    per_layer: dict[int, np.ndarray] = {}
    for s in active:
        per_layer[s.layer] = per_layer.get(s.layer, 0.0) + s.vector
    with _hooked(model, _SteeringHooks(model, per_layer, positions, prompt_length)):
        yield


@contextlib.contextmanager
def steering_rows(
    model: torch.nn.Module,
    rows: Sequence[Sequence[Steer]],
    *,
    positions: Positions = "all",
    prompt_length: int | None = None,
    broadcast: bool = False,
    repeat_cache: bool = True,
) -> Iterator[None]:
    """Add a different set of steers to each row of the batch (one direction per sequence).

    Row ``i`` of every forward call inside the block gets the sum of ``rows[i]``'s steers, with
    the token policy of :func:`steering` applied row by row (absolute positions, padding never
    steered, the same with and without the KV cache). A row with no steer of non-zero strength is
    left bit-identical to the same batch without steering; if no row has one, no hook is
    registered at all. Every forward call must have exactly ``len(rows)`` rows
    (:class:`SteeringPositionError` otherwise).

    Args:
        model: as for :func:`steering`.
        rows: for each row of the batch, its :class:`Steer` s (possibly none).
        positions, prompt_length: as for :func:`steering` (``prompt_length`` for every row).
        broadcast: also accept a forward call of batch 1 (one prompt for every row): the blocks
            below the first steered one run once, its output is repeated to ``len(rows)`` rows,
            and the KV cache of the blocks below is repeated after the call (module docstring,
            "The shared prefix"). With no active row, the call runs as one row up to the
            last block and is repeated there. More generally a call of ``m`` rows, ``m``
            dividing ``len(rows)``, is tiled: row ``r * m + q`` of ``rows`` continues row ``q`` of
            the call (its attention mask must then not differ between rows: pass none, or one of
            a single row, so that the blocks above read the same mask for every row).
        repeat_cache: after a broadcast call, tile the KV cache of the blocks below to
            ``len(rows)`` rows (default); False leaves it at the call's rows (for a caller that
            arranges the next call's cache itself).
    """
    positions, prompt_length = _checked_policy(positions, prompt_length)
    rows = [list(r) for r in rows]
    if not rows:
        raise ValueError("steering_rows needs one entry (a list of steers, possibly empty) per row")
    active_rows = [_checked_steers(model, r) for r in rows]
    everything = [s for r in active_rows for s in r]
    if not everything:
        if broadcast and len(rows) > 1:  # nothing to add: one row all the way up, then repeated
            state = _SteeringHooks(model, {}, positions, prompt_length, row_active={}, broadcast=True,
                                   n_rows=len(rows), expand_layer=len(decoder_layers(model)) - 1)
            state.repeat_cache = repeat_cache
            with _hooked(model, state):
                yield
            return
        yield
        return
    _checked_steers(model, everything)  # one width for all rows
    d = everything[0].direction.shape[0]
    per_layer: dict[int, np.ndarray] = {}
    row_active: dict[int, np.ndarray] = {}
    for i, r in enumerate(active_rows):
        for s in r:
            if s.layer not in per_layer:
                per_layer[s.layer] = np.zeros((len(rows), d))
                row_active[s.layer] = np.zeros(len(rows), dtype=bool)
            per_layer[s.layer][i] += s.vector
            row_active[s.layer][i] = True
    state = _SteeringHooks(model, per_layer, positions, prompt_length, row_active=row_active,
                           broadcast=broadcast)
    state.repeat_cache = repeat_cache
    with _hooked(model, state):
        yield


def generate_rows(
    model: torch.nn.Module,
    input_ids: Any,
    rows: Sequence[Sequence[Steer]],
    *,
    positions: Positions = "all",
    seed: int | None = None,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """One continuation of ONE prompt per entry of ``rows`` (row ``i`` steered by ``rows[i]``),
    the prompt's shared part computed once.

    The prompt's tokens but the last run as one row under ``steering_rows(..., broadcast=True)``
    (blocks below the first steered one once, the rest once per row; module docstring, "The
    shared prefix"); ``generate()`` then continues every row from that cache, in the same
    steering context. ``positions="generated"`` steers the tokens after the prompt
    (``prompt_length`` = the prompt's length). ``seed`` seeds torch before sampling.

    Args:
        input_ids: the prompt's token ids (a list or a ``(T,)`` / ``(1, T)`` tensor), no padding.
        generate_kwargs: passed to ``model.generate`` (``max_new_tokens``, ``do_sample``, ...).

    Returns:
        ``(len(rows), n_new)``: the new tokens of each row.
    """
    from emotion_vectors.extraction.extract import _input_device

    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1).to(_input_device(model))
    rows = [list(r) for r in rows]
    n, t = len(rows), int(ids.shape[1])
    if t == 0:
        raise ValueError("generate_rows needs a prompt of at least one token")
    prompt_length = t if positions == "generated" else None
    params = __import__("inspect").signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    kwargs: dict[str, Any] = {}
    if t > 1:  # the prompt but its last token: once per distinct row (once below the steered block)
        unique, index = _distinct_rows(rows)
        with torch.inference_mode(), steering_rows(model, unique, positions=positions,
                                                   prompt_length=prompt_length, broadcast=True):
            head = ids[:, :-1]
            out = model(input_ids=head, attention_mask=torch.ones_like(head), use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if cache is None:
            raise SteeringPositionError(f"{type(model).__name__} returned no KV cache for the shared prompt")
        if len(unique) > 1:
            _repeat_cache_rows(cache, len(unique))  # no-op when the steering hooks did it
        if len(unique) != n:
            _select_cache_rows(cache, index)
        kwargs[cache_arg] = cache
    with torch.inference_mode(), steering_rows(model, rows, positions=positions, prompt_length=prompt_length,
                                               broadcast=True):
        if seed is not None:
            torch.manual_seed(int(seed))
        out = model.generate(input_ids=ids.expand(n, -1), attention_mask=torch.ones((n, t), dtype=torch.long,
                                                                                    device=ids.device),
                             **kwargs, **generate_kwargs)
    return out[:, t:]


def sample_rows(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    rows: Sequence[Sequence[Steer]],
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None = 50,
    top_p: float = 1.0,
    positions: Positions = "all",
    seed: int | None = None,
    pad_token_id: int,
    eos_token_ids: Sequence[int],
) -> list[list[int]]:
    """One sampled continuation per row (row ``i``: prompt ``prompts[i]`` steered by ``rows[i]``),
    by a decoding loop that samples among the ``top_k`` most likely tokens only.

    ``generate()`` with ``top_p`` sorts the whole vocabulary and draws from it at every step, for
    every row: on a CPU, with a vocabulary of 49k and a batch of 128, that costs more than the
    model's own head. Here each step takes the ``top_k`` largest logits (``torch.topk``), keeps the
    smallest set of them whose probability reaches ``top_p``, and draws among those (the
    distribution of ``generate(do_sample=True, temperature, top_k, top_p)``, which also applies
    top-k before top-p); ``temperature`` 0 is greedy. Seeded by ``seed`` (a generator of its own).
    When every row has the same prompt it runs once below the steered block
    (``steering_rows(broadcast=True)``); otherwise the prompts are left-padded. Positions are
    counted from each row's first real token, as ``generate()`` does.

    Returns:
        each row's new tokens, up to (not including) its first ``eos_token_ids`` token.
    """
    from emotion_vectors.extraction.extract import _input_device

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if len(prompts) != len(rows) or not rows:
        raise ValueError(f"give one prompt per row: {len(prompts)} prompts for {len(rows)} rows")
    device = _input_device(model)
    n = len(rows)
    eos = torch.tensor(sorted({int(t) for t in eos_token_ids}), dtype=torch.long, device=device)
    params = __import__("inspect").signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(int(seed))
    shared = n > 1 and all(list(p) == list(prompts[0]) for p in prompts)
    if shared:
        ids = torch.tensor([list(prompts[0])], dtype=torch.long, device=device)
        mask = torch.ones_like(ids)
        pos = torch.arange(ids.shape[1], device=device).unsqueeze(0)
    else:
        width = max(len(p) for p in prompts)
        ids = torch.full((n, width), int(pad_token_id), dtype=torch.long, device=device)
        mask = torch.zeros((n, width), dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            if len(p):
                ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
                mask[i, width - len(p):] = 1
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
    prompt_length = int(ids.shape[1]) if (shared and positions == "generated") else None
    out_tokens = []
    with torch.inference_mode(), steering_rows(model, rows, positions=positions, prompt_length=prompt_length,
                                               broadcast=shared):
        try:
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        except TypeError:  # a model without logits_to_keep
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        logits = out.logits[:, -1].float()
        if logits.shape[0] != n:  # nothing steered and one row: the rows are that row
            logits = logits.expand(n, -1)
            _repeat_cache_rows(cache, n)
        mask = mask.expand(n, -1) if mask.shape[0] != n else mask
        done = torch.zeros(n, dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            if temperature <= 0:
                tok = logits.argmax(-1)
            else:
                scaled = logits / float(temperature)
                if top_k:
                    vals, idx = torch.topk(scaled, min(int(top_k), scaled.shape[-1]), dim=-1)
                else:  # the whole vocabulary, most likely first only where top-p needs the order
                    vals, idx = (torch.sort(scaled, dim=-1, descending=True) if top_p < 1.0 else
                                 (scaled, torch.arange(scaled.shape[-1], device=device).expand_as(scaled)))
                probs = torch.softmax(vals, dim=-1)
                if top_p < 1.0:
                    before = probs.cumsum(-1) - probs  # mass of the more likely tokens
                    probs = torch.where(before < float(top_p), probs, torch.zeros_like(probs))
                    probs = probs / probs.sum(-1, keepdim=True)
                choice = torch.multinomial(probs.cpu(), 1, generator=gen).to(device)
                tok = idx.gather(-1, choice).squeeze(-1)
            tok = torch.where(done, torch.full_like(tok, int(pad_token_id)), tok)
            out_tokens.append(tok)
            done = done | torch.isin(tok, eos)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
            step_pos = mask.sum(-1, keepdim=True) - 1
            out = model(input_ids=tok.unsqueeze(-1), attention_mask=mask, position_ids=step_pos, use_cache=True,
                        **{cache_arg: cache})
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None) or cache
            logits = out.logits[:, -1].float()
    new = torch.stack(out_tokens, dim=1).cpu().tolist()
    eos_set = set(eos.cpu().tolist())
    return [row[: next((i for i, t in enumerate(row) if t in eos_set), len(row))] for row in new]


__all__ = [
    "Steer",
    "SteeringPositionError",
    "SteeringUnitError",
    "call_positions",
    "generate_rows",
    "random_steers",
    "sample_rows",
    "steering",
    "steering_rows",
    "steers_from_store",
]
