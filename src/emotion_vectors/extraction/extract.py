"""Residual-stream activation extraction: one batched forward pass, pooled on the device.

What is extracted
-----------------
For each text and each wanted layer, the mean of the residual-stream vectors over the text's
token positions ``pool_start, pool_start + 1, ..., n_tokens - 1`` (0-based, counted from the
text's OWN first token, whatever side the batch is padded on), plus the mean L2 norm of those
vectors (``token_norm``, the unit of steering strength) and the number of tokens.

Layer index convention
----------------------
Layer ``i`` is the output of decoder block ``i`` (0-based, ``decoder_layers(model)[i]``), read
by a forward hook on that block. This equals ``output_hidden_states[i + 1]`` for every block
except the last one: transformers stores the LAST entry of ``hidden_states`` after the final
norm, whereas layer ``n_blocks - 1`` here is the raw output of the last block (before the
norm). ``hidden_states[0]`` (the embedding output) has no layer index here. The earlier
replication's "layer 40" on Gemma 4 31B (``hidden_states[40]``) is layer 39 here.

Token positions
---------------
Texts are tokenised with ``add_special_tokens=True``, exactly as the tokenizer does by default,
and position 0 is the first token of that encoding: for Gemma tokenizers (which prepend
``<bos>``) position 0 is BOS, so ``pool_start=50`` skips BOS and the first 49 text tokens; for
SmolLM2/Llama-3-style tokenizers that add no BOS, position 0 is the first text token.
``n_tokens`` counts the special tokens the tokenizer adds. A text with
``n_tokens <= pool_start`` has no token to pool: the ``short_policy`` decides (``"skip"``: not
computed, reported in ``ExtractionPlan.skipped``; ``"error"``: ``ShortTextError`` before any
forward pass). Nothing ever falls back to averaging from BOS.

How it runs
-----------
All texts are tokenised first (only lengths are kept), sorted by length (longest first, so an
out-of-memory error shows up on the first batch), and cut into batches of at most
``batch_size`` texts and at most ``max_batch_tokens`` padded tokens. Each batch is one forward
pass with hooks on the wanted blocks only; the hook of the deepest wanted block raises a
private exception, so later blocks, the final norm and the LM head never run. Pooling happens
on the model's device in float32 (whatever the model dtype); only ``(b, n_layers, d)`` results
go to the CPU. On ``torch.OutOfMemoryError`` the batch is halved and retried (and later batches
run at that smaller size). Results come out of a generator, one ``PooledBatch`` per planned
batch, so memory does not grow with the corpus; ``skip_indices`` lets a caller resume, and the
batches depend only on the texts and the settings, so a resumed run gives bit-identical
results to an uninterrupted one (barring an OOM split, which changes batch shapes and hence
float rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from emotion_vectors.core.layers import LayerIndexError, default_layers, main_layer, main_stored_layer, validate_layers
from emotion_vectors.core.models import decoder_layers

ShortPolicy = Literal["skip", "error"]
ProgressFn = Callable[[int, int, int], None]

#: Default number of leading tokens excluded from the mean (0-based positions 0..49).
DEFAULT_POOL_START = 50
_TOKENIZE_CHUNK = 1024


class ExtractionError(RuntimeError):
    """Base class for errors raised by the extraction engine."""


class ShortTextError(ExtractionError, ValueError):
    """Texts too short to have any token at or after ``pool_start`` (policy ``"error"``)."""


class NonFiniteActivationError(ExtractionError, FloatingPointError):
    """A pooled activation (or its token norm) is NaN or infinite."""


class _StopForward(Exception):
    """Raised by the deepest wanted block's hook to end the forward pass early."""


@dataclass
class PooledBatch:
    """Pooled activations of one batch of texts.

    Attributes:
        indices: ``(b,)`` int64, positions of the texts in the input list.
        ids: the ``b`` text ids, in the same order.
        pooled: ``(b, n_layers, d)`` float32, mean residual-stream vector over the pooled tokens;
            axis 1 follows the ``layers`` argument.
        token_norm: ``(b, n_layers)`` float32, mean L2 norm of the pooled token vectors.
        n_tokens: ``(b,)`` int64, tokens in the text including special tokens; the mean runs over
            ``n_tokens - pool_start`` of them.
    """

    indices: np.ndarray
    ids: list[str]
    pooled: np.ndarray
    token_norm: np.ndarray
    n_tokens: np.ndarray


