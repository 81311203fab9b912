"""The model server under load and failure, with a stand-in server (``service.serve`` with no
model: a ``slow`` request that sleeps, a ``hold_gil`` request that hangs the process without
stopping it) started the way jobs start servers (``service.ensure_server``):

- a busy server whose listen queue is full is waited for, never taken for dead: every waiting
  client is served by the same server;
- a client notices a server that is stopped (SIGSTOP), hung (no heartbeat) or dead, and fails
  with a clear ``ServiceError`` instead of waiting forever;
- a malformed answer (a non-ASCII MAC, no summary) is a ``ServiceError``, never a TypeError or
  KeyError; an oversized request is refused before it is sent;
- the detached server's environment holds no credential; the GPU lock directory cannot be
  squatted by another user; ``publish`` moves an old output aside; writes refuse symlinks.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from emotion_vectors.extraction import service
from emotion_vectors.core import devices, private_files, protocol
from emotion_vectors.core.private_files import DirFd, ServiceError
from emotion_vectors.core.protocol import MessageTooLarge, ServerHung
from emotion_vectors.faults.server_tools import fill_listen_queue

# argv: address, root, handshake timeout, request timeout, backlog
STANDIN = textwrap.dedent(
    """
    import ctypes, logging, sys, time
    from emotion_vectors.extraction import service
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def slow(payload, req):
        time.sleep(float(payload.get("seconds", 1)))
        return {"slept": payload.get("seconds"), "tag": payload.get("tag")}

    def hold_gil(payload, req):  # hangs the whole process (heartbeat included), state 'S' not 'T'
        ctypes.PyDLL(None).sleep(int(payload.get("seconds", 1)))
        return {}

    service.serve(sys.argv[1], lambda: {"slow": slow, "hold_gil": hold_gil}, identity="standin", root=sys.argv[2],
                  idle_timeout=120, handshake_timeout=float(sys.argv[3]), request_timeout=float(sys.argv[4]),
                  backlog=int(sys.argv[5]))
    """
)


class Standin:
    def __init__(self, root: Path, *, handshake: float = 2.0, request: float = 5.0, backlog: int = 4096):
        self.root = root
        self.server_dir = private_files.private_dir(root / ".server")
        self.address = self.server_dir / "host-standin.json"
        self.log_file = self.server_dir / "standin.log"
        self.command = [sys.executable, "-c", STANDIN, str(self.address), str(root), str(handshake), str(request),
                        str(backlog)]

    def start(self) -> dict:
        return service.ensure_server(self.address, self.command, log_file=self.log_file, timeout=60)

    def call(self, payload: dict, **kw) -> dict:
        return service.call(self.address, self.command, payload, identity="standin", log_file=self.log_file, **kw)

    def log(self) -> str:
        return self.log_file.read_text()

    def pids(self) -> list[int]:
        return [int(line.split("pid ")[1].split()[0]) for line in self.log().splitlines() if "ready on" in line]

    def stop(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def standin(tmp_path, code_snapshot):
    servers = []

    def make(**kw) -> Standin:
        s = Standin(tmp_path / f"root{len(servers)}", **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


def _wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_busy_server_with_a_full_queue_is_waited_for_not_killed(standin, caplog):
    """The server serves a slow request while its listen queue is full (EAGAIN for every new
    connection): jobs arriving then reuse it (ensure_server) and wait, with backoff, until it
    serves each of them. Before, the liveness probe's EAGAIN made ensure_server SIGTERM it."""
    caplog.set_level(logging.INFO, logger="emotion_vectors.core.protocol")
    s = standin(backlog=8)
    info = s.start()
    pid = info["pid"]
    slow = threading.Thread(target=lambda: s.call({"kind": "slow", "seconds": 4}))
    slow.start()
    _wait_for(lambda: "request 'slow'" in s.log(), what="the slow request")
    fillers = fill_listen_queue(info["socket"])
    assert len(fillers) >= 8  # backlog 8: the kernel queues backlog (+1) connections, then says EAGAIN
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    with pytest.raises(BlockingIOError):
        probe.connect(info["socket"])
    probe.close()

    answers, errors = [], []

    def job(i: int) -> None:
        try:
            answers.append(s.call({"kind": "slow", "seconds": 0, "tag": i}) | {"pid": protocol.read_address(s.address)["pid"]})
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    jobs = [threading.Thread(target=job, args=(i,)) for i in range(6)]
    for t in jobs:
        t.start()
    time.sleep(2.0)  # the jobs see a full queue for a while; the old probe killed the server in 0.4 s
    assert protocol.stale_reason(info, s.address) is None and os.path.exists(s.address)
    assert protocol.read_address(s.address)["pid"] == pid
    for f in fillers:  # the stray connections go away; the server drops each at once
        f.close()
    for t in [slow, *jobs]:
        t.join(timeout=120)
    assert not errors, errors
    assert sorted(a["tag"] for a in answers) == list(range(6)) and {a["pid"] for a in answers} == {pid}
    assert s.pids() == [pid]  # one server throughout: never replaced
    assert "is busy (its queue of waiting connections is full): waiting" in caplog.text


