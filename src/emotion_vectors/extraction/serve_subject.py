"""The subject-model server and its clients: one model load per run for every request kind.

Server: ``python -m emotion_vectors.extraction.serve_subject ADDRESS_FILE --root DIR [--models-dir DIR]
[--threads N] [--idle-timeout S] [--handshake-timeout S] [--request-timeout S] [--backlog N]
[--expect-identity HASH] < SPEC.json`` reads ``{"subject": <model spec>, "extraction": <config
extraction section>}`` from its standard input (never from its argv, which every user can read
with ``ps``), loads the subject model once and answers, inside ``--root`` only (see
``emotion_vectors.extraction.service``):

- ``extract``: write one activation shard (the run's layers and window) to a staging path;
- ``read``: pool arbitrary texts at one layer over a given window (scoring, the battery) and
  write the ``(n, d)`` float32 activations to a ``.npy`` file in the server's private directory
  (``emotion_vectors.extraction.reading``);
- ``lens``: the top tokens that given directions promote (the logit lens);
- ``tokens``: one text's per-token activations projected on one direction (the token view);
- ``describe``: the model's provenance, hidden size, the run's layers and the weights' fingerprint.

Requests are bounded (``MAX_TEXTS_PER_REQUEST`` texts, ``MAX_LENS_DIRECTIONS`` directions, and
``core.protocol.MAX_REQUEST_BYTES``) and refused with a clear message beyond. Every file the server
writes is opened through a directory descriptor (``core.private_files.DirFd``) and created with
``O_EXCL|O_NOFOLLOW``: a shard is built in a fresh private work directory beside its output
(``<output>.server-<host>-<pid>-<tag>``; the resumable ``<output>.partial`` is moved in and back
out by ``rename``), a read's answer is ``<answer>.<pid>.part`` in the server's directory until
renamed; a symlink planted at any of these names is refused or replaced, never followed.
What a killed server leaves (a work directory, a ``.part`` file, an answer whose client died, a
``.partial`` beside a finished shard) is removed by the next request in that directory.

The server's identity (``identity_parts``) covers the prepared weights (``weights_fingerprint``:
names, sizes, mtimes and inodes of the model directory's files), so weights rebuilt by
``prepare_model`` get a new server rather than an idle old one.

Clients: :class:`ServerHandle` (the address, command, settings and identity of a run's server,
from the same settings the activation jobs use; ``call`` starts the server when none is up) and
:func:`find_live_server` (a server already up for a given model, for the scoring command).
``extract_shard(...)`` (what ``workflow/scripts/activations.py`` calls) has the server write the
shard to ``<output>.staged-<pid>`` and renames that into ``<output>`` itself, so a cancelled job
never gets an output.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import stat
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

from .. import __version__
from ..core.common import zarr_root
from ..core.devices import allocation_server_dir
from ..core.private_files import DirFd, ServiceError, private_dir
from ..core.protocol import _pid_gone, read_address, request, stale_reason
from .service import (
    LISTEN_BACKLOG,
    Request,
    address_name,
    call,
    publish,
    python_command,
    remove_staged,
    serve,
    server_identity,
    source_hash,
    staged_path,
)

log = logging.getLogger("emotion_vectors.subject_server")

#: Most texts one ``extract`` or ``read`` request may carry (``extraction.reading.ServerReader`` splits).
MAX_TEXTS_PER_REQUEST = 100_000
#: Most directions one ``lens`` request may carry (``extraction.reading.ServerReader`` splits).
MAX_LENS_DIRECTIONS = 4096
#: A read's answer file: ``read-<client host>-<client pid>-<tag>.npy`` in the server's directory.
READ_NAME = re.compile(r"^read-(?P<host>.+)-(?P<pid>\d+)-(?P<tag>[0-9a-f]{4,64})\.npy$")
_READ_PART = re.compile(r"^(?P<answer>read-.+\.npy)\.(?P<pid>\d+)\.part$")
_READ_OLD = re.compile(r"^read-\d+-[0-9a-f]+\.npy(\.part)?$")  # names of older versions (no host)
#: A shard's work directory: ``<output>.server-<host>-<server pid>-<tag>``.
_WORK_NAME = re.compile(r"^(?P<output>.+)\.server-(?P<host>.+)-(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})$")


def weights_fingerprint(spec: dict, models_dir: str | Path) -> dict[str, Any]:
    """What identifies the weights a server of ``spec`` loads.

    For a model directory (a prepared packaged model, a local checkpoint): a SHA-256 of every
    file's relative name, size, mtime and inode (``fingerprint_dir``), so weights rebuilt in
    place (``prepare_model`` writes a new directory and renames it in) change it. For a Hub id:
    the id and the pinned ``revision`` (an unpinned id is whatever the Hub serves).
    """
    from ..core.models import ModelSpecError, resolve_path

    try:
        path = resolve_path(spec, models_dir)
    except ModelSpecError:
        return {"path": None}
    if os.path.isdir(path):
        return fingerprint_dir(path)
    return {"path": path, "hub": True, "revision": spec.get("revision")}


def fingerprint_dir(path: str | Path) -> dict[str, Any]:
    """``{"path", "files", "digest"}`` of a model directory (see ``weights_fingerprint``)."""
    real = os.path.realpath(path)
    h = hashlib.sha256()
    n = 0
    for root, dirs, files in os.walk(real):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            try:
                st = os.stat(full)  # a Hub snapshot's files are symlinks to blobs: their target counts
            except OSError:
                continue
            h.update(f"{os.path.relpath(full, real)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
            n += 1
    return {"path": real, "files": n, "digest": h.hexdigest()}


def identity_parts(subject: dict, extraction: dict, models_dir: str | Path, root: str | Path) -> dict[str, Any]:
    """What a subject server's answers depend on besides its code (see ``server_identity``),
    the prepared weights included."""
    return {
        "server": "subject",
        "subject": subject,
        "extraction": extraction,
        "models_dir": os.path.realpath(models_dir),
        "root": os.path.realpath(root),
        "weights": weights_fingerprint(subject, models_dir),
    }


def _shard_paths(req: Request) -> tuple[Path, Path]:
    """The request's output and staging paths, checked: inside the root, side by side."""
    output, staged = req.path("output"), req.path("staged")
    if staged.parent != output.parent or not staged.name.startswith(f"{output.name}.staged-"):
        raise ServiceError(f"staging path {staged} must be {output.name}.staged-<id> next to {output}")
    return output, staged


