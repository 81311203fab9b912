"""Command line: ``python -m emotion_vectors.analysis VECTORS_ZARR OUT_DIR [options]``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .run import analyze
from .store import KINDS, load_vectors


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the analysis command."""
    p = argparse.ArgumentParser(
        prog="python -m emotion_vectors.analysis",
        description="Per-layer geometry of emotion vectors: PCA, human ratings, clustering, "
        "layer agreement, logit lens; writes tables, figures and summary.json to OUT_DIR.",
    )
    p.add_argument("vectors", help="vector store (results/<run>/vectors/vectors.zarr)")
    p.add_argument("out_dir", help="output directory")
    p.add_argument("--kind", default="denoised", choices=KINDS)
    p.add_argument("--k-clusters", type=int, default=15, help="fixed cut (default 15)")
    p.add_argument("--k-range", type=int, nargs=2, default=(4, 20), metavar=("MIN", "MAX"),
                   help="silhouette search range, inclusive (default 4 20)")
    p.add_argument("--linkage", default="ward", choices=("ward", "average", "complete"))
    p.add_argument("--n-bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--main-layer", type=int, default=None,
                   help="block index for figures and logit lens (default: ~2/3 of depth)")
    p.add_argument("--n-model-layers", type=int, default=None,
                   help="decoder blocks of the subject model, for the default main layer")
    p.add_argument("--logit-lens", action="store_true",
                   help="read the subject model's final norm and unembedding "
                   "(provenance.subject_model.path, or --model) and run the logit lens at the "
                   "main layer")
    p.add_argument("--model", default=None, help="model path or hub id for the logit lens")
    p.add_argument("--top-k-tokens", type=int, default=20)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``analyze`` from the command line; prints the output directory's summary path."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    model = tokenizer = None
    vectors = args.vectors
    if args.logit_lens:
        from .logit_lens import load_lens

        if not args.model:
            vectors = load_vectors(args.vectors)  # opened once, analysed below
        path = args.model or vectors.subject_model_path
        if not path:
            print("--logit-lens: the store records no subject model path; pass --model PATH",
                  file=sys.stderr)
            return 2
        # Reads only the final norm and the unembedding from the checkpoint.
        model, tokenizer = load_lens({"name": "subject", "path": path})
    summary = analyze(
        vectors, args.out_dir, kind=args.kind, k_clusters=args.k_clusters,
        k_range=tuple(args.k_range), n_bootstrap=args.n_bootstrap, seed=args.seed,
        model=model, tokenizer=tokenizer, main_layer=args.main_layer, linkage=args.linkage,
        top_k_tokens=args.top_k_tokens, n_model_layers=args.n_model_layers,
    )
    print(json.dumps({"out_dir": args.out_dir, "main_layer": summary["main_layer"],
                      "timings_s": summary["timings_s"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
