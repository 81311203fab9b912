"""Logit lens on emotion vectors: which tokens does each direction promote and suppress?

Each vector's unit direction is scaled to a typical residual-stream norm at its layer (the
store's ``residual_norm``: the mean per-token L2 norm there), passed through the model's final
norm (``model.get_decoder().norm``) and the unembedding (``model.get_output_embeddings()``).
The scale matters only through the norm's epsilon (RMSNorm and LayerNorm are otherwise
scale-invariant); a typical norm keeps epsilon as small relative to the input as it is in
real activations. Gemma's final logit soft-capping is monotone and does not change rankings, so
it is not applied. Logits are reported as computed (no bias, no centring).

The lens needs only two pieces of the subject model, so ``load_lens_head`` reads just those
tensors from its safetensors files (``safe_open``; for a hub id, only the shard files that hold
them are downloaded): the final norm, built as the model's own norm class from the config (so
Gemma's ``(1 + weight)`` RMSNorm is Gemma's), and the unembedding (``lm_head``, or the input
embedding when the two are tied). For gemma-4-31B-it that is the tied 262,144 x 5,376
embedding (2.8 GB in bfloat16) of a ~62 GB checkpoint.

A token "is" an emotion's word when its decoded text, with SentencePiece ``▁`` and byte-level
BPE ``Ġ`` markers read as spaces and surrounding whitespace removed, equals one of the word's
forms ignoring case. The forms of ``at ease`` are ``at ease`` and its content word ``ease``;
of ``grief-stricken``: ``grief-stricken``, ``grief``, ``stricken`` (see ``word_forms``).
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..extraction.lens import final_norm, lens_logits, vocabulary

log = logging.getLogger(__name__)

# Opposite pairs checked for mutual suppression (from the study's behavioural pairs).
OPPOSITE_PAIRS: tuple[tuple[str, str], ...] = (
    ("happy", "sad"),
    ("calm", "desperate"),
    ("proud", "ashamed"),
    ("excited", "bored"),
    ("loving", "hostile"),
)
_FUNCTION_WORDS = {"at", "on", "out", "in", "self", "of", "the", "a"}
def word_forms(emotion: str) -> set[str]:
    """Lower-case strings a token may equal to count as ``emotion``'s own word.

    The emotion itself, and for phrases and hyphenated compounds each part that is not a
    function word or ``self`` (``worn out`` -> {``worn out``, ``worn``}).
    """
    word = emotion.lower()
    forms = {word}
    parts = word.replace("-", " ").split()
    if len(parts) > 1:
        forms.update(p for p in parts if p not in _FUNCTION_WORDS)
    return forms


# --- loading only the final norm and the unembedding --------------------------------------

#: Prefixes under which checkpoints of the supported families keep the text decoder's tensors
#: (Llama / Gemma 3 / Gemma 4 text: ``model.``; Gemma 3 / 4 multimodal:
#: ``model.language_model.``; older multimodal checkpoints: ``language_model.model.``).
KEY_PREFIXES = ("", "model.", "model.language_model.", "language_model.model.",
                "language_model.", "model.text_model.", "text_model.")


@dataclass
class LensHead:
    """The final norm and the unembedding of a causal LM, without the rest of the model.

    Quacks like the model for ``final_norm``, ``lens_logits`` and ``logit_lens``
    (``.norm``, ``get_output_embeddings()``, ``.config``).

    Attributes:
        norm: the final norm module (the model's own class, weights loaded).
        lm_head: ``torch.nn.Linear`` ``(vocab, d)`` (the input embedding's weight if tied).
        config: the model's config.
        info: what was read: path, tensors (name -> shape, dtype, bytes, file), files read,
            loaded_bytes, checkpoint_bytes (all tensors of the checkpoint), tied.
    """

    norm: Any
    lm_head: Any
    config: Any
    info: dict[str, Any] = field(default_factory=dict)

    def get_output_embeddings(self):
        return self.lm_head


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, data_offsets)."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    return header


class _Checkpoint:
    """The safetensors files of a model: which file holds which tensor, and their sizes.

    Local directory: ``model.safetensors.index.json`` (sharded) or every ``*.safetensors``.
    Hub id: ``config.json`` and the index are downloaded first; a shard is downloaded only
    when one of its tensors is read (``hf_hub_download``); a repository with one unsharded
    file needs that whole file.
    """

    def __init__(self, path: str, revision: str | None = None):
        self.repo_id: str | None = None
        self.revision = revision
        local = Path(path)
        if local.is_dir():
            self.root = local
            index = local / "model.safetensors.index.json"
            if index.exists():
                meta = json.loads(index.read_text())
                self.weight_map = dict(meta["weight_map"])
                self.total = (meta.get("metadata") or {}).get("total_size")
            else:
                files = sorted(local.glob("*.safetensors"))
                if not files:
                    raise FileNotFoundError(f"{local}: no *.safetensors files; the partial "
                                            "logit-lens loader reads safetensors checkpoints only")
                self.weight_map = {k: f.name for f in files for k in _safetensors_header(f)}
                self.total = None
        else:
            self._init_hub(path, revision)
        if self.total is None:
            self.total = self._sum_present()

    def _init_hub(self, repo_id: str, revision: str | None) -> None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        self.repo_id = repo_id
        cfg = Path(hf_hub_download(repo_id, "config.json", revision=revision))
        self.root = cfg.parent
        try:
            index = Path(hf_hub_download(repo_id, "model.safetensors.index.json",
                                         revision=revision))
        except EntryNotFoundError:
            log.warning("%s has no safetensors index: downloading its single model.safetensors "
                        "(the whole model) for the logit lens", repo_id)
            single = self.fetch("model.safetensors")
            self.weight_map = {k: single.name for k in _safetensors_header(single)}
            self.total = None
            return
        meta = json.loads(index.read_text())
        self.weight_map = dict(meta["weight_map"])
        self.total = (meta.get("metadata") or {}).get("total_size")

    def fetch(self, filename: str) -> Path:
        """Local path of ``filename``, downloading it first for a hub id."""
        if self.repo_id is None:
            return self.root / filename
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(self.repo_id, filename, revision=self.revision))

    def _sum_present(self) -> int | None:
        total = 0
        for name in sorted(set(self.weight_map.values())):
            f = self.root / name
            if not f.exists():
                return None
            total += sum(e["data_offsets"][1] - e["data_offsets"][0]
                         for e in _safetensors_header(f).values())
        return total

    def resolve(self, qualified: str) -> str | None:
        """The checkpoint's name for module tensor ``qualified`` (tried as is, then under each
        of ``KEY_PREFIXES``), or ``None``."""
        if qualified in self.weight_map:
            return qualified
        core = qualified
        for prefix in sorted(KEY_PREFIXES, key=len, reverse=True):
            if prefix and core.startswith(prefix):
                core = core[len(prefix):]
                break
        for prefix in KEY_PREFIXES:
            if prefix + core in self.weight_map:
                return prefix + core
        return None


def _module_names(model) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules()}


def load_lens_head(
    path: str | Path,
    *,
    revision: str | None = None,
    dtype: Any = None,
    device: str = "cpu",
) -> LensHead:
    """Load only the final norm and the unembedding of the model at ``path`` (a directory of
    safetensors files, or a hub id), as ``LensHead``.

    The model class is instantiated from its config on the ``meta`` device (no memory, no
    weights) to learn the final norm's class and settings and the names of the norm, the
    output embedding and the input embedding (and whether the two embeddings are tied); only
    those tensors are then read with ``safetensors.safe_open``. ``dtype`` (a torch dtype or its
    name; default: as stored) and ``device`` place them. Logs the tensors read and their share
    of the checkpoint.
    """
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    ckpt = _Checkpoint(str(path), revision)
    config = AutoConfig.from_pretrained(ckpt.root)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    names = _module_names(skeleton)
    norm = final_norm(skeleton)
    head = skeleton.get_output_embeddings()
    embed = skeleton.get_input_embeddings()
    tied = head is not None and embed is not None and head.weight is embed.weight
    hidden = set(dict(norm.named_buffers())) - set(norm.state_dict())
    if hidden:
        raise NotImplementedError(f"{type(norm).__name__} has non-persistent buffers {hidden}; "
                                  "the partial loader cannot rebuild them")

    wanted: dict[str, tuple[Any, str, str]] = {}  # module tensor -> (module, local, ckpt key)
    for module, qual_module in ((norm, names[id(norm)]), (head, names[id(head)])):
        for local in module.state_dict():
            qual = f"{qual_module}.{local}"
            key = ckpt.resolve(qual)
            if key is None and module is head and local == "weight":
                key = ckpt.resolve(f"{names[id(embed)]}.weight")
                if key is not None and not tied:
                    log.warning("%s: no %s in the checkpoint; using the input embedding %s "
                                "(tied)", path, qual, key)
                tied = tied or key is not None
            if key is None:
                near = sorted(k for k in ckpt.weight_map if k.endswith(local)
                              and ".layers." not in k)[:10]
                raise KeyError(f"{path}: tensor {qual} not found in the checkpoint (tried the "
                               f"prefixes {KEY_PREFIXES}); candidates: {near}")
            wanted[qual] = (module, local, key)

    by_file: dict[str, list[str]] = {}
    for qual, (_, _, key) in wanted.items():
        by_file.setdefault(ckpt.weight_map[key], []).append(qual)
    tensors: dict[str, Any] = {}
    record: dict[str, dict[str, Any]] = {}
    for filename, quals in by_file.items():
        local_file = ckpt.fetch(filename)
        header = _safetensors_header(local_file)
        with safe_open(str(local_file), framework="pt", device="cpu") as fh:
            for qual in quals:
                key = wanted[qual][2]
                tensors[qual] = fh.get_tensor(key)
                off = header[key]["data_offsets"]
                record[key] = {"shape": list(header[key]["shape"]),
                               "dtype": header[key]["dtype"], "bytes": off[1] - off[0],
                               "file": filename}

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype) if dtype != "auto" else None
    built = []
    for module in (norm, head):
        state = {local: tensors[qual] for qual, (m, local, _) in wanted.items() if m is module}
        if module is head:
            # A fresh Linear, so that a tied meta weight shared with the embedding is not reused.
            w = state["weight"]
            module = torch.nn.Linear(w.shape[1], w.shape[0], bias="bias" in state,
                                     device="meta")
        module.load_state_dict(state, strict=True, assign=True)
        module = module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)
        module.eval()
        for param in module.parameters():
            param.requires_grad_(False)
        built.append(module)
    model_class = type(skeleton).__name__
    del skeleton

    loaded = sum(r["bytes"] for r in record.values())
    info = {
        "path": str(path), "repo_id": ckpt.repo_id, "revision": revision,
        "tensors": record, "files_read": sorted(by_file), "loaded_bytes": int(loaded),
        "checkpoint_bytes": int(ckpt.total) if ckpt.total else None,
        "loaded_share": loaded / ckpt.total if ckpt.total else None,
        "tied": bool(tied), "norm_class": type(built[0]).__name__,
        "model_class": model_class,
    }
    log.info(
        "logit lens: read %s from %s = %.1f MB of the checkpoint's %s (%s)",
        ", ".join(f"{k} {tuple(v['shape'])} {v['dtype']}" for k, v in record.items()),
        ", ".join(sorted(by_file)), loaded / 2**20,
        f"{ckpt.total / 2**20:.1f} MB" if ckpt.total else "unknown size",
        f"{100 * loaded / ckpt.total:.1f}%" if ckpt.total else "share unknown",
    )
    return LensHead(norm=built[0], lm_head=built[1], config=config, info=info)


def load_lens(spec: dict[str, Any], models_dir: str | Path = "results/models"):
    """``(LensHead, tokenizer)`` for a model spec of the config (``models.subject``): the path
    as ``emotion_vectors.core.models.resolve_path`` gives it, the spec's revision, dtype and device
    (``auto``: CUDA if available). Quantization is not applied: the checkpoint's tensors are
    read as stored."""
    import torch
    from transformers import AutoTokenizer

    from emotion_vectors.core.models import checked_path

    path = checked_path(spec, models_dir)
    revision = spec.get("revision")
    device = spec.get("device", "cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = spec.get("dtype", "float32")
    head = load_lens_head(path, revision=revision, dtype=None if dtype == "auto" else dtype,
                          device=device)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    head.info["name"] = spec.get("name")
    return head, tokenizer


@dataclass
class LensResult:
    """Logit-lens output for one layer.

    Attributes:
        tokens: long table layer, emotion, direction (``promoted``/``suppressed``), rank (1 =
            strongest), token_id, token (raw string), text (normalised), logit,
            is_own_word.
        summary: per emotion: layer, emotion, scale (residual norm used), own_word_in_vocab
            (a token equals one of its forms), own_word_rank (best rank of such a token among
            the top-k promoted, empty if absent), own_word_promoted (bool), own_word_logit_pct
            (percentile of the best such token among all logits, 100 = top).
        pairs: per ordered opposite pair: layer, vector (a), word_of (b), word_tokens (tokens
            that are b's word), in_top_k_suppressed (one of them is among a's top-k suppressed),
            min_percentile / mean_percentile (percentile of those tokens' logits under a over
            the vocabulary; 0 = most suppressed), own_word_percentile (a's own word under a,
            best token; 100 = top).
    """

    tokens: pd.DataFrame
    summary: pd.DataFrame
    pairs: pd.DataFrame


def logit_lens(
    vectors: np.ndarray,
    emotions: Sequence[str],
    model,
    tokenizer,
    *,
    scale: float,
    layer: int = -1,
    top_k: int = 20,
    pairs: Sequence[tuple[str, str]] = OPPOSITE_PAIRS,
    batch_size: int = 16,
) -> LensResult:
    """Top promoted and suppressed tokens of each vector ``(n_emotions, d)`` of one layer.

    ``scale`` is the residual-stream norm the unit directions are scaled to (the store's
    ``residual_norm`` at ``layer``). Opposite ``pairs`` whose emotions are not both present are
    skipped. Work is batched (``batch_size`` vectors at a time, ``batch_size x vocab`` logits).
    """
    import torch

    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = x / np.where(norms > 0, norms, 1.0)
    vocab = model.get_output_embeddings().weight.shape[0]
    raw_tokens, text = vocabulary(tokenizer, vocab)
    index = {e: i for i, e in enumerate(emotions)}
    forms = [word_forms(e) for e in emotions]
    own_ids: list[np.ndarray] = []
    lookup: dict[str, list[int]] = {}
    for tid, t in enumerate(text):
        if t:
            lookup.setdefault(t, []).append(tid)
    for fs in forms:
        own_ids.append(np.array(sorted({i for f in fs for i in lookup.get(f, [])}), dtype=np.int64))
    wanted_pairs = [(a, b) for a, b in pairs if a in index and b in index]
    pair_rows_needed = {index[a] for pair in wanted_pairs for a in pair}

    token_rows, summary_rows = [], []
    percentiles: dict[int, np.ndarray] = {}  # emotion row -> (vocab,) logit percentile
    bottoms: dict[int, set[int]] = {}  # emotion row -> its top-k suppressed token ids
    k = min(top_k, vocab)
    for start in range(0, len(emotions), batch_size):
        logits = lens_logits(unit[start : start + batch_size], model, scale)
        top_val, top_idx = torch.topk(logits, k, dim=1)
        bot_val, bot_idx = torch.topk(-logits, k, dim=1)
        for b in range(logits.shape[0]):
            e = start + b
            row = logits[b]
            own = own_ids[e]
            own_set = set(own.tolist())
            for direction, vals, ids in (
                ("promoted", top_val[b], top_idx[b]),
                ("suppressed", -bot_val[b], bot_idx[b]),
            ):
                for rank, (v, tid) in enumerate(zip(vals.tolist(), ids.tolist()), start=1):
                    token_rows.append(
                        (layer, emotions[e], direction, rank, tid,
                         raw_tokens[tid], text[tid], v,
                         tid in own_set)
                    )
            promoted = top_idx[b].tolist()
            ranks = [r for r, tid in enumerate(promoted, start=1) if tid in own_set]
            pct = float("nan")
            if own.size:
                best = row[torch.as_tensor(own, device=row.device)].max()
                pct = float((row < best).float().mean().item() * 100)
            summary_rows.append(
                {
                    "layer": layer, "emotion": emotions[e], "scale": float(scale),
                    "own_word_in_vocab": bool(own.size),
                    "own_word_rank": min(ranks) if ranks else None,
                    "own_word_promoted": bool(ranks), "own_word_logit_pct": pct,
                }
            )
            if e in pair_rows_needed:
                order = torch.argsort(torch.argsort(row))
                percentiles[e] = (order.float() / max(vocab - 1, 1) * 100).cpu().numpy()
                bottoms[e] = set(bot_idx[b].tolist())

    pair_rows = []
    for a, b in wanted_pairs:
        for x_, y_ in ((a, b), (b, a)):
            ix, iy = index[x_], index[y_]
            ids = own_ids[iy]
            pcts = percentiles[ix][ids] if ids.size else np.array([])
            pair_rows.append(
                {
                    "layer": layer, "vector": x_, "word_of": y_,
                    "word_tokens": int(ids.size),
                    "in_top_k_suppressed": bool(set(ids.tolist()) & bottoms[ix]),
                    "min_percentile": float(pcts.min()) if pcts.size else float("nan"),
                    "mean_percentile": float(pcts.mean()) if pcts.size else float("nan"),
                    "own_word_percentile": float(percentiles[ix][own_ids[ix]].max())
                    if own_ids[ix].size else float("nan"),
                }
            )
    tokens = pd.DataFrame(
        token_rows,
        columns=["layer", "emotion", "direction", "rank", "token_id", "token", "text", "logit",
                 "is_own_word"],
    )
    return LensResult(tokens, pd.DataFrame(summary_rows), pd.DataFrame(pair_rows))


def summarise(result: LensResult, top_k: int) -> dict:
    """Counts for the JSON summary: emotions whose own word is a token / is promoted in the
    top-k, and opposite pairs whose words are suppressed (each direction and both)."""
    s = result.summary
    p = result.pairs
    both = 0
    n_pairs = 0
    if len(p):
        keyed = {(r.vector, r.word_of): r.in_top_k_suppressed for r in p.itertuples()}
        seen = set()
        for (a, b) in keyed:
            if (b, a) in seen:
                continue
            seen.add((a, b))
            n_pairs += 1
            both += bool(keyed[(a, b)] and keyed.get((b, a), False))
    return {
        "top_k": top_k,
        "n_emotions": int(len(s)),
        "own_word_in_vocab": int(s["own_word_in_vocab"].sum()) if len(s) else 0,
        "own_word_promoted": int(s["own_word_promoted"].sum()) if len(s) else 0,
        "opposite_directions_checked": int(len(p)),
        "opposite_directions_suppressed": int(p["in_top_k_suppressed"].sum()) if len(p) else 0,
        "opposite_pairs": n_pairs,
        "opposite_pairs_mutually_suppressed": int(both),
        "opposite_median_min_percentile":
            float(np.nanmedian(p["min_percentile"])) if len(p) else None,
    }