def _texts_of(payload: dict, key: str = "texts") -> list[str]:
    texts = payload.get(key)
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ServiceError(f"a request's {key} must be a list of strings")
    if len(texts) > MAX_TEXTS_PER_REQUEST:
        raise ServiceError(f"{len(texts):,} texts in one request: at most {MAX_TEXTS_PER_REQUEST:,} (split it)")
    return texts


def _pid_dead(pid: int) -> bool:
    """``pid`` is not running on this host (another user's process counts as running)."""
    reason = _pid_gone(pid, None)
    return reason is not None and "another user" not in reason


def _remove_in(directory: Path, name: str) -> None:
    with contextlib.suppress(OSError, ServiceError), DirFd.open(directory) as d:
        d.remove(name)


def sweep_shard_dir(d: DirFd) -> list[str]:
    """Remove what killed servers and jobs left in a shard directory; returns what was removed.

    - a work directory of a dead server of this host (its ``.partial`` is moved back beside the
      output first, so that the next job resumes from it, unless the output exists);
    - a ``<shard>.partial`` beside its finished ``<shard>`` (a job killed between publishing and
      removing it).
    """
    host = socket.gethostname()
    names = set(d.listdir())
    removed = []
    for name in sorted(names):
        m = _WORK_NAME.match(name)
        if m and m["host"] == host and int(m["pid"]) != os.getpid() and _pid_dead(int(m["pid"])):
            partial = f"{m['output']}.partial"
            with contextlib.suppress(OSError, ServiceError):
                with DirFd.open(d.path / name) as w:
                    st = w.lstat(partial)
                    if (st is not None and stat.S_ISDIR(st.st_mode) and m["output"] not in names
                            and partial not in names and not w.symlinks_inside(partial)):
                        w.rename(partial, partial, dst=d)
                        names.add(partial)
                        log.info("moved %s back from the work directory of dead server pid %s", partial, m["pid"])
                d.remove(name)
                removed.append(name)
    for name in sorted(names):
        if name.endswith(".partial") and name[: -len(".partial")] in names:
            with contextlib.suppress(OSError):  # its job may be removing it at this moment
                d.remove(name)
                removed.append(name)
    if removed:
        log.info("removed leftovers in %s: %s", d.path, removed)
    return removed


