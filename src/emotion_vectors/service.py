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
import fcntl
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
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import __version__
from .core.provenance import package_versions

log = logging.getLogger(__name__)

PROTOCOL = 1
PACKAGE_DIR = Path(__file__).resolve().parent
#: Largest message before authentication (a greeting, a challenge response).
MAX_HANDSHAKE_BYTES = 64 * 1024
#: Largest request after authentication (a shard's texts, a read's texts, a lens's directions).
#: JSON parsing takes several times the bytes, so this bounds what a request can cost the
#: server; clients split larger reads (``reading.ServerReader``) or are told before sending.
MAX_REQUEST_BYTES = 64 << 20
#: Largest answer a client accepts.
MAX_ANSWER_BYTES = 512 << 20
#: Kept for callers of the previous name: the request bound.
MAX_MESSAGE_BYTES = MAX_REQUEST_BYTES
#: Connections waiting while a request runs (the kernel caps it at ``net.core.somaxconn``).
LISTEN_BACKLOG = 4096
#: Seconds between a server's heartbeats (it touches its life-lock file, ``<name>.alive``).
HEARTBEAT_SECONDS = 2.0
#: A client gives up on a server that has shown no heartbeat, or stayed stopped, this long
#: (``$EMOTION_VECTORS_SERVER_HUNG_AFTER`` overrides it).
HUNG_AFTER = 120.0
HUNG_AFTER_ENV = "EMOTION_VECTORS_SERVER_HUNG_AFTER"
#: How often a waiting client looks at its server's pid, state and heartbeat.
WATCH_SECONDS = 0.5
#: AF_UNIX paths must fit ``sun_path`` (108 bytes on Linux, 104 on macOS, NUL included).
MAX_SOCKET_PATH = 100
PRIVATE_PREFIX = "emotion-vectors-"
_HEADER = struct.Struct(">I")
#: Packages whose version is part of a server's identity (they change what it computes).
IDENTITY_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "zarr", "numpy")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ServiceError(RuntimeError):
    """The model server could not be reached, refused a request, or failed it.

    ``retryable`` is true when the failure happened before the request was sent (the server
    was stopping or gone): the caller may start a server and send it again.
    """

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class ServerHung(ServiceError):
    """The server is alive but has shown no sign of work (stopped, or no heartbeat) too long."""


class MessageTooLarge(ServiceError):
    """A message longer than the receiver accepts (a request over ``MAX_REQUEST_BYTES``)."""


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
        ServiceError: the directory is not safe to hold a socket and a key (or cannot be made).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        st = os.lstat(path)
    except OSError as err:
        raise ServiceError(f"cannot create the private directory {path}: {err.strerror or err}") from None
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


