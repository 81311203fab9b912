"""The subject-model server (``extract`` requests) and the activation jobs' side of it.

Server: ``python -m emotion_vectors.serve_subject ADDRESS_FILE --subject JSON --extraction JSON
--root DIR [--models-dir DIR] [--threads N] [--idle-timeout S] [--handshake-timeout S]
[--expect-identity HASH]`` loads the subject model once and writes every activation shard the
per-emotion jobs ask for, inside ``--root`` only (see ``emotion_vectors.service``).

Client: ``extract_shard(...)`` (what ``workflow/scripts/activations.py`` calls) starts or
reuses the server, has it write the shard to ``<output>.staged-<pid>``, and renames that into
``<output>`` itself, so a cancelled job never gets an output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .service import (
    Request,
    ServiceError,
    address_name,
    call,
    private_dir,
    publish,
    python_command,
    remove_staged,
    serve,
    server_identity,
    source_hash,
    staged_path,
)

log = logging.getLogger("emotion_vectors.subject_server")


def identity_parts(subject: dict, extraction: dict, models_dir: str | Path, root: str | Path) -> dict[str, Any]:
    """What a subject server's answers depend on besides its code (see ``server_identity``)."""
    return {
        "server": "subject",
        "subject": subject,
        "extraction": extraction,
        "models_dir": os.path.realpath(models_dir),
        "root": os.path.realpath(root),
    }


def _shard_paths(req: Request) -> tuple[Path, Path]:
    """The request's output and staging paths, checked: inside the root, side by side."""
    output, staged = req.path("output"), req.path("staged")
    if staged.parent != output.parent or not staged.name.startswith(f"{output.name}.staged-"):
        raise ServiceError(f"staging path {staged} must be {output.name}.staged-<id> next to {output}")
    for name in (f"{output.name}.partial", f"{output.name}.tmp"):
        if (output.parent / name).is_symlink():
            raise ServiceError(f"refusing to write {output.parent / name}: it is a symlink")
    return output, staged


def make_extract_handler(lm: Any, settings: dict, layers: list[int], n_blocks: int, server_info: dict[str, Any]):
    """The ``extract`` handler: one corpus into one staged Zarr shard."""
    from .provenance import provenance
    from .shards import write_shard

    def extract(payload: dict, req: Request) -> dict:
        output, staged = _shard_paths(req)
        req.on_abandon(lambda: shutil.rmtree(staged, ignore_errors=True))

        def log_and_check(message: str) -> None:
            log.info("%s", message)
            req.check_client()  # a cancelled job stops its extraction at the next progress line

        summary = write_shard(
            lm.model,
            lm.tokenizer,
            payload["texts"],
            payload["ids"],
            layers,
            output,
            settings,
            name=payload["name"],
            model_info=lm.info,
            staged=staged,
            attrs={
                "num_hidden_layers": n_blocks,
                "provenance": provenance(
                    stage="activations",
                    config_section=settings,
                    extra={
                        "texts_file": payload.get("texts_file"),
                        "texts_provenance": payload.get("texts_provenance"),
                        "server": server_info,
                    },
                ),
            },
            log=log_and_check,
        )
        summary["model_load_seconds"] = lm.info["load_seconds"]
        summary["server"] = server_info
        log.info("%s", summary)
        return summary

    return extract


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emotion_vectors.serve_subject", description=__doc__.splitlines()[0])
    ap.add_argument("address_file")
    ap.add_argument("--subject", required=True, help="model spec as JSON (config models.subject)")
    ap.add_argument("--extraction", required=True, help="config extraction section as JSON")
    ap.add_argument("--root", required=True, help="the only directory tree the server writes in (the run's results)")
    ap.add_argument("--models-dir", default="results/models")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--idle-timeout", type=float, default=300.0, help="exit after this many idle seconds")
    ap.add_argument("--handshake-timeout", type=float, default=10.0, help="drop a connection silent this long")
    ap.add_argument("--expect-identity", help="refuse to start unless this is the server's identity")
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(args.subject)
    settings = json.loads(args.extraction)
    code = source_hash()
    identity = server_identity(identity_parts(spec, settings, args.models_dir, args.root), code=code)
    if args.expect_identity and args.expect_identity != identity:
        log.error("identity %s differs from the expected %s (code or settings changed as it started)",
                  identity[:16], args.expect_identity[:16])
        return 2
    server_info = {"identity": identity, "code_hash": code, "version": __version__, "pid": os.getpid()}

    def make_handlers() -> dict[str, Callable]:
        import torch

        from .extract import default_layers, validate_layers
        from .models import decoder_layers, load_model

        if args.threads:
            torch.set_num_threads(args.threads)
        lm = load_model(spec, args.models_dir, padding_side="left")
        n_blocks = len(decoder_layers(lm.model))
        layers = (
            default_layers(n_blocks, settings["layer_step"])
            if settings["layers"] == "auto"
            else validate_layers(settings["layers"], n_blocks)
        )
        log.info("subject %s loaded in %.1f s; %d blocks; layers %s", lm.info["name"], lm.info["load_seconds"], n_blocks, layers)
        return {"extract": make_extract_handler(lm, settings, layers, n_blocks, server_info)}

    try:
        serve(
            args.address_file,
            make_handlers,
            identity=identity,
            code=code,
            root=args.root,
            device=str(spec.get("device", "cpu")),
            idle_timeout=args.idle_timeout,
            handshake_timeout=args.handshake_timeout,
        )
    except ServiceError as err:
        log.error("%s", err)
        return 3
    return 0


def extract_shard(
    *,
    name: str,
    texts: list[str],
    ids: list[str],
    output: str | Path,
    subject: dict,
    extraction: dict,
    models_dir: str | Path,
    root: str | Path,
    server_dir: str | Path,
    idle_timeout: float = 300.0,
    threads: int = 0,
    texts_file: str | None = None,
    texts_provenance: dict | None = None,
) -> dict[str, Any]:
    """Have the run's subject server write the shard ``output``; returns its summary.

    Starts the server if none is live (see ``service.ensure_server``). The server writes
    ``<output>.staged-<our pid>``; this function renames it into ``output`` and then removes the
    resume file ``<output>.partial``, so the output appears only if this job is still alive.
    """
    identity = server_identity(identity_parts(subject, extraction, models_dir, root))
    server_dir = private_dir(server_dir)
    address = server_dir / f"{address_name(identity)}.json"
    command = python_command(
        "emotion_vectors.serve_subject", str(address.absolute()),
        "--subject", json.dumps(subject, sort_keys=True), "--extraction", json.dumps(extraction, sort_keys=True),
        "--root", os.path.abspath(root), "--models-dir", str(models_dir), "--idle-timeout", str(idle_timeout),
        "--threads", str(threads), "--expect-identity", identity,
    )
    output = Path(os.path.abspath(output))
    staged = staged_path(output)
    remove_staged(output)
    payload = {
        "kind": "extract",
        "name": name,
        "texts": list(texts),
        "ids": list(ids),
        "output": str(output),
        "staged": str(staged),
        "texts_file": texts_file,
        "texts_provenance": texts_provenance,
    }
    summary = call(address, command, payload, identity=identity, log_file=server_dir / f"{address.stem}.log",
                   device=str(subject.get("device", "cpu")))
    publish(staged, output)
    shutil.rmtree(output.with_name(f"{output.name}.partial"), ignore_errors=True)
    remove_staged(output)  # one a killed earlier job may have left while we waited
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
