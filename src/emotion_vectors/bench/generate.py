"""Benchmark: batched vs one-at-a-time story generation on the default model.

``python -m emotion_vectors.bench generate [--batch-size 16] [--new-tokens 96]``

Both ways generate the same story prompts (the run's real prompt template, 16 emotion/topic
pairs) with exactly ``--new-tokens`` new tokens each (``min_new_tokens = max_new_tokens``, so
output length is equal), using the code path of the workflow (``generate_batch``). Prints
tokens per second for each and their ratio (target: >= 3x on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import time

from ..core.config import load_config
from ..corpus.generate import chat_prompt, load_prompts
from ..core.models import load_model, prepare_gguf_model, resolve_path


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m emotion_vectors.bench generate", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)

    import torch
    from pathlib import Path

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    spec = cfg["models"]["generator"]
    if spec.get("gguf") and not Path(resolve_path(spec)).exists():
        prepare_gguf_model(spec, resolve_path(spec))
    lm = load_model(spec)
    tok, model = lm.tokenizer, lm.model
    prompts_cfg = load_prompts(cfg["prompts_dir"], "story")
    emotions, topics = cfg["emotion_list"], cfg["topic_list"]
    prompts = [
        chat_prompt(
            tok,
            prompts_cfg.get("system"),
            prompts_cfg["user_one"].format(
                emotion=emotions[i % len(emotions)], topic=topics[i % len(topics)], n=1, person="third-person"
            ),
        )
        for i in range(args.batch_size)
    ]

    def run(batch: list[str]) -> int:
        enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(0)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=True,
                temperature=0.9,
                top_p=0.95,
                pad_token_id=tok.pad_token_id,
            )
        return (out.shape[1] - enc["input_ids"].shape[1]) * len(batch)

    run(prompts[:2])  # warm-up
    t0 = time.perf_counter()
    single_tokens = sum(run([p]) for p in prompts)
    single_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched_tokens = run(prompts)
    batched_s = time.perf_counter() - t0
    single_tps = single_tokens / single_s
    batched_tps = batched_tokens / batched_s
    print(f"model={lm.info['name']} threads={torch.get_num_threads()} prompts={len(prompts)} new_tokens_each={args.new_tokens}")
    print(f"one_at_a_time: {single_tokens} tokens in {single_s:.1f} s = {single_tps:.1f} tokens/s")
    print(f"batched(bs={args.batch_size}): {batched_tokens} tokens in {batched_s:.1f} s = {batched_tps:.1f} tokens/s")
    print(f"batched_tokens_per_s={batched_tps:.1f} single_tokens_per_s={single_tps:.1f} speedup={batched_tps / single_tps:.2f}")
    return 0
