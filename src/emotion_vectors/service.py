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
   ``$XDG_RUNTIME_DIR`` or the temp dir, recorded in the address file and removed at exit.
2. A random 32-byte key, in an address file created 0600 with ``O_CREAT|O_EXCL`` inside the
   0700 directory; both sides prove they know it (HMAC challenge-response, the key never
   crosses the socket). Address files that are not ours or not 0600 are not trusted.
3. Messages are length-prefixed JSON, never pickle, so even an authenticated peer sends data,
   not code; and the server writes only inside the allowed root it was started with (the run's
   results directory): request paths must be absolute, their real path (symlinks resolved) must
   lie under the root, and a symlink where a shard is to be written is refused.

The server never renames anything into a job's output: it writes a complete shard to a staging
path the client names (``<output>.staged-<client pid>``, in the output's directory), answers,
and the CLIENT renames it into place. A job cancelled by Snakemake is gone by then, so nothing
ever lands in the output path Snakemake has deleted; the server sees the closed connection and
removes the staged shard (one left by a client killed after the answer is removed by the next
job for that output). The resumable ``<output>.partial`` stays until the client publishes.

Robustness
----------
The server handles every connection inside one ``try``: a stray connection, a wrong key,
garbage bytes, an oversized message, a client that dies mid-request, or a handshake not finished
within ``handshake_timeout`` seconds (default 10) is logged and dropped, and the server serves
the next one. Clients see every failure as a ``ServiceError`` with a plain message (never a raw
``ConnectionResetError``); failures before the request was sent are ``retryable``.

Identity: the address file's name is derived from ``server_identity(parts)``, a hash of the
host, the Python environment, the package version and a hash of the package's source files
(``src/emotion_vectors/**/*.py``) plus whatever the caller's answers depend on (model spec,
settings, roots). Changed code therefore never reaches an old server; the server re-computes its
identity at start, refuses to start if it differs from the one it was launched for, sends it in
its greeting (the client checks it) and answers it to ``ping``.

A stale address file (its pid dead, a zombie, or reused by another process -- the recorded
process start time from ``/proc`` differs -- or its socket refusing connections) is detected by
the next ``ensure_server`` and replaced automatically. Each server also holds an ``flock`` on
``<name>.alive`` for its whole life (released by the kernel however it dies), so a server still
loading its model when the job that started it was cancelled is waited for, not started twice.

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
import fcntl
import glob
import hashlib
import hmac
import json
import logging
import os
import secrets
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import __version__
from .provenance import package_versions

log = logging.getLogger(__name__)

PROTOCOL = 1
PACKAGE_DIR = Path(__file__).resolve().parent
#: Largest message before authentication (a greeting) and after it (a request with its texts).
MAX_HANDSHAKE_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 1 << 30
#: AF_UNIX paths must fit ``sun_path`` (108 bytes on Linux, 104 on macOS, NUL included).
MAX_SOCKET_PATH = 100
PRIVATE_PREFIX = "emotion-vectors-"
_HEADER = struct.Struct(">I")
#: Packages whose version is part of a server's identity (they change what it computes).
IDENTITY_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "zarr", "numpy")


class ServiceError(RuntimeError):
    """The model server could not be reached, refused a request, or failed it.

    ``retryable`` is true when the failure happened before the request was sent (the server
    was stopping or gone): the caller may start a server and send it again.
    """

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class ClientGone(Exception):
    """Raised inside a handler when its client has disconnected (job cancelled)."""


# --------------------------------------------------------------------------- identity


