"""Per-emotion Zarr activation shards, written resumably and atomically.

Layout of one shard (a Zarr v3 group, one directory)::

    activations  (n_texts, n_layers, d)  float32 (or float16 behind an overflow guard)
    token_norm   (n_texts, n_layers)     float32  mean L2 norm of the pooled token vectors
    n_tokens     (n_texts,)              int64    tokens in the text (special tokens included)
    attrs: ids, skipped [{id, n_tokens}], layers, layer_convention, pool_start,
           short_text_policy, storage_dtype, complete, fingerprint, provenance, ...

Rows follow the order of the input texts, less those skipped as too short.

While a shard is being filled it lives in ``<shard>.partial`` (rows written as batches finish,
plus a ``done`` mask and a checksum of every finished row); a rerun after a kill resumes from the
rows already done, provided the texts, model and settings are the same (the ``fingerprint``).
Nothing in a partial is trusted blindly: a partial whose metadata or small arrays cannot be read
is started over, and a finished row whose chunk is missing, truncated or altered (its checksum
differs) is recomputed; both are logged. When every row is done the data
are copied into ``<shard>.tmp`` with the final chunking and renamed to ``<shard>``: a path
named like the shard is always a complete shard, and ``open_shard`` refuses one whose
``complete`` attribute is not set. An existing shard is moved aside (``<shard>.old-*``) before the
rename and removed after it (``core.private_files.DirFd.replace``, the same step as the model server's
``publish``), so a kill at any moment leaves the old shard or the new one, complete, under the
shard's name, never a half-deleted one.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zarr

from .extract import ExtractionError, ExtractionPlan, iter_pooled, plan_extraction
from ..core.common import zarr_root
from ..core.private_files import DirFd

LAYER_CONVENTION = (
    "layer i = output of decoder block i (0-based; model.get_decoder().layers[i]); "
    "equals output_hidden_states[i+1] except for the last block (hidden_states[-1] is after the final norm)"
)
FLOAT16_MAX = float(np.finfo(np.float16).max)


class ShardError(RuntimeError):
    """A shard that cannot be written or read as asked."""


def fingerprint(texts: list[str], ids: list[str], layers: list[int], settings: dict, model_info: dict) -> str:
    """Hash of everything that determines a shard's numbers (used to validate a resume)."""
    h = hashlib.sha256()
    for part in (ids, texts, layers, settings, {k: model_info.get(k) for k in ("path", "revision", "dtype", "quantization")}):
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def _check_storage(values: np.ndarray, storage_dtype: str, ids: list[str], layers: list[int], name: str) -> None:
    """Refuse float16 storage of a value float16 cannot hold (never a silent inf)."""
    if storage_dtype != "float16":
        return
    too_big = np.abs(values) > FLOAT16_MAX
    if too_big.any():
        row, layer = np.argwhere(too_big.reshape(values.shape[0], values.shape[1], -1).any(-1))[0]
        raise ShardError(
            f"{name}: text {ids[row]!r} at layer {layers[layer]} has |value| up to "
            f"{float(np.abs(values[row, layer]).max()):.3g}, beyond float16's {FLOAT16_MAX:.0f}; "
            "set extraction.storage_dtype: float32"
        )


PARTIAL_FORMAT = 2
"""Layout version of ``<shard>.partial`` (2: a 64-bit checksum of every finished row)."""


