"""Command line of the subject-model server (started on demand by the activation jobs).

``python -m emotion_vectors.serve_subject ADDRESS_FILE --subject JSON --extraction JSON
[--models-dir DIR] [--threads N] [--idle-timeout S]``

Loads the subject model once and writes every activation shard the per-emotion jobs ask for,
then exits after ``--idle-timeout`` seconds without a request (see ``emotion_vectors.service``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .extract import default_layers, validate_layers
from .models import decoder_layers, load_model
from .provenance import provenance
from .service import serve
from .shards import write_shard


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emotion_vectors.serve_subject", description=__doc__.splitlines()[0])
    ap.add_argument("address_file")
    ap.add_argument("--subject", required=True, help="model spec as JSON (config models.subject)")
    ap.add_argument("--extraction", required=True, help="config extraction section as JSON")
    ap.add_argument("--models-dir", default="results/models")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--idle-timeout", type=float, default=300.0, help="exit after this many idle seconds")
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("emotion_vectors.subject_server")
    spec = json.loads(args.subject)
    settings = json.loads(args.extraction)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    def make_handler():
        lm = load_model(spec, args.models_dir, padding_side="left")
        n_blocks = len(decoder_layers(lm.model))
        layers = (
            default_layers(n_blocks, settings["layer_step"])
            if settings["layers"] == "auto"
            else validate_layers(settings["layers"], n_blocks)
        )
        log.info("subject %s loaded in %.1f s; %d blocks; layers %s", lm.info["name"], lm.info["load_seconds"], n_blocks, layers)

        def handle(req: dict) -> dict:
            summary = write_shard(
                lm.model,
                lm.tokenizer,
                req["texts"],
                req["ids"],
                layers,
                req["output"],
                settings,
                name=req["name"],
                model_info=lm.info,
                attrs={
                    "num_hidden_layers": n_blocks,
                    "provenance": provenance(
                        stage="activations",
                        config_section=settings,
                        extra={"texts_file": req["texts_file"], "texts_provenance": req.get("texts_provenance")},
                    )
                },
                log=log.info,
            )
            summary["model_load_seconds"] = lm.info["load_seconds"]
            log.info("%s", summary)
            return summary

        return handle

    serve(args.address_file, make_handler, idle_timeout=args.idle_timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
