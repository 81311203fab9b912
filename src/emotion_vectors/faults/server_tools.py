"""Tools of the model-server faults: the servers the section starts (as the activation jobs start
them) and its client jobs in child processes, and the clients that misbehave on purpose (a long
request's corpus, a full listen queue, a trickling client)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from .battery import Battery
from .children import child_command, child_env, read_results
from .common import ACT_NAME, ACT_SETTINGS, MODELS_DIR, REPO_ROOT, activation_corpus, done_rows, validated_default


class _Servers:
    """The model servers the section starts, their logs, and the real jobs that are their clients."""

    def __init__(self, battery: Battery):
        self.battery = battery
        self.settings = {**validated_default()["extraction"], **ACT_SETTINGS}
        self.logs: set[Path] = set()

    def params(self, root: Path) -> dict[str, Any]:
        """What an activation job gives ``extract_shard`` / ``subject_server`` (workflow/rules/activations.smk)."""
        return {"subject": self.battery.model, "extraction": self.settings, "models_dir": str(MODELS_DIR),
                "root": str(root), "server_dir": str(root / "activations" / ".server"), "idle_timeout": 600.0,
                "threads": 1}

    def start(self, root: Path, **options: Any) -> Any:
        from ..extraction.serve_subject import subject_server

        (root / "activations" / "emotions").mkdir(parents=True, exist_ok=True)
        handle = subject_server(**self.params(root), **options)
        handle.call({"kind": "ping"})
        self.logs.add(handle.log_file)
        return handle

    def pids(self) -> list[int]:
        return [int(line.split("pid ")[1].split()[0]) for log in sorted(self.logs) if log.exists()
                for line in log.read_text(errors="replace").splitlines() if "ready on" in line]

    def stop(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)

    def spawn(self, root: Path, jobs: list[dict[str, Any]], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        """A real job in a child process (``extract_shard`` as workflow/scripts/activations.py calls it,
        or a ``ServerReader`` read as scoring does), not waited for."""
        spec_file = self.battery.write_spec({"mode": "server_job", "server": self.params(root), "jobs": jobs})
        out = spec_file.with_suffix(".out")
        with open(out, "wb") as fh:
            proc = subprocess.Popen(child_command(spec_file), cwd=REPO_ROOT, env=child_env(env), stdout=fh,
                                    stderr=subprocess.STDOUT)
        return proc, out


def _server_pid(handle: Any) -> int:
    from ..core.protocol import read_address

    return int(read_address(handle.address)["pid"])


def _job_results(proc: subprocess.Popen, out: Path, timeout: float = 900.0) -> dict[str, dict[str, Any]]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    text = out.read_text(errors="replace")
    results = read_results(text)
    return results or {"": {"ok": False, "error": f"no result (rc {proc.returncode}): {text[-800:]}"}}


def _extract_job(out: Path, texts: list[str] | None = None, ids: list[str] | None = None, name: str = ACT_NAME) -> dict[str, Any]:
    if texts is None:
        texts, ids = activation_corpus()
    return {"kind": "extract", "key": str(out), "out": str(out), "name": name, "texts": texts, "ids": ids}


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def _work_rows(out: Path) -> int:
    """Rows done in the partial the server fills in its work directory beside ``out``."""
    for work in out.parent.glob(f"{out.name}.server-*"):
        return len(done_rows(work / out.name))
    return 0


def big_corpus(copies: int = 25) -> tuple[list[str], list[str]]:
    """``copies`` x the 12 activation texts, each copy numbered (300 texts: a long request)."""
    texts, ids = activation_corpus()
    return ([f"Part {k + 1}. {t}" for k in range(copies) for t in texts],
            [f"{i}-p{k:02d}" for k in range(copies) for i in ids])


def fill_listen_queue(path: str, limit: int = 20000) -> list[socket.socket]:
    """Connect to the Unix socket ``path`` without speaking until the kernel answers EAGAIN (its
    listen queue is full); returns the connections (close them to let the queue drain)."""
    held = []
    for _ in range(limit):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            s.close()
            return held
        except OSError:
            s.close()
            for h in held:
                h.close()
            raise
        held.append(s)
    raise RuntimeError(f"the listen queue of {path} did not fill with {limit} connections")


def trickle(info: dict[str, Any], key: bytes, authenticate: bool, seconds: float) -> float:
    """Connect to a model server and send a request's bytes one every 0.25 s (after the handshake
    if ``authenticate``); returns how long the server kept the connection (at most ``seconds``)."""
    from ..core.protocol import MAX_HANDSHAKE_BYTES, _HEADER, _mac, recv_message, send_message

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(info["socket"])
        hello = recv_message(c, MAX_HANDSHAKE_BYTES)
        if authenticate:
            send_message(c, {"response": _mac(key, b"client", bytes.fromhex(hello["challenge"])),
                             "challenge": os.urandom(32).hex()})
            recv_message(c, MAX_HANDSHAKE_BYTES)
        start = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for b in _HEADER.pack(400) + b" " * 400:
                c.sendall(bytes([b]))
                time.sleep(0.25)
                if time.monotonic() - start > seconds:
                    break
        return time.monotonic() - start

