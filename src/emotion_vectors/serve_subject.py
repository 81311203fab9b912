"""The subject-model server and its clients: one model load per run for every request kind.

Server: ``python -m emotion_vectors.serve_subject ADDRESS_FILE --subject JSON --extraction JSON
--root DIR [--models-dir DIR] [--threads N] [--idle-timeout S] [--handshake-timeout S]
[--expect-identity HASH]`` loads the subject model once and answers, inside ``--root`` only (see
``emotion_vectors.service``):

- ``extract``: write one activation shard (the run's layers and window) to a staging path;
- ``read``: pool arbitrary texts at one layer over a given window (scoring, the battery) and
  write the ``(n, d)`` float32 activations to a ``.npy`` file in the server's private directory
  (``emotion_vectors.reading``);
- ``lens``: the top tokens that given directions promote (the logit lens);
- ``tokens``: one text's per-token activations projected on one direction (the token view);
- ``describe``: the model's provenance, hidden size and the run's layers.

Clients: :class:`SubjectServer` (the address, command and identity of a run's server, from the
same settings the activation jobs use; ``call`` starts the server when none is up) and
:func:`find_live_server` (a server already up for a given model, for the scoring command).
``extract_shard(...)`` (what ``workflow/scripts/activations.py`` calls) has the server write the
shard to ``<output>.staged-<pid>`` and renames that into ``<output>`` itself, so a cancelled job
never gets an output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

from . import __version__
from .service import (
    Request,
    ServiceError,
    address_name,
    allocation_server_dir,
    call,
    private_dir,
    publish,
    python_command,
    read_address,
    remove_staged,
    request,
    serve,
    server_identity,
    source_hash,
    stale_reason,
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


def make_read_handlers(lm: Any, layers: list[int], n_blocks: int, server_info: dict[str, Any],
                       scratch_dir: str | Path) -> dict[str, Callable]:
    """The ``describe``, ``read``, ``lens`` and ``tokens`` handlers (``emotion_vectors.reading``)."""
    import numpy as np

    from .reading import ReadError, hidden_size, read_texts, token_projections_to_json, top_tokens

    scratch = Path(os.path.realpath(scratch_dir))
    width = hidden_size(lm.model)

    def describe(payload: dict, req: Request) -> dict:
        return {"model": lm.info, "hidden_size": width, "layers": layers, "num_hidden_layers": n_blocks,
                **{k: server_info[k] for k in ("pid", "identity", "code_hash")}, "device": str(lm.info.get("device"))}

    def read(payload: dict, req: Request) -> dict:
        out = req.path("output")
        if out.parent != scratch or not out.name.endswith(".npy"):
            raise ServiceError(f"a read's output must be a .npy file in {scratch}, not {out}")
        if out.exists():
            raise ServiceError(f"refusing to overwrite {out}")
        texts = payload.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ServiceError("a read's texts must be a list of strings")
        layer = payload.get("layer")
        if not isinstance(layer, int) or not 0 <= layer < n_blocks:
            raise ServiceError(f"layer {layer!r} is not a block of this {n_blocks}-block model")
        part = out.with_name(f"{out.name}.part")
        req.on_abandon(lambda: (part.unlink(missing_ok=True), out.unlink(missing_ok=True)))
        pooled = np.lib.format.open_memmap(part, mode="w+", dtype=np.float32, shape=(len(texts), width))
        pooled[:] = np.nan
        last = [time.monotonic()]

        def on_batch(rows, x):
            pooled[rows] = x

        def progress(done: int, total: int, tokens: int) -> None:
            if time.monotonic() - last[0] > 30 or done == total:
                last[0] = time.monotonic()
                log.info("read %d/%d texts (%d tokens)", done, total, tokens)
            req.check_client()  # a cancelled job stops the read at the next batch

        try:
            summary = read_texts(lm.model, lm.tokenizer, texts, layer=layer, pool_start=payload.get("pool_start"),
                                 max_tokens=payload.get("max_tokens"), on_batch=on_batch,
                                 batch_size=payload.get("batch_size"),
                                 max_batch_tokens=payload.get("max_batch_tokens"), progress=progress)
        except ReadError as err:
            part.unlink(missing_ok=True)
            raise ServiceError(str(err)) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        pooled.flush()
        del pooled
        os.replace(part, out)
        log.info("read %d texts (%d tokens) at layer %d in %.1f s", len(texts), summary.tokens, layer, summary.seconds)
        return summary.to_json()

    def lens(payload: dict, req: Request) -> dict:
        try:
            tokens = top_tokens(lm.model, lm.tokenizer, np.asarray(payload.get("directions"), dtype=np.float64),
                                float(payload.get("scale", float("nan"))), int(payload.get("top_k", 0)))
        except (ReadError, TypeError, ValueError) as err:
            raise ServiceError(f"lens request: {err}") from None
        return {"tokens": tokens}

    def tokens(payload: dict, req: Request) -> dict:
        from .highlight import token_projections

        text, layer, max_tokens = payload.get("text"), payload.get("layer"), payload.get("max_tokens")
        if not isinstance(text, str) or not isinstance(layer, int) or not (
                max_tokens is None or (isinstance(max_tokens, int) and max_tokens > 0)):
            raise ServiceError("a tokens request needs a text, an integer layer and max_tokens None or > 0")
        try:
            tp = token_projections(lm.model, lm.tokenizer, text, np.asarray(payload.get("vector"), dtype=np.float64),
                                   layer, max_tokens=max_tokens)
        except (TypeError, ValueError) as err:
            raise ServiceError(f"tokens request: {err}") from None
        return token_projections_to_json(tp)

    return {"describe": describe, "read": read, "lens": lens, "tokens": tokens}


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
        return {"extract": make_extract_handler(lm, settings, layers, n_blocks, server_info),
                **make_read_handlers(lm, layers, n_blocks, server_info, Path(args.address_file).parent)}

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


@dataclass(frozen=True)
class ServerHandle:
    """How to reach one subject-model server: its address file and identity, and (optionally)
    the command that starts it. ``call`` starts it when none is up (if it has a command and
    ``start``); otherwise it talks only to a live server."""

    address: Path
    identity: str
    command: tuple[str, ...] | None = None
    log_file: Path | None = None
    device: str = "cpu"

    def scratch_path(self, name: str) -> Path:
        """A path in the server's private directory (where ``read`` answers are written)."""
        return self.address.parent / name

    def live(self) -> dict[str, Any] | None:
        """The address of the live server, or None."""
        try:
            info = read_address(self.address)
        except ServiceError:
            return None
        return info if info is not None and stale_reason(info) is None else None

    def call(self, payload: dict[str, Any], *, start: bool = True) -> dict[str, Any]:
        if start and self.command is not None:
            return call(self.address, list(self.command), payload, identity=self.identity,
                        log_file=self.log_file or self.address.with_suffix(".log"), device=self.device)
        info = self.live()
        if info is None:
            raise ServiceError(f"no live model server at {self.address}")
        return request(info, payload, identity=self.identity)