@dataclass
class ExtractionPlan:
    """Which texts are computed, in which batches. Built by :func:`plan_extraction`.

    Attributes:
        ids: text ids, one per input text.
        n_tokens: ``(n_texts,)`` int64, token count of every input text.
        kept: ``(n_kept,)`` int64, input positions that will be computed (ascending).
        skipped: ``(id, n_tokens)`` of the texts left out as too short (policy ``"skip"``).
        skipped_indices: ``(n_skipped,)`` int64 input positions of those texts.
        batches: index arrays into the input list, in run order (longest texts first); each
            batch's texts are sorted by decreasing length.
        pool_start, short_policy, batch_size, max_batch_tokens: the settings used.
    """

    ids: list[str]
    n_tokens: np.ndarray
    kept: np.ndarray
    skipped: list[tuple[str, int]]
    skipped_indices: np.ndarray
    batches: list[np.ndarray]
    pool_start: int
    short_policy: str
    batch_size: int | None
    max_batch_tokens: int | None

    @property
    def n_texts(self) -> int:
        """Number of input texts."""
        return len(self.ids)

    def padded_tokens(self, batch: np.ndarray) -> int:
        """Tokens a batch occupies once padded: ``len(batch) * max(n_tokens)``."""
        return int(len(batch) * self.n_tokens[batch].max()) if len(batch) else 0


@dataclass
class ExtractionResult:
    """All pooled activations of a (small) corpus, as returned by :func:`extract_pooled`.

    Attributes:
        layers: the layer indices (axis 1 of ``pooled``).
        indices: ``(n,)`` int64 input positions of the computed texts, ascending.
        ids: the ``n`` computed text ids.
        pooled: ``(n, n_layers, d)`` float32.
        token_norm: ``(n, n_layers)`` float32.
        n_tokens: ``(n,)`` int64.
        skipped: ``(id, n_tokens)`` of the texts left out as too short.
    """

    layers: list[int]
    indices: np.ndarray
    ids: list[str]
    pooled: np.ndarray
    token_norm: np.ndarray
    n_tokens: np.ndarray
    skipped: list[tuple[str, int]] = field(default_factory=list)