def _row_checksum(activations: np.ndarray, token_norm: np.ndarray, n_tokens: Any) -> int:
    """64-bit BLAKE2b of one partial row as stored (float32 activations and token norms, int64 count)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(np.ascontiguousarray(activations, dtype="<f4").tobytes())
    h.update(np.ascontiguousarray(token_norm, dtype="<f4").tobytes())
    h.update(np.asarray(n_tokens, dtype="<i8").tobytes())
    return int.from_bytes(h.digest(), "little")


def _open_partial(
    partial: Path, fp: str, n: int, n_layers: int, d: int, row_ids: list[str], name: str, log: Callable[[str], None]
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Open ``partial`` to resume it, or create it empty; never use a row that fails its check.

    Returns ``(group, done, token_norm, n_tokens, checksum)``. A partial made from other inputs
    (fingerprint), in an older layout, or whose metadata or small arrays cannot be read (garbage
    or truncated ``zarr.json`` or chunk) is started over. A finished row whose activations chunk
    cannot be read, or whose checksum differs from the one recorded with the done mask
    (truncated, altered or deleted chunk), is marked not done, so that it is recomputed.
    """
    shapes = {
        "activations": (n, n_layers, d),
        "token_norm": (n, n_layers),
        "n_tokens": (n,),
        "done": (n,),
        "row_checksum": (n,),
    }
    if partial.exists():
        state = None
        try:
            group = zarr.open_group(str(partial), mode="r+")
            if group.attrs.get("fingerprint") != fp:
                log(f"{name}: partial shard {partial} was made with other texts or settings; starting over")
            elif group.attrs.get("partial_format") != PARTIAL_FORMAT:
                log(f"{name}: partial shard {partial} has an older layout (no row checksums); starting over")
            else:
                for key, shape in shapes.items():
                    if tuple(group[key].shape) != shape:
                        raise ShardError(f"array {key!r} has shape {tuple(group[key].shape)}, expected {shape}")
                state = (
                    group,
                    np.asarray(group["done"][:], dtype=bool) if n else np.zeros(0, bool),
                    np.asarray(group["token_norm"][:], dtype=np.float32) if n else np.zeros((0, n_layers), np.float32),
                    np.asarray(group["n_tokens"][:], dtype=np.int64) if n else np.zeros(0, np.int64),
                    np.asarray(group["row_checksum"][:], dtype=np.uint64) if n else np.zeros(0, np.uint64),
                )
        except Exception as err:  # noqa: BLE001 - unreadable partial: start over
            log(f"{name}: partial shard {partial} unreadable ({type(err).__name__}: {err}); starting over")
        if state is not None:
            group, done, token_norm, n_tokens, checksum = state
            acts = group["activations"]
            bad = []
            for r in np.flatnonzero(done):
                try:
                    ok = _row_checksum(np.asarray(acts[int(r)]), token_norm[r], n_tokens[r]) == int(checksum[r])
                except Exception:  # noqa: BLE001 - undecodable chunk (truncated, garbage)
                    ok = False
                if not ok:
                    bad.append(int(r))
            if bad:
                done[bad] = False
                shown = ", ".join(row_ids[r] for r in bad[:5]) + (", ..." if len(bad) > 5 else "")
                log(
                    f"{name}: partial shard {partial}: {len(bad)} finished row(s) failed the integrity "
                    f"check (unreadable or checksum mismatch: {shown}); recomputing them"
                )
            return state
    shutil.rmtree(partial, ignore_errors=True)
    group = zarr.open_group(str(partial), mode="w")
    rows = max(n, 1)
    # One row per chunk while filling: each finished batch writes only its own rows.
    group.create_array("activations", shape=(n, n_layers, d), chunks=(1, n_layers, d), dtype="float32", fill_value=0.0)
    group.create_array("token_norm", shape=(n, n_layers), chunks=(rows, n_layers), dtype="float32", fill_value=0.0)
    group.create_array("n_tokens", shape=(n,), chunks=(rows,), dtype="int64", fill_value=0)
    group.create_array("row_checksum", shape=(n,), chunks=(rows,), dtype="uint64", fill_value=0)
    group.create_array("done", shape=(n,), chunks=(rows,), dtype="bool", fill_value=False)
    group.attrs.update({"fingerprint": fp, "partial_format": PARTIAL_FORMAT})
    return (
        group,
        np.zeros(n, bool),
        np.zeros((n, n_layers), np.float32),
        np.zeros(n, np.int64),
        np.zeros(n, np.uint64),
    )


