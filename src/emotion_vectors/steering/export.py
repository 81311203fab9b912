"""Export one emotion's steering vectors from a vector store: safetensors or a llama.cpp GGUF.

Usage::

    python -m emotion_vectors.steering.export VECTORS_ZARR --format safetensors|gguf --emotion E \\
        [--layers L ... | --layers all] [--kind denoised_unit|raw_unit] [--strength S] \\
        [--absolute-scale X] --out FILE

Steering convention of this project
-----------------------------------
Layer ``i`` is the output of decoder block ``i`` (0-based), the residual stream as extraction
reads it. Steering at layer ``i`` adds ``strength * scale[i] * unit[i]`` to that output, where
``unit[i]`` is the emotion's unit vector (``denoised_unit`` or ``raw_unit``) and ``scale[i]`` is
the store's measured mean residual-stream norm ``residual_norm[i]`` (so strength 0.5 = half the
typical norm of the residual stream at that layer). When the store's ``residual_norm_status`` is
``"unknown"`` no scale is invented: the export is refused unless ``absolute_scale`` is given,
and then ``scale[i] = absolute_scale`` at every layer (strength unit ``"absolute"``).

Formats
-------
- safetensors: for every exported layer ``i`` two float32 ``(d,)`` tensors, ``layer.{i}`` (the
  vector to ADD, ``strength * scale[i] * unit[i]``) and ``unit.{i}`` (the unit direction, so
  it stays recoverable when the strength is 0 or negative). The metadata (str -> str) holds one
  JSON document per key (decode every value with ``json.loads``): model, dtype, quantization,
  emotion, kind, block convention, hook site, pooling, normalisation, strength and its unit,
  the residual norms used, package versions.
- gguf: a llama.cpp control vector. llama.cpp adds tensor ``direction.N`` to the output of
  decoder block ``N`` (0-based; ``build_cvec(cur, il)`` after the block's residual add in the
  model graph, ``llama_adapter_cvec::apply_to``), rejects a file holding ``direction.0``
  (``common_control_vector_load_one``) and multiplies every tensor by the scale given with
  ``--control-vector-scaled``. So our layer ``i`` is written as ``direction.{i}`` and layer 0
  cannot be exported. The tensors hold ``strength * scale[i] * unit[i]``; llama.cpp's SCALE
  multiplies that, so the effective strength is ``strength * SCALE`` (export with strength 1,
  the default, and pass the wanted strength as SCALE). See ``docs/export.md``.

Every check (emotion, layers, kind, scale) runs before anything is written, and files are
written to a temporary file in the output's directory and renamed into place, so a failed
export leaves no file behind.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..vectors.store_layout import StoreLayoutError, read_store

FORMATS = ("safetensors", "gguf")
EXPORT_KINDS = ("denoised_unit", "raw_unit")
FORMAT_TAG = "emotion_vectors.steering/1"
BLOCK_CONVENTION = ("added to the output of decoder block i, 0-based; "
                    "the residual stream read as layer i")
HOOK_SITE = ("output of decoder block i (a forward hook on model.get_decoder().layers[i]): the "
             "residual stream after block i, before the final norm; equals "
             "output_hidden_states[i+1] except for the last block")
GGUF_CONVENTION = ("direction.N is added by llama.cpp to the output of decoder block N (0-based; "
                   "build_cvec(cur, il) with il = N); N = 0 is rejected by the loader; tensors "
                   "are multiplied by the --control-vector-scaled SCALE")

LayersArg = Sequence[int] | str | None


class ExportError(ValueError):
    """An export that cannot be done as asked (nothing has been written)."""


@dataclass
class SteeringVectors:
    """What an export writes: per-layer vectors to add, their unit directions and metadata.

    Attributes:
        emotion, kind: the emotion and the store array (``denoised_unit`` / ``raw_unit``).
        layers: exported layers (0-based decoder block indices), ascending.
        add: ``{layer: (d,) float32}`` the vector to add, ``strength * scale[layer] * unit``.
        unit: ``{layer: (d,) float32}`` the unit direction read from the store.
        scale: ``{layer: float}`` the per-layer unit of strength (residual norm or absolute).
        strength: the multiplier of ``scale``.
        strength_unit: ``"residual_norm[i]"`` or ``"absolute"``.
        metadata: JSON-able description (model, conventions, norms, versions).
    """

    emotion: str
    kind: str
    layers: list[int]
    add: dict[int, np.ndarray]
    unit: dict[int, np.ndarray]
    scale: dict[int, float]
    strength: float
    strength_unit: str
    metadata: dict[str, Any] = field(default_factory=dict)


def default_layer(stored: Sequence[int], n_blocks: int | None = None) -> int:
    """The default export layer: the study's main layer (``extract.main_stored_layer``: the
    block at two-thirds of the depth, or the stored layer nearest it), as the analysis uses."""
    from emotion_vectors.extraction.extract import main_stored_layer

    return main_stored_layer(stored, n_blocks)


def _resolve_layers(requested: LayersArg, stored: list[int], n_blocks: int | None = None) -> list[int]:
    if requested is None:
        return [default_layer(stored, n_blocks)]
    if isinstance(requested, str):
        if requested != "all":
            raise ExportError(f"layers must be 'all' or a list of integers, got {requested!r}")
        return sorted(stored)
    wanted: list[int] = []
    for x in requested:
        try:
            wanted.append(int(x))
        except (TypeError, ValueError):
            raise ExportError(f"layer {x!r} is not an integer (stored layers: {sorted(stored)})")
    if not wanted:
        raise ExportError(f"no layer given (stored layers: {sorted(stored)})")
    missing = sorted(set(wanted) - set(stored))
    if missing:
        raise ExportError(f"layer(s) {missing} not in the store; stored layers: {sorted(stored)}")
    return sorted(set(wanted))


def _finite(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ExportError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(v):
        raise ExportError(f"{name} must be finite, got {value!r}")
    return v


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"emotion_vectors": __version__}
    for name in ("numpy", "safetensors", "gguf", "zarr"):
        try:
            out[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            out[name] = None
    return out


def steering_vectors(
    store_path: str | Path,
    emotion: str,
    layers: LayersArg = None,
    *,
    kind: str = "denoised_unit",
    strength: float = 1.0,
    absolute_scale: float | None = None,
) -> SteeringVectors:
    """Read and check what an export of ``emotion`` at ``layers`` would write (writes nothing).

    Args:
        store_path: the vector store (``vectors.zarr``).
        emotion: one of the store's emotions.
        layers: ``None`` = the main layer (``default_layer``), ``"all"`` = every
            stored layer, or 0-based decoder block indices that the store holds.
        kind: ``"denoised_unit"`` (default) or ``"raw_unit"``.
        strength: multiplier of the per-layer scale (may be negative or 0).
        absolute_scale: the scale to use at every layer instead of the store's residual norm;
            required when the store's ``residual_norm_status`` is ``"unknown"``.

    Raises:
        ExportError: unknown emotion / layer / kind, unknown residual norm without
            ``absolute_scale``, a non-finite number, or a zero unit vector.
    """
    if kind not in EXPORT_KINDS:
        raise ExportError(f"kind {kind!r} is not one of {list(EXPORT_KINDS)}")
    strength = _finite("strength", strength)
    if absolute_scale is not None:
        absolute_scale = _finite("absolute_scale", absolute_scale)
        if absolute_scale <= 0:
            raise ExportError(f"absolute_scale must be > 0, got {absolute_scale!r}")
    try:
        store = read_store(store_path)
    except StoreLayoutError as exc:
        raise ExportError(str(exc)) from exc
    if emotion not in store.emotions:
        raise ExportError(f"emotion {emotion!r} not in the store; stored emotions: "
                          f"{', '.join(store.emotions)}")
    if kind not in store.kinds:
        present = [k for k in store.kinds if k in EXPORT_KINDS]
        raise ExportError(f"the store has no {kind!r} vectors; present unit kinds: {present}")
    chosen = _resolve_layers(layers, store.layers, store.attrs.get("num_hidden_layers"))

    residual = store.residual_norm  # None when unknown
    if absolute_scale is None and residual is None:
        raise ExportError(
            f"{store.path}: residual_norm_status is 'unknown', so strength has no unit "
            "(the residual-stream norm was not measured); pass --absolute-scale X to add "
            "strength * X * unit vector")
    e_row = store.emotions.index(emotion)
    arr = store.array(kind)
    add: dict[int, np.ndarray] = {}
    unit: dict[int, np.ndarray] = {}
    scale: dict[int, float] = {}
    norms_used: dict[str, float | None] = {}
    for layer in chosen:
        col = store.layers.index(layer)
        u = np.asarray(arr[e_row, col, :], dtype=np.float32)
        if not np.isfinite(u).all():
            raise ExportError(f"{kind}[{emotion!r}, layer {layer}] holds non-finite values")
        if not np.any(u):
            raise ExportError(f"{kind}[{emotion!r}, layer {layer}] is a zero vector: "
                              "no direction to export")
        s = absolute_scale if absolute_scale is not None else float(residual[col])
        unit[layer] = u
        scale[layer] = float(s)
        add[layer] = (np.float64(strength) * np.float64(s) * u.astype(np.float64)).astype(
            np.float32)
        norms_used[str(layer)] = None if residual is None else float(residual[col])
    strength_unit = "absolute" if absolute_scale is not None else "residual_norm[i]"

    attrs = store.attrs
    prov = dict(attrs.get("provenance") or {})
    subject = dict(prov.get("subject_model") or {})
    model = {k: subject.get(k) for k in (
        "name", "path", "revision", "commit_hash", "model_type", "architecture", "dtype",
        "quantization", "quantization_config")}
    model["num_hidden_layers"] = attrs.get("num_hidden_layers") or subject.get("num_hidden_layers")
    meta: dict[str, Any] = {
        "format": FORMAT_TAG,
        "emotion": emotion,
        "kind": kind,
        "layers": chosen,
        "hidden_size": int(arr.shape[2]),
        "model": model,
        "dtype": model["dtype"],
        "quantization": model["quantization"],
        "block_convention": BLOCK_CONVENTION,
        "layer_convention": attrs.get("layer_convention"),
        "hook_site": HOOK_SITE,
        "pooling": attrs.get("pooling"),
        "pool_start": attrs.get("pool_start"),
        "normalisation": (f"{kind}: the store's {kind.removesuffix('_unit')} vector scaled to "
                          "unit L2 norm (float64, stored float32); added vector = strength x "
                          "scale[i] x unit"),
        "vector_definition": attrs.get("definition"),
        "strength": strength,
        "strength_unit": strength_unit,
        "absolute_scale": absolute_scale,
        "scale": {str(k): v for k, v in scale.items()},
        "residual_norm_status": store.residual_norm_status,
        "residual_norms": norms_used,
        "residual_norm_definition": attrs.get("residual_norm_definition"),
        "source_store": str(Path(store_path).resolve()),
        "store_provenance": prov,
        "package_versions": _versions(),
        "exported_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return SteeringVectors(emotion, kind, chosen, add, unit, scale, strength, strength_unit, meta)


def _check_out(out: str | Path, suffix: str) -> Path:
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"--out {out} is a directory; give a file name (e.g. emotion{suffix})")
    if not out.parent.is_dir():
        raise ExportError(f"--out {out}: directory {out.parent} does not exist")
    return out


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def _atomic_write(out: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``out``, then rename it to ``out``."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def safetensors_metadata(sv: SteeringVectors) -> dict[str, str]:
    """The str -> str safetensors metadata: every value is a JSON document."""
    meta = dict(sv.metadata)
    meta["tensors"] = {
        "layer.{i}": "float32 (d,): the vector to ADD to the output of decoder block i "
                     "(strength x scale[i] x unit[i])",
        "unit.{i}": "float32 (d,): the unit direction unit[i] read from the store",
    }
    return {k: json.dumps(v) for k, v in meta.items()}


def write_safetensors(sv: SteeringVectors, out: str | Path) -> Path:
    """Write ``sv`` as safetensors (``layer.{i}``, ``unit.{i}``; JSON metadata) atomically."""
    from safetensors.numpy import save_file

    out = _check_out(out, ".safetensors")
    tensors: dict[str, np.ndarray] = {}
    for layer in sv.layers:
        tensors[f"layer.{layer}"] = np.ascontiguousarray(sv.add[layer], dtype=np.float32)
        tensors[f"unit.{layer}"] = np.ascontiguousarray(sv.unit[layer], dtype=np.float32)
    meta = safetensors_metadata(sv)
    return _atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def export_safetensors(
    store_path: str | Path,
    emotion: str,
    layers: LayersArg,
    out: str | Path,
    *,
    kind: str = "denoised_unit",
    strength: float = 1.0,
    absolute_scale: float | None = None,
) -> Path:
    """Write ``layer.{i}`` (vector to add) and ``unit.{i}`` tensors with JSON metadata.

    Arguments as in ``steering_vectors``; ``out`` is the file to write (replaced atomically).
    Returns ``out``.
    """
    _check_out(out, ".safetensors")
    sv = steering_vectors(store_path, emotion, layers, kind=kind, strength=strength,
                          absolute_scale=absolute_scale)
    return write_safetensors(sv, out)


def gguf_model_hint(sv: SteeringVectors) -> str:
    """``controlvector.model_hint``: the subject's model type (e.g. ``llama``), else its name."""
    model = sv.metadata.get("model") or {}
    for key in ("model_type", "name", "path"):
        if model.get(key):
            return str(model[key])
    return "unknown"