def _token_lengths(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """``(n,)`` int64 token counts with ``add_special_tokens=True``, tokenised in chunks."""
    lengths = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        chunk = list(texts[start : start + _TOKENIZE_CHUNK])
        enc = tokenizer(chunk, add_special_tokens=True)["input_ids"]
        lengths[start : start + len(chunk)] = [len(x) for x in enc]
    return lengths


def _make_batches(
    order: np.ndarray, n_tokens: np.ndarray, batch_size: int | None, max_batch_tokens: int | None
) -> list[np.ndarray]:
    """Greedy batches over ``order`` (sorted by decreasing length) under both caps."""
    batches: list[np.ndarray] = []
    current: list[int] = []
    longest = 0
    for idx in order.tolist():
        length = int(n_tokens[idx])
        new_longest = max(longest, length)
        full = batch_size is not None and len(current) >= batch_size
        too_big = max_batch_tokens is not None and (len(current) + 1) * new_longest > max_batch_tokens
        if current and (full or too_big):
            batches.append(np.asarray(current, dtype=np.int64))
            current, new_longest = [], length
        current.append(idx)
        longest = new_longest
    if current:
        batches.append(np.asarray(current, dtype=np.int64))
    return batches


def plan_extraction(
    tokenizer: Any,
    texts: Sequence[str],
    ids: Sequence[str] | None = None,
    *,
    pool_start: int = DEFAULT_POOL_START,
    short_policy: ShortPolicy = "skip",
    batch_size: int | None = 8,
    max_batch_tokens: int | None = None,
) -> ExtractionPlan:
    """Tokenise ``texts`` (keeping only their lengths), apply the short-text policy, and batch.

    Args:
        tokenizer: a Hugging Face tokenizer; texts are encoded with ``add_special_tokens=True``.
        texts: the texts, any sequence of ``str``.
        ids: one id per text (used in reports and errors); default ``"0", "1", ...``.
        pool_start: first 0-based token position in the mean (default 50).
        short_policy: ``"skip"`` or ``"error"`` for texts with ``n_tokens <= pool_start``.
        batch_size: most texts per batch (``None``: no count cap; then ``max_batch_tokens`` is
            required).
        max_batch_tokens: most padded tokens per batch (``len(batch) * longest``); a single
            text longer than the cap forms a batch of its own.

    Returns:
        The plan. Batches are deterministic: texts sorted by decreasing token count, ties by
        input position.

    Raises:
        ShortTextError: policy ``"error"`` and some texts are too short (all are named).
        ValueError: inconsistent arguments.
    """
    if short_policy not in ("skip", "error"):
        raise ValueError(f"short_policy must be 'skip' or 'error', not {short_policy!r}")
    if pool_start < 0:
        raise ValueError(f"pool_start must be >= 0, got {pool_start}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1 or None, got {max_batch_tokens}")
    if batch_size is None and max_batch_tokens is None:
        raise ValueError("set batch_size, max_batch_tokens or both")
    not_str = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if not_str:
        raise TypeError(f"texts must be strings; positions {not_str[:10]} are not")
    if ids is None:
        ids = [str(i) for i in range(len(texts))]
    ids = [str(x) for x in ids]
    if len(ids) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(ids)} ids")

    n_tokens = _token_lengths(tokenizer, texts)
    short = np.flatnonzero(n_tokens <= pool_start)
    if len(short) and short_policy == "error":
        named = ", ".join(f"{ids[i]} ({n_tokens[i]} tokens)" for i in short[:50])
        more = f" and {len(short) - 50} more" if len(short) > 50 else ""
        raise ShortTextError(
            f"{len(short)} text(s) have n_tokens <= pool_start={pool_start}, so no token is "
            f"left to average: {named}{more}. Lengthen or drop them, lower pool_start, or use "
            "short_policy='skip'."
        )
    kept = np.flatnonzero(n_tokens > pool_start).astype(np.int64)
    # Longest first; np.lexsort sorts by the last key first: -length, then input position.
    order = kept[np.lexsort((kept, -n_tokens[kept]))]
    batches = _make_batches(order, n_tokens, batch_size, max_batch_tokens)
    return ExtractionPlan(
        ids=ids,
        n_tokens=n_tokens,
        kept=kept,
        skipped=[(ids[i], int(n_tokens[i])) for i in short],
        skipped_indices=short.astype(np.int64),
        batches=batches,
        pool_start=pool_start,
        short_policy=short_policy,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
    )


def _block_hidden(output: Any) -> torch.Tensor:
    """The hidden states a decoder block returns: a tensor (transformers 5) or a tuple's first item."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hidden = getattr(output, "hidden_states", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise TypeError(f"cannot read hidden states from a decoder block output of type {type(output)}")


def _input_device(model: torch.nn.Module) -> torch.device:
    """Device of the input embeddings (where ``input_ids`` must go)."""
    try:
        emb = model.get_input_embeddings()
        return emb.weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def _pad_batch(
    token_lists: list[list[int]], pad_id: int, side: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad to ``(b, T)`` ``input_ids``, ``attention_mask`` and per-text ``position_ids``.

    ``position_ids`` count from each text's own first token (0), also under left padding.
    """
    longest = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), longest), dtype=torch.long)
    for row, toks in enumerate(token_lists):
        n = len(toks)
        sl = slice(longest - n, longest) if side == "left" else slice(0, n)
        ids[row, sl] = torch.tensor(toks, dtype=torch.long)
        mask[row, sl] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    return ids.to(device), mask.to(device), position_ids.to(device)


