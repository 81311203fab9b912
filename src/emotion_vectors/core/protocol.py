"""The model servers' protocol, as a client speaks it, and their liveness.

- Address files (``read_address``: a 0600 JSON file of ours naming the socket and the key),
  the server's life lock and heartbeat (``<name>.alive``), and whether a server lives
  (``stale_reason``: its pid, start time, life lock and socket, never a connection attempt).
- The wire format: length-prefixed JSON messages (``encode_message``, ``send_message``,
  ``recv_message``), the HMAC handshake (``_mac``).
- ``request``: one request and its answer, waiting as long as the server lives and beats
  (``ServerWatch``).

The server itself (``serve``, ``ensure_server``) is ``extraction.service``; the GPU allocator that
asks servers to exit is ``core.devices``.
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
import socket
import stat
import struct
import time
from pathlib import Path
from typing import Any, Iterator

from .private_files import PRIVATE_PREFIX, DirFd, ServiceError

log = logging.getLogger(__name__)


PROTOCOL = 1


#: Largest message before authentication (a greeting, a challenge response).
MAX_HANDSHAKE_BYTES = 64 * 1024


#: Largest request after authentication (a shard's texts, a read's texts, a lens's directions).
#: JSON parsing takes several times the bytes, so this bounds what a request can cost the
#: server; clients split larger reads (``extraction.reading.ServerReader``) or are told before sending.
MAX_REQUEST_BYTES = 64 << 20


#: Largest answer a client accepts.
MAX_ANSWER_BYTES = 512 << 20


#: Kept for callers of the previous name: the request bound.
MAX_MESSAGE_BYTES = MAX_REQUEST_BYTES


#: Seconds between a server's heartbeats (it touches its life-lock file, ``<name>.alive``).
HEARTBEAT_SECONDS = 2.0


#: A client gives up on a server that has shown no heartbeat, or stayed stopped, this long
#: (``$EMOTION_VECTORS_SERVER_HUNG_AFTER`` overrides it).
HUNG_AFTER = 120.0


HUNG_AFTER_ENV = "EMOTION_VECTORS_SERVER_HUNG_AFTER"


#: How often a waiting client looks at its server's pid, state and heartbeat.
WATCH_SECONDS = 0.5


_HEADER = struct.Struct(">I")


class ServerHung(ServiceError):
    """The server is alive but has shown no sign of work (stopped, or no heartbeat) too long."""


class MessageTooLarge(ServiceError):
    """A message longer than the receiver accepts (a request over ``MAX_REQUEST_BYTES``)."""


# --------------------------------------------------------------------------- address files and locks


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
