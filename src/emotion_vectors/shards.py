"""Per-emotion Zarr activation shards, written resumably and atomically.

Layout of one shard (a Zarr v3 group, one directory)::

    activations  (n_texts, n_layers, d)  float32 (or float16 behind an overflow guard)
    token_norm   (n_texts, n_layers)     float32  mean L2 norm of the pooled token vectors
    n_tokens     (n_texts,)              int64    tokens in the text (special tokens included)
    attrs: ids, skipped [{id, n_tokens}], layers, layer_convention, pool_start,
           short_text_policy, storage_dtype, complete, fingerprint, provenance, ...

Rows follow the order of the input texts, less those skipped as too short.

While a shard is being filled it lives in ``<shard>.partial`` (rows written as batches finish,
plus a ``done`` mask); a rerun after a kill resumes from the rows already done, provided the
texts, model and settings are the same (the ``fingerprint``). When every row is done the data
are copied into ``<shard>.tmp`` with the final chunking and renamed to ``<shard>``: a path
named like the shard is always a complete shard, and ``open_shard`` refuses one whose
``complete`` attribute is not set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zarr

from .extract import ExtractionError, iter_pooled, plan_extraction

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
) -> dict[str, Any]:
    """Extract pooled activations of ``texts`` at ``layers`` into the shard ``out``.

    Args:
        texts, ids: the corpus (stories of one emotion, or the neutral dialogues).
        layers: 0-based decoder block indices.
        out: the shard path (a directory; must not exist yet).
        settings: the config's ``extraction`` section (pool_start, short_text_policy,
            batch_size, max_batch_tokens, storage_dtype).
        name: what the shard holds (emotion word or ``"neutral"``), for messages.
        model_info: ``LoadedModel.info`` (recorded, and part of the resume fingerprint).
        attrs: more attributes to store (provenance).

    Returns:
        A summary: texts, kept, skipped, tokens, seconds, tokens per second, resumed rows.
    """
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    tmp = out.with_name(out.name + ".tmp")
    storage_dtype = settings.get("storage_dtype", "float32")
    plan = plan_extraction(
        tokenizer,
        texts,
        ids,
        pool_start=settings["pool_start"],
        short_policy=settings["short_text_policy"],
        batch_size=settings["batch_size"],
        max_batch_tokens=settings.get("max_batch_tokens"),
    )
    kept = [int(i) for i in plan.kept]
    row_of = {i: r for r, i in enumerate(kept)}
    fp = fingerprint(texts, ids, layers, settings, model_info)
    d = _hidden_size(model)
    n_layers = len(layers)

    group = None
    if partial.exists():
        try:
            group = zarr.open_group(str(partial), mode="r+")
            if group.attrs.get("fingerprint") != fp:
                log(f"{name}: partial shard {partial} was made with other texts or settings; starting over")
                group = None
        except Exception as err:  # noqa: BLE001 - unreadable partial: start over
            log(f"{name}: partial shard {partial} unreadable ({err}); starting over")
            group = None
    if group is None:
        shutil.rmtree(partial, ignore_errors=True)
        group = zarr.open_group(str(partial), mode="w")
        n = max(len(kept), 1)
        # One row per chunk while filling: each finished batch writes only its own rows.
        group.create_array("activations", shape=(len(kept), n_layers, d), chunks=(1, n_layers, d), dtype="float32", fill_value=0.0)
        group.create_array("token_norm", shape=(len(kept), n_layers), chunks=(n, n_layers), dtype="float32", fill_value=0.0)
        group.create_array("n_tokens", shape=(len(kept),), chunks=(n,), dtype="int64", fill_value=0)
        group.create_array("done", shape=(len(kept),), chunks=(n,), dtype="bool", fill_value=False)
        group.attrs["fingerprint"] = fp
    done = np.asarray(group["done"][:], dtype=bool) if kept else np.zeros(0, bool)
    resumed = int(done.sum())
    if resumed:
        log(f"{name}: resuming, {resumed}/{len(kept)} texts already extracted")
    skip = {kept[r] for r in np.flatnonzero(done)}
    token_norm = np.asarray(group["token_norm"][:]) if kept else np.zeros((0, n_layers), np.float32)
    n_tokens = np.asarray(group["n_tokens"][:]) if kept else np.zeros(0, np.int64)

    started = time.perf_counter()
    last_log = started
    tokens_done = 0

    def progress(done_texts: int, total: int, tokens: int) -> None:
        nonlocal last_log, tokens_done
        tokens_done = tokens
        now = time.perf_counter()
        if now - last_log > 10 or done_texts == total:
            rate = tokens / max(now - started, 1e-9)
            log(f"{name}: {done_texts + resumed}/{len(kept)} texts, {rate:.0f} tokens/s")
            last_log = now

    acts_partial = group["activations"]
    batches = iter_pooled(model, tokenizer, texts, ids, layers, plan=plan, skip_indices=skip, progress=progress)
    try:
        for batch in batches:
            rows = np.array([row_of[int(i)] for i in batch.indices])
            _check_storage(batch.pooled, storage_dtype, list(batch.ids), layers, name)
            for r, vec in zip(rows, batch.pooled):
                acts_partial[int(r)] = vec
            token_norm[rows] = batch.token_norm
            n_tokens[rows] = batch.n_tokens
            done[rows] = True
            # Small arrays are rewritten whole after the rows they describe: a kill between the
            # two only loses this batch, which the resume recomputes.
            group["token_norm"][:] = token_norm
            group["n_tokens"][:] = n_tokens
            group["done"][:] = done
    except ExtractionError as err:  # NaN/inf, or a short text under the "error" policy
        raise ShardError(f"shard {name!r} ({out}): {err}") from err
    seconds = time.perf_counter() - started
    if kept and not done.all():
        raise ShardError(f"{name}: extraction ended with {int((~done).sum())} texts missing")

    shutil.rmtree(tmp, ignore_errors=True)
    final = zarr.open_group(str(tmp), mode="w")
    chunk_rows = max(1, min(len(kept), 64))
    acts = np.asarray(acts_partial[:]) if kept else np.zeros((0, n_layers, d), np.float32)
    final.create_array("activations", data=acts.astype(storage_dtype), chunks=(chunk_rows, n_layers, d))
    final.create_array("token_norm", data=token_norm.astype(np.float32), chunks=(max(len(kept), 1), n_layers))
    final.create_array("n_tokens", data=n_tokens.astype(np.int64), chunks=(max(len(kept), 1),))
    summary = {
        "name": name,
        "n_texts": len(texts),
        "n_kept": len(kept),
        "n_skipped": len(plan.skipped),
        "resumed_rows": resumed,
        "tokens_extracted": int(tokens_done),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens_done / max(seconds, 1e-9), 1),
    }
    final.attrs.update(
        {
            "name": name,
            "ids": [ids[i] for i in kept],
            "skipped": [{"id": i, "n_tokens": int(n)} for i, n in plan.skipped],
            "layers": list(map(int, layers)),
            "layer_convention": LAYER_CONVENTION,
            "pool_start": settings["pool_start"],
            "pooling": f"mean over token positions [pool_start, n_tokens) of each text, counted from its own first token (add_special_tokens=True)",
            "short_text_policy": settings["short_text_policy"],
            "storage_dtype": storage_dtype,
            "hidden_size": d,
            "fingerprint": fp,
            "model": model_info,
            "summary": summary,
            **(attrs or {}),
            "complete": True,
        }
    )
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    shutil.rmtree(partial, ignore_errors=True)
    return summary


def open_shard(path: str | Path) -> zarr.Group:
    """Open a finished shard read-only; refuses a partial or unfinished one."""
    path = Path(path)
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