class _Pooler:
    """Forward hooks that pool wanted blocks' outputs into float32 buffers on the device."""

    def __init__(self, blocks: Any, layers: list[int]) -> None:
        self.blocks = blocks
        self.layers = layers
        self.deepest = max(layers)
        self.window: torch.Tensor | None = None  # (b, T) bool
        self.count: torch.Tensor | None = None  # (b,) float32
        self.pooled: torch.Tensor | None = None  # (b, n_layers, d) float32
        self.norms: torch.Tensor | None = None  # (b, n_layers) float32
        self.seen: set[int] = set()

    def start(self, window: torch.Tensor) -> None:
        self.window = window
        self.count = window.sum(-1).to(torch.float32)
        self.pooled = None
        self.norms = None
        self.seen = set()

    def reset(self) -> None:
        """Drop the buffers of an aborted pass."""
        self.window = self.count = self.pooled = self.norms = None
        self.seen = set()

    def _hook(self, slot: int, layer: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            hidden = _block_hidden(output)  # (b, T, d), model dtype
            dev = self.window.device
            h = hidden.detach().to(device=dev, dtype=torch.float32)
            w = self.window
            if self.pooled is None:
                b, _, d = h.shape
                self.pooled = torch.zeros((b, len(self.layers), d), dtype=torch.float32, device=dev)
                self.norms = torch.zeros((b, len(self.layers)), dtype=torch.float32, device=dev)
            # torch.where, not a multiply: a non-finite value at a padded position must not leak.
            inside = torch.where(w.unsqueeze(-1), h, 0.0)
            self.pooled[:, slot] = inside.sum(1) / self.count.unsqueeze(-1)
            tok_norm = torch.linalg.vector_norm(inside, dim=-1)  # (b, T); 0 outside the window
            self.norms[:, slot] = tok_norm.sum(1) / self.count
            self.seen.add(layer)
            if layer == self.deepest:
                raise _StopForward

        return hook

    def attach(self) -> list[Any]:
        return [
            self.blocks[layer].register_forward_hook(self._hook(slot, layer))
            for slot, layer in enumerate(self.layers)
        ]


def _run_forward(
    model: torch.nn.Module,
    pooler: _Pooler,
    token_lists: list[list[int]],
    pool_start: int,
    pad_id: int,
    side: str,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass that stops after the deepest wanted block.

    Returns ``pooled`` ``(b, n_layers, d)`` and ``token_norm`` ``(b, n_layers)``, float32, on
    the device.
    """
    input_ids, mask, position_ids = _pad_batch(token_lists, pad_id, side, device)
    window = (mask > 0) & (position_ids >= pool_start)  # (b, T) own positions pool_start..n-1
    pooler.start(window)
    handles = pooler.attach()
    try:
        model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [x for x in pooler.layers if x not in pooler.seen]
    if missing:
        raise ExtractionError(
            f"decoder blocks {missing} did not run during the forward pass of "
            f"{type(model).__name__}; are they the blocks its forward uses?"
        )
    assert pooler.pooled is not None and pooler.norms is not None
    return pooler.pooled, pooler.norms


def _free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":  # pragma: no cover - needs a GPU
        torch.cuda.empty_cache()


def _padding(tokenizer: Any) -> tuple[str, int]:
    """The tokenizer's padding side (``"left"`` or ``"right"``; default right) and pad id (else
    its end-of-sequence id, else 0)."""
    side = getattr(tokenizer, "padding_side", "right") or "right"
    if side not in ("left", "right"):
        raise ValueError(f"tokenizer.padding_side must be 'left' or 'right', not {side!r}")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return side, pad_id


def _batch_tokens(tokenizer: Any, texts: Sequence[str], batch: np.ndarray,
                  plan: ExtractionPlan) -> tuple[list[list[int]], np.ndarray]:
    """The token ids of one planned batch and their counts, which must still be the plan's."""
    token_lists = tokenizer([texts[i] for i in batch], add_special_tokens=True)["input_ids"]
    token_lists = [list(t) for t in token_lists]
    lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
    if not np.array_equal(lengths, plan.n_tokens[batch]):
        raise ExtractionError(
            "tokenisation changed since the plan was made (token counts differ for ids "
            f"{[plan.ids[i] for i, a, b in zip(batch, lengths, plan.n_tokens[batch]) if a != b]})"
        )
    return token_lists, lengths


def _forward_rows(
    model: torch.nn.Module,
    pooler: _Pooler,
    token_lists: list[list[int]],
    pool_start: int,
    pad_id: int,
    side: str,
    device: torch.device,
    max_rows: int | None,
    oom_errors: tuple[type[BaseException], ...],
) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """Pool one batch, at most ``max_rows`` rows per forward pass; an out-of-memory error halves
    the rows of the pass that failed and of every later one (a single row that does not fit
    raises). Returns ``pooled``, ``token_norm`` (rows in order) and the new ``max_rows``."""
    pooled_parts: list[torch.Tensor] = []
    norm_parts: list[torch.Tensor] = []
    rows = max_rows or len(token_lists)
    # Row ranges of this batch still to run, in order (more than one after an OOM).
    pending = [(s, min(s + rows, len(token_lists))) for s in range(0, len(token_lists), rows)]
    while pending:
        start, stop = pending.pop(0)
        if max_rows is not None and stop - start > max_rows:
            pending[:0] = [(s, min(s + max_rows, stop)) for s in range(start + max_rows, stop, max_rows)]
            stop = start + max_rows
        oom: BaseException | None = None
        try:
            with torch.inference_mode():
                pooled, norms = _run_forward(
                    model, pooler, token_lists[start:stop], pool_start, pad_id, side, device
                )
                pooled_parts.append(pooled)
                norm_parts.append(norms)
        except oom_errors as err:
            if stop - start <= 1:
                raise
            oom = err
        if oom is not None:
            # Retry outside the except block so the failed pass's tensors can be freed.
            del oom
            pooler.reset()
            _free_device_memory(device)
            half = (stop - start + 1) // 2
            max_rows = half if max_rows is None else min(max_rows, half)
            pending[:0] = [(start, start + half), (start + half, stop)]
    pooled_all = torch.cat(pooled_parts) if len(pooled_parts) > 1 else pooled_parts[0]
    norms_all = torch.cat(norm_parts) if len(norm_parts) > 1 else norm_parts[0]
    return pooled_all, norms_all, max_rows


def _check_finite(pooled: torch.Tensor, norms: torch.Tensor, layers: Sequence[int], plan: ExtractionPlan,
                  batch: np.ndarray) -> None:
    """Raise :class:`NonFiniteActivationError` naming the first text of ``batch`` and the layers
    where its pooled value or token norm is NaN or inf."""
    finite = torch.isfinite(pooled).all(-1) & torch.isfinite(norms)  # (b, n_layers)
    if not bool(finite.all()):
        row = int(torch.nonzero(~finite)[0, 0])
        bad = sorted(layers[s] for s in torch.nonzero(~finite[row]).flatten().tolist())
        also = f" (also at layers {bad[1:]})" if len(bad) > 1 else ""
        raise NonFiniteActivationError(
            f"non-finite pooled activation for text id {plan.ids[int(batch[row])]!r} at layer "
            f"{bad[0]} (0-based block output){also}; check the text and the model dtype "
            "(float16 can overflow on Gemma's residual stream)"
        )


def iter_pooled(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    ids: Sequence[str] | None,
    layers: Sequence[int],
    *,
    pool_start: int = DEFAULT_POOL_START,
    short_policy: ShortPolicy = "skip",
    batch_size: int | None = 8,
    max_batch_tokens: int | None = None,
    skip_indices: Collection[int] = frozenset(),
    progress: ProgressFn | None = None,
    plan: ExtractionPlan | None = None,
    oom_errors: tuple[type[BaseException], ...] = (torch.OutOfMemoryError,),
) -> Iterator[PooledBatch]:
    """Yield pooled activations batch by batch (one :class:`PooledBatch` per planned batch).

    Args:
        model: a causal LM in eval mode (Llama, Gemma 3, Gemma 4 text or multimodal wrapper, any
            dtype, any device); it is not modified (hooks are removed after every batch).
        tokenizer: its tokenizer; ``padding_side`` ("left" or "right") decides the padding,
            which does not change the result.
        texts, ids: the corpus and one id per text (default: the positions as strings).
        layers: 0-based block indices (see the module docstring); axis 1 of the output follows
            this order.
        pool_start, short_policy, batch_size, max_batch_tokens: see :func:`plan_extraction`.
        skip_indices: input positions already computed (resume): batches made only of such
            texts are not run; a batch that mixes both runs whole (so its numbers equal an
            uninterrupted run's) and yields only the texts not in ``skip_indices``.
        progress: called after every batch as ``progress(done_texts, total_texts, tokens)``,
            counting texts computed by this call (``total_texts`` excludes skipped and resumed
            texts) and the real (unpadded) tokens passed through the model so far.
        plan: a plan from :func:`plan_extraction` (must match ``texts``); built if ``None``.
        oom_errors: exception types treated as out-of-memory (halve the batch and retry).

    Yields:
        :class:`PooledBatch` with ``pooled`` ``(b, n_layers, d)`` float32 on the CPU.

    Raises:
        ShortTextError: ``short_policy="error"`` and some texts are too short.
        NonFiniteActivationError: a pooled value is NaN or inf (names the text id and layer).
        LayerIndexError: bad layer indices.
        torch.OutOfMemoryError: a single text does not fit.
    """
    if model.training:
        raise ValueError("model is in training mode (dropout would change activations): call model.eval()")
    blocks = decoder_layers(model)
    layers = validate_layers(layers, len(blocks))
    if plan is None:
        plan = plan_extraction(
            tokenizer,
            texts,
            ids,
            pool_start=pool_start,
            short_policy=short_policy,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
        )
    elif plan.n_texts != len(texts):
        raise ValueError(f"plan covers {plan.n_texts} texts but {len(texts)} were given")
    pool_start = plan.pool_start
    side, pad_id = _padding(tokenizer)
    device = _input_device(model)
    skip = {int(i) for i in skip_indices}
    todo_batches = [b for b in plan.batches if not all(int(i) in skip for i in b)]
    total = sum(int(sum(1 for i in b if int(i) not in skip)) for b in todo_batches)
    pooler = _Pooler(blocks, layers)
    max_rows: int | None = None  # lowered after an out-of-memory error
    done = 0
    tokens = 0

    for batch in todo_batches:
        token_lists, lengths = _batch_tokens(tokenizer, texts, batch, plan)
        pooled_all, norms_all, max_rows = _forward_rows(
            model, pooler, token_lists, pool_start, pad_id, side, device, max_rows, oom_errors
        )
        _check_finite(pooled_all, norms_all, layers, plan, batch)
        pooled_np = pooled_all.cpu().numpy()
        norms_np = norms_all.cpu().numpy()
        keep = np.array([int(i) not in skip for i in batch], dtype=bool)
        done += int(keep.sum())
        tokens += int(lengths.sum())
        yield PooledBatch(
            indices=batch[keep].copy(),
            ids=[plan.ids[int(i)] for i in batch[keep]],
            pooled=np.ascontiguousarray(pooled_np[keep]),
            token_norm=np.ascontiguousarray(norms_np[keep]),
            n_tokens=lengths[keep],
        )
        if progress is not None:
            progress(done, total, tokens)


def extract_pooled(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    ids: Sequence[str] | None,
    layers: Sequence[int],
    **kwargs: Any,
) -> ExtractionResult:
    """Run :func:`iter_pooled` and gather everything in memory, sorted by input position.

    Convenient for small corpora and tests; for large ones write each batch out as it comes.
    ``kwargs`` are passed to :func:`iter_pooled` (``plan`` is built here unless given).
    """
    plan = kwargs.pop("plan", None)
    if plan is None:
        plan = plan_extraction(
            tokenizer,
            texts,
            ids,
            **{k: kwargs.pop(k) for k in list(kwargs) if k in _PLAN_KEYS},
        )
    else:
        for k in _PLAN_KEYS:
            kwargs.pop(k, None)
    batches = list(iter_pooled(model, tokenizer, texts, ids, layers, plan=plan, **kwargs))
    layers = [int(x) for x in layers]
    if batches:
        indices = np.concatenate([b.indices for b in batches])
        order = np.argsort(indices, kind="stable")
        pooled = np.concatenate([b.pooled for b in batches])[order]
        norms = np.concatenate([b.token_norm for b in batches])[order]
        n_tok = np.concatenate([b.n_tokens for b in batches])[order]
        indices = indices[order]
    else:
        d = 0
        indices = np.zeros(0, dtype=np.int64)
        pooled = np.zeros((0, len(layers), d), dtype=np.float32)
        norms = np.zeros((0, len(layers)), dtype=np.float32)
        n_tok = np.zeros(0, dtype=np.int64)
    return ExtractionResult(
        layers=layers,
        indices=indices,
        ids=[plan.ids[int(i)] for i in indices],
        pooled=pooled,
        token_norm=norms,
        n_tokens=n_tok,
        skipped=list(plan.skipped),
    )


_PLAN_KEYS = ("pool_start", "short_policy", "batch_size", "max_batch_tokens")

__all__ = [
    "DEFAULT_POOL_START",
    "ExtractionError",
    "ExtractionPlan",
    "ExtractionResult",
    "LayerIndexError",
    "NonFiniteActivationError",
    "PooledBatch",
    "ShortTextError",
    "default_layers",
    "main_layer",
    "main_stored_layer",
    "extract_pooled",
    "iter_pooled",
    "plan_extraction",
    "validate_layers",
]
