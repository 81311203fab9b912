"""The logit lens's two steps through the subject model's head, shared by the analysis's lens
(``analysis.logit_lens``) and the subject model's reads (``extraction.reading``): a direction,
scaled to a residual norm, through the final norm and the unembedding (``final_norm``,
``lens_logits``), and the vocabulary's tokens as plain text (``vocabulary``, ``normalise_token``:
SentencePiece ``▁`` and byte-level BPE ``Ġ`` markers read as spaces, stripped, lower-cased).
"""

from __future__ import annotations

import numpy as np


_MARKERS = {"\u2581": " ", "\u0120": " ", "\u010a": "\n", "\u0109": "\t"}


def normalise_token(token: str | None) -> str:
    """Token string -> plain text: ``▁``/``Ġ`` markers to spaces, stripped, lower-cased."""
    if token is None:
        return ""
    for marker, repl in _MARKERS.items():
        token = token.replace(marker, repl)
    return token.strip().lower()


def final_norm(model):
    """The final norm before the unembedding (``model.get_decoder().norm``)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    candidates = (decoder, getattr(decoder, "language_model", None), getattr(model, "model", None))
    for candidate in candidates:
        norm = getattr(candidate, "norm", None) if candidate is not None else None
        if norm is not None:
            return norm
    raise AttributeError(
        f"{type(model).__name__}: no final norm at model.get_decoder().norm; the logit lens "
        "supports Llama- and Gemma-style decoders."
    )


def vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[str]]:
    """Raw token strings and their normalised text for ids ``0..vocab_size-1``.

    The unembedding may have more rows than the tokenizer has tokens (padding rows): those get
    ``""``.
    """
    n = min(vocab_size, len(tokenizer))
    raw = [t if isinstance(t, str) else "" for t in tokenizer.convert_ids_to_tokens(list(range(n)))]
    raw += [""] * (vocab_size - n)
    return raw, [normalise_token(t) for t in raw]


def lens_logits(directions: np.ndarray, model, scale: float):
    """Logits ``(n, vocab)`` float32 torch tensor on the model's device for unit ``directions``
    ``(n, d)`` scaled to ``scale``, through the final norm and the unembedding."""
    import torch

    norm = final_norm(model)
    head = model.get_output_embeddings()
    param = next(norm.parameters(), None) if hasattr(norm, "parameters") else None
    ref = param if param is not None else head.weight
    x = torch.as_tensor(np.asarray(directions, dtype=np.float32) * float(scale))
    with torch.no_grad():
        h = norm(x.to(device=ref.device, dtype=ref.dtype)[:, None, :])[:, 0, :]
        logits = head(h.to(device=head.weight.device, dtype=head.weight.dtype))
    return logits.float()
