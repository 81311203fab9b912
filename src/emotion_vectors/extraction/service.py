"""A shared model server: one model load for all activation shards of a run.

Every emotion shard is its own Snakemake job and output, yet loading a 31B model once per shard
would cost 172 loads. So the per-shard jobs are thin clients of a model server that the first of
them starts and the others reuse. Why not a Snakemake ``service()`` job: a service output is an
input of every consumer, so whenever one shard must be rebuilt the service must run, and
Snakemake then marks *every* consumer "updated by another job" (all 172 shards rerun). Here the
server is invisible to the DAG: only outdated shards are pending.

Pieces
------
- ``serve(address_file, handler_factory, ...)``: bind a socket, build the handlers (this loads
  the model), publish the address file, answer one request at a time, exit after
  ``idle_timeout`` seconds without one (freeing the GPU) or on a ``shutdown`` request.
- ``ensure_server`` (under a file lock: reuse the live server of an address file, or replace a
  stale one and start ``command`` detached), ``request`` (one request, one answer) and ``call``
  (both, retried when the server stopped just as we connected).
- ``release_device(server_dirs, device)``: ask every idle or busy server of ours that holds
  ``device`` to exit (after its current request) and wait until it has: one model per GPU.

This module is the server and its start; what jobs and model loads need without a server lies
in ``core``: ``core.private_files`` (``private_dir``, ``DirFd``, ``ServiceError``),
``core.protocol`` (address files, liveness, the wire format, ``request``) and ``core.devices``
(the GPU claims, ``release_device``, ``release_for_model``).

Requests are JSON objects dispatched by their ``kind`` through a registry of handlers
(the subject server's factory gives ``extract``, ``read``, ``lens`` and ``describe``; ``ping``
and ``shutdown`` are built in), so a new request kind (``generate`` for a generator that is also
the subject, judge scoring) is one more entry in the factory's dict, not a change to the server
loop. A request's files follow one rule: the server writes only inside its root, at paths the
client names and checks (a staged shard beside its output; a ``read`` answer in the server's own
private directory), and removes them when the client is gone.

Security: only the workflow's owner can talk to a server
--------------------------------------------------------
A server runs the owner's code with the owner's files, so whoever can send it a request must
already be the owner. Three layers, each sufficient against another local user:

1. The socket is a Unix-domain socket in a directory that is ours and mode 0700 (checked,
   refused otherwise), so nobody else can even ``connect()``; the server also checks the peer's
   uid (``SO_PEERCRED``). The run's ``.server`` directory is used when the socket path fits the
   ~107-byte ``AF_UNIX`` limit (and the file system allows sockets); otherwise a fresh
   ``mkdtemp`` directory (0700, random name, so it cannot be pre-created by someone else) under
   ``$XDG_RUNTIME_DIR`` (when it is a usable directory of ours: ``runtime_dir``) or the temp
   dir, recorded in the address file and removed at exit.
2. A random 32-byte key, in an address file created 0600 with ``O_CREAT|O_EXCL`` inside the
   0700 directory; both sides prove they know it (HMAC challenge-response, the key never
   crosses the socket). Address files that are not ours or not 0600 are not trusted.
3. Messages are length-prefixed JSON, never pickle, so even an authenticated peer sends data,
   not code; and the server writes only inside the allowed root it was started with (the run's
   results directory): request paths must be absolute and their real path must lie under the
   root, and every write is opened through a directory descriptor reached from the root one
   component at a time with ``O_NOFOLLOW`` and created ``O_CREAT|O_EXCL|O_NOFOLLOW`` (``DirFd``):
   a symlink planted at a name the server writes is refused at the moment of opening, not at
   an earlier check.

The server runs with a filtered environment (``server_environment``: an allow-list; no API key
or other credential but the Hugging Face token a model download needs), and its settings reach
it on standard input, not in its argv (which ``ps`` shows to every user). The GPU lock
directory (``device_lock_dir``) is ``$XDG_RUNTIME_DIR``'s when that is usable, else a name in
the temporary directory derived from a per-user secret, so another user cannot create it first.

The server never renames anything into a job's output: it writes a complete shard to a staging
path the client names (``<output>.staged-<client pid>``, in the output's directory), answers,
and the CLIENT renames it into place (``publish``: an existing output is moved aside first, then
removed). A job cancelled by Snakemake is gone by then, so nothing ever lands in the output path
Snakemake has deleted; the server sees the closed connection and removes the staged shard (one
left by a client killed after the answer is removed by the next job for that output). The
resumable ``<output>.partial`` stays until the client publishes.

Robustness
----------
The server handles every connection inside one ``try``: a stray connection, a wrong key,
garbage bytes, an oversized message (``MAX_REQUEST_BYTES``, refused with a message once
authenticated), a client that dies mid-request, or one that trickles its bytes is logged and
dropped, and the server serves the next one. There is one deadline per handshake
(``handshake_timeout``, default 10 s from acceptance) and one per request message
(``request_timeout``, default 60 s), however the bytes trickle in. Clients see every failure as
a ``ServiceError`` with a plain message (never a raw ``ConnectionResetError``, ``TypeError`` or
``KeyError``); failures before the request was sent are ``retryable``.

Liveness: whether a server lives is decided by its own marks, never by a failed connection (a
busy server's full listen queue refuses new connections at once with ``EAGAIN``): the address
file's pid must be alive with the recorded start time (``/proc``), hold the server's life lock
``<name>.alive`` (an ``flock`` the kernel drops however it dies), and its socket file must
exist (``stale_reason``). A client whose connection meets a full queue retries with growing
pauses while the server lives. While it waits -- for its turn, then for its answer -- it watches
the server (``ServerWatch``): a dead server is said at once; one stopped (``SIGSTOP``) or without
a heartbeat (the server touches its life-lock file every ``HEARTBEAT_SECONDS`` from a thread,
also during a request) for ``hung_after`` seconds (default 120) is a ``ServerHung`` error. A busy
server beats, so it is waited for however long its current request takes.

Identity: the address file's name is derived from ``server_identity(parts)``, a hash of the
host, the Python environment, the package version and a hash of the package's source files
(``src/emotion_vectors/**/*.py``) plus whatever the caller's answers depend on (model spec,
settings, roots, the prepared weights' fingerprint). Changed code or rebuilt weights therefore
never reach an old server; the server re-computes its identity at start, refuses to start if it
differs from the one it was launched for, sends it in its greeting (the client checks it) and
answers it to ``ping``.

A stale address file (its pid dead, a zombie, or reused by another process -- the recorded
process start time from ``/proc`` differs -- or not holding the life lock, or its socket gone)
is detected by the next ``ensure_server`` and replaced automatically. Because each server holds
its life lock for its whole life, a server still loading its model when the job that started it
was cancelled is waited for, not started twice.

GPUs
----
A server pins the device it was given (the model spec's ``device``; ``auto`` counts as every
CUDA device) and records it in its address file. On a GPU it claims a physical device (an
exclusive lock per device, ``claim_job_devices``; ``CUDA_VISIBLE_DEVICES`` pinned) when it is
started, before its model loads, and holds the claim for its whole life, so no job is put on
its GPU while it loads or serves; a job that finds every device claimed asks an idle server to
exit. Jobs that only talk to a server claim nothing (``start_job(smk, claim_gpus=False)``).
Before a job loads a model onto a GPU,
``release_device`` asks the servers of this user and host that hold it to exit and waits until
they have (``ensure_server`` does the same for other servers of its directory before starting a
new one on a GPU, e.g. one left by older code). A job whose generator is also the subject could
instead send the server a ``generate`` request: a handler in the factory's registry.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..core.devices import CLAIMED_ENV, _server_claim, release_device, uses_gpu
from ..core.private_files import PRIVATE_PREFIX, DirFd, ServiceError, private_dir, runtime_dir, write_private_json
from ..core.protocol import (
    HEARTBEAT_SECONDS,
    MAX_ANSWER_BYTES,
    MAX_HANDSHAKE_BYTES,
    MAX_REQUEST_BYTES,
    PROTOCOL,
    MessageTooLarge,
    _challenge_of,
    _hold_life_lock,
    _life_lock,
    _locked,
    _mac,
    _mac_matches,
    _pid_is_server,
    _server_process_running,
    discard_address,
    encode_message,
    life_lock_of,
    process_start_time,
    read_address,
    recv_message,
    request,
    stale_reason,
)
from ..core.provenance import package_versions

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: Connections waiting while a request runs (the kernel caps it at ``net.core.somaxconn``).
LISTEN_BACKLOG = 4096
#: AF_UNIX paths must fit ``sun_path`` (108 bytes on Linux, 104 on macOS, NUL included).
MAX_SOCKET_PATH = 100
#: Packages whose version is part of a server's identity (they change what it computes).
IDENTITY_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "zarr", "numpy")


class ClientGone(Exception):
    """Raised inside a handler when its client has disconnected (job cancelled)."""


# --------------------------------------------------------------------------- identity


def source_hash(package_dir: str | Path | None = None) -> str:
    """SHA-256 of the package's ``*.py`` files (relative path and bytes, sorted by path).

    ``package_dir`` defaults to ``PACKAGE_DIR``, the package this module was imported from.
    """
    package_dir = Path(package_dir or PACKAGE_DIR)
    h = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def server_identity(parts: dict[str, Any], *, code: str | None = None) -> str:
    """Hash naming a server: everything its answers depend on, its own code included.

    Args:
        parts: what the caller's answers depend on (model spec, settings, roots), JSON-able.
        code: the package source hash (default: ``source_hash()`` of the installed package).
    """
    record = {
        "protocol": PROTOCOL,
        "version": __version__,
        "code": code if code is not None else source_hash(),
        "host": socket.gethostname(),
        "python": sys.executable,
        "packages": package_versions(IDENTITY_PACKAGES),
        "parts": parts,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def address_name(identity: str) -> str:
    """File stem of a server's address file: ``<host>-<identity prefix>``."""
    return f"{socket.gethostname()}-{identity[:16]}"


