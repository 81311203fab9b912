"""Reading emotion in real text: score any corpus on a run's emotion vectors.

Command line::

    python -m emotion_vectors.reading.score VECTORS_ZARR INPUT --text-column COL [--label-column COL]
        [--id-column COL] [--layer L] [--pool from:K|all] [--baseline corpus|neutral]
        [--max-tokens N] [--model-path DIR] [--device D] --out OUT.parquet

INPUT is csv, tsv, jsonl, parquet or txt (one text per line, text column implied); OUT is
parquet, csv, tsv or jsonl (by extension), with the run's metadata in a sidecar ``OUT.json``
(and, for parquet, also in the file's key-value metadata under ``emotion_vectors.scoring``).

What a score is
---------------
Each text is read once by the subject model; its residual stream at ``layer`` (0-based block
output, the store's convention) is averaged over its tokens (``pool``: ``from:K`` = positions
K.. counted from the text's own first token, as in extraction; default ``from:1``; ``all`` =
every token from the first). Call that mean ``x``. For every emotion ``e`` with unit vector ``u_e`` (the
store's ``denoised_unit`` rows by default) and the valence direction ``v``
(:func:`emotion_vectors.steering.readout.store_valence_direction`: PC1 of the vectors, oriented by anchor
emotions; it is fitted on the vectors only, never on the texts scored)::

    raw_<e>    = (x - b) . u_e          valence_raw = (x - b) . v
    <e>        = raw_<e> / sd_corpus(x . u_e)
    valence    = valence_raw / sd_corpus(x . v)

where ``b`` is the baseline: ``corpus`` = the mean ``x`` over the scored texts (then ``<e>`` is
the ordinary z-score: mean 0, sd 1 over the corpus); ``neutral`` = the mean activation of the
run's neutral dialogues (``<run>/activations/neutral.zarr``, beside ``<run>/vectors/``), so
``<e>`` says how many corpus standard deviations a text lies above the neutral dialogues
(note: those were pooled from the run's ``pool_start``, recorded in the metadata). ``sd`` is
the population sd (ddof 0) over the scored texts. Projections are linear, so nothing but one
``(E+1)``-vector per text is kept: memory does not grow with ``d``.

Pooling: the study's ``pool_start`` (50) would skip nearly every sentence, so scoring pools
from position 1 by default (``DEFAULT_POOL = "from:1"``): every token but the first. Position 0
holds the attention sink's activation (BOS for Gemma; the first word for SmolLM2, which adds no
BOS), which is huge: for SmolLM2-135M its norm is ~24,000 at layers 14-24 against ~200 for every
other token (checked on tweets, chat-template text and chit-chat: position 0 is the only
outlier). Averaged in (``all``), it makes up most of a short text's mean and swamps the
emotion signal: vectors built from happy/sad/afraid sentences then read held-out sad sentences
as happier than happy ones at layers 14-24, and correctly with ``from:1``
(``tests/test_score.py``). ``all`` is kept for models without such a sink.

Rows
----
The output has one row per input row, in input order: ``row``, ``id`` (the ``--id-column``
value or the row number), ``label`` (if asked), ``n_tokens`` (as scored), ``truncated``,
``skipped`` (the reason, or empty), the scores, and ``text`` (as scored; ``--no-text`` drops
it). Rows that cannot be scored -- empty, not a string, undecodable bytes, a malformed
csv/jsonl record, or (``from:K``) no token past K -- get NaN scores and their reason, and are
counted by reason with their row numbers in the metadata; texts longer than ``--max-tokens``
(default 2048) are cut to their first ``max_tokens`` tokens (cut at a character boundary) and
flagged. A missing column stops the run before any model is loaded, naming the columns present.

Who reads the texts: with ``--server auto`` (the default) the texts go to the run's
subject-model server when one is up (``<run>/activations/.server``, the one the activation jobs
started) for the store's model and running this code: it pools them (``read`` request, the
window and layer asked for here, not the run's extraction window) and no model is loaded here.
Otherwise (or ``--server never``, ``--model-path``, ``--device``) the subject model is loaded in
this process: the store's (its provenance ``subject_model``: path, dtype, device) unless
``--model-path`` is given; a model loaded on a GPU first asks the run's model servers on that GPU
to exit (``core.devices.release_for_model``). Both give the same numbers (``tests/test_reading.py``);
the metadata's ``read_by`` says which read them. In the workflow, the ``score_corpus`` and
``battery`` jobs always go through the server (starting it if none is up), so a run loads its
subject once for the shards, every corpus and the battery.

Python: :func:`score_texts` (texts in, DataFrame out, metadata in ``df.attrs["scoring"]``),
:func:`write_scores` / :func:`read_scores`, :func:`labelled_check` (AUROC of valence for
labelled positive vs negative texts beside a Warriner-lexicon and a VADER baseline).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emotion_vectors.core.common import zarr_root
from emotion_vectors.extraction.reading import LocalReader, ReadError, truncate_text
from emotion_vectors.reading.common import ScoreError, _num, bootstrap_auroc, store_model_spec
from emotion_vectors.reading.corpora import (
    REASONS,
    ColumnError,
    CorpusError,
    as_text,
    read_table,
    table_rows,
    text_problem,
)
from emotion_vectors.steering.readout import ReadoutError
from emotion_vectors.vectors.store_layout import Store, StoreLayoutError, read_store

log = logging.getLogger("emotion_vectors.reading.score")

SCORE_REASONS = {**REASONS, "too_short_for_pool": "no token at or after the pooling start"}
OUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv",
               ".jsonl": "jsonl", ".ndjson": "jsonl"}
METADATA_KEY = b"emotion_vectors.scoring"
DEFAULT_MAX_TOKENS = 2048
#: Every token but position 0 (the attention sink); see the module docstring.
DEFAULT_POOL = "from:1"
BASELINES = ("corpus", "neutral")
FIXED_COLUMNS = ("row", "id", "label", "n_tokens", "truncated", "skipped", "valence",
                 "valence_raw", "text")
Z_DEFINITION = ("<e> = raw_<e> / sd(x.u_e) and valence = valence_raw / sd(x.v), sd = population "
                "sd over the scored texts; raw_<e> = (x - baseline).u_e, valence_raw = "
                "(x - baseline).v; x = the text's mean activation at the layer over the pooled "
                "tokens, u_e = the emotion's unit vector, v = the valence direction")


# --------------------------------------------------------------------------- settings


def parse_pool(pool: str | int) -> int:
    """``"all"`` -> 0, ``"from:K"`` -> K (also an int K): the first 0-based pooled position."""
    if isinstance(pool, (int, np.integer)) and not isinstance(pool, bool):
        k = int(pool)
    elif isinstance(pool, str) and pool.strip() == "all":
        k = 0
    elif isinstance(pool, str) and re.fullmatch(r"from:\d+", pool.strip()):
        k = int(pool.strip().split(":", 1)[1])
    else:
        raise ScoreError(f"pool must be 'all' or 'from:K' with K >= 0, not {pool!r}")
    if k < 0:
        raise ScoreError(f"pool start must be >= 0, got {k}")
    return k


def pool_name(pool_start: int) -> str:
    """0 -> ``"all"``, K -> ``"from:K"``."""
    return "all" if pool_start == 0 else f"from:{pool_start}"


def _open(store: str | Path | Store) -> Store:
    return store if isinstance(store, Store) else read_store(store)


def default_layer(store: Store) -> int:
    """The store's main layer (``extract.main_stored_layer``, the analysis's choice)."""
    from emotion_vectors.extraction.extract import main_stored_layer

    return main_stored_layer(store.layers, store.attrs.get("num_hidden_layers"))


def _vector_kind(store: Store, kind: str | None) -> str:
    kind = kind or ("denoised" if "denoised_unit" in store.kinds else "raw")
    if kind not in ("denoised", "raw"):
        raise ScoreError(f"vector kind must be 'denoised' or 'raw', not {kind!r}")
    if f"{kind}_unit" not in store.kinds:
        raise ScoreError(f"{store.path}: no {kind}_unit vectors (present: {store.kinds})")
    return kind


def load_subject(store: str | Path | Store, model_path: str | Path | None = None, *,
                 device: str | None = None, dtype: str | None = None):
    """Load the store's subject model (or ``model_path``) in this process (``LoadedModel``)."""
    from emotion_vectors.core.models import load_model
    from emotion_vectors.core.devices import release_for_model

    st = _open(store)
    spec = store_model_spec(st, model_path, device=device, dtype=dtype)
    release_for_model(spec, log=lambda *a: log.info(*a))
    log.info("loading subject model %s from %s (%s, %s)", spec["name"], spec["path"],
             spec["dtype"], spec["device"])
    return load_model(spec, padding_side="left")


