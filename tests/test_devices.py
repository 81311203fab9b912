"""GPU scheduling on one machine (``service`` devices section), on the CPU with fake device ids.

Snakemake's ``gpu`` resource caps how many GPU jobs run at once; ``claim_devices`` says which
device each gets. These tests use real processes contending for real ``flock`` locks on fake
device ids ("g0", "g1", ...), and a real model server (``service.serve`` with no model) to show
that a server keeps the device it was started on and gives it up when a job needs it.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from emotion_vectors.extraction import service
from emotion_vectors.core import devices, private_files, protocol
from emotion_vectors.core.private_files import ServiceError

CLAIMER = textwrap.dedent(
    """
    import json, os, sys, time
    from emotion_vectors.core import devices
    lock_dir, ids, out, hold = sys.argv[1], sys.argv[2].split(","), sys.argv[3], float(sys.argv[4])
    claim = devices.claim_devices(1, ids=ids, lock_dir=lock_dir, timeout=60, poll=0.02, log=lambda *a: None)
    claim.pin()
    start = time.monotonic()
    time.sleep(hold)
    with open(out, "a") as fh:
        fh.write(json.dumps({"pid": os.getpid(), "device": claim.ids[0], "start": start, "end": time.monotonic(),
                             "visible": os.environ["CUDA_VISIBLE_DEVICES"]}) + "\\n")
    """
)

# A model server with no model: what an activation job's server is, minus the extraction
# (argv[4], if given: seconds it takes to "load", before it publishes its address).
SERVER = textwrap.dedent(
    """
    import sys, time
    from emotion_vectors.extraction import service
    load = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    service.serve(sys.argv[1], lambda: (time.sleep(load), {})[1], identity="test", root=sys.argv[2],
                  device=sys.argv[3], idle_timeout=120)
    """
)


def test_jobs_never_share_a_device(tmp_path):
    """Nine processes, three fake GPUs: each device is held by one process at a time, all are used."""
    ids, out = ["g0", "g1", "g2"], tmp_path / "claims.jsonl"
    procs = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, str(tmp_path / "locks"), ",".join(ids), str(out), "0.4"])
        for _ in range(9)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    claims = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(claims) == 9 and {c["device"] for c in claims} == set(ids)
    assert all(c["visible"] == c["device"] for c in claims)  # pinned: CUDA_VISIBLE_DEVICES is the claim
    for device in ids:
        spans = sorted((c["start"], c["end"]) for c in claims if c["device"] == device)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), f"{device} shared: {spans}"
    # never more claims at once than devices
    events = sorted([(c["start"], 1) for c in claims] + [(c["end"], -1) for c in claims])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= len(ids)


def test_claims_wait_time_out_and_are_freed_by_the_kernel(tmp_path):
    locks = tmp_path / "locks"
    holder = subprocess.Popen([sys.executable, "-c", CLAIMER, str(locks), "g0", str(tmp_path / "h.jsonl"), "30"])
    try:
        deadline = time.monotonic() + 30
        while not (locks / "g0.lock").exists() or not (locks / "g0.lock").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(ServiceError, match="no 1 free GPU"):
            devices.claim_devices(1, ids=["g0"], lock_dir=locks, timeout=0.5, log=lambda *a: None)
        with pytest.raises(ServiceError, match="2 GPU\\(s\\) wanted but only 1"):
            devices.claim_devices(2, ids=["g0"], lock_dir=locks, timeout=0.5)
        holder.send_signal(signal.SIGKILL)  # a job killed hard: the kernel drops its lock
        holder.wait(timeout=30)
        claim = devices.claim_devices(1, ids=["g0"], lock_dir=locks, timeout=10, log=lambda *a: None)
        assert claim.ids == ["g0"]
        claim.release()
    finally:
        if holder.poll() is None:
            holder.kill()


def test_gpu_ids_and_physical_devices(monkeypatch):
    monkeypatch.setenv(devices.GPUS_ENV, "2,3")
    assert devices.gpu_ids() == ["2", "3"]
    monkeypatch.delenv(devices.GPUS_ENV)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,GPU-abc")  # e.g. what Slurm gives an allocation
    assert devices.gpu_ids() == ["5", "GPU-abc"]
    assert devices.physical_devices("cuda", "5,GPU-abc") == {"5"}
    assert devices.physical_devices("cuda:1", "5,GPU-abc") == {"GPU-abc"}
    assert devices.physical_devices("auto", "5,GPU-abc") == {"5", "GPU-abc"}
    assert devices.physical_devices("cuda:2") == {"2"} and devices.physical_devices("cpu", "5") == set()
    # a server pinned to GPU 3 and a job pinned to GPU 2 both say "cuda": different devices
    assert not devices.devices_overlap("cuda", "cuda", visible_a="3", visible_b="2")
    assert devices.devices_overlap("cuda", "cuda:3", visible_a="3")
    assert devices.devices_overlap("auto", "cuda", visible_b="1")


def test_allocation_scoped_dirs(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert devices.allocation_server_dir(tmp_path / ".server") == tmp_path / ".server"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert devices.allocation_server_dir(tmp_path / ".server") == tmp_path / ".server" / "slurm-4242"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv(devices.DEVICE_LOCKS_ENV, raising=False)
    locks = devices.device_lock_dir()
    assert locks.name == "slurm-4242" and (locks.stat().st_mode & 0o777) == 0o700
    (tmp_path / "r" / "run1" / "activations" / ".server" / "slurm-7").mkdir(parents=True)
    assert [p.name for p in devices.run_server_dirs(tmp_path / "r")] == [".server", "slurm-7"]


def _wait_address(address: Path, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = protocol.read_address(address)
        if info:
            return info
        time.sleep(0.05)
    raise AssertionError(f"no server at {address}")


def _stop(address: Path) -> None:
    info = protocol.read_address(address)
    if info:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(info["pid"]), signal.SIGTERM)


@pytest.fixture
def gpus(tmp_path, monkeypatch):
    """Two fake GPUs, g0 and g1, with their locks in tmp_path; this process has no claim."""
    monkeypatch.setenv(devices.DEVICE_LOCKS_ENV, str(tmp_path / "locks"))
    monkeypatch.setenv(devices.GPUS_ENV, "g0,g1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "_JOB_CLAIM", None)
    yield tmp_path / "locks"
    os.environ.pop(devices.CLAIMED_ENV, None)


def test_a_server_keeps_its_device_until_a_job_needs_it(tmp_path, gpus, monkeypatch):
    """The activation jobs' path: they claim nothing themselves; the server the first one starts
    (ensure_server) claims a free GPU, runs pinned to it and holds it; later clients reuse it
    without disturbing it; a job that needs that GPU asks the idle server to exit and gets it."""
    locks, server_dir = gpus, private_files.private_dir(tmp_path / ".server")
    address = server_dir / "host-test.json"
    command = [sys.executable, "-c", SERVER, str(address), str(tmp_path), "cuda"]
    other = devices.claim_devices(1, lock_dir=locks, log=lambda *a: None)  # a story job holds g0
    assert other.ids == ["g0"]
    try:
        info = service.ensure_server(address, command, log_file=server_dir / "server.log", device="cuda", timeout=60)
        pid = int(info["pid"])
        assert devices._process_env(pid, "CUDA_VISIBLE_DEVICES") == "g1"  # pinned to the free GPU
        assert "CUDA_VISIBLE_DEVICES" not in os.environ  # the client itself claimed nothing
        holder = json.loads((locks / "g1.lock").read_text())
        assert holder["pid"] == pid and holder["role"] == "server" and holder["address"] == str(address)
        # the next activation job reuses the server: same pid, device still held
        again = service.ensure_server(address, command, log_file=server_dir / "server.log", device="cuda", timeout=60)
        assert again["pid"] == pid
        with pytest.raises(ServiceError, match="no 1 free GPU"):
            devices.claim_devices(1, ids=["g1"], lock_dir=locks, timeout=0.5, release_servers=False)
        # release_device reads each side's pinning: "cuda" on g0 is not the server's "cuda" on g1
        assert devices.release_device(server_dir, "cuda", visible="g0", log=lambda *a: None) == []
        # a job needing a GPU while g0 is taken asks the idle server on g1 to exit, and gets g1
        got = devices.claim_devices(1, lock_dir=locks, timeout=60, log=lambda *a: None)
        assert got.ids == ["g1"] and devices._wait_exit(pid, info.get("start_time"), 30)
        got.release()
    finally:
        other.release()
        _stop(address)


def test_a_job_hands_its_own_claim_to_the_server_it_starts(tmp_path, gpus):
    """A job that claimed its GPU (start_job) and starts a server passes that claim on."""
    server_dir = private_files.private_dir(tmp_path / ".server")
    address = server_dir / "host-test.json"
    claim = devices.claim_job_devices(1, log=lambda *a: None)
    try:
        assert claim.ids == ["g0"] and os.environ["CUDA_VISIBLE_DEVICES"] == "g0"
        info = service.ensure_server(address, [sys.executable, "-c", SERVER, str(address), str(tmp_path), "cuda"],
                                     log_file=server_dir / "server.log", device="cuda", timeout=60)
        assert devices._process_env(int(info["pid"]), "CUDA_VISIBLE_DEVICES") == "g0"
        claim.release()  # the job ends; the server still holds g0, g1 is free
        assert devices.claim_devices(1, lock_dir=gpus, timeout=5, release_servers=False).ids == ["g1"]
    finally:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        _stop(address)


def test_a_server_still_loading_keeps_its_device_then_is_asked(tmp_path, gpus):
    """A server holds its GPU from the moment it is started, before it has an address (loading
    its model); a job that needs the GPU waits for the address, then asks it to exit."""
    server_dir = private_files.private_dir(tmp_path / ".server")
    address = server_dir / "host-test.json"
    claim, own = devices._server_claim("cuda")  # what ensure_server does for an activation job
    assert own and claim.ids == ["g0"]
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(address), str(tmp_path), "cuda", "3"],
                            pass_fds=tuple(claim.fds), start_new_session=True)
    claim.record(proc.pid, "server", address)
    claim.release()
    try:
        blocker = devices.claim_devices(1, ids=["g1"], lock_dir=gpus, log=lambda *a: None)  # g1 busy too
        start = time.monotonic()
        got = devices.claim_devices(1, lock_dir=gpus, timeout=60, poll=0.1, log=lambda *a: None)
        assert got.ids == ["g0"] and time.monotonic() - start > 1.0  # waited for the load, then asked
        assert proc.wait(timeout=30) == 0
        got.release()
        blocker.release()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_no_gpu_no_claim(monkeypatch):
    monkeypatch.setattr(devices, "_JOB_CLAIM", None)
    assert devices.claim_job_devices(0) is None
    monkeypatch.setenv(devices.GPUS_ENV, "none")
    assert devices.claim_job_devices(1) is None
