"""A subject-model server for Snakemake ``service()`` jobs: one model load per run.

Every emotion shard is its own Snakemake job and output, yet loading a 31B model once per
shard would cost 171 loads. So one service job (``rule subject_server``) loads the model once and
serves extraction requests on a loopback socket; each per-emotion job is a thin client that
sends "extract these texts into this shard" and waits for the answer. Snakemake starts the
service with its consumers and stops it when the last one finishes.

Protocol (``multiprocessing.connection`` with a random auth key, loopback only): the service
writes its address file (JSON: host, port, authkey, pid) as soon as it listens, then loads the
model; clients connect, wait until the model is ready, and send one request dict per
connection. Requests are served one at a time, in arrival order. The answer is
``{"ok": True, "summary": ...}`` or ``{"ok": False, "error": message}``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
import time
import traceback
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """The subject-model service could not be reached or failed a request."""


def serve(address_file: str | Path, handler_factory: Callable[[], Callable[[dict], dict]]) -> None:
    """Listen, write ``address_file``, build the handler (loads the model), serve forever.

    Args:
        address_file: the Snakemake ``service()`` output; removed when the service stops.
        handler_factory: called once after the address is published; returns the function that
            answers one request (it holds the loaded model).
    """
    address_file = Path(address_file)
    authkey = secrets.token_bytes(32)
    listener = Listener(("127.0.0.1", 0), backlog=4096, authkey=authkey)
    host, port = listener.address

    def _stop(signum, frame):  # noqa: ARG001
        address_file.unlink(missing_ok=True)
        listener.close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    tmp = address_file.with_name(address_file.name + ".tmp")
    tmp.write_text(json.dumps({"host": host, "port": port, "authkey": authkey.hex(), "pid": os.getpid()}))
    os.replace(tmp, address_file)
    log.info("service listening on %s:%s (pid %s)", host, port, os.getpid())
    handler = handler_factory()
    log.info("service ready")
    try:
        while True:
            conn = listener.accept()
            with conn:
                try:
                    request = conn.recv()
                except EOFError:
                    continue
                log.info(
                    "request: %s (%d texts) -> %s",
                    request.get("name"),
                    len(request.get("texts", ())),
                    request.get("output"),
                )
                try:
                    answer = {"ok": True, "summary": handler(request)}
                except Exception as err:  # noqa: BLE001 - reported to the client, service lives on
                    log.error("request failed: %s\n%s", err, traceback.format_exc())
                    answer = {"ok": False, "error": f"{type(err).__name__}: {err}"}
                try:
                    conn.send(answer)
                except OSError:
                    log.warning("client went away before the answer")
    finally:
        address_file.unlink(missing_ok=True)
        listener.close()


def request(address_file: str | Path, payload: dict[str, Any], *, timeout: float = 600.0) -> dict[str, Any]:
    """Send one request to the service named by ``address_file`` and wait for its answer.

    Waits up to ``timeout`` seconds for the address file to appear; the wait for the answer
    itself is unbounded (the service logs progress).

    Raises:
        ServiceError: the service is unreachable, died, or the request failed (its message).
    """
    address_file = Path(address_file)
    deadline = time.monotonic() + timeout
    while not address_file.exists() or address_file.stat().st_size == 0:
        if time.monotonic() > deadline:
            raise ServiceError(f"service address {address_file} did not appear in {timeout:.0f} s")
        time.sleep(0.2)
    info = json.loads(address_file.read_text())
    try:
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError):
        raise ServiceError(
            f"service process {info.get('pid')} named in {address_file} is not running; "
            f"delete {address_file} and rerun"
        ) from None
    try:
        conn = Client((info["host"], int(info["port"])), authkey=bytes.fromhex(info["authkey"]))
    except OSError as err:
        raise ServiceError(f"cannot connect to the service at {info['host']}:{info['port']}: {err}") from err
    with conn:
        conn.send(payload)
        try:
            answer = conn.recv()
        except EOFError:
            raise ServiceError("the service closed the connection (it died: see its log)") from None
    if not answer.get("ok"):
        raise ServiceError(answer.get("error", "unknown error"))
    return answer["summary"]
