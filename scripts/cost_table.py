"""The full study's cost table: GPU-hours per stage and backend, model loads and their share,
disk per stage. Prints a Markdown table and the method behind every number.

    .venv/bin/python scripts/cost_table.py [--config config/full.yaml] [--gpu h100] [--json OUT]

Counts (texts, layers, widths, tokens to generate) come from the config, the emotion and topic
lists and the model's architecture. Rates are of three kinds, each labelled in the output:

- *measured on a GPU* (the extraction engine on an H100: ``scripts/gpu_bench_extract.py``,
  61,554 tokens/s through 6 real-width Gemma 4 blocks);
- *measured here* (bytes per story and per activation row of the default run; the CPU ratios of
  the generation backends, printed for reference);
- *roofline estimates* for what has not been measured on a GPU (decoding a 31B model): a decode
  step of a dense model reads every weight once, so at batch ``B`` it takes
  ``max(weight_bytes / bandwidth, 2 * params * B / flops)``; ``--efficiency-*`` (stated below,
  change them when you measure) say what share of that bound each backend reaches.

Pass ``--gen-tokens-per-s-hf``/``--gen-tokens-per-s-server`` with your own measurements to
replace the estimates.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# gemma-4-31B-it (SCIENCE.md): 60 blocks, hidden 5376, ~30.7 B parameters in bf16.
MODEL = {"name": "gemma-4-31B-it", "params": 30.7e9, "blocks": 60, "hidden": 5376, "bytes_per_param": 2}
GPUS = {  # dense bf16 tensor rate measured by gpu_bench_extract.py (H100) or datasheet; HBM bandwidth
    "h100": {"bf16_flops": 799e12, "flops_source": "measured (gpu_bench_extract.py)", "hbm": 3.35e12, "memory_gb": 80},
    "h200": {"bf16_flops": 799e12, "flops_source": "assumed = H100 (same compute die)", "hbm": 4.8e12, "memory_gb": 141},
}
# The engine on an H100: 61,554 tokens/s through 6 blocks of 0.49 B parameters (README).
ENGINE_TOKENS_PER_S_6_BLOCKS = 61_554


def load_counts(config_path: Path) -> dict:
    cfg = yaml.safe_load(config_path.read_text())
    emotions = [e for e in (REPO / "config" / "emotions.txt").read_text().splitlines() if e.strip()]
    topics = [t for t in (REPO / "config" / "topics.txt").read_text().splitlines() if t.strip()]
    n_em = len(emotions) if cfg.get("emotions") in (None, "all") else len(cfg["emotions"])
    n_top = len(topics) if cfg.get("n_topics") is None else int(cfg["n_topics"])
    st, ne, ex = cfg["stories"], cfg["neutral"], cfg["extraction"]
    from emotion_vectors.extraction.extract import default_layers  # the workflow's own rule

    layers = default_layers(MODEL["blocks"], ex.get("layer_step", 5)) if ex["layers"] == "auto" else list(ex["layers"])
    return {"emotions": n_em, "topics": n_top, "stories": n_em * n_top * st["per_topic"],
            "neutral": n_top * ne["per_topic"], "per_reply": st.get("per_reply", 1),
            "oversample": st.get("oversample", 1.0), "layers": layers, "deepest": max(layers),
            "storage_bytes": 4 if ex.get("storage_dtype", "float32") == "float32" else 2,
            "max_new_tokens": st["max_new_tokens"], "neutral_max_new_tokens": ne["max_new_tokens"],
            "jobs_story": n_em, "config": str(config_path)}


def decode_tokens_per_s(gpu: dict, batch: int, efficiency: float) -> float:
    """Roofline of a dense decode step at batch ``batch`` (module docstring), times ``efficiency``."""
    weight_bytes = MODEL["params"] * MODEL["bytes_per_param"]
    step = max(weight_bytes / gpu["hbm"], 2 * MODEL["params"] * batch / gpu["bf16_flops"])
    return efficiency * batch / step


def build(args: argparse.Namespace) -> dict:
    c = load_counts(Path(args.config))
    gpu = GPUS[args.gpu]
    texts = c["stories"] + c["neutral"]
    gen_tokens = (c["stories"] * args.story_tokens + c["neutral"] * args.neutral_tokens) * c["oversample"]
    prompt_tokens = (c["stories"] / c["per_reply"] + c["neutral"]) * args.prompt_tokens * c["oversample"]

    # Generation: in-process HF generate() (static batches, one load per story job) vs an
    # OpenAI-compatible server with continuous batching (one load for the run).
    hf_rate = args.gen_tokens_per_s_hf or decode_tokens_per_s(gpu, args.hf_batch, args.efficiency_hf)
    srv_rate = args.gen_tokens_per_s_server or decode_tokens_per_s(gpu, args.server_batch, args.efficiency_server)
    prefill_rate = gpu["bf16_flops"] * 0.45 / (2 * MODEL["params"])  # the engine's measured 45% of peak
    load_h = args.load_minutes / 60
    gen = {}
    for name, rate, loads, src in (
        ("HF in-process (generate(), batch %d)" % args.hf_batch, hf_rate, c["jobs_story"] + 1,
         "measured" if args.gen_tokens_per_s_hf else f"roofline x {args.efficiency_hf}"),
        ("OpenAI-compatible server (vLLM/SGLang, ~%d concurrent)" % args.server_batch, srv_rate, 1,
         "measured" if args.gen_tokens_per_s_server else f"roofline x {args.efficiency_server}"),
    ):
        work_h = gen_tokens / rate / 3600 + prompt_tokens / prefill_rate / 3600
        gen[name] = {"tokens_per_s": rate, "source": src, "work_gpu_h": work_h, "loads": loads,
                     "load_gpu_h": loads * load_h, "total_gpu_h": work_h + loads * load_h,
                     "load_share": loads * load_h / (work_h + loads * load_h)}

    # Extraction: the engine stops after the deepest stored block.
    per_block = ENGINE_TOKENS_PER_S_6_BLOCKS * 6
    ext_rate = per_block / (c["deepest"] + 1)
    ext_tokens = texts * args.read_tokens
    ext_work_h = ext_tokens / ext_rate / 3600
    ext = {"tokens_per_s": ext_rate, "work_gpu_h": ext_work_h, "loads": 1, "load_gpu_h": load_h,
           "total_gpu_h": ext_work_h + load_h, "load_share": load_h / (ext_work_h + load_h),
           "blocks_run": c["deepest"] + 1}

    # Disk (bytes measured on the default run, scaled).
    row = len(c["layers"]) * MODEL["hidden"] * c["storage_bytes"]
    story_bytes = args.story_overhead_bytes + args.chars_per_token * args.story_tokens
    neutral_bytes = args.story_overhead_bytes + args.chars_per_token * args.neutral_tokens
    disk = {
        "stories and neutral dialogues (JSON)": c["stories"] * story_bytes + c["neutral"] * neutral_bytes,
        "activation shards (Zarr)": texts * row * args.zarr_overhead,
        "activation partials while running (peak, one shard)": (c["stories"] / c["emotions"]) * row,
        "vectors (raw + denoised + units)": c["emotions"] * len(c["layers"]) * MODEL["hidden"] * 4 * 4,
        "model weights (bf16, cache)": MODEL["params"] * MODEL["bytes_per_param"],
    }
    return {"counts": c, "gpu": args.gpu, "gpu_spec": gpu, "generation": gen, "extraction": ext, "disk": disk,
            "assumptions": {k: getattr(args, k) for k in ("story_tokens", "neutral_tokens", "prompt_tokens",
                                                          "read_tokens", "load_minutes", "hf_batch", "server_batch",
                                                          "efficiency_hf", "efficiency_server", "story_overhead_bytes", "chars_per_token",
                                                          "zarr_overhead")}}


def gib(x: float) -> str:
    return f"{x / 2**30:,.1f} GiB"


def render(r: dict) -> str:
    c, out = r["counts"], []
    out.append(f"Full study ({c['config']}): {c['stories']:,} stories + {c['neutral']:,} neutral dialogues, "
               f"{len(c['layers'])} stored layers {c['layers']}, model {MODEL['name']}, GPU {r['gpu'].upper()}.\n")
    out.append("| stage | backend | rate (tokens/s per GPU) | rate source | GPU-hours of work | model loads | "
               "GPU-hours loading | load share | total GPU-hours |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for name, g in r["generation"].items():
        out.append(f"| generation | {name} | {g['tokens_per_s']:,.0f} | {g['source']} | {g['work_gpu_h']:,.1f} | "
                   f"{g['loads']} | {g['load_gpu_h']:,.1f} | {g['load_share']:.0%} | {g['total_gpu_h']:,.1f} |")
    e = r["extraction"]
    out.append(f"| extraction | engine, blocks 0-{e['blocks_run'] - 1} | {e['tokens_per_s']:,.0f} | measured on an "
               f"H100 (6 real-width blocks), scaled by blocks | {e['work_gpu_h']:,.1f} | 1 (model server) | "
               f"{e['load_gpu_h']:,.2f} | {e['load_share']:.1%} | {e['total_gpu_h']:,.1f} |")
    out.append("\n| stage | disk |")
    out.append("|---|---|")
    for k, v in r["disk"].items():
        out.append(f"| {k} | {gib(v)} |")
    a = r["assumptions"]
    out.append(
        "\nMethod: generated tokens = stories x {story_tokens} + neutral x {neutral_tokens} (x oversample); "
        "prompt tokens = requests x {prompt_tokens}; extraction reads {read_tokens} tokens per text. Decode "
        "roofline per step = max(weights / HBM bandwidth, 2 x params x batch / bf16 rate); HF generate() at "
        "batch {hf_batch} reaches {efficiency_hf:.0%} of it, a continuous-batching server at ~{server_batch} "
        "sequences {efficiency_server:.0%} (assumptions, not GPU measurements). Prefill and extraction at the "
        "engine's measured 45% of the bf16 rate. A model load = {load_minutes} min (62 GB from local NVMe; "
        "not measured). Disk: a story's JSON = {story_overhead_bytes} bytes of record (measured on the default run) + {chars_per_token} characters per token of text; activation "
        "rows = layers x hidden x storage bytes x {zarr_overhead} (Zarr overhead measured on the default run)."
        .format(**a))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "config" / "full.yaml"))
    ap.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    ap.add_argument("--story-tokens", type=float, default=400, help="mean generated tokens per story")
    ap.add_argument("--neutral-tokens", type=float, default=600, help="mean generated tokens per neutral dialogue")
    ap.add_argument("--prompt-tokens", type=float, default=300, help="prompt tokens per generation request")
    ap.add_argument("--read-tokens", type=float, default=450, help="tokens per text read by extraction (chat template included)")
    ap.add_argument("--load-minutes", type=float, default=2.0)
    ap.add_argument("--hf-batch", type=int, default=64)
    ap.add_argument("--server-batch", type=int, default=256)
    ap.add_argument("--efficiency-hf", type=float, default=0.35)
    ap.add_argument("--efficiency-server", type=float, default=0.6)
    ap.add_argument("--gen-tokens-per-s-hf", type=float, help="measured HF generate() rate (replaces the estimate)")
    ap.add_argument("--gen-tokens-per-s-server", type=float, help="measured server rate (replaces the estimate)")
    ap.add_argument("--story-overhead-bytes", type=float, default=667, help="JSON bytes per story besides its text (default run: 667)")
    ap.add_argument("--chars-per-token", type=float, default=4.3, help="characters of English text per token")
    ap.add_argument("--zarr-overhead", type=float, default=1.02)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)
    r = build(args)
    print(render(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1, default=float))
    assert all(math.isfinite(g["total_gpu_h"]) for g in r["generation"].values())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
