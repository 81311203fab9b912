"""A shared subject-model server: one model load for all activation shards of a run.

Every emotion shard is its own Snakemake job and output, yet loading a 31B model once per shard
would cost 172 loads. So the per-shard jobs are thin clients of a model server that the first of
them starts and the others reuse:

- ``ensure_server(key, command)``: under a file lock, reuse the live server whose address file
  is ``<key>.json``, or start ``command`` as a detached process (its own session) and wait for
  its address file. The key is a hash of everything the server's answers depend on (model
  spec, extraction settings), so a different model or setting gets its own server.
- ``serve(address_file, handler_factory, idle_timeout)``: listen on loopback, publish the
  address (JSON: host, port, authkey, pid), build the handler (this loads the model), answer one
  request per connection in arrival order, and exit after ``idle_timeout`` seconds without a
  request (freeing the GPU), removing its address file.
- ``request(address_file, payload)``: send one request and wait for ``{"ok": True, "summary"}``
  or ``{"ok": False, "error"}`` (raised as ``ServiceError`` with the server's message).

Why not a Snakemake ``service()`` job: a service output is an input of every consumer, so
whenever one shard must be rebuilt the service must run, and Snakemake then marks *every*
consumer as "updated by another job" — all 172 shards would rerun. Here the server is invisible
to the DAG: only outdated shards are pending.

Transport: ``multiprocessing.connection`` on 127.0.0.1 with a random 32-byte auth key.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import select
import signal
import subprocess
import sys
import time
import traceback
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """The subject-model server could not be reached or failed a request."""


def serve(
    address_file: str | Path,
    handler_factory: Callable[[], Callable[[dict], dict]],
    *,
    idle_timeout: float = 300.0,
) -> None:
    """Listen, publish ``address_file``, build the handler, answer requests until idle.

    Args:
        address_file: where clients find the server; removed when it stops.
        handler_factory: called once after the address is published; returns the function
            that answers one request (it holds the loaded model).
        idle_timeout: seconds without a connection after which the server exits.
    """
    address_file = Path(address_file)
    address_file.parent.mkdir(parents=True, exist_ok=True)
    authkey = secrets.token_bytes(32)
    listener = Listener(("127.0.0.1", 0), backlog=4096, authkey=authkey)
    host, port = listener.address

    def _stop(signum, frame):  # noqa: ARG001
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    tmp = address_file.with_name(address_file.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"host": host, "port": port, "authkey": authkey.hex(), "pid": os.getpid()}))
    os.replace(tmp, address_file)
    log.info("server listening on %s:%s (pid %s)", host, port, os.getpid())
    try:
        handler = handler_factory()
        log.info("server ready; exits after %.0f s without a request", idle_timeout)
        sock = listener._listener._socket  # noqa: SLF001 - only to wait with a timeout
        while True:
            ready, _, _ = select.select([sock], [], [], idle_timeout)
            if not ready:
                log.info("idle for %.0f s: stopping", idle_timeout)
                return
            conn = listener.accept()
            with conn:
                try:
                    req = conn.recv()
                except EOFError:
                    continue
                log.info("request: %s (%d texts) -> %s", req.get("name"), len(req.get("texts", ())), req.get("output"))
                try:
                    answer = {"ok": True, "summary": handler(req)}
                except Exception as err:  # noqa: BLE001 - reported to the client; the server lives on
                    log.error("request failed: %s\n%s", err, traceback.format_exc())
                    answer = {"ok": False, "error": f"{type(err).__name__}: {err}"}
                try:
                    conn.send(answer)
                except OSError:
                    log.warning("client went away before the answer")
    finally:
        try:
            if json.loads(address_file.read_text()).get("pid") == os.getpid():
                address_file.unlink()
        except (OSError, ValueError):
            pass
        listener.close()


def _alive(info: dict[str, Any]) -> bool:
    try:
        os.kill(int(info["pid"]), 0)
        return True
    except (OSError, KeyError, ValueError):
        return False


def ensure_server(address_file: str | Path, command: list[str], *, log_file: str | Path, timeout: float = 3600.0) -> dict[str, Any]:
    """Return the address of a live server at ``address_file``, starting ``command`` if none.

    Safe when many jobs call it at once (a lock file serialises the check-or-start). The server
    runs in its own session, so it outlives the job that started it and serves the next ones.

    Raises:
        ServiceError: the server did not publish its address within ``timeout`` seconds, or
            died while starting (its log's tail is in the message).
    """
    address_file = Path(address_file)
    address_file.parent.mkdir(parents=True, exist_ok=True)
    with open(address_file.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if address_file.exists():
            info = json.loads(address_file.read_text())
            if _alive(info):
                return info
            address_file.unlink()  # stale: its server died
        with open(log_file, "a") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not address_file.exists():
            if proc.poll() is not None:
                tail = Path(log_file).read_text(errors="replace")[-2000:]
                raise ServiceError(f"model server exited with code {proc.returncode} while starting:\n{tail}")
            if time.monotonic() > deadline:
                raise ServiceError(f"model server did not start within {timeout:.0f} s (see {log_file})")
            time.sleep(0.1)
        return json.loads(address_file.read_text())


def request(address_file: str | Path, payload: dict[str, Any]) -> dict[str, Any]:
    """Send one request to the server of ``address_file`` and wait for its answer.

    The connection completes once the server has loaded its model; the wait for the answer is
    unbounded (the server logs progress).

    Raises:
        ServiceError: unreachable, died, or the request failed (with the server's message).
    """
    info = json.loads(Path(address_file).read_text())
    try:
        conn = Client((info["host"], int(info["port"])), authkey=bytes.fromhex(info["authkey"]))
    except (OSError, EOFError) as err:
        raise ServiceError(f"cannot reach the model server at {info['host']}:{info['port']}: {err}") from err
    with conn:
        conn.send(payload)
        try:
            answer = conn.recv()
        except EOFError:
            raise ServiceError("the model server closed the connection (it died: see its log)") from None
    if not answer.get("ok"):
        raise ServiceError(answer.get("error", "unknown error"))
    return answer["summary"]


def python_command(module: str, *args: str) -> list[str]:
    """``[sys.executable, "-m", module, *args]``: a command in the current environment."""
    return [sys.executable, "-m", module, *args]