def source_hash(package_dir: str | Path | None = None) -> str:
    """SHA-256 of the package's ``*.py`` files (relative path and bytes, sorted by path).

    ``package_dir`` defaults to ``PACKAGE_DIR``, the directory this module was imported from.
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


# --------------------------------------------------------------------------- private files


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (mode 0700) if needed and check that only we can use it.

    A directory of ours that others may only read (an older run's, made under umask 022) is
    tightened to 0700; one owned by someone else, writable by others, or a symlink is refused,
    since someone else may have put files in it.

    Raises:
        ServiceError: the directory is not safe to hold a socket and a key.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ServiceError(f"server directory {path} is not a directory (a symlink?): refusing to use it")
    if st.st_uid != os.getuid():
        raise ServiceError(f"server directory {path} belongs to uid {st.st_uid}, not to us ({os.getuid()}): refusing")
    if st.st_mode & 0o022:
        raise ServiceError(
            f"server directory {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}): "
            "refusing; delete it and it will be recreated with mode 0700"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
        log.warning("server directory %s was mode %o: tightened to 0700", path, stat.S_IMODE(st.st_mode))
    return path


def write_private_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically as a new 0600 file (``O_CREAT|O_EXCL``)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def read_address(path: str | Path) -> dict[str, Any] | None:
    """The address file's content, or None if it does not exist.

    Raises:
        ServiceError: the file is not a regular file of ours with mode 0600, or not a server
            address (so it is not trusted).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ServiceError(f"address file {path}: {err}") from None
    with os.fdopen(fd) as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ServiceError(f"address file {path} is not a private (0600) file of ours: not trusted")
        try:
            info = json.load(fh)
        except ValueError as err:
            raise ServiceError(f"address file {path} is not JSON: {err}") from None
    if not isinstance(info, dict) or not all(k in info for k in ("socket", "key", "pid", "identity")):
        raise ServiceError(f"address file {path} is not a server address (older version?)")
    return info


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _life_lock(address_file: Path) -> Path:
    """A lock a server holds from its start to its death (the kernel drops it even on SIGKILL),
    so a server still loading its model (no address file yet) is never started twice."""
    return address_file.with_name(f"{address_file.stem}.alive")


def _hold_life_lock(address_file: Path) -> int:
    fd = os.open(_life_lock(address_file), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ServiceError(f"another server for {address_file.name} is running or starting") from None
    return fd  # kept open (and locked) for the server's lifetime


def _server_process_running(address_file: Path) -> bool:
    try:
        os.close(_hold_life_lock(address_file))
        return False
    except ServiceError:
        return True


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of ``pid`` from /proc, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks since boot; None where /proc is unavailable)."""
    st = _proc_stat(pid)
    return st[1] if st else None


def _pid_gone(pid: int, start_time: int | None) -> str | None:
    """Why ``pid`` is not the process that wrote the address file, or None if it still is."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"pid {pid} is dead"
    except PermissionError:
        return f"pid {pid} was reused by another user's process"
    st = _proc_stat(pid)
    if st is not None:
        state, started = st
        if state in ("Z", "X"):
            return f"pid {pid} has exited"
        if start_time is not None and started != start_time:
            return f"pid {pid} was reused by another process (start time {started}, recorded {start_time})"
    return None


def _socket_refuses(path: str) -> str | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(2.0)
    try:
        sock.connect(path)
    except OSError as err:
        return f"its socket {path} does not answer ({err.strerror or err})"
    finally:
        sock.close()
    return None


def stale_reason(info: dict[str, Any]) -> str | None:
    """Why the server of an address file is gone (None: it is live and listening).

    A live, listening server accepts the connection at kernel level even while busy, so this
    never waits for the current request.
    """
    try:
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return "the address file has no valid pid"
    return _pid_gone(pid, info.get("start_time")) or _socket_refuses(str(info["socket"]))


