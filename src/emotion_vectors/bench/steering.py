"""Benchmark: what many steering directions cost, one at a time vs many per forward pass.

``python -m emotion_vectors.bench steering [--few 10] [--many 200] [--what both]``

Two workloads of the steering evidence on the default subject, each run three ways:

- **continuation**: the log-probability of every run emotion's word after the continuation
  test's three prompts, under each direction (``steering.evaluate.steered_word_logprobs``);
- **generation**: one sampled reply of ``--new-tokens`` tokens to a chat prompt under each
  direction (top-k 50, top-p 0.95, temperature 0.8; every reply runs its full length).

``one at a time`` is how the evidence was computed before the per-row hook: a ``steering``
context per direction and the prompts batched under it, ``generate()`` for the replies (``--few``
directions). ``batched`` is the workflow's path: one direction per sequence
(``steer.steering_rows``) with the prompt's part below the steered block computed once
(``broadcast``), ``--batch-size`` directions per pass, the replies drawn by ``steer.sample_rows``,
for ``--few`` and for ``--many`` directions. Directions are uniform random at the main layer with the
layer's residual norm of the default run (``--unit-norm``), strength ``--strength``.

Prints seconds per workload and way, and the ratio of ``--many`` batched to ``--few`` one at a
time (the target: at most 3). Report the machine's load beside the figures (it is printed).
"""

from __future__ import annotations

import argparse
import os
import time


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux
        return "unknown"


def _gflops() -> float:
    """This process's float32 matmul rate (GFLOP/s) right now: what the machine gives it."""
    import torch

    a, w = torch.randn(1024, 576), torch.randn(576, 1536)
    a @ w
    t = time.perf_counter()
    for _ in range(10):
        a @ w
    return 10 * 2 * 1024 * 576 * 1536 / (time.perf_counter() - t) / 1e9


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m emotion_vectors.bench steering",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--few", type=int, default=10)
    ap.add_argument("--many", type=int, default=200)
    ap.add_argument("--what", choices=["continuation", "generation", "both"], default="both")
    ap.add_argument("--layer", type=int, default=19, help="steered block (SmolLM2's main layer: 19)")
    ap.add_argument("--unit-norm", type=float, default=224.0,
                    help="residual norm of the layer (the default run's block 19: 224)")
    ap.add_argument("--strength", type=float, default=0.2)
    ap.add_argument("--batch-size", type=int, default=None, help="directions per pass (default: steering.batch_size)")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)

    from pathlib import Path

    import numpy as np
    import torch

    from ..core.config import load_config
    from ..core.models import load_model, prepare_gguf_model, resolve_path
    from ..steering.steer import Steer, sample_rows, steering
    from ..steering.evaluate import render_chat, steered_word_logprobs, word_logprobs

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    spec = cfg["models"]["subject"]
    if spec.get("gguf") and not Path(resolve_path(spec)).exists():
        prepare_gguf_model(spec, resolve_path(spec))
    lm = load_model(spec)
    model, tok = lm.model, lm.tokenizer
    batch = args.batch_size or int(cfg["steering"]["batch_size"])
    d = model.get_input_embeddings().weight.shape[1]
    rng = np.random.default_rng(0)
    dirs = [rng.standard_normal(d) for _ in range(max(args.few, args.many))]

    def rows(n: int) -> list[list[Steer]]:
        return [[Steer(args.layer, dirs[i], args.strength, args.unit_norm)] for i in range(n)]

    print(f"steering bench: {lm.info['name']} ({lm.info['device']}), layer {args.layer}, strength "
          f"{args.strength} x {args.unit_norm}, {torch.get_num_threads()} threads, {batch} directions per pass; "
          f"load average {_load()}; matmul rate {_gflops():.0f} GFLOP/s")
    results = {}
    if args.what in ("continuation", "both"):
        prompts = cfg["steering"]["continuation"]["prompts"]
        words = list(cfg["emotion_list"])
        word_logprobs(model, tok, prompts[:1], words[:2])  # warm-up
        t0 = time.perf_counter()
        for r in rows(args.few):
            with steering(model, r):
                word_logprobs(model, tok, prompts, words)
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        steered_word_logprobs(model, tok, prompts, words, rows(args.few), batch_size=batch)
        few = time.perf_counter() - t0
        t0 = time.perf_counter()
        steered_word_logprobs(model, tok, prompts, words, rows(args.many), batch_size=batch)
        many = time.perf_counter() - t0
        results["continuation"] = (one, few, many)
        print(f"continuation ({len(prompts)} prompts x {len(words)} words): {args.few} one at a time {one:.1f} s; "
              f"batched {args.few} {few:.1f} s, {args.many} {many:.1f} s; "
              f"{args.many} batched / {args.few} one at a time = {many / one:.2f} (target <= 3)")
    if args.what in ("generation", "both"):
        prompt = render_chat(tok, "Tell me about your morning.")
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=True, temperature=0.8,
                  top_p=0.95, top_k=50, pad_token_id=tok.pad_token_id)
        enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
        t0 = time.perf_counter()
        for i, r in enumerate(rows(args.few)):
            torch.manual_seed(i)
            with torch.inference_mode(), steering(model, r):
                model.generate(**enc, **kw)
        one = time.perf_counter() - t0

        from ..corpus.backends import _eos_ids

        eos = sorted(_eos_ids(model, tok))

        def batched(n: int) -> float:
            t = time.perf_counter()
            all_rows = rows(n)
            for start in range(0, n, batch):
                chunk = all_rows[start : start + batch]
                sample_rows(model, [ids] * len(chunk), chunk, max_new_tokens=args.new_tokens, temperature=0.8,
                            top_k=50, top_p=0.95, seed=start, pad_token_id=tok.pad_token_id, eos_token_ids=[])
            return time.perf_counter() - t

        few, many = batched(args.few), batched(args.many)
        results["generation"] = (one, few, many)
        print(f"generation ({len(ids)}-token chat prompt, {args.new_tokens} new tokens): {args.few} one at a time "
              f"{one:.1f} s; batched {args.few} {few:.1f} s, {args.many} {many:.1f} s; "
              f"{args.many} batched / {args.few} one at a time = {many / one:.2f} (target <= 3)")
    print(f"load average at the end {_load()}; matmul rate now {_gflops():.0f} GFLOP/s "
          f"(a 2-thread float32 matmul: the machine's speed for these figures)")
    return 0 if all(m / o <= 3 for o, _, m in results.values()) else 1
