"""Token-level view of an emotion score: each token's projection on an emotion's direction.

A text's score (``emotion_vectors.reading.score``) is the mean, over its pooled tokens, of the residual
stream at one layer projected on an emotion's unit vector. :func:`token_projections` gives the
terms of that mean: one projection per token, read at the same layer (block ``layer``'s output,
0-based, by a forward hook on that block, the store's convention; equal to
``output_hidden_states[layer + 1]`` for every block but the last). :func:`highlight_html` renders
texts as a self-contained HTML page, each token a ``<span>`` coloured by its projection.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from emotion_vectors.extraction.extract import _block_hidden

from emotion_vectors.core.models import decoder_layers


class _Stop(Exception):
    """Raised by the hook to end the forward pass after the wanted block."""


@dataclass
class TokenProjections:
    """Per-token projections of one text at one layer.

    Attributes:
        text: the text as read.
        token_ids: the token ids (``add_special_tokens`` as asked).
        pieces: for each token, the part of ``text`` it covers, such that ``"".join(pieces)``
            is ``text`` (gaps between offsets go to the next token; special tokens and tokens
            sharing a character with the previous one get ``""``).
        tokens: the tokenizer's own token strings (``convert_ids_to_tokens``).
        projections: ``(n_tokens,)`` float64: ``h_t . vector / |vector|``.
        layer: the block whose output was read.
    """

    text: str
    token_ids: list[int]
    pieces: list[str]
    tokens: list[str]
    projections: np.ndarray
    layer: int
    norms: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.token_ids)




def _pieces(text: str, offsets: Sequence[Sequence[int]] | None, n: int) -> list[str]:
    """Text pieces per token from character offsets; they concatenate back to ``text``."""
    if offsets is None:
        return [""] * n
    pieces: list[str] = []
    prev = 0
    for start, end in offsets:
        start, end = int(start), int(end)
        if end <= prev:
            pieces.append("")
            continue
        pieces.append(text[prev:end])
        prev = end
    if prev < len(text) and pieces:
        # trailing characters no token covers (should not happen with a fast tokenizer)
        pieces[-1] += text[prev:]
    return pieces


@torch.no_grad()
def token_projections(
    model: Any,
    tokenizer: Any,
    text: str,
    vector: np.ndarray | torch.Tensor,
    layer: int,
    *,
    add_special_tokens: bool = True,
    max_tokens: int | None = None,
) -> TokenProjections:
    """Each token's residual-stream activation at ``layer`` projected on ``vector``'s direction.

    Args:
        model, tokenizer: the subject model (any device/dtype) and its tokenizer.
        text: one text, tokenised as the scorer does (``add_special_tokens=True``).
        vector: ``(d,)``, e.g. an emotion's unit vector at that layer; it is normalised here.
        layer: 0-based decoder block whose output is read (the store's layer convention).
        max_tokens: read at most this many tokens (the rest are dropped).

    Returns:
        :class:`TokenProjections` (projections in float64, computed in float32 on the device
        from the model-dtype activations, then promoted).
    """
    blocks = decoder_layers(model)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} is not a decoder block (0..{len(blocks) - 1})")
    vec = torch.as_tensor(np.asarray(vector, dtype=np.float64))
    norm = float(torch.linalg.vector_norm(vec))
    if vec.ndim != 1 or not math.isfinite(norm) or norm == 0:
        raise ValueError("vector must be a finite, non-zero 1-d array")
    try:
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        enc = tokenizer(text, add_special_tokens=add_special_tokens)
        offsets = None
    ids = list(enc["input_ids"])
    if max_tokens is not None:
        ids = ids[:max_tokens]
        offsets = offsets[:max_tokens] if offsets is not None else None
    if not ids:
        raise ValueError("the text encodes to no tokens")
    try:
        device = model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        device = next(model.parameters()).device
    captured: dict[str, torch.Tensor] = {}

    def hook(module: Any, args: Any, output: Any) -> None:
        captured["h"] = _block_hidden(output)[0].detach().to(torch.float32)
        raise _Stop

    handle = blocks[layer].register_forward_hook(hook)
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    try:
        model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "h" not in captured:
        raise RuntimeError(f"decoder block {layer} did not run in {type(model).__name__}'s forward")
    h = captured["h"]  # (T, d) float32
    if h.shape[-1] != vec.shape[0]:
        raise ValueError(f"vector width {vec.shape[0]} differs from the model's hidden size {h.shape[-1]}")
    unit = (vec / norm).to(device=h.device, dtype=torch.float32)
    proj = (h @ unit).double().cpu().numpy()
    norms = torch.linalg.vector_norm(h, dim=-1).double().cpu().numpy()
    return TokenProjections(
        text=text, token_ids=ids, pieces=_pieces(text, offsets, len(ids)),
        tokens=list(tokenizer.convert_ids_to_tokens(ids)), projections=proj, layer=layer,
        norms=norms,
    )


# --------------------------------------------------------------------------- HTML


def _colour(value: float, scale: float) -> str:
    """Diverging colour: blue (negative) - white (0) - red (positive), saturating at +-scale."""
    if not math.isfinite(value):
        return "#dddddd"
    t = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    if t >= 0:  # white -> red (#d73027)
        r, g, b = 255 + t * (215 - 255), 255 + t * (48 - 255), 255 + t * (39 - 255)
    else:  # white -> blue (#4575b4)
        t = -t
        r, g, b = 255 + t * (69 - 255), 255 + t * (117 - 255), 255 + t * (180 - 255)
    return f"#{int(round(r)):02x}{int(round(g)):02x}{int(round(b)):02x}"


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60em; margin: 2em auto; line-height: 1.6; }
.text { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 0.9em;
        border: 1px solid #ccc; padding: 0.6em; margin: 0.4em 0 1.4em 0; }
.tok { border-radius: 2px; }
.tok.unpooled { outline: 1px dashed #999; }
.legend { display: flex; align-items: center; gap: 0.5em; margin: 1em 0; }
.bar { width: 16em; height: 1em; border: 1px solid #999;
       background: linear-gradient(to right, #4575b4, #ffffff, #d73027); }
.meta { color: #555; font-size: 0.9em; }
"""


def highlight_html(
    items: Sequence[Mapping[str, Any]],
    *,
    title: str,
    scale: float = 3.0,
    intro: str = "",
) -> str:
    """A self-contained HTML page: each item a text whose tokens are coloured by value.

    Each item: ``emotion``, ``text_id``, ``pieces`` (text per token), ``values`` (one float per
    token, the colour), ``tokens`` (shown on hover), and optionally ``pooled`` (bools: tokens
    outside the pooling window are grey with a dashed outline), ``score`` (the text's score) and
    ``heading`` (extra words). Every string is HTML-escaped. Colours saturate at ``+-scale``.
    """
    esc = html.escape
    out = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{esc(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<h1>{esc(title)}</h1>",
    ]
    if intro:
        out.append(f"<p>{esc(intro)}</p>")
    out.append(
        '<div class="legend"><span>&minus;' + f"{scale:g}" + '</span><span class="bar"></span><span>+'
        + f"{scale:g}" + "</span><span>(blue: below the reference, red: above; dashed outline: "
        "token outside the pooling window, grey and not counted in the score)</span></div>"
    )
    current = None
    for item in items:
        emotion = str(item["emotion"])
        if emotion != current:
            out.append(f'<h2 class="emotion">{esc(emotion)}</h2>')
            current = emotion
        pieces = list(item["pieces"])
        values = [float(v) for v in item["values"]]
        tokens = list(item.get("tokens") or [""] * len(pieces))
        pooled = list(item.get("pooled") or [True] * len(pieces))
        head = f"text {esc(str(item['text_id']))}"
        if item.get("score") is not None and math.isfinite(float(item["score"])):
            head += f" &middot; score {float(item['score']):.2f}"
        if item.get("heading"):
            head += f" &middot; {esc(str(item['heading']))}"
        out.append(f'<p class="meta" data-emotion="{esc(emotion)}" '
                   f'data-text-id="{esc(str(item["text_id"]))}">{esc(emotion)}: {head}</p>')
        spans = []
        for piece, value, tok, inside in zip(pieces, values, tokens, pooled):
            cls = "tok" if inside else "tok unpooled"
            tip = f"{tok} {value:+.2f}" + ("" if inside else " (not pooled)")
            colour = _colour(value, scale) if inside else "#eeeeee"
            spans.append(f'<span class="{cls}" style="background:{colour}" '
                         f'title="{esc(tip)}">{esc(piece)}</span>')
        out.append('<div class="text">' + "".join(spans) + "</div>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


__all__ = ["TokenProjections", "highlight_html", "token_projections"]