class DirFd:
    """An open directory in which every write happens by name *relative to it*.

    The directory is opened once (``open``: its last component may not be a symlink;
    ``beneath``: every component below a root opened with ``O_NOFOLLOW``) and each file in it is
    created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` against its descriptor, so a symlink planted at a
    name, or a directory swapped for a symlink after a check, is refused at the moment of
    opening rather than followed. Renames and removals are ``*at`` calls on the descriptor too
    (a rename replaces a symlink at its target name, it never writes through it).
    """

    def __init__(self, fd: int, path: str | Path):
        self.fd = fd
        self.path = Path(path)

    @classmethod
    def open(cls, path: str | Path) -> "DirFd":
        """The directory ``path`` (its last component must not be a symlink)."""
        try:
            return cls(os.open(path, _DIR_FLAGS), path)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                raise ServiceError(f"refusing to use {path}: it is a symlink or not a directory") from None
            raise ServiceError(f"cannot open directory {path}: {err.strerror or err}") from None

    @classmethod
    def beneath(cls, root: str | Path, path: str | Path) -> "DirFd":
        """The directory ``path``, reached from ``root`` one component at a time, none a symlink.

        ``path``'s real path must be ``root``'s or below it (checked first); the walk then opens
        each component of it below the root with ``O_NOFOLLOW``, so a component swapped for a
        symlink since the check is refused.

        Raises:
            ServiceError: ``path`` lies outside ``root``, or a component is a symlink.
        """
        root_real = os.path.realpath(root)
        real = os.path.realpath(path)
        rel = os.path.relpath(real, root_real)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
            raise ServiceError(f"refusing to write in {path}: outside the server's root {root_real}")
        d = cls.open(root_real)
        where = Path(root_real)
        for part in [] if rel == os.curdir else rel.split(os.sep):
            try:
                fd = os.open(part, _DIR_FLAGS, dir_fd=d.fd)
            except OSError as err:
                d.close()
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ServiceError(f"refusing to write in {path}: {where / part} is a symlink or not a directory") from None
                raise ServiceError(f"cannot open {where / part}: {err.strerror or err}") from None
            d.close()
            where = where / part
            d = cls(fd, where)
        return d

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "DirFd":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DirFd({self.path}, fd={self.fd})"

    # reading
    def lstat(self, name: str) -> os.stat_result | None:
        """``lstat`` of ``name`` in this directory (None if absent)."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        return self.lstat(name) is not None

    def listdir(self) -> list[str]:
        return os.listdir(self.fd)

    def refuse_symlink(self, name: str) -> None:
        """Raise ``ServiceError`` if ``name`` is a symlink (absent or anything else is fine)."""
        st = self.lstat(name)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise ServiceError(f"refusing to write {self.path / name}: it is a symlink")

    def proc_path(self, name: str = "") -> str:
        """A path naming ``name`` in this very directory, for libraries that only take paths:
        ``/proc/self/fd/<fd>/<name>`` (the kernel resolves it to the open directory, not by
        walking ``self.path`` again); ``self.path / name`` where there is no ``/proc``."""
        if os.path.isdir(f"/proc/self/fd/{self.fd}"):
            return f"/proc/self/fd/{self.fd}/{name}" if name else f"/proc/self/fd/{self.fd}"
        return str(self.path / name) if name else str(self.path)

    # writing
    def create(self, name: str, flags: int = os.O_WRONLY, mode: int = 0o600) -> int:
        """A new file ``name`` (``O_CREAT|O_EXCL|O_NOFOLLOW``): never an existing file, never a symlink.

        Raises:
            ServiceError: something (a symlink, a file) is already there.
        """
        try:
            return os.open(name, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)
        except FileExistsError:
            what = "a symlink" if stat.S_ISLNK(self.lstat(name).st_mode) else "already there"  # type: ignore[union-attr]
            raise ServiceError(f"refusing to write {self.path / name}: {what}") from None

    def open_lock(self, name: str) -> int:
        """Open (or create) the lock file ``name``: a regular file of ours, never through a symlink."""
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.fd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ServiceError(f"refusing to use lock {self.path / name}: it is a symlink") from None
            raise ServiceError(f"cannot open lock {self.path / name}: {err.strerror or err}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            os.close(fd)
            raise ServiceError(f"refusing to use lock {self.path / name}: not a regular file of ours")
        return fd

    def open_append(self, name: str, mode: int = 0o600) -> int:
        """Open ``name`` for appending (created if missing), never through a symlink."""
        try:
            return os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                           dir_fd=self.fd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ServiceError(f"refusing to write {self.path / name}: it is a symlink") from None
            raise ServiceError(f"cannot open {self.path / name}: {err.strerror or err}") from None

    def make_private_dir(self, name: str) -> "DirFd":
        """Create the new directory ``name`` (mode 0700; never an existing one) and open it."""
        try:
            os.mkdir(name, 0o700, dir_fd=self.fd)
        except FileExistsError:
            raise ServiceError(f"refusing to use {self.path / name}: already there") from None
        d = DirFd(os.open(name, _DIR_FLAGS, dir_fd=self.fd), self.path / name)
        if os.fstat(d.fd).st_uid != os.getuid():
            d.close()
            raise ServiceError(f"{self.path / name} is not ours")
        return d

    def rename(self, name: str, new_name: str, dst: "DirFd | None" = None) -> None:
        """Rename ``name`` here to ``new_name`` here or in ``dst`` (replacing a file or an empty
        directory there; a symlink there is replaced, not followed)."""
        os.rename(name, new_name, src_dir_fd=self.fd, dst_dir_fd=(dst or self).fd)

    def replace(self, name: str, new_name: str) -> None:
        """Rename the complete ``name`` here to ``new_name``, never leaving a half-removed one.

        An existing ``new_name`` is first moved aside (``<new_name>.old-<pid>-<tag>``, a rename),
        ``name`` renamed in, and only then the old one removed: a kill at any point leaves the
        old output or the new one under ``new_name``, complete. Copies left aside by a killed
        earlier call are removed here too. A symlink at ``new_name`` is moved aside and
        removed, never followed."""
        old = None
        if self.exists(new_name):
            old = f"{new_name}.old-{os.getpid()}-{secrets.token_hex(3)}"
            self.rename(new_name, old)
        self.rename(name, new_name)
        for leftover in self.listdir():
            if leftover.startswith(f"{new_name}.old-"):
                self.remove(leftover)

    def unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def remove(self, name: str) -> None:
        """Remove ``name`` whatever it is (a directory tree, a file, a symlink: not what it points
        to); what another process removes meanwhile is no error."""
        st = self.lstat(name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=self.fd, onerror=_gone_is_fine)
        else:
            self.unlink(name)

    def symlinks_inside(self, name: str) -> list[str]:
        """The symlinks anywhere below the directory ``name`` (relative paths)."""
        found: list[str] = []
        try:
            top = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except OSError:
            return found
        try:
            for root, dirs, files, _ in os.fwalk(dir_fd=top, follow_symlinks=False):
                for entry in dirs + files:
                    if stat.S_ISLNK(os.stat(os.path.join(root, entry), dir_fd=top, follow_symlinks=False).st_mode):
                        found.append(os.path.normpath(os.path.join(root, entry)))
        finally:
            os.close(top)
        return found


def _gone_is_fine(function: Any, path: str, exc_info: Any) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def write_private_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically as a new 0600 file (``O_CREAT|O_EXCL|O_NOFOLLOW`` in
    the opened directory, then renamed over ``path``)."""
    path = Path(path)
    tmp = f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    with DirFd.open(path.parent) as d:
        fd = d.create(tmp)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            d.rename(tmp, path.name)
        except BaseException:
            d.unlink(tmp)
            raise