def _os_errors_name_the_shard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Re-raise an ``OSError`` of a shard write (no space left, file too large, ...) as a
    ``ShardError`` that names the shard and says that the rows written so far are kept."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OSError as err:
            arg = signature.bind_partial(*args, **kwargs).arguments
            raise ShardError(
                f"shard {arg.get('name')!r} ({arg.get('out')}): cannot write: {err}; nothing was "
                "published under that path; fix the cause (e.g. free space) and rerun: the rows "
                "already extracted are kept in its .partial and resumed"
            ) from err

    return wrapper


@_os_errors_name_the_shard
def write_shard(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    ids: list[str],
    layers: list[int],
    out: str | Path,
    settings: dict[str, Any],
    *,
    name: str,
    model_info: dict[str, Any],
    attrs: dict[str, Any] | None = None,
    log: Callable[[str], None] = logging.getLogger(__name__).info,
    staged: str | Path | None = None,
) -> dict[str, Any]:
    """Extract pooled activations of ``texts`` at ``layers`` into the shard ``out``.

    Four steps, one function each: plan (``_plan_shard``: which texts, the fingerprint),
    resume (``_resume_partial``: the verified rows of ``<out>.partial``), write (``_fill_partial``
    extracts the missing rows into the partial, ``_write_final`` copies them into ``<out>.tmp``
    with the final chunking and attributes) and publish (``_publish``: the rename).

    Args:
        texts, ids: the corpus (stories of one emotion, or the neutral dialogues).
        layers: 0-based decoder block indices.
        out: the shard path (a directory, or its ``zarr.json``: ``core.common.zarr_root``).
        settings: the config's ``extraction`` section (pool_start, short_text_policy,
            batch_size, max_batch_tokens, storage_dtype).
        name: what the shard holds (emotion word or ``"neutral"``), for messages.
        model_info: ``LoadedModel.info`` (recorded, and part of the resume fingerprint).
        attrs: more attributes to store (provenance).
        staged: if given, the finished shard goes there instead of ``out`` and
            ``<out>.partial`` is kept: the caller renames it into ``out`` and then removes the
            partial (the model server's client does, so a cancelled job gets no output). It
            must be in ``out``'s directory.

    Returns:
        A summary: texts, kept, skipped, tokens, seconds, tokens per second, resumed rows.
    """
    out = zarr_root(out)
    if staged is not None and os.path.dirname(os.path.abspath(staged)) != os.path.dirname(os.path.abspath(out)):
        raise ShardError(f"{name}: the staging path {staged} must be in the directory of the shard {out}")
    plan = _plan_shard(model, tokenizer, texts, ids, layers, out, settings, model_info)
    state = _resume_partial(plan, name, log)
    tokens_done, seconds = _fill_partial(model, tokenizer, texts, ids, layers, plan, state, name, log)
    summary = {
        "name": name,
        "n_texts": len(texts),
        "n_kept": len(plan.kept),
        "n_skipped": len(plan.extraction.skipped),
        "resumed_rows": state.resumed,
        "tokens_extracted": int(tokens_done),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens_done / max(seconds, 1e-9), 1),
    }
    _write_final(plan, state, ids, layers, settings, name, model_info, summary, attrs)
    _publish(plan.tmp, plan.out, plan.partial, staged)
    return summary


@dataclass(frozen=True)
class _ShardPlan:
    """What a shard will hold and where it is written (``_plan_shard``)."""

    out: Path
    partial: Path  # rows while filling, kept for a resume
    tmp: Path  # the finished shard before its rename
    extraction: ExtractionPlan
    kept: list[int]  # indices of the texts kept (not too short), in row order
    row_ids: list[str]  # their ids
    fingerprint: str
    n_layers: int
    d: int
    storage_dtype: str

    @property
    def row_of(self) -> dict[int, int]:
        """Text index -> row of the shard."""
        return {i: r for r, i in enumerate(self.kept)}