def subject_server(
    *,
    subject: dict,
    extraction: dict,
    models_dir: str | Path,
    root: str | Path,
    server_dir: str | Path,
    idle_timeout: float = 300.0,
    threads: int = 0,
) -> ServerHandle:
    """The run's subject server as the activation jobs start it (same settings, same identity,
    so scoring and battery jobs share the server and its one model load)."""
    identity = server_identity(identity_parts(subject, extraction, models_dir, root))
    server_dir = private_dir(server_dir)
    address = (server_dir / f"{address_name(identity)}.json").absolute()
    command = python_command(
        "emotion_vectors.serve_subject", str(address),
        "--subject", json.dumps(subject, sort_keys=True), "--extraction", json.dumps(extraction, sort_keys=True),
        "--root", os.path.abspath(root), "--models-dir", str(models_dir), "--idle-timeout", str(idle_timeout),
        "--threads", str(threads), "--expect-identity", identity,
    )
    return ServerHandle(address, identity, tuple(command), server_dir / f"{address.stem}.log",
                        str(subject.get("device", "cpu")))


def server_from_params(params: Any) -> ServerHandle:
    """``subject_server`` from a rule's params (``EXTRACT_PARAMS`` in workflow/rules/activations.smk),
    in this allocation's server directory (``service.allocation_server_dir``), as the activation
    jobs use it. A job that talks only to the server starts with ``start_job(smk, claim_gpus=False)``:
    the server claims its own GPU."""
    get = params.get if isinstance(params, dict) else lambda k, d=None: getattr(params, k, d)
    return subject_server(subject=get("subject"), extraction=get("extraction"), models_dir=get("models_dir"),
                          root=get("results_dir"), server_dir=allocation_server_dir(get("server_dir")),
                          idle_timeout=get("idle_timeout", 300.0), threads=get("server_threads", 0))


def find_live_server(server_dir: str | Path, matches: Callable[[dict[str, Any]], bool]) -> ServerHandle | None:
    """A live subject server in ``server_dir`` (or one of its per-allocation subdirectories)
    running this code whose model ``matches`` (given the ``describe`` answer's ``model``), or
    None. Never starts one."""
    server_dir = Path(server_dir)
    if not server_dir.is_dir():
        return None
    code = source_hash()
    for address in sorted([*server_dir.glob("*.json"), *server_dir.glob("slurm-*/*.json")]):
        try:
            info = read_address(address)
            if info is None or stale_reason(info) is not None:
                continue
            described = request(info, {"kind": "describe"}, connect_timeout=5.0)
        except ServiceError as err:
            log.info("model server %s not usable: %s", address.name, err)
            continue
        if described.get("code_hash") != code:
            log.info("model server %s runs other code: not used", address.name)
            continue
        if matches(dict(described.get("model") or {})):
            return ServerHandle(address.absolute(), str(described.get("identity")), device=str(info.get("device")))
    return None


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
    server = subject_server(subject=subject, extraction=extraction, models_dir=models_dir, root=root,
                            server_dir=server_dir, idle_timeout=idle_timeout, threads=threads)
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
    summary = server.call(payload)
    publish(staged, output)
    shutil.rmtree(output.with_name(f"{output.name}.partial"), ignore_errors=True)
    remove_staged(output)  # one a killed earlier job may have left while we waited
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