def discard_address(address_file: str | Path, info: dict[str, Any] | None) -> None:
    """Remove a stale address file and the socket (and private socket directory) it names."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address_file)
    if not info:
        return
    sock = Path(str(info.get("socket", "")))
    if sock.name and sock.is_socket() and sock.lstat().st_uid == os.getuid():
        with contextlib.suppress(OSError):
            sock.unlink()
    private = info.get("socket_private_dir")
    if private and Path(private).name.startswith(PRIVATE_PREFIX):
        with contextlib.suppress(OSError):
            os.rmdir(private)  # only if empty


# --------------------------------------------------------------------------- wire format


def send_message(sock: socket.socket, obj: dict[str, Any]) -> None:
    """Send one message: a 4-byte big-endian length, then UTF-8 JSON."""
    data = json.dumps(obj).encode()
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionResetError(errno.ECONNRESET, "connection closed by the peer")
        buf += chunk
    return bytes(buf)


def recv_message(sock: socket.socket, limit: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Receive one message (see ``send_message``); a JSON object of at most ``limit`` bytes.

    Raises:
        ServiceError: the bytes are not such a message.
        OSError: the connection failed or closed (ConnectionResetError), or timed out.
    """
    (n,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if n > limit:
        raise ServiceError(f"message of {n} bytes exceeds the limit of {limit} (not our protocol?)")
    try:
        obj = json.loads(_recv_exact(sock, n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ServiceError(f"message is not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise ServiceError("message is not a JSON object")
    return obj


def _mac(key: bytes, role: bytes, challenge: bytes) -> str:
    return hmac.new(key, role + challenge, hashlib.sha256).hexdigest()


def _challenge_of(msg: dict[str, Any]) -> bytes:
    try:
        challenge = bytes.fromhex(str(msg["challenge"]))
    except (KeyError, ValueError):
        raise ServiceError("handshake message without a valid challenge") from None
    if len(challenge) != 32:
        raise ServiceError("handshake challenge of the wrong length")
    return challenge


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
        the root or below it, and the path itself must not be a symlink.

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

    def client_gone(self) -> bool:
        """True when the client has closed its connection (it sends nothing after its request)."""
        try:
            readable, _, _ = select.select([self.conn], [], [], 0)
            if not readable:
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
    """Listening socket in ``server_dir`` if the path fits and binds, else in a private temp dir."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str((server_dir / f"{name}.sock").absolute())
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        try:
            sock.bind(path)
            return sock, path, None
        except OSError as err:
            log.info("cannot bind %s (%s): using a private temporary directory", path, err)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = runtime if runtime and os.path.isdir(runtime) else tempfile.gettempdir()
    private = tempfile.mkdtemp(prefix=PRIVATE_PREFIX, dir=base)  # mode 0700, random name
    path = os.path.join(private, "s.sock")
    sock.bind(path)
    return sock, path, private


class Server:
    """One server: a listening socket, its handlers, its address file. See ``serve``."""

    def __init__(self, address_file: Path, *, identity: str, code: str, device: str, root: Path,
                 idle_timeout: float, handshake_timeout: float):
        self.address_file = address_file
        self.identity, self.code, self.device, self.root = identity, code, device, root
        self.idle_timeout, self.handshake_timeout = idle_timeout, handshake_timeout
        self.key = secrets.token_bytes(32)
        self.handlers: dict[str, Handler] = {"ping": self._ping, "shutdown": self._shutdown}
        self.stopping = False
        self.served = 0
        self.started = time.time()
        self.listener, self.socket_path, self.private = _bind(address_file.parent, address_file.stem)
        os.chmod(self.socket_path, 0o600)
        # The socket file's identity: at exit, unlink the path only while it is still ours (a
        # newer server of the same name, e.g. after the run's directory was deleted and remade,
        # may have bound the same path since; removing its socket would make it look stale).
        self.socket_inode = os.stat(self.socket_path).st_ino
        self.listener.listen(4096)  # jobs queue here while a request runs (the kernel caps it)

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
        })

    def run(self) -> None:
        while not self.stopping:
            ready, _, _ = select.select([self.listener], [], [], self.idle_timeout)
            if not ready:
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

    def _handshake(self, conn: socket.socket) -> None:
        uid = _peer_uid(conn)
        if uid is not None and uid != os.getuid():
            raise ServiceError(f"connection from uid {uid} refused")
        challenge = secrets.token_bytes(32)
        send_message(conn, {"hello": "emotion-vectors", "protocol": PROTOCOL, "identity": self.identity,
                            "challenge": challenge.hex()})
        reply = recv_message(conn, MAX_HANDSHAKE_BYTES)
        if not hmac.compare_digest(str(reply.get("response", "")), _mac(self.key, b"client", challenge)):
            with contextlib.suppress(OSError):
                send_message(conn, {"ok": False, "error": "authentication failed (wrong key)"})
            raise ServiceError("authentication failed (wrong key)")
        send_message(conn, {"ok": True, "response": _mac(self.key, b"server", _challenge_of(reply))})

    def _serve_connection(self, conn: socket.socket) -> None:
        conn.settimeout(self.handshake_timeout)
        try:
            self._handshake(conn)
            payload = recv_message(conn)
        except TimeoutError:
            log.warning("dropped a connection: no handshake or request within %.0f s", self.handshake_timeout)
            return
        except (ConnectionResetError, BrokenPipeError) as err:
            # Also what a liveness probe (stale_reason) or a client that gave up looks like.
            log.info("connection closed by the peer before its request (%s)", err.strerror or err)
            return
        except (OSError, ServiceError) as err:
            log.warning("dropped a connection before its request: %s", err)
            return
        kind = payload.get("kind")
        req = Request(payload, conn, self.root)
        log.info("request %r%s", kind, f" ({payload['name']})" if "name" in payload else "")
        try:
            handler = self.handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise ServiceError(f"unknown request kind {kind!r} (this server answers {sorted(self.handlers)})")
            conn.settimeout(None)
            answer = {"ok": True, "summary": handler(payload, req)}
        except ClientGone as err:
            log.warning("request %r abandoned: %s", kind, err)
            req.abandon()
            return
        except ServiceError as err:  # a refused request (bad path, unknown kind)
            log.error("request %r refused: %s", kind, err)
            answer = {"ok": False, "error": str(err)}
        except Exception as err:  # noqa: BLE001 - reported to the client; the server lives on
            log.error("request %r failed: %s\n%s", kind, err, traceback.format_exc())
            answer = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        self.served += 1
        if req.client_gone():
            log.warning("client of request %r went away before the answer: discarding its result", kind)
            req.abandon()
            return
        try:
            conn.settimeout(self.handshake_timeout)
            send_message(conn, answer)
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
        handshake_timeout: seconds a connection may take to authenticate and send its request.

    Raises:
        ServiceError: another server for ``address_file`` is running or starting.
    """
    address_file = Path(address_file).absolute()
    private_dir(address_file.parent)
    life = _hold_life_lock(address_file)  # released after the address file is gone
    server = Server(address_file, identity=identity, code=code or source_hash(), device=device,
                    root=Path(os.path.realpath(root)), idle_timeout=idle_timeout, handshake_timeout=handshake_timeout)

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
        os.close(life)
        log.info("server pid %s stopped after %d requests", os.getpid(), server.served)


# --------------------------------------------------------------------------- client


def request(
    address: str | Path | dict[str, Any],
    payload: dict[str, Any],
    *,
    identity: str | None = None,
    connect_timeout: float = 10.0,
) -> dict[str, Any]:
    """Send one request and wait for its answer (as long as the server's queue and work take).

    Args:
        address: an address file, or its content.
        payload: the request, with its ``kind``.
        identity: the server identity expected (checked against the server's greeting).

    Raises:
        ServiceError: unreachable (``retryable``), wrong identity or key, died, or the request
            failed (with the server's message).
    """
    info = address if isinstance(address, dict) else read_address(address)
    if info is None:
        raise ServiceError(f"no model server at {address} (address file missing)", retryable=True)
    where = f"model server pid {info.get('pid')} ({info['socket']})"
    sent = False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with sock:
            sock.settimeout(connect_timeout)
            sock.connect(str(info["socket"]))
            sock.settimeout(None)  # the greeting comes when the server is done with earlier requests
            hello = recv_message(sock, MAX_HANDSHAKE_BYTES)
            if hello.get("hello") != "emotion-vectors" or hello.get("protocol") != PROTOCOL:
                raise ServiceError(f"{where} does not speak protocol {PROTOCOL}: {hello}")
            if identity is not None and hello.get("identity") != identity:
                raise ServiceError(f"{where} is {str(hello.get('identity'))[:16]}, not the expected {identity[:16]}")
            try:
                key = bytes.fromhex(str(info["key"]))
            except ValueError:
                raise ServiceError(f"address of {where} has a malformed key", retryable=True) from None
            mine = secrets.token_bytes(32)
            send_message(sock, {"response": _mac(key, b"client", _challenge_of(hello)), "challenge": mine.hex()})
            auth = recv_message(sock, MAX_HANDSHAKE_BYTES)
            if not auth.get("ok"):  # e.g. the server was replaced since we read its address
                raise ServiceError(f"{where} refused us: {auth.get('error')}", retryable=True)
            if not hmac.compare_digest(str(auth.get("response", "")), _mac(key, b"server", mine)):
                raise ServiceError(f"{where} failed to prove it knows the key")
            send_message(sock, payload)
            sent = True
            answer = recv_message(sock)
    except TimeoutError:
        raise ServiceError(f"{where} did not accept the connection in {connect_timeout:.0f} s", retryable=True) from None
    except OSError as err:
        if sent:
            raise ServiceError(f"{where} closed the connection during the request "
                               f"({err.strerror or err}): it died or was stopped, see its log") from None
        raise ServiceError(f"cannot reach {where}: {err.strerror or err}", retryable=True) from None
    if not answer.get("ok"):
        raise ServiceError(str(answer.get("error", "unknown error")))
    return answer["summary"]


def ensure_server(
    address_file: str | Path,
    command: list[str],
    *,
    log_file: str | Path,
    device: str = "cpu",
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """Return the address of the live server at ``address_file``, starting ``command`` if none.

    Safe when many jobs call it at once (a lock file serialises the check-or-start). A stale or
    untrusted address file is replaced. Before starting a server on a GPU, other servers of
    this directory on that GPU are asked to exit. The new server runs in its own session, so it
    outlives the job that started it and serves the next ones; it publishes its address once
    its model is loaded.

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
            reason = stale_reason(info)
            if reason is None:
                return info
            log.warning("stale model server address %s (%s): replacing it", address_file.name, reason)
            if info.get("start_time") is not None and not _pid_gone(int(info["pid"]), info["start_time"]):
                # Same pid AND start time: it is that server, alive but not listening.
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
                if info is not None and stale_reason(info) is None:
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
            env = dict(os.environ)
            if claim:
                env.update({"CUDA_VISIBLE_DEVICES": claim.visible(), CLAIMED_ENV: claim.visible()})
            with open(log_file, "a") as out:
                proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, env=env, pass_fds=tuple(claim.fds) if claim else ())
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
) -> dict[str, Any]:
    """``ensure_server`` then ``request``, again when the server stopped just as we connected."""
    for attempt in range(1, attempts + 1):
        info = ensure_server(address_file, command, log_file=log_file, device=device)
        log.info("model server pid %s (attempt %d): %s request", info["pid"], attempt, payload.get("kind"))
        try:
            return request(info, payload, identity=identity)
        except ServiceError as err:
            if not err.retryable or attempt == attempts:
                raise
            log.warning("%s; retrying", err)
            time.sleep(0.5)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- devices
#
# Which GPU a job uses.  Snakemake's ``gpu`` resource (``--resources gpu=N``) limits how many GPU
# jobs run at once but not WHICH device each gets.  So every GPU job claims its own device(s)
# before it touches CUDA (``claim_job_devices``, called by ``jobs.start_job`` for a rule whose
# ``gpu`` resource is >= 1): an exclusive ``flock`` on ``<lock dir>/<device id>.lock``, held until
# the job's process ends (the kernel drops it however the job dies), and
# ``CUDA_VISIBLE_DEVICES`` set to the claimed id(s), so a model spec's ``cuda`` is that device.
# An activation job claims nothing for itself (it only talks to the server); a model server
# it starts gets a claim of its own, is pinned to it and holds it (the lock's file descriptor
# is passed to it, see ``ensure_server``), so while a server holds a GPU no job can claim it; a
# job that finds every device claimed asks idle servers holding one to exit (``claim_devices``).
# Inside a Slurm allocation the devices are the allocation's own (``CUDA_VISIBLE_DEVICES`` as
# Slurm sets it) and the locks are the allocation's.

#: Device ids to allocate among (e.g. "0,1,2,3"); default: CUDA_VISIBLE_DEVICES, else every GPU found.
GPUS_ENV = "EMOTION_VECTORS_GPUS"
#: Directory of the device lock files (default: a private directory per user, host and allocation).
DEVICE_LOCKS_ENV = "EMOTION_VECTORS_DEVICE_LOCKS"
#: Set in a GPU job's environment (and so in a server it starts): the device ids it claimed.
CLAIMED_ENV = "EMOTION_VECTORS_CLAIMED_GPUS"


def _device_key(device: Any) -> str:
    d = str(device or "cpu").strip().lower()
    return "cuda:0" if d == "cuda" else d


def uses_gpu(device: Any) -> bool:
    """True for ``cuda``, ``cuda:N`` and ``auto`` (an accelerate device map over the GPUs)."""
    return _device_key(device).startswith(("cuda", "auto"))


def _split_ids(value: str | None) -> list[str] | None:
    """Device ids of a ``CUDA_VISIBLE_DEVICES``-style value; None when unset."""
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip() and v.strip() != "NoDevFiles"]


def physical_devices(device: Any, visible: str | None = None) -> set[str]:
    """The physical GPU ids a model on ``device`` uses under ``CUDA_VISIBLE_DEVICES=visible``.

    ``cuda`` / ``cuda:N`` is the N-th visible device (the N-th id of ``visible``, or N itself when
    nothing is hidden); ``auto`` is every visible device (``{"*"}``: all of them, when nothing is
    hidden); a CPU device is none.  Ids are strings (an index, or a GPU UUID).
    """
    key = _device_key(device)
    if not uses_gpu(key):
        return set()
    ids = _split_ids(visible)
    if key.startswith("auto"):
        return set(ids) if ids is not None else {"*"}
    index = int(key.split(":", 1)[1]) if ":" in key else 0
    if ids is None:
        return {str(index)}
    return {ids[index]} if index < len(ids) else {f"invalid:{index}"}


def devices_overlap(a: Any, b: Any, *, visible_a: str | None = None, visible_b: str | None = None) -> bool:
    """Whether models on devices ``a`` and ``b`` share a GPU (``auto`` covers every GPU), each
    under its own ``CUDA_VISIBLE_DEVICES`` (none given: every device visible); two CPU models
    "overlap" only when both are on the same CPU device string (``release_device(..., "cpu")``)."""
    pa, pb = physical_devices(a, visible_a), physical_devices(b, visible_b)
    if not pa and not pb:
        return _device_key(a) == _device_key(b)
    if not pa or not pb:
        return False
    return "*" in pa or "*" in pb or bool(pa & pb)


def _process_env(pid: int, name: str) -> str | None:
    """The value of ``name`` in the environment process ``pid`` started with (ours only)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = name.encode() + b"="
    for entry in raw.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace")
    return None


def allocation_id() -> str | None:
    """The Slurm job this process runs in (its GPUs are its own), or None."""
    return os.environ.get("SLURM_JOB_ID") or None


def allocation_server_dir(server_dir: str | Path) -> Path:
    """A run's server directory for this allocation: ``<server_dir>/slurm-<job id>`` inside a
    Slurm job, else ``server_dir``.  Two allocations on one node never share a server: each
    server uses its own allocation's GPU, and Slurm ends it with its allocation."""
    job = allocation_id()
    return Path(server_dir) / f"slurm-{job}" if job else Path(server_dir)


def run_server_dirs(results_root: str | Path = "results") -> list[Path]:
    """The server directories of every run under ``results_root`` (``<run>/activations/.server``,
    as ``workflow/rules/activations.smk`` sets them, and its per-allocation subdirectories)."""
    root = Path(results_root)
    return sorted([*root.glob("*/activations/.server"), *root.glob("*/activations/.server/slurm-*")])


def gpu_ids() -> list[str]:
    """The GPU ids this process may claim: ``$EMOTION_VECTORS_GPUS``, else ``$CUDA_VISIBLE_DEVICES``
    (as Slurm sets it for an allocation), else every NVIDIA GPU of the machine (none: [])."""
    for name in (GPUS_ENV, "CUDA_VISIBLE_DEVICES"):
        ids = _split_ids(os.environ.get(name))
        if ids is not None:
            return ids
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        return [str(i) for i in range(len(list(gpus.iterdir())))]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
        return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]
    return []


def device_lock_dir() -> Path:
    """Where the device locks live: ``$EMOTION_VECTORS_DEVICE_LOCKS``, else a private directory
    of this user on this host (``$XDG_RUNTIME_DIR`` or the temp dir), one per Slurm allocation."""
    explicit = os.environ.get(DEVICE_LOCKS_ENV)
    if explicit:
        return private_dir(explicit)
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = Path(base) / f"{PRIVATE_PREFIX}{os.getuid()}-devices-{socket.gethostname()}"
    job = allocation_id()
    if job:
        private_dir(path)
        path = path / f"slurm-{job}"
    return private_dir(path)


@dataclass
class DeviceClaim:
    """Devices claimed by this process: exclusive locks held until ``release()`` or exit."""

    ids: list[str]
    lock_dir: Path
    fds: list[int] = field(default_factory=list)

    def visible(self) -> str:
        return ",".join(self.ids)

    def pin(self) -> None:
        """Make the claimed devices the only ones CUDA shows this process (and its children)."""
        os.environ["CUDA_VISIBLE_DEVICES"] = self.visible()
        os.environ[CLAIMED_ENV] = self.visible()

    def record(self, pid: int, role: str, address: str | Path | None = None) -> None:
        """Say in each lock file who holds it (``claim_devices`` asks idle servers to exit)."""
        for fd in self.fds:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": pid, "start_time": process_start_time(pid), "role": role,
                                      "address": str(address) if address else None}).encode(), 0)

    def release(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _lock_holder(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        info = json.loads(path.read_text() or "null")
        return info if isinstance(info, dict) else None
    return None


def claim_devices(
    n: int = 1,
    *,
    ids: list[str] | None = None,
    lock_dir: str | Path | None = None,
    timeout: float = 24 * 3600.0,
    poll: float = 0.2,
    release_servers: bool = True,
    log: Callable[..., None] = log.info,
) -> DeviceClaim:
    """Claim ``n`` devices among ``ids`` (default ``gpu_ids()``) for this process.

    Free devices are taken in order.  When fewer than ``n`` are free and a model server holds
    one (its lock file names it), that server is asked to exit after its current request
    (``release_servers``); otherwise we wait (jobs end, idle servers time out).

    Raises:
        ServiceError: fewer than ``n`` devices exist, or none came free within ``timeout`` s.
    """
    ids = list(gpu_ids() if ids is None else ids)
    if n > len(ids):
        raise ServiceError(f"{n} GPU(s) wanted but only {len(ids)} available ({','.join(ids) or 'none'}); "
                           f"set {GPUS_ENV} or CUDA_VISIBLE_DEVICES, or lower --resources gpu")
    lock_dir = private_dir(lock_dir) if lock_dir is not None else device_lock_dir()
    claim = DeviceClaim([], lock_dir)
    deadline = time.monotonic() + timeout
    asked: set[int] = set()
    waited = False
    while True:
        for device in ids:
            if len(claim.ids) == n:
                break
            if device in claim.ids:
                continue
            fd = _try_lock(lock_dir / f"{device}.lock")
            if fd is not None:
                claim.ids.append(device)
                claim.fds.append(fd)
        if len(claim.ids) == n:
            claim.record(os.getpid(), "job")
            log("claimed GPU %s (of %s; locks in %s)%s", claim.visible(), ",".join(ids), lock_dir,
                " after waiting" if waited else "")
            return claim
        if release_servers:
            for device in ids:
                if device in claim.ids:
                    continue
                holder = _lock_holder(lock_dir / f"{device}.lock")
                if not holder or holder.get("role") != "server" or not holder.get("address"):
                    continue
                pid = int(holder["pid"])
                if pid in asked or _pid_gone(pid, holder.get("start_time")):
                    continue
                try:
                    info = read_address(holder["address"])
                    if info and int(info.get("pid", -1)) == pid:  # else still loading: ask later
                        asked.add(pid)
                        log("GPU %s is held by model server pid %s: asking it to exit", device, pid)
                        request(info, {"kind": "shutdown", "reason": f"GPU {device} is needed by pid {os.getpid()}"})
                except ServiceError as err:
                    asked.add(pid)
                    log("model server pid %s holding GPU %s: %s", pid, device, err)
        if time.monotonic() > deadline:
            claim.release()
            raise ServiceError(f"no {n} free GPU(s) among {','.join(ids)} within {timeout:.0f} s (locks in {lock_dir})")
        if not waited:
            log("all of GPU %s are claimed: waiting", ",".join(ids))
            waited = True
        time.sleep(poll)


#: This process's claim (a job's, made by ``claim_job_devices``); passed on to a server it starts.
_JOB_CLAIM: DeviceClaim | None = None


def claim_job_devices(gpus: int, *, log: Callable[..., None] = log.info) -> DeviceClaim | None:
    """For a Snakemake job with resource ``gpu=gpus``: claim and pin that many devices, once.

    A job with ``gpu=0`` claims nothing (and sees no GPU only if it never asks for one).
    Set ``EMOTION_VECTORS_GPUS=none`` to switch the allocator off (every GPU visible, as before).
    """
    global _JOB_CLAIM
    if gpus < 1 or _allocator_off():
        return None
    if _JOB_CLAIM is None:
        ids = gpu_ids()
        if not ids:
            log("no GPU ids found (set %s): GPU not claimed, every device visible", GPUS_ENV)
            return None
        _JOB_CLAIM = claim_devices(gpus, ids=ids, log=log)
        _JOB_CLAIM.pin()
    return _JOB_CLAIM


def _allocator_off() -> bool:
    return os.environ.get(GPUS_ENV, "").strip().lower() == "none"


def _server_claim(device: Any) -> tuple[DeviceClaim | None, bool]:
    """The claim a new server on ``device`` takes over: (claim, whether we made it here).

    The caller's own claim when it has one (a job that claimed its GPU in ``start_job``); else a
    new claim -- every visible device for ``auto``, one otherwise -- as an activation job makes
    (it claims nothing for itself: it only talks to the server). None for a CPU server, with
    the allocator off, or when no GPU id is known (the server then sees every device).
    """
    if not uses_gpu(device) or _allocator_off():
        return None, False
    if _JOB_CLAIM is not None:
        return _JOB_CLAIM, False
    ids = gpu_ids()
    if not ids:
        log.warning("no GPU ids found (set %s): the model server is not pinned", GPUS_ENV)
        return None, False
    n = len(ids) if _device_key(device).startswith("auto") else 1
    return claim_devices(n, ids=ids), True


def _wait_exit(pid: int, start_time: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _pid_gone(pid, start_time):
            return True
        time.sleep(0.1)
    return False


def release_device(
    server_dirs: str | Path | Iterable[str | Path],
    device: str,
    *,
    keep: str | Path | None = None,
    timeout: float = 3600.0,
    visible: str | None = None,
    log: Callable[..., None] = log.info,
) -> list[int]:
    """Ask every live server of ours on this host that holds ``device`` to exit; wait for it.

    ``device`` is read under this process's ``CUDA_VISIBLE_DEVICES`` and each server's device
    under the one it was started with, so ``cuda`` here and ``cuda`` in a server pinned to
    another GPU do not clash.  A busy server finishes its current request first (the shutdown
    request waits its turn), so ``timeout`` is generous. Works for any device (``"cpu"`` too,
    which tests use).

    Args:
        server_dirs: one server directory or several (e.g. ``run_server_dirs()``).
        device: the device about to be used (``cuda``, ``cuda:1``, ``auto``, ``cpu``).
        keep: an address file to leave alone (the caller's own server).
        visible: the ``CUDA_VISIBLE_DEVICES`` under which ``device`` is meant (default: ours).

    Returns:
        The pids of the servers that were stopped.

    Raises:
        ServiceError: a server did not exit within ``timeout`` seconds.
    """
    dirs = [server_dirs] if isinstance(server_dirs, (str, Path)) else list(server_dirs)
    keep = Path(keep).absolute() if keep else None
    host = socket.gethostname()
    mine = visible if visible is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
    stopped: list[int] = []
    for directory in dirs:
        for address in sorted(Path(directory).absolute().glob("*.json")):
            if address == keep:
                continue
            try:
                info = read_address(address)
            except ServiceError:
                continue
            if not info or info.get("host") != host:
                continue
            theirs = _process_env(int(info["pid"]), "CUDA_VISIBLE_DEVICES")
            if not devices_overlap(info.get("device"), device, visible_a=theirs, visible_b=mine):
                continue
            if stale_reason(info):
                continue  # nothing holds the device; the next ensure_server replaces the file
            pid = int(info["pid"])
            log("asking model server pid %s (on %s, %s) to exit: %s is about to be used",
                pid, info.get("device"), address.name, device)
            try:
                request(info, {"kind": "shutdown", "reason": f"{device} is needed by pid {os.getpid()}"})
            except ServiceError as err:
                log("model server pid %s: %s (it may have stopped already)", pid, err)
            if not _wait_exit(pid, info.get("start_time"), timeout):
                raise ServiceError(f"model server pid {pid} holding {device} did not exit within {timeout:.0f} s")
            log("model server pid %s has exited", pid)
            stopped.append(pid)
    if not stopped:
        log("no model server holds %s", _device_key(device))
    return stopped


def release_for_model(spec: dict[str, Any], *, results_root: str | Path = "results",
                      log: Callable[..., None] = log.info) -> list[int]:
    """Before loading the model of ``spec``: make our model servers on its GPU exit.

    A no-op for a CPU model (servers there share the machine's memory like any process).
    """
    device = str(spec.get("device", "cpu"))
    if not uses_gpu(device):
        log("model %s goes to %s: no GPU to free", spec.get("name"), device)
        return []
    return release_device(run_server_dirs(results_root), device, log=log)


# --------------------------------------------------------------------------- staged outputs


def staged_path(output: str | Path) -> Path:
    """Where the server writes a job's output before the job renames it into place."""
    output = Path(os.path.abspath(output))
    return output.with_name(f"{output.name}.staged-{os.getpid()}")


def remove_staged(output: str | Path) -> None:
    """Remove staged copies of ``output`` left by killed jobs (Snakemake runs one job per output)."""
    output = Path(os.path.abspath(output))
    for path in output.parent.glob(f"{glob.escape(output.name)}.staged-*"):
        shutil.rmtree(path, ignore_errors=True)


def publish(staged: str | Path, output: str | Path) -> None:
    """Rename the complete ``staged`` output into ``output`` (replacing what is there)."""
    staged, output = Path(staged), Path(output)
    if not staged.exists():
        raise ServiceError(f"the server answered but {staged} does not exist")
    if output.is_symlink() or output.is_file():
        output.unlink()
    elif output.exists():
        shutil.rmtree(output)
    os.rename(staged, output)


def python_command(module: str, *args: str) -> list[str]:
    """``[sys.executable, "-m", module, *args]``: a command in the current environment."""
    return [sys.executable, "-m", module, *args]