# --------------------------------------------------------------------------- server


Handler = Callable[[dict[str, Any], "Request"], dict[str, Any]]


@dataclass
class Request:
    """What a handler gets besides the payload: its connection, root and cleanup hooks."""

    payload: dict[str, Any]
    conn: socket.socket
    root: Path
    _on_abandon: list[Callable[[], None]] = field(default_factory=list)

    def path(self, key: str) -> Path:
        """The payload's path ``key``, checked to lie inside the server's root.

        The path must be absolute; its parent directory's real path (symlinks resolved) must be
        the root or below it, and the path itself must not be a symlink. This is a first check
        with a clear message; the write itself goes through ``directory`` (``DirFd``), which
        refuses a symlink at the moment of opening.

        Raises:
            ServiceError: any other path (the request is refused; the server goes on).
        """
        raw = self.payload.get(key)
        if not isinstance(raw, str) or not os.path.isabs(raw):
            raise ServiceError(f"request field {key!r} must be an absolute path, not {raw!r}")
        path = Path(os.path.normpath(raw))
        parent = Path(os.path.realpath(path.parent))
        root = Path(os.path.realpath(self.root))
        if parent != root and root not in parent.parents:
            raise ServiceError(f"refusing to write {raw}: outside the server's root {root}")
        if (parent / path.name).is_symlink():
            raise ServiceError(f"refusing to write {raw}: it is a symlink")
        return parent / path.name

    def directory(self, key: str) -> tuple[DirFd, str]:
        """The directory of the payload's path ``key``, opened below the root with no symlink on
        the way (``DirFd.beneath``), and the file name in it. The caller closes the ``DirFd``."""
        path = self.path(key)
        return DirFd.beneath(self.root, path.parent), path.name

    def client_gone(self) -> bool:
        """True when the client has closed its connection (it sends nothing after its request)."""
        try:
            poller = select.poll()
            poller.register(self.conn.fileno(), select.POLLIN)
            if not poller.poll(0):
                return False
            return self.conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True

    def check_client(self) -> None:
        """Raise ``ClientGone`` if the client disconnected (call it between units of work)."""
        if self.client_gone():
            raise ClientGone("the client disconnected (job cancelled?)")

    def on_abandon(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` if the answer cannot be delivered (e.g. remove a staged output)."""
        self._on_abandon.append(cleanup)

    def abandon(self) -> None:
        for cleanup in self._on_abandon:
            try:
                cleanup()
            except Exception as err:  # noqa: BLE001 - best effort
                log.warning("cleanup after an abandoned request failed: %s", err)


def _peer_uid(conn: socket.socket) -> int | None:
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _bind(server_dir: Path, name: str) -> tuple[socket.socket, str, str | None]:
    """Listening socket in ``server_dir`` if the path fits and binds, else in a private temp dir.

    The socket file is created 0600 (umask during ``bind``), never chmod-ed by path afterwards.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str((server_dir / f"{name}.sock").absolute())

    def bind(where: str) -> None:
        old = os.umask(0o177)
        try:
            sock.bind(where)
        finally:
            os.umask(old)

    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        try:
            bind(path)
            return sock, path, None
        except OSError as err:
            log.info("cannot bind %s (%s): using a private temporary directory", path, err)
    base = runtime_dir() or Path(tempfile.gettempdir())
    private = tempfile.mkdtemp(prefix=PRIVATE_PREFIX, dir=base)  # mode 0700, random name
    path = os.path.join(private, "s.sock")
    bind(path)
    return sock, path, private


class Server:
    """One server: a listening socket, its handlers, its address file. See ``serve``."""

    def __init__(self, address_file: Path, *, identity: str, code: str, device: str, root: Path,
                 idle_timeout: float, handshake_timeout: float, request_timeout: float = 60.0,
                 backlog: int = LISTEN_BACKLOG, max_request_bytes: int = MAX_REQUEST_BYTES):
        self.address_file = address_file
        self.identity, self.code, self.device, self.root = identity, code, device, root
        self.idle_timeout, self.handshake_timeout = idle_timeout, handshake_timeout
        self.request_timeout, self.max_request_bytes = request_timeout, max_request_bytes
        self.key = secrets.token_bytes(32)
        self.handlers: dict[str, Handler] = {"ping": self._ping, "shutdown": self._shutdown}
        self.stopping = False
        self.served = 0
        self.started = time.time()
        self.listener, self.socket_path, self.private = _bind(address_file.parent, address_file.stem)
        st = os.lstat(self.socket_path)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ServiceError(f"socket {self.socket_path} is not a private socket of ours after bind")
        # The socket file's identity: at exit, unlink the path only while it is still ours (a
        # newer server of the same name, e.g. after the run's directory was deleted and remade,
        # may have bound the same path since; removing its socket would make it look stale).
        self.socket_inode = st.st_ino
        self.listener.listen(backlog)  # jobs queue here while a request runs (the kernel caps it)

    # built-in request kinds
    def _ping(self, payload: dict[str, Any], req: Request) -> dict[str, Any]:
        return {"identity": self.identity, "code": self.code, "version": __version__, "pid": os.getpid(),
                "device": self.device, "root": str(self.root), "kinds": sorted(self.handlers),
                "requests_served": self.served, "uptime_s": round(time.time() - self.started, 1)}

    def _shutdown(self, payload: dict[str, Any], req: Request) -> dict[str, Any]:
        self.stopping = True
        log.info("shutdown requested%s", f": {payload['reason']}" if payload.get("reason") else "")
        return {"stopping": True, "pid": os.getpid()}

    def publish(self) -> None:
        write_private_json(self.address_file, {
            "socket": self.socket_path, "socket_private_dir": self.private, "key": self.key.hex(),
            "pid": os.getpid(), "start_time": process_start_time(os.getpid()), "host": socket.gethostname(),
            "identity": self.identity, "device": self.device, "root": str(self.root), "protocol": PROTOCOL,
            "alive": str(_life_lock(self.address_file)),
        })

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.listener.fileno(), select.POLLIN)
        while not self.stopping:
            if not poller.poll(min(int(self.idle_timeout * 1000), 2**31 - 1)):
                log.info("idle for %.0f s: stopping", self.idle_timeout)
                return
            try:
                conn, _ = self.listener.accept()
            except OSError as err:
                log.warning("accept failed: %s", err)
                time.sleep(0.1)
                continue
            with conn:
                try:
                    self._serve_connection(conn)
                except Exception:  # noqa: BLE001 - one connection never stops the server
                    log.error("unexpected error on a connection:\n%s", traceback.format_exc())

    def _serve_connection(self, conn: socket.socket) -> None:
        payload = _read_request(conn, self.key, self.identity, self.handshake_timeout, self.request_timeout,
                                self.max_request_bytes)
        if payload is None:
            return
        kind = payload.get("kind")
        req = Request(payload, conn, self.root)
        log.info("request %r%s", kind, f" ({payload['name']})" if isinstance(payload.get("name"), str) else "")
        try:
            handler = self.handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise ServiceError(f"unknown request kind {kind!r} (this server answers {sorted(self.handlers)})")
            conn.settimeout(None)
            summary = handler(payload, req)
            answer = {"ok": True, "summary": summary}
            encode_message(answer, MAX_ANSWER_BYTES)  # an answer the client would refuse is an error here
        except ClientGone as err:
            log.warning("request %r abandoned: %s", kind, err)
            req.abandon()
            return
        except ServiceError as err:  # a refused request (bad path, unknown kind, too large)
            log.error("request %r refused: %s", kind, err)
            req.abandon()
            answer = {"ok": False, "error": str(err)}
        except Exception as err:  # noqa: BLE001 - reported to the client; the server lives on
            log.error("request %r failed: %s\n%s", kind, err, traceback.format_exc())
            req.abandon()
            answer = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        self.served += 1
        if req.client_gone():
            log.warning("client of request %r went away before the answer: discarding its result", kind)
            req.abandon()
            return
        try:
            _send_by(conn, answer, time.monotonic() + max(self.handshake_timeout, self.request_timeout))
        except OSError as err:
            log.warning("could not answer request %r (%s): discarding its result", kind, err)
            req.abandon()

    def close(self) -> None:
        with contextlib.suppress(OSError, ServiceError):
            info = read_address(self.address_file)
            if info and info.get("pid") == os.getpid():
                os.unlink(self.address_file)
        self.listener.close()
        with contextlib.suppress(OSError):
            if os.stat(self.socket_path).st_ino == self.socket_inode:
                os.unlink(self.socket_path)
        if self.private:
            with contextlib.suppress(OSError):
                os.rmdir(self.private)


def _handshake(conn: socket.socket, key: bytes, identity: str, deadline: float) -> None:
    """Authenticate a client (same uid; each side proves it holds ``key``), all by ``deadline``."""
    uid = _peer_uid(conn)
    if uid is not None and uid != os.getuid():
        raise ServiceError(f"connection from uid {uid} refused")
    challenge = secrets.token_bytes(32)
    _send_by(conn, {"hello": "emotion-vectors", "protocol": PROTOCOL, "identity": identity,
                    "challenge": challenge.hex()}, deadline)
    reply = recv_message(conn, MAX_HANDSHAKE_BYTES, deadline)
    if not _mac_matches(reply.get("response"), _mac(key, b"client", challenge)):
        with contextlib.suppress(OSError):
            _send_by(conn, {"ok": False, "error": "authentication failed (wrong key)"}, deadline)
        raise ServiceError("authentication failed (wrong key)")
    _send_by(conn, {"ok": True, "response": _mac(key, b"server", _challenge_of(reply))}, deadline)


def _read_request(conn: socket.socket, key: bytes, identity: str, handshake_timeout: float,
                  request_timeout: float, max_request_bytes: int) -> dict[str, Any] | None:
    """The handshake (one deadline for all of it) and the request message (one deadline for it);
    ``None`` when the connection was dropped (logged; an authenticated client whose request is
    too large is told why)."""
    phase = "handshake"
    try:
        _handshake(conn, key, identity, time.monotonic() + handshake_timeout)
        phase = "request"
        return recv_message(conn, max_request_bytes, time.monotonic() + request_timeout)
    except TimeoutError:
        if phase == "handshake":
            log.warning("dropped a connection: no handshake within %.0f s", handshake_timeout)
        else:
            log.warning("dropped a connection: its request message was not complete within %.0f s",
                        request_timeout)
        return None
    except MessageTooLarge as err:
        log.warning("dropped a connection before its request: %s", err)
        if phase == "request":  # an authenticated client is told why
            with contextlib.suppress(OSError, ServiceError):
                _send_by(conn, {"ok": False, "error": f"request refused: {err}"}, time.monotonic() + 1.0)
        return None
    except (ConnectionResetError, BrokenPipeError) as err:
        log.info("connection closed by the peer before its request (%s)", err.strerror or err)
        return None
    except (OSError, ServiceError) as err:
        log.warning("dropped a connection before its request: %s", err)
        return None


def _send_by(conn: socket.socket, obj: dict[str, Any], deadline: float) -> None:
    """Send one message, all of it by ``deadline`` (a client that stops reading is dropped)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(errno.ETIMEDOUT, "deadline passed")
    conn.settimeout(remaining)
    conn.sendall(encode_message(obj, MAX_ANSWER_BYTES))


def _heartbeat(fd: int, stop: threading.Event) -> None:
    """Touch the life-lock file every ``HEARTBEAT_SECONDS`` until ``stop`` (a thread: it beats
    while a request runs; a stopped or hung process stops beating)."""
    while not stop.wait(HEARTBEAT_SECONDS):
        with contextlib.suppress(OSError):
            os.utime(fd)


def serve(
    address_file: str | Path,
    handler_factory: Callable[[], dict[str, Handler]],
    *,
    identity: str,
    root: str | Path,
    device: str = "cpu",
    code: str | None = None,
    idle_timeout: float = 300.0,
    handshake_timeout: float = 10.0,
    request_timeout: float = 60.0,
    backlog: int = LISTEN_BACKLOG,
) -> None:
    """Serve requests until idle for ``idle_timeout`` seconds, a ``shutdown`` request, or SIGTERM.

    Args:
        address_file: where clients find the server (in a private directory); written 0600
            once the handlers are built, removed when the server stops.
        handler_factory: builds the handlers (loads the model); returns ``{kind: handler}``,
            each ``handler(payload, request) -> summary`` (a JSON-able dict).
        identity: ``server_identity(...)`` of this server (sent in its greeting and to ``ping``).
        root: the only directory tree the handlers may write in (see ``Request.path``).
        device: the device the model is pinned to (``release_device`` looks for it).
        code: the source hash included in ``identity`` (reported by ``ping``).
        handshake_timeout: seconds a connection has, from its acceptance, to authenticate.
        request_timeout: seconds an authenticated connection has to send its whole request
            (one deadline for the message, not per byte).
        backlog: connections that may wait while a request runs (``listen``).

    Raises:
        ServiceError: another server for ``address_file`` is running or starting.
    """
    address_file = Path(address_file).absolute()
    private_dir(address_file.parent)
    life = _hold_life_lock(address_file, wait=2.0)  # released after the address file is gone
    os.utime(life)
    beating = threading.Event()
    threading.Thread(target=_heartbeat, args=(life, beating), name="heartbeat", daemon=True).start()
    server = Server(address_file, identity=identity, code=code or source_hash(), device=device,
                    root=Path(os.path.realpath(root)), idle_timeout=idle_timeout, handshake_timeout=handshake_timeout,
                    request_timeout=request_timeout, backlog=backlog)

    def _stop(signum, frame):  # noqa: ARG001
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    try:
        handlers = handler_factory()
        clash = set(handlers) & set(server.handlers)
        if clash:
            raise ValueError(f"request kinds {sorted(clash)} are built in")
        server.handlers.update(handlers)
        server.publish()
        log.info("server pid %s ready on %s (kinds %s; device %s; root %s); exits after %.0f s idle",
                 os.getpid(), server.socket_path, sorted(server.handlers), device, server.root, idle_timeout)
        server.run()
    finally:
        server.close()
        beating.set()
        os.close(life)
        log.info("server pid %s stopped after %d requests", os.getpid(), server.served)


# --------------------------------------------------------------------------- starting a server


#: Environment variables a detached server gets (names, and prefixes ending in ``_``).
SERVER_ENV_NAMES = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TMP", "TEMP",
    "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS",
    "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH", "XDG_RUNTIME_DIR", "XDG_CACHE_HOME",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)
SERVER_ENV_PREFIXES = (
    "LC_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "TORCH_", "TORCHINDUCTOR_", "PYTORCH_",
    "CUDA_", "NVIDIA_", "NCCL_", "CUBLAS_", "CUDNN_", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "BNB_",
    "ACCELERATE_", "SAFETENSORS_", "SLURM_", "EMOTION_VECTORS_",
)
#: Name parts that mark a credential; such a variable is dropped even under an allowed prefix...
SECRET_PARTS = {"KEY", "KEYS", "APIKEY", "TOKEN", "TOKENS", "SECRET", "SECRETS", "PASSWORD", "PASSWD", "PASS",
                "CREDENTIAL", "CREDENTIALS", "AUTH", "COOKIE", "SESSION", "PRIVATE"}
#: ...except these: the Hugging Face Hub token, which a model load needs to download gated weights.
SERVER_SECRETS_NEEDED = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")


def _looks_secret(name: str) -> bool:
    return bool(SECRET_PARTS & set(name.upper().replace("-", "_").split("_")))


def server_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a detached model server runs with: an allow-list of ``env`` (default
    ``os.environ``).

    Policy: the server needs to find Python and its packages, the model (Hugging Face caches and
    settings), the GPU (CUDA, NCCL, ``CUDA_VISIBLE_DEVICES``), thread settings, the temporary
    directories, locale, proxies and Slurm's variables, and nothing else: every other variable
    is dropped (an ``OPENAI_API_KEY``, a cloud credential, a shell's history file ...). Of the
    allowed names, any whose parts name a credential (``KEY``, ``TOKEN``, ``SECRET``,
    ``PASSWORD``, ``AUTH``, ...) is dropped too, except the Hub token (``HF_TOKEN``,
    ``HUGGING_FACE_HUB_TOKEN``, ``HF_TOKEN_PATH``): loading a gated model from the Hub needs it.
    A proxy variable whose URL carries a user name or password is dropped.
    """
    env = dict(os.environ if env is None else env)
    out: dict[str, str] = {}
    for name, value in env.items():
        if not (name in SERVER_ENV_NAMES or name.startswith(SERVER_ENV_PREFIXES)):
            continue
        if _looks_secret(name) and name not in SERVER_SECRETS_NEEDED:
            continue
        if name.lower().endswith("_proxy") and "@" in value.split("://", 1)[-1].split("/", 1)[0]:
            continue
        out[name] = value
    return out


def ensure_server(
    address_file: str | Path,
    command: list[str],
    *,
    log_file: str | Path,
    device: str = "cpu",
    timeout: float = 3600.0,
    stdin: bytes | None = None,
) -> dict[str, Any]:
    """Return the address of the live server at ``address_file``, starting ``command`` if none.

    Safe when many jobs call it at once (a lock file serialises the check-or-start). A stale or
    untrusted address file is replaced; whether a server lives is decided by its pid, start time
    and life lock (``stale_reason``), never by a connection attempt, so a busy server whose
    queue is full is reused, not replaced. Before starting a server on a GPU, other servers of
    this directory on that GPU are asked to exit. The new server runs in its own session, with
    a filtered environment (``server_environment``), so it outlives the job that started it and
    serves the next ones; it publishes its address once its model is loaded. ``stdin`` is
    written to its standard input (how settings reach it without appearing in its argv).

    Raises:
        ServiceError: the server did not publish its address within ``timeout`` seconds, or
            died while starting (its log's tail is in the message).
    """
    address_file = Path(address_file).absolute()
    server_dir = private_dir(address_file.parent)
    with _locked(server_dir / f"{address_file.stem}.lock"):
        try:
            info = read_address(address_file)
        except ServiceError as err:
            log.warning("%s: replacing it", err)
            info = None
            discard_address(address_file, None)
        if info is not None:
            reason = stale_reason(info, address_file)
            if reason is None:
                return info
            log.warning("stale model server address %s (%s): replacing it", address_file.name, reason)
            if _pid_is_server(info, life_lock_of(info, address_file)):
                # That very server, alive and holding its lock, but its socket is gone: it can
                # never be reached again.
                log.warning("stopping the unreachable model server pid %s", info["pid"])
                with contextlib.suppress(OSError):
                    os.kill(int(info["pid"]), signal.SIGTERM)
            discard_address(address_file, info)
        # A server may be running without an address file: loading its model (the job that
        # started it was cancelled) or stopping. Wait for it rather than start a second one.
        deadline = time.monotonic() + timeout
        while _server_process_running(address_file):
            with contextlib.suppress(ServiceError):
                info = read_address(address_file)
                if info is not None and stale_reason(info, address_file) is None:
                    return info
            if time.monotonic() > deadline:
                raise ServiceError(f"a model server for {address_file.name} runs but did not publish its address "
                                   f"within {timeout:.0f} s (see {log_file})")
            time.sleep(0.2)
        # Devices: a server on a GPU gets its own claim (the caller's, if it made one, else a new
        # one: claim_devices), is pinned to it (CUDA_VISIBLE_DEVICES, so its "cuda" is that GPU)
        # and holds it: the lock's file descriptor goes to the server, which keeps the GPU for as
        # long as it lives, whatever becomes of the job that started it.
        claim, own_claim = _server_claim(device)
        try:
            if uses_gpu(device):
                release_device(server_dir, device, keep=address_file, visible=claim.visible() if claim else None)
            env = server_environment()
            if claim:
                env.update({"CUDA_VISIBLE_DEVICES": claim.visible(), CLAIMED_ENV: claim.visible()})
            log_path = Path(log_file).absolute()
            with DirFd.open(log_path.parent) as d:
                out = d.open_append(log_path.name)
            try:
                proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                        start_new_session=True, env=env, pass_fds=tuple(claim.fds) if claim else ())
            finally:
                os.close(out)
            if stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.write(stdin)  # type: ignore[union-attr]
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()  # type: ignore[union-attr]
            if claim:
                claim.record(proc.pid, "server", address_file)
        finally:
            if own_claim:
                claim.release()  # ours is closed; the server's copy of the lock holds the GPU
        log.info("started model server pid %s (log %s)%s", proc.pid, log_file,
                 f" pinned to GPU {claim.visible()}" if claim else "")
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(ServiceError):
                info = read_address(address_file)
                if info is not None and info.get("pid") == proc.pid:
                    return info
            if proc.poll() is not None:
                tail = Path(log_file).read_text(errors="replace")[-2000:]
                raise ServiceError(f"model server exited with code {proc.returncode} while starting:\n{tail}")
            if time.monotonic() > deadline:
                raise ServiceError(f"model server did not start within {timeout:.0f} s (see {log_file})")
            time.sleep(0.1)


def call(
    address_file: str | Path,
    command: list[str],
    payload: dict[str, Any],
    *,
    identity: str,
    log_file: str | Path,
    device: str = "cpu",
    attempts: int = 3,
    stdin: bytes | None = None,
    hung_after: float | None = None,
) -> dict[str, Any]:
    """``ensure_server`` then ``request``, again when the server stopped just as we connected."""
    for attempt in range(1, attempts + 1):
        info = ensure_server(address_file, command, log_file=log_file, device=device, stdin=stdin)
        log.info("model server pid %s (attempt %d): %s request", info["pid"], attempt, payload.get("kind"))
        try:
            return request(info, payload, identity=identity, hung_after=hung_after)
        except ServiceError as err:
            if not err.retryable or attempt == attempts:
                raise
            log.warning("%s; retrying", err)
            time.sleep(0.5)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- staged outputs


def staged_path(output: str | Path) -> Path:
    """Where the server writes a job's output before the job renames it into place."""
    output = Path(os.path.abspath(output))
    return output.with_name(f"{output.name}.staged-{os.getpid()}")


def remove_staged(output: str | Path) -> None:
    """Remove what killed jobs may have left beside ``output`` (Snakemake runs one job per
    output): staged copies (``.staged-*``) and old outputs moved aside by ``publish`` (``.old-*``)."""
    output = Path(os.path.abspath(output))
    if not output.parent.is_dir():
        return
    with DirFd.open(output.parent) as d:
        for name in d.listdir():
            if name.startswith((f"{output.name}.staged-", f"{output.name}.old-")):
                with contextlib.suppress(OSError):
                    d.remove(name)


def publish(staged: str | Path, output: str | Path) -> None:
    """Rename the complete ``staged`` output (a sibling of ``output``) into ``output``.

    An existing ``output`` is first moved aside to ``<output>.old-<pid>-<tag>`` (a rename), the
    staged one renamed in, and only then the old one removed: a kill at any point leaves
    either the old output or the new one under the finished name, never a half-deleted one
    (what is left aside is removed by the next job's ``remove_staged``). Every step is a rename
    or removal inside the opened directory, so a symlink there is replaced, never followed.
    """
    staged, output = Path(os.path.abspath(staged)), Path(os.path.abspath(output))
    if staged.parent != output.parent:
        raise ServiceError(f"staged output {staged} must be next to {output}")
    with DirFd.open(output.parent) as d:
        st = d.lstat(staged.name)
        if st is None:
            raise ServiceError(f"the server answered but {staged} does not exist")
        if stat.S_ISLNK(st.st_mode):
            raise ServiceError(f"refusing to publish {staged}: it is a symlink")
        d.replace(staged.name, output.name)


def python_command(module: str, *args: str) -> list[str]:
    """``[sys.executable, "-m", module, *args]``: a command in the current environment."""
    return [sys.executable, "-m", module, *args]