def make_extract_handler(lm: Any, settings: dict, layers: list[int], n_blocks: int, server_info: dict[str, Any]):
    """The ``extract`` handler: one corpus into one staged Zarr shard.

    The shard is built in a fresh private work directory beside the output (created with
    ``mkdir`` in the opened output directory, so nothing can be planted in it); the resumable
    ``<output>.partial`` is moved in (a ``rename``) and back out when the request ends, and the
    finished shard is renamed to the staging path the client named. Paths inside the work
    directory are shown in logs and errors as if beside the output.
    """
    from ..core.provenance import provenance
    from .shards import ShardError, write_shard

    def extract(payload: dict, req: Request) -> dict:
        output, staged = _shard_paths(req)
        texts, ids = _texts_of(payload), _texts_of(payload, "ids")
        if len(texts) != len(ids):
            raise ServiceError(f"{len(texts)} texts but {len(ids)} ids")
        if not isinstance(payload.get("name"), str):
            raise ServiceError("an extract request needs a name")
        d, name = req.directory("output")
        try:
            sweep_shard_dir(d)
            partial, tmp = f"{name}.partial", f"{name}.tmp"
            for n in (partial, tmp, staged.name):
                d.refuse_symlink(n)
            d.remove(tmp)  # left by an older version; never written beside the output now
            work = f"{name}.server-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
            w = d.make_private_dir(work)
            try:
                if d.exists(partial):
                    d.rename(partial, partial, dst=w)
                    st = w.lstat(partial)
                    links = w.symlinks_inside(partial) if st is not None and stat.S_ISDIR(st.st_mode) else [partial]
                    if links:
                        log.warning("%s holds symlinks (%s): not resumed, started over", d.path / partial, links[:3])
                        w.remove(partial)
                inner, shown = w.proc_path(), str(output.parent)

                def fix(text: str) -> str:
                    return text.replace(inner + "/", shown + "/")

                def log_and_check(message: str) -> None:
                    log.info("%s", fix(message))
                    req.check_client()  # a cancelled job stops its extraction at the next progress line

                req.on_abandon(lambda: _remove_in(output.parent, staged.name))
                try:
                    summary = write_shard(
                        lm.model, lm.tokenizer, texts, ids, layers, w.proc_path(name), settings,
                        name=payload["name"], model_info=lm.info, staged=w.proc_path(f"{name}.staged"),
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
                except ShardError as err:
                    raise ServiceError(fix(str(err))) from None
                w.rename(f"{name}.staged", staged.name, dst=d)  # a symlink at that name is replaced, not followed
            finally:
                if w.exists(partial):  # back beside the output: a rerun resumes; the client removes it
                    try:
                        w.rename(partial, partial, dst=d)
                    except OSError as err:
                        log.warning("could not move %s back (%s): removed", partial, err)
                        w.remove(partial)
                w.close()
                d.remove(work)
        finally:
            d.close()
        summary["model_load_seconds"] = lm.info["load_seconds"]
        summary["server"] = server_info
        log.info("%s", summary)
        return summary

    return extract


def sweep_scratch(d: DirFd) -> list[str]:
    """Remove what dead servers and clients of this host left in a server directory: a read's
    ``.part`` whose server died, and an answer whose client died (older versions' files after a
    day). Returns what was removed."""
    host = socket.gethostname()
    removed = []
    for name in d.listdir():
        m = _READ_PART.match(name)
        answer = READ_NAME.match(m["answer"]) if m else READ_NAME.match(name)
        if m and answer and answer["host"] == host and int(m["pid"]) != os.getpid() and _pid_dead(int(m["pid"])):
            d.unlink(name)
        elif not m and answer and answer["host"] == host and _pid_dead(int(answer["pid"])):
            d.unlink(name)
        elif _READ_OLD.match(name) and time.time() - getattr(d.lstat(name), "st_mtime", time.time()) > 86400:
            d.unlink(name)
        else:
            continue
        removed.append(name)
    if removed:
        log.info("removed leftovers in %s: %s", d.path, removed)
    return removed


def _write_npy_header(fh: Any, shape: tuple[int, int]) -> int:
    import numpy as np

    np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                               "fortran_order": False, "shape": shape})
    return fh.tell()


