"""Which GPU a job uses, and the model servers that must make room for a model.

Snakemake's ``gpu`` resource (``--resources gpu=N``) limits how many GPU
jobs run at once but not WHICH device each gets.  So every GPU job claims its own device(s)
before it touches CUDA (``claim_job_devices``, called by ``jobs.start_job`` for a rule whose
``gpu`` resource is >= 1): an exclusive ``flock`` on ``<lock dir>/<device id>.lock``, held until
the job's process ends (the kernel drops it however the job dies), and
``CUDA_VISIBLE_DEVICES`` set to the claimed id(s), so a model spec's ``cuda`` is that device.
An activation job claims nothing for itself (it only talks to the server); a model server
it starts gets a claim of its own, is pinned to it and holds it (the lock's file descriptor
is passed to it, see ``ensure_server``), so while a server holds a GPU no job can claim it; a
job that finds every device claimed asks idle servers holding one to exit (``claim_devices``).
Inside a Slurm allocation the devices are the allocation's own (``CUDA_VISIBLE_DEVICES`` as
Slurm sets it) and the locks are the allocation's.

``release_device`` / ``release_for_model``: before a job loads a model onto a GPU, the servers
of this user and host that hold it are asked to exit (a ``shutdown`` request) and waited for.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .private_files import PRIVATE_PREFIX, ServiceError, private_dir, runtime_dir, user_cache_dir, user_secret
from .protocol import ServerHung, _open_lock, _pid_gone, process_start_time, read_address, request, stale_reason

log = logging.getLogger(__name__)


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