def read_address(path: str | Path) -> dict[str, Any] | None:
    """The address file's content, or None if it does not exist.

    Raises:
        ServiceError: the file is not a regular file of ours with mode 0600, or not a server
            address (so it is not trusted).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
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


def _open_lock(path: Path) -> int:
    with DirFd.open(path.parent) as d:
        return d.open_lock(path.name)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _life_lock(address_file: Path) -> Path:
    """A lock a server holds from its start to its death (the kernel drops it even on SIGKILL),
    so a server still loading its model (no address file yet) is never started twice. Its mtime
    is the server's heartbeat (touched every ``HEARTBEAT_SECONDS``)."""
    return address_file.with_name(f"{address_file.stem}.alive")


def _hold_life_lock(address_file: Path, wait: float = 0.0) -> int:
    """Take the life lock of ``address_file`` (waiting up to ``wait`` s: a client's liveness
    probe holds it shared for a moment)."""
    fd = _open_lock(_life_lock(address_file))
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd  # kept open (and locked) for the server's lifetime
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise ServiceError(f"another server for {address_file.name} is running or starting") from None
            time.sleep(0.05)


def _life_lock_free(lock: str | Path) -> bool:
    """True when no process holds the life lock ``lock`` (no server runs for it).

    A shared, non-blocking probe, released at once; nothing is created.
    """
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # cannot tell (e.g. a symlink planted there): never take a server for dead on that
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _server_process_running(address_file: Path) -> bool:
    return not _life_lock_free(_life_lock(address_file))


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


def _proc_state(pid: int) -> str | None:
    st = _proc_stat(pid)
    return st[0] if st else None


def _pid_is_server(info: dict[str, Any], lock: str | Path | None) -> bool:
    """The address file's pid is alive, is the process that wrote it, and holds the life lock."""
    try:
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    return _pid_gone(pid, info.get("start_time")) is None and lock is not None and not _life_lock_free(lock)


def life_lock_of(info: dict[str, Any], address_file: str | Path | None = None) -> Path | None:
    """The life-lock file of the server of an address (recorded in it, or next to ``address_file``)."""
    if info.get("alive"):
        return Path(str(info["alive"]))
    return _life_lock(Path(address_file)) if address_file is not None else None