def make_read_handlers(lm: Any, layers: list[int], n_blocks: int, server_info: dict[str, Any],
                       scratch_dir: str | Path) -> dict[str, Callable]:
    """The ``describe``, ``read``, ``lens`` and ``tokens`` handlers (``emotion_vectors.extraction.reading``)."""
    import numpy as np

    from .reading import ReadError, hidden_size, read_texts, token_projections_to_json, top_tokens

    scratch = Path(os.path.realpath(scratch_dir))
    sd = DirFd.open(scratch)  # the server's private directory, open for its whole life
    sweep_scratch(sd)
    width = hidden_size(lm.model)

    def describe(payload: dict, req: Request) -> dict:
        return {"model": lm.info, "hidden_size": width, "layers": layers, "num_hidden_layers": n_blocks,
                **{k: server_info[k] for k in ("pid", "identity", "code_hash", "weights")},
                "device": str(lm.info.get("device"))}

    def read(payload: dict, req: Request) -> dict:
        out = req.path("output")
        if out.parent != scratch or not READ_NAME.match(out.name):
            raise ServiceError(f"a read's output must be a read-<host>-<pid>-<hex>.npy file in {scratch}, not {out}")
        texts = _texts_of(payload)
        layer = payload.get("layer")
        if not isinstance(layer, int) or not 0 <= layer < n_blocks:
            raise ServiceError(f"layer {layer!r} is not a block of this {n_blocks}-block model")
        sweep_scratch(sd)
        if sd.exists(out.name):
            raise ServiceError(f"refusing to overwrite {out}")
        part = f"{out.name}.{os.getpid()}.part"
        fh = os.fdopen(sd.create(part, os.O_RDWR), "w+b")  # O_EXCL|O_NOFOLLOW: never through a symlink
        req.on_abandon(lambda: (sd.unlink(part), sd.unlink(out.name)))
        last = [time.monotonic()]
        try:
            offset = _write_npy_header(fh, (len(texts), width))
            pooled = None
            if texts:
                pooled = np.memmap(fh, dtype=np.float32, mode="r+", offset=offset, shape=(len(texts), width))
                pooled[:] = np.nan

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
                raise ServiceError(str(err)) from None
            if pooled is not None:
                pooled.flush()
                del pooled
            fh.close()
            sd.rename(part, out.name)
        except BaseException:
            fh.close()
            sd.unlink(part)
            raise
        log.info("read %d texts (%d tokens) at layer %d in %.1f s", len(texts), summary.tokens, layer, summary.seconds)
        return summary.to_json()

    def lens(payload: dict, req: Request) -> dict:
        directions = payload.get("directions")
        if not isinstance(directions, list) or not 1 <= len(directions) <= MAX_LENS_DIRECTIONS:
            raise ServiceError(f"lens request: directions must be a list of 1 to {MAX_LENS_DIRECTIONS:,} vectors "
                               f"(got {len(directions) if isinstance(directions, list) else type(directions).__name__})")
        try:
            matrix = np.asarray(directions, dtype=np.float64)
            if matrix.ndim != 2 or matrix.shape[1] != width:
                raise ReadError(f"lens directions must have shape (m, {width}), not {matrix.shape}")
            tokens = top_tokens(lm.model, lm.tokenizer, matrix, float(payload.get("scale", float("nan"))),
                                int(payload.get("top_k", 0)))
        except (ReadError, TypeError, ValueError) as err:
            raise ServiceError(f"lens request: {err}") from None
        return {"tokens": tokens}

    def tokens(payload: dict, req: Request) -> dict:
        from .highlight import token_projections

        text, layer, max_tokens = payload.get("text"), payload.get("layer"), payload.get("max_tokens")
        if not isinstance(text, str) or not isinstance(layer, int) or not (
                max_tokens is None or (isinstance(max_tokens, int) and max_tokens > 0)):
            raise ServiceError("a tokens request needs a text, an integer layer and max_tokens None or > 0")
        vector = payload.get("vector")
        if not isinstance(vector, list) or len(vector) != width:
            raise ServiceError(f"a tokens request needs a vector of {width} numbers")
        try:
            tp = token_projections(lm.model, lm.tokenizer, text, np.asarray(vector, dtype=np.float64),
                                   layer, max_tokens=max_tokens)
        except (TypeError, ValueError) as err:
            raise ServiceError(f"tokens request: {err}") from None
        return token_projections_to_json(tp)

    return {"describe": describe, "read": read, "lens": lens, "tokens": tokens}