def check_gguf_layers(sv: SteeringVectors) -> None:
    """Refuse layers a llama.cpp control vector cannot hold (layer 0; beyond the model)."""
    if 0 in sv.layers:
        raise ExportError(
            f"layer 0 (requested: {sv.layers}) cannot be exported to a llama.cpp control "
            "vector: llama.cpp adds direction.N to the output of block N, so layer 0 would be "
            "direction.0, which its loader rejects (common_control_vector_load_one: 'invalid "
            "(zero) direction tensor layer index'); choose layers >= 1")
    n_blocks = (sv.metadata.get("model") or {}).get("num_hidden_layers")
    if n_blocks:
        beyond = [x for x in sv.layers if x >= int(n_blocks)]
        if beyond:
            raise ExportError(f"layer(s) {beyond} are not blocks of the {n_blocks}-block model")


def write_gguf(sv: SteeringVectors, out: str | Path, *, model_hint: str | None = None) -> Path:
    """Write ``sv`` as a llama.cpp control vector (``direction.{i}`` = ``sv.add[i]``) atomically."""
    from gguf import GGUFWriter

    out = _check_out(out, ".gguf")
    check_gguf_layers(sv)
    hint = model_hint or gguf_model_hint(sv)
    meta = dict(sv.metadata, gguf_convention=GGUF_CONVENTION, model_hint=hint)

    def write(tmp: Path) -> None:
        writer = GGUFWriter(str(tmp), "controlvector")
        writer.add_string("controlvector.model_hint", hint)
        writer.add_uint32("controlvector.layer_count", len(sv.layers))
        writer.add_string("emotion_vectors.emotion", sv.emotion)
        writer.add_string("emotion_vectors.kind", sv.kind)
        writer.add_float32("emotion_vectors.strength", float(sv.strength))
        writer.add_string("emotion_vectors.strength_unit", sv.strength_unit)
        writer.add_string("emotion_vectors.metadata", json.dumps(meta))
        for layer in sv.layers:
            writer.add_tensor(f"direction.{layer}",
                              np.ascontiguousarray(sv.add[layer], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return _atomic_write(out, write)


def export_gguf(
    store_path: str | Path,
    emotion: str,
    layers: LayersArg,
    out: str | Path,
    *,
    kind: str = "denoised_unit",
    strength: float = 1.0,
    absolute_scale: float | None = None,
    model_hint: str | None = None,
) -> Path:
    """Write a llama.cpp control vector: ``direction.{i}`` = ``strength * scale[i] * unit[i]``.

    Our layer ``i`` (output of 0-based block ``i``) is llama.cpp's ``direction.{i}``; layer 0
    cannot be written (llama.cpp rejects ``direction.0``). llama.cpp multiplies the tensors
    by the ``--control-vector-scaled`` SCALE, so the effective strength is ``strength * SCALE``.
    ``model_hint`` overrides ``controlvector.model_hint`` (default: the subject's model type).
    Other arguments as in ``steering_vectors``. Returns ``out``.
    """
    _check_out(out, ".gguf")
    sv = steering_vectors(store_path, emotion, layers, kind=kind, strength=strength,
                          absolute_scale=absolute_scale)
    return write_gguf(sv, out, model_hint=model_hint)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m emotion_vectors.steering.export",
        description=(
            "Export one emotion's steering vectors from a vector store. At layer i (output of "
            "0-based decoder block i) the vector to add is strength x residual_norm[i] x unit "
            "vector (or strength x X x unit with --absolute-scale X)."),
        epilog="See docs/export.md (llama.cpp convention, scale, examples).",
    )
    p.add_argument("store", metavar="VECTORS_ZARR", help="the vector store (vectors.zarr)")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument("--emotion", required=True, help="emotion to export (one of the store's)")
    p.add_argument("--layers", nargs="+", metavar="L", default=None,
                   help="0-based decoder block indices the store holds, or 'all' for every "
                        "stored layer (default: the main layer, two-thirds of the depth, as in the "
                        "analysis). gguf cannot take layer 0.")
    p.add_argument("--kind", choices=EXPORT_KINDS, default="denoised_unit",
                   help="which unit vectors (default: denoised_unit)")
    p.add_argument("--strength", type=float, default=1.0,
                   help="multiplier of residual_norm[i] (or of --absolute-scale); default 1. "
                        "For gguf, llama.cpp's SCALE multiplies it again: export with 1 and "
                        "pass the strength as SCALE")
    p.add_argument("--absolute-scale", type=float, default=None, metavar="X",
                   help="use X instead of the measured residual norm at every layer; required "
                        "when the store's residual_norm_status is 'unknown'")
    p.add_argument("--out", required=True, help="file to write (replaced atomically)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    layers: LayersArg = None
    if args.layers is not None:
        if args.layers == ["all"]:
            layers = "all"
        elif "all" in args.layers:
            parser.error("--layers: give 'all' alone or integers")
        else:
            try:
                layers = [int(x) for x in args.layers]
            except ValueError:
                parser.error(f"--layers: expected integers or 'all', got {args.layers}")
    try:
        _check_out(args.out, "." + args.format)
        sv = steering_vectors(args.store, args.emotion, layers, kind=args.kind,
                              strength=args.strength, absolute_scale=args.absolute_scale)
        if args.format == "safetensors":
            out = write_safetensors(sv, args.out)
        else:
            out = write_gguf(sv, args.out)
    except ExportError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    scales = ", ".join(f"{sv.scale[x]:.6g}" for x in sv.layers)
    print(f"wrote {out}: {args.format}, emotion {sv.emotion}, kind {sv.kind}, layers "
          f"{sv.layers}, strength {sv.strength:g} x {sv.strength_unit} ({scales})")
    return 0


__all__ = ["EXPORT_KINDS", "ExportError", "FORMATS", "SteeringVectors", "default_layer",
           "export_gguf", "export_safetensors", "main", "steering_vectors", "write_gguf",
           "write_safetensors"]


if __name__ == "__main__":
    sys.exit(main())