def stale_reason(info: dict[str, Any], address_file: str | Path | None = None) -> str | None:
    """Why the server of an address file is gone (None: it is alive).

    Decided by the server's own marks, never by a connection attempt (a busy server's full
    queue refuses connections at once, which says nothing about its health): its pid must be
    alive and be the process that wrote the file (same start time, from ``/proc``), it must
    hold its life lock (``<name>.alive``, released by the kernel however it dies), and its
    socket file must exist (it removes it only when it stops).
    """
    try:
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return "the address file has no valid pid"
    gone = _pid_gone(pid, info.get("start_time"))
    if gone:
        return gone
    lock = life_lock_of(info, address_file)
    if lock is not None and _life_lock_free(lock):
        return f"pid {pid} does not hold the server's lock {lock.name} (not a model server, or stopping)"
    sock = str(info.get("socket", ""))
    try:
        if not stat.S_ISSOCK(os.lstat(sock).st_mode):
            return f"{sock} is not a socket"
    except OSError:
        return f"its socket {sock} is gone"
    return None


def hung_after_seconds() -> float:
    """Seconds without a heartbeat (or stopped) after which a client gives up on its server."""
    value = os.environ.get(HUNG_AFTER_ENV)
    if value:
        try:
            if float(value) > 0:
                return float(value)
        except ValueError:
            pass
        log.warning("%s=%r is not a positive number of seconds: using %.0f", HUNG_AFTER_ENV, value, HUNG_AFTER)
    return HUNG_AFTER


class _Unwell(Exception):
    """Raised while a client waits: its server died (``dead``) or is hung."""

    def __init__(self, reason: str, dead: bool):
        super().__init__(reason)
        self.reason, self.dead = reason, dead


class ServerWatch:
    """What a waiting client knows of its server's health, from the server's own marks only.

    ``problem()`` (called every ``WATCH_SECONDS`` while nothing arrives) says the server has died
    (its pid gone or reused: ``dead``) or is hung: stopped (``SIGSTOP``; ``/proc`` state ``T``)
    or without a heartbeat (the mtime of its life-lock file, touched every
    ``HEARTBEAT_SECONDS``) for ``hung_after`` seconds of the client's own clock (no clock is
    compared with another). A busy server has a heartbeat, so it is waited for however long its
    request takes. If the client itself was suspended (its own polls far apart), it starts
    counting again.
    """

    def __init__(self, info: dict[str, Any], hung_after: float, address_file: str | Path | None = None):
        self.pid = int(info["pid"])
        self.start_time = info.get("start_time")
        self.lock = life_lock_of(info, address_file)
        self.hung_after = float(hung_after)
        now = time.monotonic()
        self.beat = self._beat()
        self.beat_seen = now
        self.last_poll = now
        self.stopped_since: float | None = None

    def _beat(self) -> int | None:
        if self.lock is None:
            return None
        try:
            return os.stat(self.lock).st_mtime_ns
        except OSError:
            return None

    def problem(self) -> tuple[str, bool] | None:
        now = time.monotonic()
        if now - self.last_poll > max(10.0, 10 * WATCH_SECONDS):  # we were stopped ourselves
            self.beat_seen, self.stopped_since = now, None
        self.last_poll = now
        gone = _pid_gone(self.pid, self.start_time)
        if gone:
            return f"it died ({gone})", True
        if _proc_state(self.pid) in ("T", "t"):  # stopped: no heartbeat either; say so when it is time
            self.stopped_since = self.stopped_since or now
            if now - self.stopped_since >= self.hung_after:
                return (f"it has been stopped (SIGSTOP?) for {now - self.stopped_since:.0f} s; "
                        f"'kill -CONT {self.pid}' resumes it, 'kill {self.pid}' ends it"), False
            return None
        if self.stopped_since is not None:  # continued: count the heartbeat from now
            self.stopped_since, self.beat_seen = None, now
        beat = self._beat()
        if beat != self.beat:
            self.beat, self.beat_seen = beat, now
        elif self.lock is not None and now - self.beat_seen >= self.hung_after:
            return (f"it has shown no heartbeat ({self.lock.name} untouched) for {now - self.beat_seen:.0f} s: "
                    f"hung? 'kill {self.pid}' ends it"), False
        return None

    def check(self) -> None:
        problem = self.problem()
        if problem:
            raise _Unwell(*problem)