def neutral_path_for(store: Store) -> Path:
    """``<run>/activations/neutral.zarr`` for a store at ``<run>/vectors/<name>.zarr``."""
    return Path(store.path).resolve().parent.parent / "activations" / "neutral.zarr"


def neutral_baseline(store: Store, layer: int, path: str | Path | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The mean neutral-dialogue activation ``(d,)`` at ``layer`` and a description of it."""
    from emotion_vectors.extraction.shards import ShardError, open_shard

    path = zarr_root(path) if path is not None else neutral_path_for(store)
    if not path.exists():
        raise ScoreError(
            f"baseline 'neutral' needs the run's neutral activations {path} (beside the vectors' "
            "run directory), which do not exist; run the neutral_activations rule, or use "
            "--baseline corpus"
        )
    try:
        group = open_shard(path)
    except ShardError as err:
        raise ScoreError(f"baseline 'neutral': {err}") from err
    layers = [int(x) for x in group.attrs.get("layers", [])]
    if layer not in layers:
        raise ScoreError(f"baseline 'neutral': {path} holds layers {layers}, not {layer}")
    acts = np.asarray(group["activations"][:, layers.index(layer), :], dtype=np.float64)
    if acts.shape[0] == 0:
        raise ScoreError(f"baseline 'neutral': {path} holds no activations")
    info = {"kind": "neutral", "path": str(path), "n_texts": int(acts.shape[0]),
            "pool_start": group.attrs.get("pool_start"),
            "note": "neutral dialogues pooled with the run's extraction window (pool_start), "
                    "which may differ from the scoring pool"}
    return acts.mean(axis=0), info


# --------------------------------------------------------------------------- scoring


def _progress_logger(every: float) -> Callable[[int, int, int], None]:
    start = time.perf_counter()
    last = [start]

    def progress(done: int, total: int, tokens: int) -> None:
        now = time.perf_counter()
        if done < total and now - last[0] < every:
            return
        last[0] = now
        el = max(now - start, 1e-9)
        rate = done / el
        eta = (total - done) / rate if rate > 0 else float("nan")
        log.info("scored %d/%d texts (%.1f texts/s, %.0f tokens/s, %.0f s elapsed, ETA %.0f s)",
                 done, total, rate, tokens / el, el, eta)

    return progress


def score_texts(
    store: str | Path | Store,
    texts: Sequence[Any],
    *,
    layer: int | None = None,
    pool: str | int = "from:1",
    baseline: str = "corpus",
    model: Any = None,
    tokenizer: Any = None,
    ids: Sequence[Any] | None = None,
    labels: Sequence[Any] | None = None,
    skip: Mapping[int, str] | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    kind: str | None = None,
    model_path: str | Path | None = None,
    device: str | None = None,
    neutral_path: str | Path | None = None,
    batch_size: int = 32,
    max_batch_tokens: int | None = 16384,
    keep_text: bool = True,
    model_info: Mapping[str, Any] | None = None,
    progress_every: float = 30.0,
    reader: Any = None,
    extra_basis: np.ndarray | None = None,
    valence_check: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Score ``texts`` on the store's emotion vectors and valence direction (module docstring).

    Args:
        store: a vector store (path or ``Store``).
        texts: one item per row; items that are not usable strings are skipped with a reason
            (bytes are decoded as UTF-8).
        layer: a stored layer (default: the store's main layer).
        pool: ``"from:K"`` (default ``"from:1"``: all but the attention-sink position 0) or
            ``"all"``.
        baseline: ``"corpus"`` or ``"neutral"`` (``neutral_path`` overrides where the neutral
            activations are looked for).
        model, tokenizer: the subject model and tokenizer; loaded from the store's provenance
            (or ``model_path``, on ``device``) when neither they nor ``reader`` are given.
        reader: how the model reads the texts (``emotion_vectors.extraction.reading``): a ``LocalReader``
            or a ``ServerReader`` (the run's model server); overrides ``model``/``tokenizer``.
        ids, labels: per-row ids (default the row numbers) and labels (a ``label`` column).
        skip: row -> reason for rows already known to be unusable (from the file reader).
        max_tokens: longer texts are truncated to this many tokens and flagged.
        kind: ``"denoised"`` (default when present) or ``"raw"`` vectors.
        batch_size, max_batch_tokens: batching of the forward passes (``extract.iter_pooled``).
        keep_text: add a ``text`` column (the text as scored).
        model_info: what to record about a caller-given model (default: its class and path).
        progress_every: seconds between progress log lines.
        extra_basis: ``(m, d)`` further directions to project every text on (e.g. the
            shuffled-label vectors, the null of the real-text claims); their raw projections
            ``x . w`` (no baseline, no scaling; NaN for unscored rows) are returned as
            ``df.attrs["extra_projections"]`` ``(n, m)`` and are not written by
            :func:`write_scores`.
        valence_check: settings of the check that the valence direction is valence for this
            run (``readout.check_valence_direction``: ``min_r``, ``n_bootstrap``, ``seed``);
            its result is in the metadata (``valence_direction.check``) and a warning is logged
            when it fails.

    Returns:
        The rows in input order (see the module docstring), ``df.attrs["scoring"]`` = metadata.
    """
    started = time.perf_counter()
    st = _open(store)
    sb = _scoring_basis(st, texts, kind=kind, layer=layer, baseline=baseline, pool=pool, max_tokens=max_tokens,
                        ids=ids, labels=labels, neutral_path=neutral_path, extra_basis=extra_basis,
                        valence_check=valence_check)
    n = len(texts)
    reasons, values, good = _usable_rows(texts, skip)
    reader, info, matches = _scoring_reader(st, sb.basis.shape[1], reader=reader, model=model,
                                            tokenizer=tokenizer, model_path=model_path, device=device,
                                            model_info=model_info)
    rd = _read_and_project(reader, values, good, reasons, sb, max_tokens=max_tokens, batch_size=batch_size,
                           max_batch_tokens=max_batch_tokens, progress_every=progress_every)

    # Baseline, raw projections and z-scores.
    proj, scored, n_main = rd.proj, rd.scored, sb.n_main
    if baseline == "corpus":
        base_proj = proj[scored].mean(axis=0) if len(scored) else np.full(n_main, np.nan)
    else:
        base_proj = sb.base_vec @ sb.basis[:n_main].T
    raw = proj - base_proj
    sd = proj[scored].std(axis=0) if len(scored) else np.full(n_main, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, raw / np.where(sd > 0, sd, 1.0), np.nan)

    df = _score_frame(sb.emotions, rd, reasons, values, good, raw, z, ids=ids, labels=labels,
                      keep_text=keep_text)
    seconds = time.perf_counter() - started
    meta = _scoring_meta(st, sb, rd, reasons, info, matches, base_proj, sd, seconds=seconds,
                         max_tokens=max_tokens, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                         read_by=reader.via)
    df.attrs["scoring"] = meta
    if extra_basis is not None:
        df.attrs["extra_projections"] = rd.extra_proj
    log.info("scored %d of %d rows in %.1f s (%.1f texts/s); skipped %s; truncated %d",
             len(scored), n, seconds, meta["texts_per_second"] or 0,
             {r: v["count"] for r, v in meta["skipped"].items()} or "none", meta["n_truncated"])
    return df


@dataclass
class _ScoringBasis:
    """What ``score_texts`` projects on, resolved and checked before any model is touched."""

    kind: str  # "denoised" or "raw"
    layer: int
    pool_start: int
    emotions: list[str]
    direction: Any  # readout.ValenceDirection
    vcheck: dict[str, Any]
    basis: np.ndarray  # (E + 1 + m, d): unit vectors, valence, extra directions
    n_main: int  # E + 1
    base_vec: np.ndarray | None  # the neutral baseline (d,), or None for the corpus baseline
    base_info: dict[str, Any]


def _scoring_basis(st: Store, texts: Sequence[Any], *, kind: str | None, layer: int | None, baseline: str,
                   pool: str | int, max_tokens: int, ids: Sequence[Any] | None, labels: Sequence[Any] | None,
                   neutral_path: str | Path | None, extra_basis: np.ndarray | None,
                   valence_check: Mapping[str, Any] | None) -> _ScoringBasis:
    """``score_texts``'s settings checked and its directions read from the store: the unit
    vectors at the layer, the valence direction (and its check), the extra directions, the
    neutral baseline (read now, so that a missing one fails before a model loads)."""
    from emotion_vectors.steering.readout import check_valence_direction, store_valence_direction

    kind = _vector_kind(st, kind)
    layer = default_layer(st) if layer is None else int(layer)
    if layer not in st.layers:
        raise ScoreError(f"layer {layer} is not stored in {st.path}; stored layers {st.layers}")
    if baseline not in BASELINES:
        raise ScoreError(f"baseline must be one of {BASELINES}, not {baseline!r}")
    pool_start = parse_pool(pool)
    if max_tokens <= pool_start:
        raise ScoreError(f"max_tokens ({max_tokens}) must exceed the pool start ({pool_start})")
    emotions = list(st.emotions)
    clash = sorted(set(emotions) & set(FIXED_COLUMNS)
                   | {e for e in emotions if f"raw_{e}" in emotions or f"raw_{e}" in FIXED_COLUMNS})
    if clash:
        raise ScoreError(f"emotion names {clash} clash with the output's column names")
    n = len(texts)
    if ids is not None and len(ids) != n:
        raise ScoreError(f"{n} texts but {len(ids)} ids")
    if labels is not None and len(labels) != n:
        raise ScoreError(f"{n} texts but {len(labels)} labels")

    base_vec, base_info = (None, {"kind": "corpus",
                                  "definition": "mean pooled activation over the scored texts"})
    if baseline == "neutral":  # fail before loading a model
        base_vec, base_info = neutral_baseline(st, layer, neutral_path)
    li = st.layers.index(layer)
    units = np.asarray(st.array(f"{kind}_unit")[:, li, :], dtype=np.float64)  # (E, d)
    direction = store_valence_direction(st, layer, kind=f"{kind}_unit")
    vcheck = check_valence_direction(units, emotions, direction, **dict(valence_check or {}))
    if not vcheck["is_valence"]:
        log.warning("%s", vcheck["note"])
    basis = np.vstack([units, direction.direction[None, :]])  # (E+1, d)
    n_main = basis.shape[0]
    if extra_basis is not None:
        extra = np.asarray(extra_basis, dtype=np.float64)
        if extra.ndim != 2 or extra.shape[1] != basis.shape[1]:
            raise ScoreError(f"extra_basis must be (m, {basis.shape[1]}), got shape {extra.shape}")
        basis = np.vstack([basis, extra])
    if base_vec is not None:
        if base_vec.shape[0] != basis.shape[1]:
            raise ScoreError(f"neutral activations have width {base_vec.shape[0]}, the vectors "
                             f"{basis.shape[1]}")
    return _ScoringBasis(kind, layer, pool_start, emotions, direction, vcheck, basis, n_main, base_vec,
                         base_info)


def _usable_rows(texts: Sequence[Any], skip: Mapping[int, str] | None) -> tuple[dict[int, str], list[Any], list[int]]:
    """Which rows can be scored at all: row -> reason for the others, every text as read
    (``as_text``), and the usable rows."""
    reasons: dict[int, str] = {int(k): str(v) for k, v in (skip or {}).items()}
    values: list[Any] = [as_text(t) for t in texts]
    for i, v in enumerate(values):
        if i not in reasons:
            r = text_problem(v)
            if r is not None:
                reasons[i] = r
    good = [i for i in range(len(texts)) if i not in reasons]
    return reasons, values, good


def _scoring_reader(st: Store, width: int, *, reader: Any, model: Any, tokenizer: Any,
                    model_path: str | Path | None, device: str | None,
                    model_info: Mapping[str, Any] | None) -> tuple[Any, dict[str, Any], bool | None]:
    """The reader of the texts (the one given, else the caller's model, else the store's subject
    loaded here), what it says about its model, and whether that is the store's subject model
    (its hidden size must be the vectors' ``width``)."""
    if reader is None:
        if model is None or tokenizer is None:
            if model is not None or tokenizer is not None:
                raise ScoreError("give both model and tokenizer, or neither")
            lm = load_subject(st, model_path, device=device)
            reader = LocalReader(lm.model, lm.tokenizer, lm.info)
        else:
            reader = LocalReader(model, tokenizer, model_info)
    info = dict(reader.info)
    hidden = reader.hidden_size
    if hidden is not None and hidden != width:
        raise ScoreError(f"the model's hidden size {hidden} differs from the vectors' width "
                         f"{width}: not the store's subject model")
    matches = _model_matches_store(st, info)
    if matches is False:
        log.warning("the model scoring (%s) is not the store's subject model (%s)",
                    info.get("revision"), _store_subject(st).get("revision"))
    return reader, info, matches


@dataclass
class _Projections:
    """The texts as read and projected (rows in input order; NaN rows were not scored)."""

    proj: np.ndarray  # (n, E + 1) projections on the unit vectors and valence
    extra_proj: np.ndarray  # (n, m) projections on the extra directions
    scored: np.ndarray  # rows scored
    n_tokens: np.ndarray  # (n,) tokens read, -1 for rows not read
    truncated: np.ndarray  # (n,) bool
    good_texts: list[str]  # the usable rows' texts as scored (truncated ones cut)
    tokens: Any  # tokens read in all
    n_done: int  # texts read


def _read_and_project(reader: Any, values: list[Any], good: list[int], reasons: dict[int, str],
                      sb: _ScoringBasis, *, max_tokens: int, batch_size: int, max_batch_tokens: int | None,
                      progress_every: float) -> _Projections:
    """Read every usable text (long ones truncated at a character boundary, recorded) and project
    its pooled activation on ``sb.basis``; rows too short for the pool are added to ``reasons``."""
    n = len(values)
    basis, n_main, layer, pool_start = sb.basis, sb.n_main, sb.layer, sb.pool_start
    good_texts = [values[i] for i in good]
    proj = np.full((n, basis.shape[0]), np.nan)
    n_done = 0

    def on_batch(rows_local: np.ndarray, x: np.ndarray) -> None:
        nonlocal n_done
        rows = [good[int(j)] for j in rows_local]
        proj[rows] = np.asarray(x, dtype=np.float64) @ basis.T
        n_done += len(rows)

    log.info("scoring %d texts at layer %d, pool %s (%s)", len(good), layer, pool_name(pool_start), reader.via)
    try:
        summary = reader.read(good_texts, layer=layer, pool_start=pool_start, max_tokens=max_tokens,
                              on_batch=on_batch, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                              progress=_progress_logger(progress_every))
    except ReadError as err:
        raise ScoreError(str(err)) from None
    n_tokens = np.full(n, -1, dtype=np.int64)
    n_tokens[good] = summary.n_tokens
    truncated = np.zeros(n, dtype=bool)
    for j, text in summary.truncated.items():
        good_texts[j] = text
        truncated[good[j]] = True
    if truncated.any():
        log.info("%d texts longer than %d tokens were truncated", int(truncated.sum()), max_tokens)
    for j in summary.too_short:
        reasons[good[j]] = "too_short_for_pool"
    scored = np.flatnonzero(np.isfinite(proj[:, 0]))
    return _Projections(proj[:, :n_main], proj[:, n_main:], scored, n_tokens, truncated, good_texts,
                        summary.tokens, n_done)


def _score_frame(emotions: list[str], rd: _Projections, reasons: dict[int, str], values: list[Any],
                 good: list[int], raw: np.ndarray, z: np.ndarray, *, ids: Sequence[Any] | None,
                 labels: Sequence[Any] | None, keep_text: bool) -> pd.DataFrame:
    """The output rows (module docstring): row, id, label, n_tokens, truncated, skipped, the
    z-scores, the raw projections and the text as scored."""
    n = len(values)
    df = pd.DataFrame({"row": np.arange(n, dtype=np.int64),
                       "id": [str(x) for x in ids] if ids is not None else [str(i) for i in range(n)]})
    if labels is not None:
        df["label"] = pd.Series([None if _isna(x) else x for x in labels], dtype=object)
    df["n_tokens"] = pd.array([int(v) if v >= 0 else pd.NA for v in rd.n_tokens], dtype="Int64")
    df["truncated"] = rd.truncated
    df["skipped"] = pd.Series([reasons.get(i) for i in range(n)], dtype=object)
    df["valence"] = z[:, -1]
    df["valence_raw"] = raw[:, -1]
    df = pd.concat([df, pd.DataFrame(z[:, :-1], columns=emotions),
                    pd.DataFrame(raw[:, :-1], columns=[f"raw_{e}" for e in emotions])], axis=1)
    if keep_text:
        text_col: list[Any] = [v if isinstance(v, str) and i not in reasons else None
                               for i, v in enumerate(values)]
        for j, i in enumerate(good):
            if i not in reasons:
                text_col[i] = rd.good_texts[j]
        df["text"] = pd.Series(text_col, dtype=object)
    return df


def _scoring_meta(st: Store, sb: _ScoringBasis, rd: _Projections, reasons: dict[int, str],
                  info: dict[str, Any], matches: bool | None, base_proj: np.ndarray, sd: np.ndarray, *,
                  seconds: float, max_tokens: int, batch_size: int, max_batch_tokens: int | None,
                  read_by: Any) -> dict[str, Any]:
    """``df.attrs["scoring"]``: the vectors, layer, pooling, baseline, valence direction, model,
    skipped rows by reason, truncations and timing."""
    by_reason: dict[str, list[int]] = {}
    for i in sorted(reasons):
        by_reason.setdefault(reasons[i], []).append(i)
    kind, direction, emotions = sb.kind, sb.direction, sb.emotions
    names = emotions + ["valence"]
    return {
        "vectors": str(st.path),
        "vector_kind": f"{kind}_unit",
        "emotions": emotions,
        "layer": sb.layer,
        "layer_convention": "layer i = output of decoder block i (0-based)",
        "pool": pool_name(sb.pool_start),
        "pool_start": sb.pool_start,
        "pool_definition": "mean over token positions pool_start..n_tokens-1, counted from each "
                           "text's own first token (add_special_tokens=True)",
        "baseline": {**sb.base_info, "projection": dict(zip(names, map(_num, base_proj)))},
        "projection_sd": dict(zip(names, map(_num, sd))),
        "z_score": Z_DEFINITION,
        "valence_direction": {"kind": f"{kind}_unit", "explained": direction.explained,
                              "pleasant": list(direction.pleasant),
                              "unpleasant": list(direction.unpleasant),
                              "anchor_gap": direction.anchor_gap,
                              "fitted_on": "the store's vectors only (anchors fix the sign)",
                              "check": sb.vcheck},
        "model": info,
        "model_matches_store": matches,
        "store_subject_model": _store_subject(st) or None,
        "n_rows": len(rd.n_tokens),
        "n_scored": int(len(rd.scored)),
        "n_skipped": int(len(reasons)),
        "skipped": {r: {"count": len(rows), "rows": rows, "meaning": SCORE_REASONS.get(r, r)}
                    for r, rows in sorted(by_reason.items())},
        "max_tokens": int(max_tokens),
        "n_truncated": int(rd.truncated.sum()),
        "truncated_rows": np.flatnonzero(rd.truncated).tolist(),
        "tokens_scored": rd.tokens,
        "seconds": round(seconds, 3),
        "texts_per_second": round(rd.n_done / seconds, 3) if seconds > 0 else None,
        "batch_size": batch_size,
        "max_batch_tokens": max_batch_tokens,
        "read_by": read_by,
    }


def _isna(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _store_subject(store: Store) -> dict[str, Any]:
    prov = store.attrs.get("provenance") or {}
    sm = prov.get("subject_model") if isinstance(prov, Mapping) else None
    return dict(sm) if isinstance(sm, Mapping) else {}


def _model_matches_store(store: Store, info: Mapping[str, Any]) -> bool | None:
    """Whether the scoring model is the store's (by revision, else path); None if unknown."""
    sm = _store_subject(store)
    for key in ("revision", "path"):
        a, b = sm.get(key), info.get(key)
        if a and b:
            if key == "path":
                return Path(str(a)).name == Path(str(b)).name
            return a == b
    return None


# --------------------------------------------------------------------------- files


def out_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in OUT_FORMATS:
        raise ScoreError(f"output {path}: extension {suffix!r} is not one of {sorted(OUT_FORMATS)}")
    return OUT_FORMATS[suffix]


def sidecar_path(out: str | Path) -> Path:
    """``OUT.json`` beside the output (``scores.parquet`` -> ``scores.parquet.json``)."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def write_scores(df: pd.DataFrame, out: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write the scores (format by extension) and the metadata sidecar ``OUT.json``; parquet
    files also carry the metadata under the key ``emotion_vectors.scoring``. Both are written
    aside and renamed into place."""
    out = Path(out)
    fmt = out_format(out)
    meta = dict(meta if meta is not None else df.attrs.get("scoring", {}))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    plain = df.copy()
    plain.attrs = {}
    blob = json.dumps(meta, default=str, ensure_ascii=False)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(plain, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               METADATA_KEY: blob.encode()})
        pq.write_table(table, tmp)
    elif fmt in ("csv", "tsv"):
        # quote every text field: a bare carriage return inside a tweet would otherwise split
        # its row when read back
        import csv

        plain.to_csv(tmp, sep="," if fmt == "csv" else "\t", index=False, quoting=csv.QUOTE_NONNUMERIC)
    else:
        plain.to_json(tmp, orient="records", lines=True, force_ascii=False)
    side = sidecar_path(out)
    side_tmp = side.with_name(side.name + ".tmp")
    side_tmp.write_text(json.dumps(meta, indent=1, default=str, ensure_ascii=False) + "\n")
    side_tmp.replace(side)
    tmp.replace(out)
    return out


def read_scores(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A scores file and its metadata (from the sidecar, else parquet key-value metadata)."""
    path = Path(path)
    fmt = out_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        df = table.to_pandas()
        raw = (table.schema.metadata or {}).get(METADATA_KEY)
        meta = json.loads(raw) if raw else {}
    elif fmt in ("csv", "tsv"):
        df = pd.read_csv(path, sep="," if fmt == "csv" else "\t", keep_default_na=True,
                         dtype={"id": str, "skipped": object, "text": object, "label": object})
        meta = {}
    else:
        df = pd.read_json(path, orient="records", lines=True, dtype={"id": str})
        meta = {}
    side = sidecar_path(path)
    if side.exists():
        meta = json.loads(side.read_text())
    df.attrs["scoring"] = meta
    return df, meta


# --------------------------------------------------------------------------- labelled check

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def lexicon_scores(texts: Sequence[Any], norms: pd.DataFrame | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean Warriner valence (1-9) of each text's words found in the norms, and how many were.

    Words: lower-cased runs of letters (with inner apostrophes), looked up as written (the norms
    are lemmas; no lemmatisation). A text with no rated word gets NaN.
    """
    if norms is None:
        from emotion_vectors.analysis.norms import load_norms

        norms = load_norms()
    val = {str(w): float(v) for w, v in norms["valence"].items() if np.isfinite(v)}
    scores = np.full(len(texts), np.nan)
    found = np.zeros(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            continue
        vals = [val[w] for w in _WORD.findall(t.lower()) if w in val]
        found[i] = len(vals)
        if vals:
            scores[i] = float(np.mean(vals))
    return scores, found


def labelled_check(
    scores_df: pd.DataFrame,
    label_column: str = "label",
    positive: str | Collection[str] = "positive",
    negative: str | Collection[str] = "negative",
    *,
    lexicon: bool = True,
    vader: bool = True,
    emotions: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    score_column: str = "valence",
    text_column: str = "text",
    norms: pd.DataFrame | None = None,
    null_valence: np.ndarray | None = None,
) -> dict[str, Any]:
    """Does valence separate labelled positive from negative texts? AUROC with a bootstrap 95%
    interval and a one-sided Mann-Whitney p (``p_mannwhitney``: positives above negatives,
    labels exchangeable under the null), beside two baselines on the same texts.

    Rows: those whose label is in ``positive`` or ``negative`` and that were scored (finite
    ``score_column``); other labels and unscored rows are counted, not used. Scorers:

    - ``valence``: the ``score_column`` (the readout's valence, never fitted to these texts);
    - ``lexicon``: mean Warriner valence of the text's rated words (:func:`lexicon_scores`);
      texts with no rated word are NaN, counted, and left out of its AUROC; ``valence`` on
      that same subset is reported as ``valence_on_lexicon_rated`` for a like-for-like figure;
    - ``vader``: VADER compound (``steering.evaluate.vader_scores``).

    ``same_texts``: every scorer on the texts where all of them are finite (the lexicon's rated
    subset), with the paired differences ``valence - vader`` and ``valence - lexicon`` (the
    same bootstrap resamples for both scorers): the like-for-like comparison.

    ``null_valence`` ``(K, n_rows)``: each text's score on the valence direction of each
    shuffle's shuffled-label vectors (rows as ``scores_df``'s); adds their AUROCs
    (``shuffled_auroc``) and ``p_shuffled = mc_p`` of the readout's AUROC against them.

    ``emotions=True`` adds the point AUROC of every emotion column (no interval). AUROC 0.5 =
    chance; above = the score is higher for positive texts.
    """
    from emotion_vectors.reading.text_checks import mannwhitney_auroc

    pos = {positive} if isinstance(positive, str) else set(positive)
    neg = {negative} if isinstance(negative, str) else set(negative)
    if pos & neg:
        raise ScoreError(f"labels {sorted(pos & neg)} are both positive and negative")
    for col in (label_column, score_column):
        if col not in scores_df.columns:
            raise ColumnError(f"column {col!r} not in the scores (columns {list(scores_df.columns)})")
    if (lexicon or vader) and text_column not in scores_df.columns:
        raise ColumnError(f"the lexicon and VADER baselines need the texts: column {text_column!r} "
                          "is absent (score without --no-text, or pass lexicon=vader=False)")
    labels = scores_df[label_column].map(lambda v: None if _isna(v) else str(v))
    in_pos, in_neg = labels.isin(pos).to_numpy(), labels.isin(neg).to_numpy()
    scored = np.isfinite(scores_df[score_column].to_numpy(dtype=float))
    use = (in_pos | in_neg) & scored
    sub = scores_df.loc[use]
    y = in_pos[use]
    result: dict[str, Any] = {
        "label_column": label_column, "positive": sorted(pos), "negative": sorted(neg),
        "n_positive": int(y.sum()), "n_negative": int((~y).sum()),
        "n_excluded_other_label": int((~(in_pos | in_neg)).sum()),
        "n_excluded_not_scored": int(((in_pos | in_neg) & ~scored).sum()),
        "n_boot": n_boot, "seed": seed,
        "interval": "stratified percentile bootstrap, 95%",
        "scorers": {},
    }
    val = sub[score_column].to_numpy(float)
    per_scorer = {"valence": val}
    result["scorers"]["valence"] = bootstrap_auroc(y, val, n_boot=n_boot, seed=seed)
    texts = sub[text_column].tolist() if text_column in sub.columns else None
    if lexicon:
        from emotion_vectors.analysis.norms import CITATION

        lex, found = lexicon_scores(texts, norms)
        r = bootstrap_auroc(y, lex, n_boot=n_boot, seed=seed)
        r["n_no_rated_word"] = int((found == 0).sum())
        r["source"] = CITATION
        result["scorers"]["lexicon"] = r
        rated = np.isfinite(lex)
        result["scorers"]["valence_on_lexicon_rated"] = bootstrap_auroc(
            y[rated], val[rated], n_boot=n_boot, seed=seed)
        per_scorer["lexicon"] = lex
    if vader:
        from emotion_vectors.steering.evaluate import vader_scores

        vad = vader_scores(texts)
        result["scorers"]["vader"] = bootstrap_auroc(y, vad, n_boot=n_boot, seed=seed)
        per_scorer["vader"] = vad
    for name, sc in per_scorer.items():
        result["scorers"][name]["p_mannwhitney"] = mannwhitney_auroc(y, sc)["p_mannwhitney"]
    result["same_texts"] = _same_texts(y, per_scorer, n_boot=n_boot, seed=seed)
    if null_valence is not None:
        result.update(_shuffled_valence_aurocs(y, use, null_valence, result["scorers"]["valence"]["auroc"],
                                               n_rows=len(scores_df)))
    if emotions:
        from sklearn.metrics import roc_auc_score

        emo = (scores_df.attrs.get("scoring") or {}).get("emotions") or [
            c[4:] for c in scores_df.columns if c.startswith("raw_") and c[4:] in scores_df.columns]
        if y.any() and (~y).any():
            result["emotions_auroc"] = {e: float(roc_auc_score(y, sub[e].to_numpy(float)))
                                        for e in emo if np.isfinite(sub[e].to_numpy(float)).all()}
    return result


def _same_texts(y: np.ndarray, per_scorer: Mapping[str, np.ndarray], *, n_boot: int, seed: int) -> dict[str, Any]:
    """``labelled_check``'s ``same_texts``: every scorer on the texts where all of them are
    finite, with the paired differences ``valence - vader`` and ``valence - lexicon``."""
    from emotion_vectors.reading.text_checks import mannwhitney_auroc, paired_auroc_difference

    val = per_scorer["valence"]
    common = np.all([np.isfinite(v) for v in per_scorer.values()], axis=0)
    same: dict[str, Any] = {"n": int(common.sum()), "n_positive": int(y[common].sum()),
                            "n_negative": int((~y[common]).sum()),
                            "rows": "texts where every scorer is finite (the lexicon needs a rated word)",
                            "scorers": {}}
    for name, sc in per_scorer.items():
        same["scorers"][name] = {**bootstrap_auroc(y[common], sc[common], n_boot=n_boot, seed=seed),
                                 "p_mannwhitney": mannwhitney_auroc(y[common], sc[common])["p_mannwhitney"]}
    for other in ("vader", "lexicon"):
        if other in per_scorer:
            same[f"valence_minus_{other}"] = paired_auroc_difference(
                y[common], val[common], per_scorer[other][common], n_boot=n_boot, seed=seed)
    return same


def _shuffled_valence_aurocs(y: np.ndarray, use: np.ndarray, null_valence: np.ndarray, auc: float | None, *,
                             n_rows: int) -> dict[str, Any]:
    """``labelled_check``'s shuffled-label null: the AUROC of each shuffle's valence scores
    ``null_valence`` ``(K, n_rows)`` on the rows ``use``, and ``p_shuffled`` of ``auc`` against them."""
    from emotion_vectors.core.claims import mc_p
    from emotion_vectors.reading.text_checks import aurocs_many

    nv = np.asarray(null_valence, dtype=float)
    if nv.ndim != 2 or nv.shape[1] != n_rows:
        raise ScoreError(f"null_valence must be (K, {n_rows}), got shape {nv.shape}")
    na = aurocs_many(y, nv[:, use])
    return {"n_shuffles": int(nv.shape[0]),
            "shuffled_auroc": [_num(v) for v in na],
            "shuffled_auroc_p95": _num(np.nanquantile(na, 0.95)) if np.isfinite(na).any() else None,
            "p_shuffled": mc_p(auc, na) if auc is not None else None}


# --------------------------------------------------------------------------- CLI


def _split(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def server_dir_for(store: Store) -> Path:
    """``<run>/activations/.server`` for a store at ``<run>/vectors/<name>.zarr``."""
    return neutral_path_for(store).parent / ".server"


def live_server_reader(store: Store, server_dir: str | Path | None = None) -> Any:
    """A ``ServerReader`` on a live model server of the run that holds the store's subject
    model and runs this code, or None (nothing is started)."""
    from emotion_vectors.extraction.reading import ServerReader
    from emotion_vectors.extraction.serve_subject import find_live_server
    from emotion_vectors.core.private_files import ServiceError

    where = Path(server_dir) if server_dir else server_dir_for(store)
    try:
        handle = find_live_server(where, lambda info: _model_matches_store(store, info) is True)
        if handle is None:
            log.info("no live model server for this store's model in %s: loading the model here", where)
            return None
        reader = ServerReader(handle, start=False)
    except (ServiceError, OSError) as err:
        log.warning("model server in %s not usable (%s): loading the model here", where, err)
        return None
    log.info("reading through the run's model server pid %s (%s)", reader.info["server"].get("pid"), handle.address)
    return reader


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m emotion_vectors.reading.score",
        description="Score real text on a run's emotion vectors: one row per input row with "
                    "z-scored projections on every emotion and on the valence direction.",
        epilog="Metadata (vectors, model, layer, pooling, baseline, skipped rows by reason, "
               "truncations, provenance) go to OUT.json beside OUT.",
    )
    ap.add_argument("vectors", help="vector store (results/<run>/vectors/vectors.zarr)")
    ap.add_argument("input", help="csv, tsv, jsonl, parquet or txt (one text per line)")
    ap.add_argument("--text-column", help="column holding the texts (implied for txt: 'text')")
    ap.add_argument("--label-column", help="column copied to the output's 'label'")
    ap.add_argument("--id-column", help="column copied to 'id' (default: the row number)")
    ap.add_argument("--input-format", choices=("csv", "tsv", "jsonl", "parquet", "txt"),
                    help="override the format read from INPUT's extension")
    ap.add_argument("--encoding", default="utf-8", help="encoding of csv/tsv/jsonl/txt input")
    ap.add_argument("--layer", type=int, help="stored layer (default: the store's main layer)")
    ap.add_argument("--pool", default=DEFAULT_POOL,
                    help="'from:K': mean over token positions K.., counted from each text's "
                         "first token (texts with no token past K are skipped); default "
                         "'from:1' = every token but position 0, whose attention-sink "
                         "activation (norm ~100x the others in SmolLM2) would swamp a short "
                         "text's mean; 'all' = from the first token. The study's "
                         "pool_start=50 would skip most sentences.")
    ap.add_argument("--baseline", choices=BASELINES, default="corpus",
                    help="subtracted before projecting: 'corpus' = mean activation of the "
                         "scored texts (default); 'neutral' = mean of the run's neutral "
                         "dialogues (<run>/activations/neutral.zarr)")
    ap.add_argument("--neutral", help="neutral activations shard (default: beside the run)")
    ap.add_argument("--kind", choices=("denoised", "raw"), help="vectors (default: denoised)")
    ap.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                    help="truncate longer texts to this many tokens (flagged; default 2048)")
    ap.add_argument("--model-path", help="subject model dir or hub id (default: the store's)")
    ap.add_argument("--device", help="cpu, cuda, cuda:N (default: the store's subject device)")
    ap.add_argument("--server", choices=("auto", "never"), default="auto",
                    help="'auto' (default): read the texts through the run's subject-model server "
                         "when one is up for the store's model (running this code); else load "
                         "the model here. 'never': always load it here")
    ap.add_argument("--server-dir", help="where to look for the run's model server (default: "
                                         "<run>/activations/.server beside the vectors)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-batch-tokens", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--no-text", action="store_true", help="leave the text column out")
    ap.add_argument("--positive", help="labelled check: comma-separated positive label values")
    ap.add_argument("--negative", help="labelled check: comma-separated negative label values")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", required=True, help="OUT.parquet (or .csv, .tsv, .jsonl)")
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except (ScoreError, CorpusError, StoreLayoutError, ReadoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from emotion_vectors.core.provenance import provenance

    out_format(args.out)  # a bad extension fails now, not after scoring
    if (args.positive or args.negative) and not (args.positive and args.negative and args.label_column):
        raise ScoreError("the labelled check needs --label-column, --positive and --negative")
    store = read_store(args.vectors)
    table = read_table(args.input, fmt=args.input_format, encoding=args.encoding)
    texts, labels, ids, problems = table_rows(table, args.text_column, label_column=args.label_column,
                                              id_column=args.id_column)
    layer = default_layer(store) if args.layer is None else args.layer
    if layer not in store.layers:
        raise ScoreError(f"layer {layer} is not stored in {store.path}; stored layers {store.layers}")
    parse_pool(args.pool)
    if args.baseline == "neutral":
        neutral_baseline(store, layer, args.neutral)  # its error before the model loads
    reader = None
    if args.server == "auto" and args.model_path is None and args.device is None:
        reader = live_server_reader(store, args.server_dir)
    if args.threads and reader is None:
        import torch

        torch.set_num_threads(args.threads)
    df = score_texts(store, texts, layer=layer, pool=args.pool, baseline=args.baseline, ids=ids,
                     labels=labels, skip=problems, max_tokens=args.max_tokens, kind=args.kind,
                     model_path=args.model_path, device=args.device, neutral_path=args.neutral,
                     batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                     keep_text=not args.no_text, reader=reader)
    meta = dict(df.attrs["scoring"])
    meta["input"] = {"path": str(Path(args.input)), "format": table.fmt,
                     "text_column": args.text_column or ("text" if table.fmt == "txt" else None),
                     "label_column": args.label_column, "id_column": args.id_column,
                     "encoding": args.encoding}
    if args.positive:
        check = labelled_check(df, "label", _split(args.positive), _split(args.negative),
                               n_boot=args.n_boot)
        meta["labelled_check"] = check
        print(json.dumps({k: v for k, v in check.items() if k != "emotions_auroc"}, indent=1))
    meta["provenance"] = provenance(
        stage="score",
        config_section={k: meta[k] for k in ("layer", "pool", "vector_kind", "max_tokens")}
        | {"baseline": args.baseline},
        model_info=meta["model"],
        extra={"vectors": str(args.vectors), "input": meta["input"]},
    )
    write_scores(df, args.out, meta)
    log.info("wrote %s and %s", args.out, sidecar_path(args.out))
    return 0


__all__ = [
    "BASELINES", "DEFAULT_MAX_TOKENS", "DEFAULT_POOL", "SCORE_REASONS", "ScoreError", "default_layer",
    "labelled_check", "lexicon_scores", "load_subject", "neutral_baseline", "neutral_path_for", "parse_pool",
    "read_scores", "score_texts", "truncate_text", "write_scores",
]

if __name__ == "__main__":
    raise SystemExit(main())