@dataclass
class _PartialState:
    """The partial being filled (``_resume_partial``): its group and its small arrays in memory."""

    group: Any
    done: np.ndarray
    token_norm: np.ndarray
    n_tokens: np.ndarray
    checksum: np.ndarray
    resumed: int  # rows already done (and verified) when the job started


def _plan_shard(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    ids: list[str],
    layers: list[int],
    out: str | Path,
    settings: dict[str, Any],
    model_info: dict[str, Any],
) -> _ShardPlan:
    """Plan: tokenize, choose the kept texts and the batches, fingerprint the inputs."""
    out = Path(out)
    extraction = plan_extraction(
        tokenizer,
        texts,
        ids,
        pool_start=settings["pool_start"],
        short_policy=settings["short_text_policy"],
        batch_size=settings["batch_size"],
        max_batch_tokens=settings.get("max_batch_tokens"),
    )
    return _ShardPlan(
        out=out,
        partial=out.with_name(out.name + ".partial"),
        tmp=out.with_name(out.name + ".tmp"),
        extraction=extraction,
        kept=[int(i) for i in extraction.kept],
        row_ids=[ids[int(i)] for i in extraction.kept],
        fingerprint=fingerprint(texts, ids, layers, settings, model_info),
        n_layers=len(layers),
        d=_hidden_size(model),
        storage_dtype=settings.get("storage_dtype", "float32"),
    )


def _resume_partial(plan: _ShardPlan, name: str, log: Callable[[str], None]) -> _PartialState:
    """Resume: open the partial (only its verified rows count as done) or start an empty one."""
    group, done, token_norm, n_tokens, checksum = _open_partial(
        plan.partial, plan.fingerprint, len(plan.kept), plan.n_layers, plan.d, plan.row_ids, name, log
    )
    resumed = int(done.sum())
    if resumed:
        log(f"{name}: resuming, {resumed}/{len(plan.kept)} texts already extracted (rows verified)")
    return _PartialState(group, done, token_norm, n_tokens, checksum, resumed)


def _fill_partial(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    ids: list[str],
    layers: list[int],
    plan: _ShardPlan,
    state: _PartialState,
    name: str,
    log: Callable[[str], None],
) -> tuple[int, float]:
    """Write: extract the rows not yet done into the partial, batch by batch.

    Returns ``(tokens extracted, seconds)``. Raises ``ShardError`` on a non-finite activation,
    a short text under the ``error`` policy, a value float16 storage cannot hold, or a row
    left missing."""
    row_of = plan.row_of
    skip = {plan.kept[r] for r in np.flatnonzero(state.done)}
    started = time.perf_counter()
    last_log = started
    tokens_done = 0

    def progress(done_texts: int, total: int, tokens: int) -> None:
        nonlocal last_log, tokens_done
        tokens_done = tokens
        now = time.perf_counter()
        if now - last_log > 10 or done_texts == total:
            rate = tokens / max(now - started, 1e-9)
            log(f"{name}: {done_texts + state.resumed}/{len(plan.kept)} texts, {rate:.0f} tokens/s")
            last_log = now

    group, done = state.group, state.done
    acts_partial = group["activations"]
    batches = iter_pooled(model, tokenizer, texts, ids, layers, plan=plan.extraction, skip_indices=skip, progress=progress)
    try:
        for batch in batches:
            rows = np.array([row_of[int(i)] for i in batch.indices])
            _check_storage(batch.pooled, plan.storage_dtype, list(batch.ids), layers, name)
            for r, vec in zip(rows, batch.pooled):
                acts_partial[int(r)] = vec
            state.token_norm[rows] = batch.token_norm
            state.n_tokens[rows] = batch.n_tokens
            state.checksum[rows] = [_row_checksum(*row) for row in zip(batch.pooled, batch.token_norm, batch.n_tokens)]
            done[rows] = True
            # Small arrays are rewritten whole after the rows they describe, the done mask last:
            # a kill between them only loses this batch, which the resume recomputes.
            group["token_norm"][:] = state.token_norm
            group["n_tokens"][:] = state.n_tokens
            group["row_checksum"][:] = state.checksum
            group["done"][:] = done
    except ExtractionError as err:  # NaN/inf, or a short text under the "error" policy
        raise ShardError(f"shard {name!r} ({plan.out}): {err}") from err
    seconds = time.perf_counter() - started
    if plan.kept and not done.all():
        raise ShardError(f"{name}: extraction ended with {int((~done).sum())} texts missing")
    return tokens_done, seconds