def discard_address(address_file: str | Path, info: dict[str, Any] | None) -> None:
    """Remove a stale address file and the socket (and private socket directory) it names."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address_file)
    if not info:
        return
    sock = Path(str(info.get("socket", "")))
    with contextlib.suppress(OSError):
        if sock.name and stat.S_ISSOCK(os.lstat(sock).st_mode) and os.lstat(sock).st_uid == os.getuid():
            sock.unlink()
    private = info.get("socket_private_dir")
    if private and Path(private).name.startswith(PRIVATE_PREFIX):
        with contextlib.suppress(OSError):
            os.rmdir(private)  # only if empty


# --------------------------------------------------------------------------- wire format


def encode_message(obj: dict[str, Any], limit: int = MAX_REQUEST_BYTES) -> bytes:
    """One message: a 4-byte big-endian length, then ASCII JSON (at most ``limit`` bytes).

    Raises:
        MessageTooLarge: the JSON is longer than ``limit`` (nothing is sent).
    """
    data = json.dumps(obj).encode()
    if len(data) > limit:
        raise MessageTooLarge(f"message of {len(data):,} bytes exceeds the limit of {limit:,} bytes")
    return _HEADER.pack(len(data)) + data


def send_message(sock: socket.socket, obj: dict[str, Any], limit: int = MAX_ANSWER_BYTES) -> None:
    """Send one message (see ``encode_message``)."""
    sock.sendall(encode_message(obj, limit))


def _recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    """``n`` bytes; with ``deadline`` (``time.monotonic()``), all of them by then (one deadline
    for the whole message, however the bytes trickle in)."""
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(errno.ETIMEDOUT, "deadline passed")
            sock.settimeout(remaining)
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionResetError(errno.ECONNRESET, "connection closed by the peer")
        buf += chunk
    return bytes(buf)


def _decode(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ServiceError(f"message is not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise ServiceError("message is not a JSON object")
    return obj


def recv_message(sock: socket.socket, limit: int = MAX_REQUEST_BYTES, deadline: float | None = None) -> dict[str, Any]:
    """Receive one message (see ``encode_message``); a JSON object of at most ``limit`` bytes,
    complete by ``deadline`` if one is given.

    Raises:
        MessageTooLarge: the announced length exceeds ``limit`` (its bytes are not read).
        ServiceError: the bytes are not such a message.
        OSError: the connection failed or closed (ConnectionResetError), or the deadline
            passed (TimeoutError).
    """
    (n,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    if n > limit:
        raise MessageTooLarge(f"message of {n:,} bytes exceeds the limit of {limit:,} bytes (not our protocol?)")
    return _decode(_recv_exact(sock, n, deadline))


def _wait_io(sock: socket.socket, events: int, watch: ServerWatch) -> None:
    """Block until ``sock`` is ready for ``events``, checking the server's health meanwhile."""
    poller = select.poll()
    poller.register(sock.fileno(), events)
    while not poller.poll(int(WATCH_SECONDS * 1000)):
        watch.check()


def _recv_watched(sock: socket.socket, n: int, watch: ServerWatch) -> bytes:
    """``n`` bytes from the server, for as long as it is alive and not hung (``watch``)."""
    buf = bytearray()
    while len(buf) < n:
        _wait_io(sock, select.POLLIN, watch)
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except BlockingIOError:
            continue
        if not chunk:
            raise ConnectionResetError(errno.ECONNRESET, "connection closed by the server")
        buf += chunk
    return bytes(buf)


def _recv_message_watched(sock: socket.socket, limit: int, watch: ServerWatch) -> dict[str, Any]:
    (n,) = _HEADER.unpack(_recv_watched(sock, _HEADER.size, watch))
    if n > limit:
        raise MessageTooLarge(f"the server sent a message of {n:,} bytes, above the limit of {limit:,}")
    return _decode(_recv_watched(sock, n, watch))


def _send_watched(sock: socket.socket, data: bytes, watch: ServerWatch) -> None:
    view = memoryview(data)
    while view:
        _wait_io(sock, select.POLLOUT, watch)
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            continue


def _mac(key: bytes, role: bytes, challenge: bytes) -> str:
    return hmac.new(key, role + challenge, hashlib.sha256).hexdigest()