def read_spec(stream: Any) -> tuple[dict, dict]:
    """The ``{"subject", "extraction"}`` JSON a server reads from its standard input.

    Raises:
        ValueError: it is not such an object.
    """
    data = json.loads(stream.read())
    if not isinstance(data, dict) or not isinstance(data.get("subject"), dict) or not isinstance(data.get("extraction"), dict):
        raise ValueError('expected {"subject": {...}, "extraction": {...}} on standard input')
    return data["subject"], data["extraction"]


def spec_input(subject: dict, extraction: dict) -> bytes:
    """What ``read_spec`` reads (the client writes it to the server's standard input)."""
    return json.dumps({"subject": subject, "extraction": extraction}, sort_keys=True).encode()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emotion_vectors.extraction.serve_subject", description=__doc__.splitlines()[0])
    ap.add_argument("address_file")
    ap.add_argument("--root", required=True, help="the only directory tree the server writes in (the run's results)")
    ap.add_argument("--models-dir", default="results/models")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--idle-timeout", type=float, default=300.0, help="exit after this many idle seconds")
    ap.add_argument("--handshake-timeout", type=float, default=10.0, help="drop a connection not authenticated this long")
    ap.add_argument("--request-timeout", type=float, default=60.0,
                    help="drop an authenticated connection whose request is not complete after this long")
    ap.add_argument("--backlog", type=int, default=LISTEN_BACKLOG, help="connections that may wait during a request")
    ap.add_argument("--expect-identity", help="refuse to start unless this is the server's identity")
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        spec, settings = read_spec(sys.stdin)
    except ValueError as err:
        log.error("model and extraction settings on standard input: %s", err)
        return 2
    code = source_hash()
    parts = identity_parts(spec, settings, args.models_dir, args.root)
    identity = server_identity(parts, code=code)
    if args.expect_identity and args.expect_identity != identity:
        log.error("identity %s differs from the expected %s (code, settings or weights changed as it started)",
                  identity[:16], args.expect_identity[:16])
        return 2
    server_info = {"identity": identity, "code_hash": code, "version": __version__, "pid": os.getpid(),
                   "weights": parts["weights"]}

    def make_handlers() -> dict[str, Callable]:
        import torch

        from .extract import default_layers, validate_layers
        from ..core.models import decoder_layers, load_model

        if args.threads:
            torch.set_num_threads(args.threads)
        lm = load_model(spec, args.models_dir, padding_side="left")
        if weights_fingerprint(spec, args.models_dir) != parts["weights"]:
            raise ServiceError(f"the weights of {spec.get('name')} changed while they were loading (prepare_model "
                               "rebuilt them?): not serving them; the next job starts a server on the new ones")
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
            request_timeout=args.request_timeout,
            backlog=args.backlog,
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
    stdin: bytes | None = None  # the settings the command reads (``spec_input``)

    def scratch_path(self, name: str) -> Path:
        """A path in the server's private directory (where ``read`` answers are written)."""
        return self.address.parent / name

    def live(self) -> dict[str, Any] | None:
        """The address of the live server, or None."""
        try:
            info = read_address(self.address)
        except ServiceError:
            return None
        return info if info is not None and stale_reason(info, self.address) is None else None

    def call(self, payload: dict[str, Any], *, start: bool = True) -> dict[str, Any]:
        if start and self.command is not None:
            return call(self.address, list(self.command), payload, identity=self.identity,
                        log_file=self.log_file or self.address.with_suffix(".log"), device=self.device,
                        stdin=self.stdin)
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
    handshake_timeout: float | None = None,
    request_timeout: float | None = None,
    backlog: int | None = None,
) -> ServerHandle:
    """The run's subject server as the activation jobs start it (same settings, same identity,
    so scoring and battery jobs share the server and its one model load). The deadlines and
    the backlog (``None``: the server's defaults) are not part of the identity."""
    identity = server_identity(identity_parts(subject, extraction, models_dir, root))
    server_dir = private_dir(server_dir)
    address = (server_dir / f"{address_name(identity)}.json").absolute()
    options = [(flag, value) for flag, value in (("--handshake-timeout", handshake_timeout),
                                                 ("--request-timeout", request_timeout), ("--backlog", backlog))
               if value is not None]
    command = python_command(
        "emotion_vectors.extraction.serve_subject", str(address),
        "--root", os.path.abspath(root), "--models-dir", str(models_dir), "--idle-timeout", str(idle_timeout),
        "--threads", str(threads), *[str(x) for pair in options for x in pair], "--expect-identity", identity,
    )
    return ServerHandle(address, identity, tuple(command), server_dir / f"{address.stem}.log",
                        str(subject.get("device", "cpu")), spec_input(subject, extraction))