def test_a_stopped_hung_or_dead_server_is_noticed(standin):
    s = standin()
    info = s.start()
    pid = info["pid"]
    # stopped (SIGSTOP) while the client waits in the queue: a clear error after hung_after
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ServerHung, match=rf"pid {pid}.*stopped \(SIGSTOP\?\).*kill -CONT {pid}"):
            protocol.request(info, {"kind": "ping"}, hung_after=2.0)
        assert 1.9 < time.monotonic() - started < 10
    finally:
        os.kill(pid, signal.SIGCONT)
    assert protocol.request(info, {"kind": "ping"})["pid"] == pid  # continued: it serves again

    # stopped during the request
    seen = len(s.log())

    def stop_soon():
        _wait_for(lambda: "request 'slow'" in s.log()[seen:], what="the slow request")
        os.kill(pid, signal.SIGSTOP)

    t = threading.Thread(target=stop_soon)
    t.start()
    with pytest.raises(ServerHung, match="stopped"):
        protocol.request(info, {"kind": "slow", "seconds": 3}, hung_after=2.0)
    t.join()
    os.kill(pid, signal.SIGCONT)
    _wait_for(lambda: "went away before the answer" in s.log()[seen:], what="the stopped request's end")

    # hung without being stopped (a call holding the interpreter): no heartbeat
    seen = len(s.log())
    started = time.monotonic()
    with pytest.raises(ServerHung, match="no heartbeat"):
        protocol.request(info, {"kind": "hold_gil", "seconds": 10}, hung_after=5.0)
    assert time.monotonic() - started < 9
    _wait_for(lambda: "went away before the answer" in s.log()[seen:], what="the hung request's end")

    # busy but alive (heartbeat going): waited for, however long, even with a short hung_after
    assert protocol.request(info, {"kind": "slow", "seconds": 6}, hung_after=4.5)["slept"] == 6

    # dead during the request: said at once, not retried (the request may have had effects)
    killer = threading.Timer(1.0, lambda: os.kill(pid, signal.SIGKILL))
    killer.start()
    started = time.monotonic()
    with pytest.raises(ServiceError, match="closed the connection during the request|died") as err:
        protocol.request(info, {"kind": "slow", "seconds": 30})
    assert not err.value.retryable and time.monotonic() - started < 10
    # the next job finds it dead (pid, lock) and starts a new one. The kernel closes the socket
    # before it has released every file of the dying process (its life lock) and made it a
    # zombie, so "dead" is seen a moment after the connection closed, not necessarily at once.
    _wait_for(lambda: protocol.stale_reason(info, s.address) is not None, timeout=5.0,
              what="the killed server's pid and lock to be released")
    assert s.call({"kind": "ping"})["pid"] != pid