def _mac_matches(given: Any, expected: str) -> bool:
    """Constant-time comparison of a peer's MAC with ours; anything but a string is wrong
    (a non-ASCII string is compared as bytes: ``compare_digest`` refuses non-ASCII ``str``)."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


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

    def _handshake(self, conn: socket.socket, deadline: float) -> None:
        uid = _peer_uid(conn)
        if uid is not None and uid != os.getuid():
            raise ServiceError(f"connection from uid {uid} refused")
        challenge = secrets.token_bytes(32)
        _send_by(conn, {"hello": "emotion-vectors", "protocol": PROTOCOL, "identity": self.identity,
                        "challenge": challenge.hex()}, deadline)
        reply = recv_message(conn, MAX_HANDSHAKE_BYTES, deadline)
        if not _mac_matches(reply.get("response"), _mac(self.key, b"client", challenge)):
            with contextlib.suppress(OSError):
                _send_by(conn, {"ok": False, "error": "authentication failed (wrong key)"}, deadline)
            raise ServiceError("authentication failed (wrong key)")
        _send_by(conn, {"ok": True, "response": _mac(self.key, b"server", _challenge_of(reply))}, deadline)

    def _serve_connection(self, conn: socket.socket) -> None:
        phase = "handshake"
        try:
            self._handshake(conn, time.monotonic() + self.handshake_timeout)
            phase = "request"
            payload = recv_message(conn, self.max_request_bytes, time.monotonic() + self.request_timeout)
        except TimeoutError:
            if phase == "handshake":
                log.warning("dropped a connection: no handshake within %.0f s", self.handshake_timeout)
            else:
                log.warning("dropped a connection: its request message was not complete within %.0f s",
                            self.request_timeout)
            return
        except MessageTooLarge as err:
            log.warning("dropped a connection before its request: %s", err)
            if phase == "request":  # an authenticated client is told why
                with contextlib.suppress(OSError, ServiceError):
                    _send_by(conn, {"ok": False, "error": f"request refused: {err}"}, time.monotonic() + 1.0)
            return
        except (ConnectionResetError, BrokenPipeError) as err:
            log.info("connection closed by the peer before its request (%s)", err.strerror or err)
            return
        except (OSError, ServiceError) as err:
            log.warning("dropped a connection before its request: %s", err)
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


# --------------------------------------------------------------------------- client


def _connect(info: dict[str, Any], watch: ServerWatch, refused_for: float, where: str) -> socket.socket:
    """A connection to the server's socket, waiting while its queue is full.

    A full queue (``EAGAIN``: the server is busy and many jobs wait) is retried with growing
    pauses for as long as the server is alive and not hung (``watch``); a refused connection or
    a missing socket (the server is stopping or gone) for ``refused_for`` seconds at most.
    """
    path = str(info["socket"])
    delay, refused_since, said = 0.02, None, False
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:  # EAGAIN: the listen queue is full -- busy, not gone
            sock.close()
            if not said:
                log.info("%s is busy (its queue of waiting connections is full): waiting", where)
                said = True
        except (ConnectionRefusedError, FileNotFoundError) as err:
            sock.close()
            refused_since = refused_since or time.monotonic()
            if time.monotonic() - refused_since > refused_for:
                raise ServiceError(f"cannot reach {where}: {err.strerror or err}", retryable=True) from None
        except OSError as err:
            sock.close()
            raise ServiceError(f"cannot reach {where}: {err.strerror or err}", retryable=True) from None
        watch.check()
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def request(
    address: str | Path | dict[str, Any],
    payload: dict[str, Any],
    *,
    identity: str | None = None,
    connect_timeout: float = 10.0,
    hung_after: float | None = None,
) -> dict[str, Any]:
    """Send one request and wait for its answer (as long as the server's queue and work take,
    while the server is alive and not hung).

    Args:
        address: an address file, or its content.
        payload: the request, with its ``kind`` (at most ``MAX_REQUEST_BYTES`` as JSON).
        identity: the server identity expected (checked against the server's greeting).
        connect_timeout: seconds to keep trying while the socket refuses connections (a
            server stopping or gone); a full queue is waited for as long as the server lives.
        hung_after: seconds without a heartbeat (or stopped) before giving up (default
            ``hung_after_seconds()``).

    Raises:
        ServiceError: unreachable or died before the request was sent (``retryable``), the
            request is too large, wrong identity or key, died or hung during the request
            (``ServerHung``), or the request failed (with the server's message).
    """
    info = address if isinstance(address, dict) else read_address(address)
    if info is None:
        raise ServiceError(f"no model server at {address} (address file missing)", retryable=True)
    where = f"model server pid {info.get('pid')} ({info['socket']})"
    try:
        data = encode_message(payload, MAX_REQUEST_BYTES)
    except MessageTooLarge as err:
        raise MessageTooLarge(f"{payload.get('kind')!r} request not sent: {err}; split it into smaller requests") from None
    watch = ServerWatch(info, hung_after if hung_after is not None else hung_after_seconds(),
                        None if isinstance(address, dict) else address)
    sent = False
    try:
        with _connect(info, watch, connect_timeout, where) as sock:
            # the greeting comes when the server is done with the requests before ours
            hello = _recv_message_watched(sock, MAX_HANDSHAKE_BYTES, watch)
            if hello.get("hello") != "emotion-vectors" or hello.get("protocol") != PROTOCOL:
                raise ServiceError(f"{where} does not speak protocol {PROTOCOL}: {str(hello)[:200]}")
            if identity is not None and hello.get("identity") != identity:
                raise ServiceError(f"{where} is {str(hello.get('identity'))[:16]}, not the expected {identity[:16]}")
            try:
                key = bytes.fromhex(str(info["key"]))
            except ValueError:
                raise ServiceError(f"address of {where} has a malformed key", retryable=True) from None
            mine = secrets.token_bytes(32)
            _send_watched(sock, encode_message({"response": _mac(key, b"client", _challenge_of(hello)),
                                                "challenge": mine.hex()}, MAX_HANDSHAKE_BYTES), watch)
            auth = _recv_message_watched(sock, MAX_HANDSHAKE_BYTES, watch)
            if not auth.get("ok"):  # e.g. the server was replaced since we read its address
                raise ServiceError(f"{where} refused us: {auth.get('error')}", retryable=True)
            if not _mac_matches(auth.get("response"), _mac(key, b"server", mine)):
                raise ServiceError(f"{where} failed to prove it knows the key")
            try:
                _send_watched(sock, data, watch)
            except OSError:
                # the server may have refused the request (too large for it) and hung up: its reason
                refusal = _read_refusal(sock)
                if refusal:
                    raise ServiceError(f"{where}: {refusal}") from None
                raise
            sent = True
            answer = _recv_message_watched(sock, MAX_ANSWER_BYTES, watch)
    except _Unwell as err:
        if err.dead:
            if sent:
                raise ServiceError(f"{where} {err.reason} during the request; see its log") from None
            raise ServiceError(f"{where}: {err.reason}", retryable=True) from None
        raise ServerHung(f"{where}: {err.reason}") from None
    except OSError as err:
        if sent:
            raise ServiceError(f"{where} closed the connection during the request "
                               f"({err.strerror or err}): it died or was stopped, see its log") from None
        raise ServiceError(f"cannot reach {where}: {err.strerror or err}", retryable=True) from None
    if not answer.get("ok"):
        raise ServiceError(str(answer.get("error", "unknown error")))
    summary = answer.get("summary")
    if not isinstance(summary, dict):
        raise ServiceError(f"{where} answered {payload.get('kind')!r} without a summary (got {str(answer)[:200]})")
    return summary


def _read_refusal(sock: socket.socket) -> str | None:
    """An error message the server sent before hanging up, if any (within a second)."""
    with contextlib.suppress(OSError, ServiceError, ValueError):
        sock.setblocking(True)
        msg = recv_message(sock, MAX_HANDSHAKE_BYTES, time.monotonic() + 1.0)
        if msg.get("ok") is False:
            return str(msg.get("error"))
    return None


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


_WARNED: set[str] = set()


def _warn_once(message: str, *args: Any) -> None:
    text = message % args
    if text not in _WARNED:
        _WARNED.add(text)
        log.warning("%s", text)


def runtime_dir() -> Path | None:
    """``$XDG_RUNTIME_DIR`` when it is usable: an existing directory of ours that nobody else
    can write in. None when it is unset, missing (common on Slurm nodes), someone else's or
    open to others (said once in the log): callers then use their fallback."""
    value = os.environ.get("XDG_RUNTIME_DIR")
    if not value:
        return None
    try:
        st = os.stat(value)
    except OSError as err:
        _warn_once("XDG_RUNTIME_DIR=%s is unusable (%s): using a private directory elsewhere", value,
                   err.strerror or err)
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        _warn_once("XDG_RUNTIME_DIR=%s is not a directory of ours closed to others (uid %s, mode %o): "
                   "using a private directory elsewhere", value, st.st_uid, stat.S_IMODE(st.st_mode))
        return None
    return Path(value)


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/emotion-vectors`` (default ``~/.cache/emotion-vectors``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "emotion-vectors"


def user_secret() -> bytes:
    """A random 32-byte secret of this user, created once in ``user_cache_dir()/secret`` (0600,
    in a 0700 directory of ours): other users cannot read it, so names derived from it cannot
    be predicted (``device_lock_dir``). Created race-free (written aside, then ``link``-ed: the
    first writer wins, the others read its secret).

    Raises:
        ServiceError: the cache directory or the secret file is not ours (or cannot be made).
    """
    directory = private_dir(user_cache_dir())
    with DirFd.open(directory) as d:
        for _ in range(3):
            try:
                fd = os.open("secret", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d.fd)
            except FileNotFoundError:
                tmp = f"secret.{os.getpid()}.{secrets.token_hex(4)}.tmp"
                with os.fdopen(d.create(tmp), "w") as fh:
                    fh.write(secrets.token_hex(32))
                try:
                    os.link(tmp, "secret", src_dir_fd=d.fd, dst_dir_fd=d.fd, follow_symlinks=False)
                except FileExistsError:
                    pass
                finally:
                    d.unlink(tmp)
                continue
            except OSError as err:
                raise ServiceError(f"cannot read {directory / 'secret'}: {err.strerror or err}") from None
            with os.fdopen(fd) as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                    raise ServiceError(f"{directory / 'secret'} is not a private (0600) file of ours: delete it")
                try:
                    value = bytes.fromhex(fh.read().strip())
                except ValueError:
                    value = b""
            if len(value) != 32:
                raise ServiceError(f"{directory / 'secret'} is not a secret written by this package: delete it")
            return value
    raise ServiceError(f"could not create {directory / 'secret'}")


def device_lock_dir() -> Path:
    """Where the device locks live, one directory per user, host and Slurm allocation, which no
    other user can create first (they would block every GPU job):

    1. ``$EMOTION_VECTORS_DEVICE_LOCKS`` if set (checked: ours, 0700);
    2. ``$XDG_RUNTIME_DIR`` when it is a usable directory of ours (``runtime_dir``);
    3. otherwise a directory in the temporary directory whose name carries a tag derived from
       this user's secret (``user_secret``): nobody else can predict it, so nobody can create
       it before us. (A fixed name there, as before, could be taken by anyone, and the
       temporary directory's sticky bit would then stop us from removing it.)

    Raises:
        ServiceError: the directory cannot be made ours (with what to do about it).
    """
    explicit = os.environ.get(DEVICE_LOCKS_ENV)
    if explicit:
        return private_dir(explicit)
    host = socket.gethostname()
    base = runtime_dir()
    if base is not None:
        path = base / f"{PRIVATE_PREFIX}{os.getuid()}-devices-{host}"
        remedy = f"set {DEVICE_LOCKS_ENV} to a directory of yours"
    else:
        try:
            secret = user_secret()
        except ServiceError as err:
            raise ServiceError(f"{err}; no usable XDG_RUNTIME_DIR either: set {DEVICE_LOCKS_ENV} to a private "
                               "directory of yours for the GPU locks") from None
        tag = hmac.new(secret, f"device-locks:{host}".encode(), hashlib.sha256).hexdigest()[:24]
        path = Path(tempfile.gettempdir()) / f"{PRIVATE_PREFIX}{os.getuid()}-devices-{host}-{tag}"
        remedy = (f"set {DEVICE_LOCKS_ENV} to a directory of yours, or delete {user_cache_dir() / 'secret'} "
                  "to draw another name")
    try:
        job = allocation_id()
        if job:
            private_dir(path)
            path = path / f"slurm-{job}"
        return private_dir(path)
    except ServiceError as err:
        raise ServiceError(f"GPU lock directory: {err}; {remedy}") from None


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
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _lock_holder(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd) as fh:
            info = json.loads(fh.read(64 * 1024) or "null")
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
            if stale_reason(info, address):
                continue  # nothing holds the device; the next ensure_server replaces the file
            pid = int(info["pid"])
            log("asking model server pid %s (on %s, %s) to exit: %s is about to be used",
                pid, info.get("device"), address.name, device)
            try:
                request(info, {"kind": "shutdown", "reason": f"{device} is needed by pid {os.getpid()}"})
            except ServerHung as err:
                raise ServiceError(f"{err}; it holds {device}, which is needed: end it, or continue it") from None
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