def server_from_params(params: Any) -> ServerHandle:
    """``subject_server`` from a rule's params (``EXTRACT_PARAMS`` in workflow/rules/activations.smk),
    in this allocation's server directory (``core.devices.allocation_server_dir``), as the activation
    jobs use it. A job that talks only to the server starts with ``start_job(smk, claim_gpus=False)``:
    the server claims its own GPU."""
    get = params.get if isinstance(params, dict) else lambda k, d=None: getattr(params, k, d)
    return subject_server(subject=get("subject"), extraction=get("extraction"), models_dir=get("models_dir"),
                          root=get("results_dir"), server_dir=allocation_server_dir(get("server_dir")),
                          idle_timeout=get("idle_timeout", 300.0), threads=get("server_threads", 0))


def find_live_server(server_dir: str | Path, matches: Callable[[dict[str, Any]], bool]) -> ServerHandle | None:
    """A live subject server in ``server_dir`` (or one of its per-allocation subdirectories)
    running this code, on weights unchanged since it loaded them, whose model ``matches`` (given
    the ``describe`` answer's ``model``), or None. Never starts one."""
    server_dir = Path(server_dir)
    if not server_dir.is_dir():
        return None
    code = source_hash()
    for address in sorted([*server_dir.glob("*.json"), *server_dir.glob("slurm-*/*.json")]):
        try:
            info = read_address(address)
            if info is None or stale_reason(info, address) is not None:
                continue
            described = request(info, {"kind": "describe"}, connect_timeout=5.0)
        except ServiceError as err:
            log.info("model server %s not usable: %s", address.name, err)
            continue
        if described.get("code_hash") != code:
            log.info("model server %s runs other code: not used", address.name)
            continue
        weights = described.get("weights") or {}
        if weights.get("digest") and fingerprint_dir(weights["path"]).get("digest") != weights["digest"]:
            log.info("model server %s serves weights rebuilt since it loaded them: not used", address.name)
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
    """Have the run's subject server write the shard ``output`` (its directory or its
    ``zarr.json``); returns its summary.

    Starts the server if none is live (see ``service.ensure_server``). The server writes
    ``<output>.staged-<our pid>``; this function renames it into ``output`` (``service.publish``:
    an existing output is moved aside first) and then removes the resume file
    ``<output>.partial``, so the output appears only if this job is still alive.
    """
    server = subject_server(subject=subject, extraction=extraction, models_dir=models_dir, root=root,
                            server_dir=server_dir, idle_timeout=idle_timeout, threads=threads)
    output = Path(os.path.abspath(zarr_root(output)))
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
    with DirFd.open(output.parent) as d:
        d.remove(f"{output.name}.partial")
    remove_staged(output)  # one a killed earlier job may have left while we waited
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