def _fake_server(tmp_path: Path, answer_for):
    """A server speaking the protocol badly, in a thread of this process (so its pid, start time
    and life lock are ours): ``answer_for(hello_reply) -> [messages to send]``."""
    d = private_files.private_dir(tmp_path / "fake")
    path = str(d / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    alive = d / "fake.alive"
    lock = os.open(alive, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    key = os.urandom(32)

    def run():
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                protocol.send_message(conn, {"hello": "emotion-vectors", "protocol": protocol.PROTOCOL, "identity": "fake",
                                            "challenge": os.urandom(32).hex()})
                reply = protocol.recv_message(conn, protocol.MAX_HANDSHAKE_BYTES)
                for msg in answer_for(key, reply):
                    if msg == "read-request":
                        protocol.recv_message(conn)
                    else:
                        protocol.send_message(conn, msg)
                time.sleep(0.5)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    info = {"socket": path, "key": key.hex(), "pid": os.getpid(), "start_time": protocol.process_start_time(os.getpid()),
            "identity": "fake", "alive": str(alive)}
    return info, (listener, lock, t)


def test_malformed_answers_are_service_errors(tmp_path):
    mac = protocol._mac

    def non_ascii_mac(key, reply):
        return [{"ok": True, "response": "é" * 64}]

    def no_summary(key, reply):
        return [{"ok": True, "response": mac(key, b"server", bytes.fromhex(reply["challenge"]))}, "read-request", {"ok": True}]

    for n, (answer_for, match) in enumerate([(non_ascii_mac, "failed to prove it knows the key"),
                                             (no_summary, "answered 'ping' without a summary")]):
        info, (listener, lock, t) = _fake_server(tmp_path / str(n), answer_for)
        try:
            with pytest.raises(ServiceError, match=match):
                protocol.request(info, {"kind": "ping"})
        finally:
            t.join(5)
            listener.close()
            os.close(lock)


def test_the_server_answers_a_non_ascii_mac_with_a_refusal_not_a_traceback(standin):
    s = standin()
    info = s.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(info["socket"])
        protocol.recv_message(c, protocol.MAX_HANDSHAKE_BYTES)
        protocol.send_message(c, {"response": "\u00e9\ud800" * 40, "challenge": "00" * 32})
        assert protocol.recv_message(c, protocol.MAX_HANDSHAKE_BYTES) == {"ok": False, "error": "authentication failed (wrong key)"}
    assert protocol.request(info, {"kind": "ping"})["pid"] == info["pid"]
    assert "Traceback" not in s.log() and "authentication failed" in s.log()


def test_oversized_requests_are_refused_clearly(standin):
    s = standin()
    info = s.start()
    big = {"kind": "slow", "seconds": 0, "texts": ["x" * 1024] * (protocol.MAX_REQUEST_BYTES // 1024 + 1)}
    with pytest.raises(MessageTooLarge, match=r"'slow' request not sent: message of [\d,]+ bytes exceeds the limit.*split it"):
        protocol.request(info, big)
    # a client that does not check (an older one, or a hand-made one) is told by the server
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(info["socket"])
        hello = protocol.recv_message(c, protocol.MAX_HANDSHAKE_BYTES)
        key = bytes.fromhex(info["key"])
        mine = os.urandom(32)
        protocol.send_message(c, {"response": protocol._mac(key, b"client", bytes.fromhex(hello["challenge"])),
                                 "challenge": mine.hex()})
        assert protocol.recv_message(c, protocol.MAX_HANDSHAKE_BYTES)["ok"]
        c.sendall(protocol._HEADER.pack(protocol.MAX_REQUEST_BYTES + 1))
        refusal = protocol.recv_message(c, protocol.MAX_HANDSHAKE_BYTES)
        assert refusal["ok"] is False and "exceeds the limit" in refusal["error"]
    assert protocol.request(info, {"kind": "ping"})["pid"] == info["pid"]


def test_a_trickling_client_holds_the_server_one_deadline_not_forever(standin):
    """One deadline per handshake and per request message: a client sending a byte now and then
    is dropped when the deadline passes, however regularly its bytes come."""
    s = standin(handshake=1.0, request=2.0)
    info = s.start()
    key = bytes.fromhex(info["key"])

    def trickle(authenticate: bool, seconds: float = 8.0) -> float:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(info["socket"])
            hello = protocol.recv_message(c, protocol.MAX_HANDSHAKE_BYTES)
            if authenticate:
                protocol.send_message(c, {"response": protocol._mac(key, b"client", bytes.fromhex(hello["challenge"])),
                                         "challenge": os.urandom(32).hex()})
                assert protocol.recv_message(c, protocol.MAX_HANDSHAKE_BYTES)["ok"]
            start = time.monotonic()
            data = protocol._HEADER.pack(200) + b" " * 200
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the server hung up
                for b in data:
                    c.sendall(bytes([b]))
                    time.sleep(0.25)  # 4 bytes a second: the old per-byte timeout never fired
                    if time.monotonic() - start > seconds:
                        break
            return time.monotonic() - start

    for authenticate, limit in ((False, 1.0), (True, 2.0)):
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("held", trickle(authenticate)))
        t.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert protocol.request(info, {"kind": "ping"})["pid"] == info["pid"]
        waited = time.monotonic() - started
        t.join()
        assert waited < limit + 3, (authenticate, waited)  # the trickler would hold it 8 s
        assert result["held"] < limit + 3, (authenticate, result)
    log = s.log()
    assert "no handshake within 1 s" in log and "request message was not complete within 2 s" in log


def test_the_detached_server_gets_no_credentials(standin, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ev-env-1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-ev-env-2")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-ev-env-3")
    monkeypatch.setenv("HF_TOKEN", "hf_ev_env_4")  # the model load may need it (gated weights)
    monkeypatch.setenv("TORCH_HOME_TOKEN_PASSWORD", "pw-ev-env-5")  # an allowed prefix, a secret's name
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw-ev-env-6@proxy.example.org:3128")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    s = standin()
    info = s.start()
    environ = Path(f"/proc/{info['pid']}/environ").read_bytes().decode()
    for value in ("sk-ev-env-1", "aws-ev-env-2", "tok-ev-env-3", "pw-ev-env-5", "pw-ev-env-6"):
        assert value not in environ
    names = {e.split("=", 1)[0] for e in environ.split("\0") if e}
    assert {"PATH", "HF_TOKEN", "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "PYTHONPATH"} <= names
    assert all(n in service.SERVER_ENV_NAMES or n.startswith(service.SERVER_ENV_PREFIXES) for n in names)
    assert protocol.request(info, {"kind": "ping"})["pid"] == info["pid"]


def test_the_gpu_lock_directory_cannot_be_squatted(tmp_path, monkeypatch):
    """Without XDG_RUNTIME_DIR, the device locks used a fixed name in the temporary directory,
    which any user could create first; now the name carries a tag from this user's secret. The
    old path is created here as another user's (root can chown), and GPU jobs still run."""
    monkeypatch.delenv(devices.DEVICE_LOCKS_ENV, raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    os.chmod(tmp_path / "tmp", 0o1777)
    monkeypatch.setattr(tempfile, "tempdir", None)
    host = socket.gethostname()
    old = tmp_path / "tmp" / f"{private_files.PRIVATE_PREFIX}{os.getuid()}-devices-{host}"
    old.mkdir(mode=0o700)
    squatted = os.getuid() == 0
    if squatted:
        os.chown(old, 65534, 65534)  # nobody's, as another user would have made it
    for xdg in (None, str(tmp_path / "missing-runtime-dir"), *([str(old)] if squatted else [])):
        if xdg is None:
            monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        else:
            monkeypatch.setenv("XDG_RUNTIME_DIR", xdg)
        locks = devices.device_lock_dir()
        assert locks != old and locks.parent == tmp_path / "tmp" and locks.name.startswith(old.name + "-")
        assert os.stat(locks).st_uid == os.getuid() and (os.stat(locks).st_mode & 0o777) == 0o700
    secret = tmp_path / "cache" / "emotion-vectors" / "secret"
    assert (secret.stat().st_mode & 0o777) == 0o600 and len(secret.read_text()) == 64
    assert devices.device_lock_dir() == locks  # the same name for every job of this user and host
    # a real GPU job (start_job with resources.gpu=1, fake ids) claims its device there
    env = {**os.environ, devices.GPUS_ENV: "f0,f1"}
    env.pop("XDG_RUNTIME_DIR", None)
    job = textwrap.dedent(
        """
        import os, types
        from emotion_vectors.core.jobs import start_job
        smk = types.SimpleNamespace(log=[], rule="fake_gpu_job", threads=1, output=[], resources=types.SimpleNamespace(gpu=1))
        start_job(smk)
        print("claimed", os.environ["CUDA_VISIBLE_DEVICES"])
        """
    )
    out = subprocess.run([sys.executable, "-c", job], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "claimed f0" in out.stdout, out.stderr[-2000:]
    assert (locks / "f0.lock").exists() and list(old.iterdir()) == []
    # a run-time directory that is ours is used as before
    mine = tmp_path / "runtime"
    mine.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(mine))
    assert devices.device_lock_dir() == mine / old.name
    # the derived name itself taken by another user: a clear error saying what to do
    if squatted:
        monkeypatch.delenv("XDG_RUNTIME_DIR")
        os.chown(locks, 65534, 65534)
        with pytest.raises(ServiceError, match=f"belongs to uid 65534.*{devices.DEVICE_LOCKS_ENV}.*secret"):
            devices.device_lock_dir()
        os.chown(locks, os.getuid(), os.getgid())


def test_publish_moves_the_old_output_aside(tmp_path):
    out = tmp_path / "x.zarr"
    (out / "old").mkdir(parents=True)
    staged = tmp_path / "x.zarr.staged-1"
    (staged / "new").mkdir(parents=True)
    seen = []
    real_rename = private_files.DirFd.rename

    def spy(self, name, new_name, dst=None):  # record the directory at each step
        seen.append(sorted(os.listdir(tmp_path)))
        return real_rename(self, name, new_name, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(private_files.DirFd, "rename", spy)
        service.publish(staged, out)
    assert (out / "new").is_dir() and sorted(os.listdir(tmp_path)) == ["x.zarr"]
    # before the staged one was renamed in, the old output was aside (renamed), whole
    assert any(n.startswith("x.zarr.old-") for n in seen[1]) and "x.zarr" not in seen[1]
    # a kill between the two renames leaves the old output aside: the next job removes it
    aside = tmp_path / "x.zarr.old-99-abc"
    (aside / "old").mkdir(parents=True)
    service.remove_staged(out)
    assert not aside.exists() and (out / "new").is_dir()
    # an output that is a symlink is moved aside and removed: its target is untouched
    victim = tmp_path / "victim"
    (victim / "keep").mkdir(parents=True)
    link = tmp_path / "y.zarr"
    link.symlink_to(victim)
    (tmp_path / "y.zarr.staged-1").mkdir()
    service.publish(tmp_path / "y.zarr.staged-1", link)
    assert (victim / "keep").is_dir() and link.is_dir() and not link.is_symlink()


def test_dir_fd_refuses_symlinks_when_opening(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "a" / "link").symlink_to(outside, target_is_directory=True)
    with DirFd.beneath(root, root / "a" / "b") as d:
        fd = d.create("new.txt")
        os.close(fd)
        (root / "a" / "b" / "planted").symlink_to(outside / "victim")
        with pytest.raises(ServiceError, match="a symlink"):
            d.create("planted")
        with pytest.raises(ServiceError, match="a symlink"):
            d.open_lock("planted")
        with pytest.raises(ServiceError, match="a symlink"):
            d.open_append("planted")
        with pytest.raises(ServiceError, match="already there"):
            d.create("new.txt")
    with pytest.raises(ServiceError, match="outside"):
        DirFd.beneath(root, root / "a" / "link")
    with pytest.raises(ServiceError, match="outside"):
        DirFd.beneath(root, outside)
    # a directory swapped for a symlink after its check: the walk refuses it
    real = os.path.realpath
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os.path, "realpath", lambda p: real(p) if "swapped" not in str(p) else str(p))
        (root / "swapped").symlink_to(root / "a", target_is_directory=True)
        with pytest.raises(ServiceError, match="symlink"):
            DirFd.beneath(root, root / "swapped")
    assert list(outside.iterdir()) == []
    # the server's lock and log files refuse symlinks too
    server_dir = private_files.private_dir(tmp_path / ".server")
    (server_dir / "h-x.lock").symlink_to(outside / "lock")
    with pytest.raises(ServiceError, match="symlink"):
        service.ensure_server(server_dir / "h-x.json", ["true"], log_file=server_dir / "h-x.log", timeout=1)
    (server_dir / "h-y.log").symlink_to(outside / "log")
    with pytest.raises(ServiceError, match="symlink"):
        service.ensure_server(server_dir / "h-y.json", ["true"], log_file=server_dir / "h-y.log", timeout=1)
    assert list(outside.iterdir()) == []
