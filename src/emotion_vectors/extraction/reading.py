"""How the subject model reads arbitrary texts: in this process, or through the run's model server.

Scoring real text (``emotion_vectors.reading.score``) and the validation battery (``emotion_vectors.reading.battery``)
need the same two things from the subject model: the mean residual-stream activation of each
text at one layer over a stated window (``read``), and the tokens an arbitrary direction promotes
through the final norm and unembedding (``top_tokens``, the logit lens). A *reader* provides
both (and, for the report's token view, ``token_projections``: each token's activation projected
on one direction), with one interface and the same numbers wherever the model lives:

- :class:`LocalReader` wraps a model and tokenizer loaded in this process;
- :class:`ServerReader` sends ``read``, ``lens`` and ``tokens`` requests to the run's subject-model server
  (``emotion_vectors.extraction.serve_subject``), the one that writes the activation shards: a run whose
  server is up (or that starts it for its activation jobs) loads the model once for the shards,
  every scored corpus and the battery. The server writes the pooled activations of a ``read``
  request to a ``.npy`` file in its private directory (inside the run's results, mode 0700),
  answers with the token counts, truncations and skipped rows, and the client reads the file in
  chunks and removes it: a request of any size never crosses the socket as JSON numbers. A
  server bounds what one request may carry (texts, bytes, lens directions), so the client
  splits a long list of texts into several ``read`` requests (``READ_TEXTS_PER_REQUEST`` texts or
  ``READ_BYTES_PER_REQUEST`` bytes of JSON each) and a large lens into several ``lens``
  requests; the caller sees one read.

:func:`read_texts` is the one implementation of a ``read`` (the local reader calls it in process;
the server's handler calls it in the server): texts longer than ``max_tokens`` are cut at a
character boundary (:func:`truncate_text`) and recorded, texts with no token at or after
``pool_start`` are skipped and recorded, and the rest are planned and run in token-budgeted
batches by ``extract.iter_pooled``. Activations are float32 as the engine returns them, so both
readers give bit-identical numbers (``tests/test_reading.py``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("emotion_vectors.extraction.reading")

#: ``on_batch(rows, pooled)``: ``rows`` index the texts given to ``read``; ``pooled`` is ``(b, d)``.
BatchFn = Callable[[np.ndarray, np.ndarray], None]
ProgressFn = Callable[[int, int, int], None]
#: Rows per chunk when a client reads a server's ``.npy`` answer back.
READ_CHUNK = 4096
#: Most texts, and bytes of texts as JSON, a client puts in one ``read`` request (the server's
#: bounds are ``serve_subject.MAX_TEXTS_PER_REQUEST`` and ``core.protocol.MAX_REQUEST_BYTES``).
READ_TEXTS_PER_REQUEST = 20_000
READ_BYTES_PER_REQUEST = 16 << 20
#: Most directions a client puts in one ``lens`` request (``serve_subject.MAX_LENS_DIRECTIONS``).
LENS_DIRECTIONS_PER_REQUEST = 256


class ReadError(ValueError):
    """A read that cannot be carried out as asked (bad window, bad answer from a server)."""


@dataclass
class ReadSummary:
    """What a ``read`` did besides the activations it handed to ``on_batch``.

    ``n_tokens[i]`` is text ``i``'s token count as read (after truncation; special tokens
    included); ``truncated`` maps a truncated text's index to the text as read; ``too_short``
    lists the texts with no token at or after the pool start (never read); ``tokens`` counts
    the real (unpadded) tokens passed through the model.
    """

    n_tokens: np.ndarray
    truncated: dict[int, str] = field(default_factory=dict)
    too_short: list[int] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    via: str = "in-process"

    def to_json(self) -> dict[str, Any]:
        return {"n_tokens": [int(x) for x in self.n_tokens], "truncated": {str(k): v for k, v in self.truncated.items()},
                "too_short": [int(x) for x in self.too_short], "tokens": int(self.tokens),
                "seconds": round(float(self.seconds), 3)}

    @classmethod
    def from_json(cls, data: dict[str, Any], n: int, via: str) -> ReadSummary:
        try:
            n_tokens = np.asarray(data["n_tokens"], dtype=np.int64)
            truncated = {int(k): str(v) for k, v in dict(data["truncated"]).items()}
            too_short = [int(x) for x in data["too_short"]]
            out = cls(n_tokens, truncated, too_short, int(data["tokens"]), float(data.get("seconds", 0.0)), via)
        except (KeyError, TypeError, ValueError) as err:
            raise ReadError(f"malformed read answer from the model server: {err}") from None
        if out.n_tokens.shape != (n,) or any(not 0 <= i < n for i in [*out.truncated, *out.too_short]):
            raise ReadError(f"the model server's read answer does not cover the {n} texts sent")
        return out


# --------------------------------------------------------------------------- truncation


def token_counts(tokenizer: Any, texts: Sequence[str], chunk: int = 1024) -> np.ndarray:
    """Token count of each text as the model reads it (``add_special_tokens=True``)."""
    out = np.zeros(len(texts), dtype=np.int64)
    for s in range(0, len(texts), chunk):
        enc = tokenizer(list(texts[s:s + chunk]), add_special_tokens=True)["input_ids"]
        out[s:s + len(enc)] = [len(e) for e in enc]
    return out


def truncate_text(tokenizer: Any, text: str, max_tokens: int) -> str:
    """``text`` cut so that it encodes (``add_special_tokens=True``) to at most ``max_tokens``
    tokens: at the end character of its ``max_tokens``-th token (offsets of a fast tokenizer;
    else by decoding), shortened further if the cut re-tokenises longer."""
    if max_tokens < 1:
        raise ReadError(f"max_tokens must be >= 1, got {max_tokens}")
    keep = max_tokens
    for _ in range(64):
        try:
            enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
            offsets = enc["offset_mapping"][:keep]
            end = max((e for s, e in offsets), default=0)
            cut = text[:end]
        except (NotImplementedError, TypeError, ValueError, KeyError):
            ids = tokenizer(text, add_special_tokens=True)["input_ids"][:keep]
            cut = tokenizer.decode(ids, skip_special_tokens=True)
        n = len(tokenizer(cut, add_special_tokens=True)["input_ids"])
        if n <= max_tokens:
            return cut
        keep -= max(1, n - max_tokens)
        if keep < 1:
            break
    return ""


# --------------------------------------------------------------------------- the one read


def check_window(layer: int, pool_start: int, max_tokens: int) -> None:
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or layer < 0:
        raise ReadError(f"layer must be a block index >= 0, not {layer!r}")
    if not isinstance(pool_start, (int, np.integer)) or isinstance(pool_start, bool) or pool_start < 0:
        raise ReadError(f"pool_start must be an integer >= 0, not {pool_start!r}")
    if not isinstance(max_tokens, (int, np.integer)) or isinstance(max_tokens, bool) or max_tokens <= pool_start:
        raise ReadError(f"max_tokens ({max_tokens!r}) must be an integer above the pool start ({pool_start})")


def read_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    layer: int,
    pool_start: int,
    max_tokens: int,
    on_batch: BatchFn,
    batch_size: int | None = 32,
    max_batch_tokens: int | None = 16384,
    progress: ProgressFn | None = None,
) -> ReadSummary:
    """Pool every text at ``layer`` over positions ``pool_start..`` and hand each batch to
    ``on_batch(rows, pooled)`` (module docstring). ``texts`` must all be strings."""
    from emotion_vectors.extraction.extract import iter_pooled, plan_extraction

    check_window(layer, pool_start, max_tokens)
    started = time.perf_counter()
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ReadError(f"texts {bad[:5]} are not strings")
    counts = token_counts(tokenizer, texts)
    truncated: dict[int, str] = {}
    for j in np.flatnonzero(counts > max_tokens).tolist():
        texts[j] = truncate_text(tokenizer, texts[j], max_tokens)
        truncated[j] = texts[j]
    if truncated:
        log.info("%d texts longer than %d tokens were truncated", len(truncated), max_tokens)
    plan = plan_extraction(tokenizer, texts, [str(i) for i in range(len(texts))], pool_start=pool_start,
                           short_policy="skip", batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    tokens = 0
    if len(plan.kept):
        for batch in iter_pooled(model, tokenizer, texts, None, [int(layer)], plan=plan, progress=progress):
            on_batch(np.asarray(batch.indices, dtype=np.int64), batch.pooled[:, 0, :])
            tokens += int(batch.n_tokens.sum())
    return ReadSummary(np.asarray(plan.n_tokens, dtype=np.int64), truncated,
                       [int(j) for j in plan.skipped_indices.tolist()], tokens, time.perf_counter() - started)


def top_tokens(model: Any, tokenizer: Any, directions: np.ndarray, scale: float, top_k: int) -> list[list[str]]:
    """The ``top_k`` tokens each direction promotes through the final norm and unembedding, at
    residual norm ``scale`` (``extraction.lens.lens_logits``), as decoded token texts."""
    import torch

    from emotion_vectors.extraction.lens import lens_logits, vocabulary

    directions = np.asarray(directions, dtype=np.float64)
    if directions.ndim != 2 or not np.isfinite(directions).all():
        raise ReadError(f"lens directions must be a finite (m, d) array, not shape {directions.shape}")
    if not np.isfinite(scale) or scale <= 0 or int(top_k) < 1:
        raise ReadError(f"lens needs a positive scale and top_k >= 1, not {scale!r}, {top_k!r}")
    vocab = model.get_output_embeddings().weight.shape[0]
    _, text = vocabulary(tokenizer, vocab)
    logits = lens_logits(directions, model, float(scale))
    idx = torch.topk(logits, int(top_k), dim=1).indices.cpu().numpy()
    return [[text[i] for i in row] for row in idx]


def hidden_size(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    h = getattr(text_cfg, "hidden_size", None)
    return int(h) if h is not None else None


# --------------------------------------------------------------------------- readers


class LocalReader:
    """A reader over a model and tokenizer in this process."""

    via = "in-process"

    def __init__(self, model: Any, tokenizer: Any, info: dict[str, Any] | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.info = dict(info) if info is not None else {
            "given_by_caller": True, "architecture": type(model).__name__,
            "path": getattr(getattr(model, "config", None), "_name_or_path", None)}
        self.hidden_size = hidden_size(model)

    def read(self, texts: Sequence[str], *, layer: int, pool_start: int, max_tokens: int, on_batch: BatchFn,
             batch_size: int | None = 32, max_batch_tokens: int | None = 16384,
             progress: ProgressFn | None = None) -> ReadSummary:
        return read_texts(self.model, self.tokenizer, texts, layer=layer, pool_start=pool_start,
                          max_tokens=max_tokens, on_batch=on_batch, batch_size=batch_size,
                          max_batch_tokens=max_batch_tokens, progress=progress)

    def top_tokens(self, directions: np.ndarray, scale: float, top_k: int) -> list[list[str]]:
        return top_tokens(self.model, self.tokenizer, directions, scale, top_k)

    def token_projections(self, text: str, vector: np.ndarray, layer: int, *, max_tokens: int | None = None) -> Any:
        from emotion_vectors.extraction.highlight import token_projections

        return token_projections(self.model, self.tokenizer, text, vector, layer, max_tokens=max_tokens)


class ServerReader:
    """A reader that sends ``read`` and ``lens`` requests to a subject-model server.

    ``server`` is a ``serve_subject.SubjectServer`` (it knows the address, starts the server if
    ``start`` and none is up, and checks its identity). ``info`` and ``hidden_size`` come from
    the server's ``describe`` answer.
    """

    via = "model server"

    def __init__(self, server: Any, *, start: bool = True):
        self.server = server
        self.start = start
        described = server.call({"kind": "describe"}, start=start)
        self.info = dict(described.get("model") or {})
        self.info["server"] = {k: described.get(k) for k in ("pid", "identity", "device")}
        self.hidden_size = described.get("hidden_size")
        self.layers = described.get("layers")

    def read(self, texts: Sequence[str], *, layer: int, pool_start: int, max_tokens: int, on_batch: BatchFn,
             batch_size: int | None = 32, max_batch_tokens: int | None = 16384,
             progress: ProgressFn | None = None) -> ReadSummary:
        check_window(layer, pool_start, max_tokens)
        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ReadError(f"texts {bad[:5]} are not strings")
        parts = []
        tokens_so_far = 0
        for start, end in request_spans(texts):
            def shifted(rows: np.ndarray, x: np.ndarray, start: int = start) -> None:
                on_batch(rows + start, x)

            def shifted_progress(done: int, total: int, tokens: int, start: int = start) -> None:
                if progress is not None:
                    progress(start + done, len(texts), tokens_so_far + tokens)

            part = self._read_one(texts[start:end], layer=layer, pool_start=pool_start, max_tokens=max_tokens,
                                  on_batch=shifted, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                  progress=shifted_progress)
            tokens_so_far += part.tokens
            parts.append((start, part))
        if len(parts) == 1:
            return parts[0][1]
        return ReadSummary(
            np.concatenate([p.n_tokens for _, p in parts]) if parts else np.zeros(0, dtype=np.int64),
            {start + i: t for start, p in parts for i, t in p.truncated.items()},
            [start + i for start, p in parts for i in p.too_short],
            sum(p.tokens for _, p in parts), sum(p.seconds for _, p in parts), self.via)

    def _read_one(self, texts: list[str], *, layer: int, pool_start: int, max_tokens: int, on_batch: BatchFn,
                  batch_size: int | None, max_batch_tokens: int | None, progress: ProgressFn | None) -> ReadSummary:
        """One ``read`` request (texts within the request bounds)."""
        out = self.server.scratch_path(f"read-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(6)}.npy")
        payload = {"kind": "read", "texts": texts, "layer": int(layer), "pool_start": int(pool_start),
                   "max_tokens": int(max_tokens), "batch_size": batch_size, "max_batch_tokens": max_batch_tokens,
                   "output": str(out)}
        try:
            answer = self.server.call(payload, start=self.start)
            summary = ReadSummary.from_json(answer, len(texts), self.via)
            if len(texts):
                pooled = np.load(out, mmap_mode="r")
                if pooled.shape[0] != len(texts) or (self.hidden_size and pooled.shape[1] != self.hidden_size):
                    raise ReadError(f"the model server's activations have shape {pooled.shape}, "
                                    f"expected ({len(texts)}, {self.hidden_size})")
                skip = set(summary.too_short)
                for s in range(0, len(texts), READ_CHUNK):
                    rows = np.array([i for i in range(s, min(s + READ_CHUNK, len(texts))) if i not in skip],
                                    dtype=np.int64)
                    if len(rows):
                        on_batch(rows, np.asarray(pooled[rows], dtype=np.float32))
                    if progress is not None:
                        progress(min(s + READ_CHUNK, len(texts)), len(texts), summary.tokens)
                del pooled
        finally:
            Path(out).unlink(missing_ok=True)
        return summary

    def top_tokens(self, directions: np.ndarray, scale: float, top_k: int) -> list[list[str]]:
        directions = np.asarray(directions, dtype=np.float64)
        if directions.ndim != 2:
            raise ReadError(f"lens directions must be a (m, d) array, not shape {directions.shape}")
        out: list[list[str]] = []
        for s in range(0, len(directions), LENS_DIRECTIONS_PER_REQUEST):
            part = directions[s:s + LENS_DIRECTIONS_PER_REQUEST]
            answer = self.server.call({"kind": "lens", "directions": part.tolist(), "scale": float(scale),
                                       "top_k": int(top_k)}, start=self.start)
            tokens = answer.get("tokens")
            if not isinstance(tokens, list) or len(tokens) != len(part):
                raise ReadError("malformed lens answer from the model server")
            out += [[str(t) for t in row] for row in tokens]
        return out

    def token_projections(self, text: str, vector: np.ndarray, layer: int, *, max_tokens: int | None = None) -> Any:
        """``highlight.token_projections`` computed by the server (a ``tokens`` request)."""
        answer = self.server.call({"kind": "tokens", "text": text, "layer": int(layer),
                                   "vector": np.asarray(vector, dtype=np.float64).tolist(),
                                   "max_tokens": max_tokens}, start=self.start)
        return token_projections_from_json(answer)


def token_projections_to_json(tp: Any) -> dict[str, Any]:
    return {"text": tp.text, "token_ids": [int(i) for i in tp.token_ids], "pieces": list(tp.pieces),
            "tokens": [str(t) for t in tp.tokens], "projections": np.asarray(tp.projections, dtype=np.float64).tolist(),
            "norms": np.asarray(tp.norms, dtype=np.float64).tolist(), "layer": int(tp.layer)}


def token_projections_from_json(data: dict[str, Any]) -> Any:
    from emotion_vectors.extraction.highlight import TokenProjections

    try:
        out = TokenProjections(text=str(data["text"]), token_ids=[int(i) for i in data["token_ids"]],
                               pieces=[str(p) for p in data["pieces"]], tokens=[str(t) for t in data["tokens"]],
                               projections=np.asarray(data["projections"], dtype=np.float64), layer=int(data["layer"]),
                               norms=np.asarray(data["norms"], dtype=np.float64))
    except (KeyError, TypeError, ValueError) as err:
        raise ReadError(f"malformed tokens answer from the model server: {err}") from None
    if not (len(out.token_ids) == len(out.pieces) == len(out.tokens) == len(out.projections)):
        raise ReadError("malformed tokens answer from the model server: lengths differ")
    return out


def request_spans(texts: Sequence[str], max_texts: int | None = None,
                  max_bytes: int | None = None) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``texts`` in order, each span at most ``max_texts`` texts
    and (unless one text alone is longer) ``max_bytes`` bytes of texts as JSON (defaults:
    ``READ_TEXTS_PER_REQUEST``, ``READ_BYTES_PER_REQUEST``)."""
    max_texts = READ_TEXTS_PER_REQUEST if max_texts is None else max_texts
    max_bytes = READ_BYTES_PER_REQUEST if max_bytes is None else max_bytes
    spans, start, size = [], 0, 0
    for i, text in enumerate(texts):
        n = len(json.dumps(text)) + 2
        if i > start and (i - start >= max_texts or size + n > max_bytes):
            spans.append((start, i))
            start, size = i, 0
        size += n
    if texts:
        spans.append((start, len(texts)))
    return spans or [(0, 0)]


def gather(reader: Any, texts: Sequence[str], *, layer: int, pool_start: int, max_tokens: int = 2048,
           batch_size: int | None = 32, max_batch_tokens: int | None = 16384) -> tuple[np.ndarray, ReadSummary]:
    """All pooled activations of a (small) list of texts in memory: ``(n, d)`` float64, NaN rows
    for texts too short for the window."""
    texts = list(texts)
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    summary = reader.read(texts, layer=layer, pool_start=pool_start, max_tokens=max_tokens,
                          on_batch=lambda rows, x: parts.append((rows, x)), batch_size=batch_size,
                          max_batch_tokens=max_batch_tokens)
    d = parts[0][1].shape[1] if parts else int(reader.hidden_size or 0)
    out = np.full((len(texts), d), np.nan)
    for rows, x in parts:
        out[rows] = x
    return out, summary


__all__ = ["LocalReader", "ReadError", "ReadSummary", "ServerReader", "check_window", "gather", "hidden_size",
           "read_texts", "request_spans", "token_counts", "token_projections_from_json", "token_projections_to_json", "top_tokens",
           "truncate_text"]