def _write_final(
    plan: _ShardPlan,
    state: _PartialState,
    ids: list[str],
    layers: list[int],
    settings: dict[str, Any],
    name: str,
    model_info: dict[str, Any],
    summary: dict[str, Any],
    attrs: dict[str, Any] | None,
) -> None:
    """Write: copy the finished rows into ``<out>.tmp`` with the final chunking and attributes."""
    kept, n_layers, d = plan.kept, plan.n_layers, plan.d
    shutil.rmtree(plan.tmp, ignore_errors=True)
    final = zarr.open_group(str(plan.tmp), mode="w")
    chunk_rows = max(1, min(len(kept), 64))
    acts = np.asarray(state.group["activations"][:]) if kept else np.zeros((0, n_layers, d), np.float32)
    final.create_array("activations", data=acts.astype(plan.storage_dtype), chunks=(chunk_rows, n_layers, d))
    final.create_array("token_norm", data=state.token_norm.astype(np.float32), chunks=(max(len(kept), 1), n_layers))
    final.create_array("n_tokens", data=state.n_tokens.astype(np.int64), chunks=(max(len(kept), 1),))
    final.attrs.update(
        {
            "name": name,
            "ids": [ids[i] for i in kept],
            "skipped": [{"id": i, "n_tokens": int(n)} for i, n in plan.extraction.skipped],
            "layers": list(map(int, layers)),
            "layer_convention": LAYER_CONVENTION,
            "pool_start": settings["pool_start"],
            "pooling": f"mean over token positions [pool_start, n_tokens) of each text, counted from its own first token (add_special_tokens=True)",
            "short_text_policy": settings["short_text_policy"],
            "storage_dtype": plan.storage_dtype,
            "hidden_size": d,
            "fingerprint": plan.fingerprint,
            "model": model_info,
            "summary": summary,
            **(attrs or {}),
            "complete": True,
        }
    )


def _publish(tmp: Path, out: Path, partial: Path, staged: str | Path | None) -> None:
    """Rename the finished ``tmp`` into ``out`` (then drop the partial), or into ``staged``.

    What is already there (an older shard, a stale staged copy, a symlink) is moved aside and
    removed only after the rename (``DirFd.replace``). The directory is opened once and every
    step is a rename or removal inside it; it is opened following a symlink, since the model
    server passes ``/proc/self/fd/<n>/...`` paths into the work directory it holds open.

    With ``staged`` the partial stays: if the caller never publishes (its job was cancelled),
    a rerun resumes from it with every row done instead of recomputing the shard.
    """
    target = Path(staged) if staged is not None else out
    with DirFd(os.open(tmp.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), tmp.parent) as d:
        d.replace(tmp.name, target.name)
    if staged is None:
        shutil.rmtree(partial, ignore_errors=True)


def open_shard(path: str | Path) -> zarr.Group:
    """Open a finished shard (its directory or its ``zarr.json``) read-only; refuses a partial or
    unfinished one."""
    path = zarr_root(path)
    if not path.exists():
        raise ShardError(f"shard {path} does not exist")
    group = zarr.open_group(str(path), mode="r")
    if not group.attrs.get("complete"):
        raise ShardError(f"shard {path} is not complete (interrupted write?); rebuild it")
    return group


def _hidden_size(model: Any) -> int:
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(text_cfg.hidden_size)
