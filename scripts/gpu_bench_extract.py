#!/usr/bin/env python
"""GPU throughput of the extraction engine on a real-width Gemma 4 text stack.

Builds a few blocks of a Gemma 4 31B-shaped text stack with random bfloat16 weights (no
checkpoint needed), runs :func:`emotion_vectors.extraction.extract.iter_pooled` over random token-id
texts of 150-400 tokens for every block, and reports achieved TFLOP/s against the card's
measured bfloat16 matrix-multiply rate.

Geometry (inferred, not read from the checkpoint; every value is a flag): hidden 5376,
intermediate 21504, 32 query heads; sliding layers: 16 KV heads of dim 256, window 1024;
global layers (every 6th, and the last): 4 KV heads of dim 512 with keys shared as values
(``attention_k_eq_v``), no per-layer inputs. 60 such blocks plus a 262,144 x 5376 embedding
come to about 31 B parameters, which is what the name says.

FLOPs counted (useful work only; padding and masked-out attention are not counted):

    matmul    = 2 * W * N        W: weights of the nn.Linear layers in the blocks that run,
                                 N: real (unpadded) tokens
    attention = sum over blocks and texts of 4 * H * d_head * P(n, w)
                H query heads, d_head the block's head dim, P(n, w) = sum_{i<n} min(i + 1, w)
                query-key pairs of a causal (sliding-window w) text of n tokens
                (QK^T and AV each 2 * H * d_head FLOPs per pair)

Peak: the best of a few bfloat16 ``torch.matmul`` of 8192 x 8192 matrices.

Usage: ``python scripts/gpu_bench_extract.py`` on a CUDA machine (about 1-2 minutes);
``python scripts/gpu_bench_extract.py --device cpu --tiny`` is a seconds-long smoke test.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import torch


class IdTokenizer:
    """Tokenizer stand-in for texts that are space-separated token ids ("12 7 993 ...").

    Implements what the engine uses: ``__call__(texts, add_special_tokens=True)`` returning
    ``{"input_ids": list[list[int]]}``, ``padding_side``, ``pad_token_id``, ``eos_token_id``.
    """

    def __init__(self, pad_token_id: int = 0, padding_side: str = "left") -> None:
        self.pad_token_id = pad_token_id
        self.eos_token_id = 1
        self.padding_side = padding_side

    def __call__(self, texts: list[str] | str, add_special_tokens: bool = True, **_: Any) -> dict[str, Any]:
        if isinstance(texts, str):
            return {"input_ids": [int(x) for x in texts.split()]}
        return {"input_ids": [[int(x) for x in t.split()] for t in texts]}


def build_config(args: argparse.Namespace) -> Any:
    from transformers import Gemma4TextConfig

    if args.tiny:
        dims = dict(hidden_size=64, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=16, global_head_dim=32, num_global_key_value_heads=1, sliding_window=128)
    else:
        dims = dict(hidden_size=args.hidden, intermediate_size=args.intermediate,
                    num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                    head_dim=args.head_dim, global_head_dim=args.global_head_dim,
                    num_global_key_value_heads=args.global_kv_heads, sliding_window=args.window)
    n = args.layers
    layer_types = ["full_attention" if (i + 1) % 6 == 0 or i == n - 1 else "sliding_attention" for i in range(n)]
    return Gemma4TextConfig(
        vocab_size=args.vocab, vocab_size_per_layer_input=args.vocab, hidden_size_per_layer_input=0,
        num_hidden_layers=n, layer_types=layer_types, attention_k_eq_v=True,
        max_position_embeddings=4096, pad_token_id=0, bos_token_id=2, eos_token_id=1, **dims,
    )


def attention_flops(config: Any, lengths: np.ndarray, n_blocks: int) -> float:
    """Useful attention FLOPs for ``n_blocks`` blocks over texts of the given lengths."""
    total = 0.0
    n = lengths.astype(np.float64)
    for i in range(n_blocks):
        d = _layer_head_dim(config, i)
        if config.layer_types[i] == "full_attention":
            pairs = n * (n + 1) / 2
        else:
            w = float(config.sliding_window)
            capped = np.minimum(n, w)
            pairs = capped * (capped + 1) / 2 + np.maximum(n - w, 0) * w
        total += float((4 * config.num_attention_heads * d * pairs).sum())
    return total


def _layer_head_dim(config: Any, i: int) -> int:
    per_layer = getattr(config, "per_layer_config", None)
    try:
        return int(per_layer[i].head_dim)
    except (TypeError, KeyError, AttributeError, IndexError):
        return int(config.head_dim)


def matmul_peak(device: torch.device, size: int, repeats: int = 10) -> float:
    """Best measured bf16 matmul rate, FLOP/s."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - start) / 5)
    return 2 * size**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny widths (smoke test, e.g. on a CPU)")
    p.add_argument("--layers", type=int, default=6, help="blocks to build (all are pooled)")
    p.add_argument("--hidden", type=int, default=5376)
    p.add_argument("--intermediate", type=int, default=21504)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=256)
    p.add_argument("--global-head-dim", type=int, default=512)
    p.add_argument("--global-kv-heads", type=int, default=4)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--n-texts", type=int, default=None, help="default 2048 (--tiny: 24)")
    p.add_argument("--min-len", type=int, default=150)
    p.add_argument("--max-len", type=int, default=400)
    p.add_argument("--max-batch-tokens", type=int, nargs="+", default=None,
                   help="engine token caps to try (default 8192 16384 32768; --tiny: 2048)")
    p.add_argument("--batch-size", type=int, default=0, help="engine batch-size cap, 0 = none")
    p.add_argument("--pool-start", type=int, default=50)
    p.add_argument("--matmul-size", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--naive", type=int, default=256,
                   help="also time a plain batch-1 output_hidden_states pass on this many texts (0: skip)")
    args = p.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_bench_extract: no CUDA device is available on this machine; this script measures "
              "the engine on a GPU. For a quick CPU smoke test run:\n"
              "    python scripts/gpu_bench_extract.py --device cpu --tiny", file=sys.stderr)
        return 2
    from transformers import Gemma4ForCausalLM

    from emotion_vectors.extraction.extract import iter_pooled

    device = torch.device(args.device)
    n_texts = args.n_texts or (24 if args.tiny else 2048)
    caps = args.max_batch_tokens or ([2048] if args.tiny else [8192, 16384, 32768])
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()

    config = build_config(args)
    with torch.device(device):
        model = Gemma4ForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.eval().requires_grad_(False)
    blocks = model.get_decoder().layers
    linear_weights = sum(m.weight.numel() for m in blocks.modules() if isinstance(m, torch.nn.Linear))
    block_params = sum(p.numel() for p in blocks.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; built in {time.perf_counter() - started:.1f} s")
    print(f"stack: {args.layers} Gemma 4 text blocks, hidden {config.hidden_size}, intermediate "
          f"{config.intermediate_size}, {config.num_attention_heads} heads, layer types {config.layer_types}, "
          f"window {config.sliding_window}; block params {block_params / 1e9:.3f} B "
          f"(nn.Linear weights {linear_weights / 1e9:.3f} B), bfloat16")

    lengths = rng.integers(args.min_len, args.max_len + 1, size=n_texts)
    texts = [" ".join(map(str, rng.integers(3, args.vocab, size=n))) for n in lengths]
    tokenizer = IdTokenizer()
    layers = list(range(args.layers))
    tokens = int(lengths.sum())
    flops = 2.0 * linear_weights * tokens + attention_flops(config, lengths, args.layers)
    print(f"texts: {n_texts}, {args.min_len}-{args.max_len} tokens (random ids), {tokens} tokens; "
          f"pooling all {len(layers)} blocks from token {args.pool_start}")
    print(f"work: {flops / 1e12:.2f} TFLOP per pass = 2 * {linear_weights / 1e9:.3f} B * {tokens} tokens "
          f"+ attention {attention_flops(config, lengths, args.layers) / 1e12:.3f} TFLOP")

    peak = matmul_peak(device, 1024 if args.tiny else args.matmul_size)
    print(f"measured bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s "
          f"({'1024' if args.tiny else args.matmul_size}^3 torch.matmul)")

    # Warm-up: a few batches at each cap.
    for cap in caps:
        list(iter_pooled(model, tokenizer, texts[: max(4, n_texts // 32)], None, layers,
                         pool_start=args.pool_start, batch_size=args.batch_size or None, max_batch_tokens=cap))
    best = 0.0
    for cap in caps:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        n_done = 0
        for batch in iter_pooled(model, tokenizer, texts, None, layers, pool_start=args.pool_start,
                                 batch_size=args.batch_size or None, max_batch_tokens=cap):
            n_done += len(batch.indices)
        _sync(device)
        seconds = time.perf_counter() - start
        rate = flops / seconds
        best = max(best, rate)
        mem = (f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
               if device.type == "cuda" else "")
        print(f"engine max_batch_tokens={cap:6d}: {seconds:6.2f} s, {tokens / seconds:9.0f} tok/s, "
              f"{rate / 1e12:7.2f} TFLOP/s = {100 * rate / peak:5.1f}% of the matmul peak{mem}")
        assert n_done == n_texts
    print(f"best: {best / 1e12:.2f} TFLOP/s = {100 * best / peak:.1f}% of the measured bf16 matmul peak "
          f"({peak / 1e12:.1f} TFLOP/s)")
    if args.naive:
        # The plain way: one text at a time, output_hidden_states, pool on the device. (The real
        # model would also pay its 262k-entry LM head here; this stack's vocab is --vocab.)
        sub = lengths[: args.naive]
        ids = [torch.tensor([[int(x) for x in t.split()]], device=device) for t in texts[: args.naive]]
        with torch.inference_mode():
            for x in ids[:4]:
                model(input_ids=x, output_hidden_states=True)
            _sync(device)
            start = time.perf_counter()
            for x in ids:
                hs = model(input_ids=x, output_hidden_states=True).hidden_states
                _ = [h[0, args.pool_start:].float().mean(0) for h in hs[1:]]
            _sync(device)
        naive_s = time.perf_counter() - start
        naive_rate = int(sub.sum()) / naive_s
        engine_rate = tokens * best / flops
        print(f"naive batch-1 output_hidden_states on {len(ids)} texts: {naive_rate:9.0f} tok/s; "
              f"engine/naive = {engine_rate / naive_rate:.1f}x")
    print(f"total wall {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
