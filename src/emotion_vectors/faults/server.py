"""Fault 6: the model server (``service``, ``serve_subject``) on the real default model, each
server started as the activation jobs start it and each job a real client process: busy with a
full listen queue, planted symlinks, SIGSTOPped, SIGKILLed mid-request, a trickling client, a
squatted GPU lock directory."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .battery import Battery
from .common import ACT_NAME, REPO_ROOT, _short, activation_corpus, compare_activations
from .server_tools import (
    _extract_job,
    _job_results,
    _server_pid,
    _Servers,
    _wait,
    _work_rows,
    big_corpus,
    fill_listen_queue,
    trickle,
)


def server_faults(b: Battery) -> None:
    """Faults of the model server (``service``, ``serve_subject``) on the real default model,
    each server started as the activation jobs start it and each job a real client process."""
    servers = _Servers(b)
    base = b.work / "server"
    b.details["server"] = {}
    try:
        busy = base / "busy"
        handle = servers.start(busy)
        emo = busy / "activations" / "emotions"
        ref = emo / "ref.zarr"
        res = _job_results(*servers.spawn(busy, [_extract_job(ref)]))[str(ref)]
        if not res.get("ok"):
            raise RuntimeError(f"the reference shard through the server failed: {res.get('error')}")
        big_ref = server_busy(b, servers, busy, handle, ref)
        server_symlinks(b, servers, busy, handle)
        server_stopped(b, servers, busy, handle, ref, big_ref)
        server_killed(b, servers, busy, handle, big_ref)
        server_trickle(b, servers, base / "trickle")
        server_squat(b, base / "squat")
    finally:
        servers.stop()


def server_busy(b: Battery, servers: _Servers, root: Path, handle: Any, ref: Path, n_jobs: int = 6) -> Path:
    """The server serves a long request while its listen queue is full (every new connection
    gets EAGAIN, as with thousands of waiting jobs); jobs arriving then must wait for it and all
    be served by it. Returns the long request's shard (a reference for later faults)."""
    import resource

    from ..core.protocol import read_address, stale_reason

    t0 = time.monotonic()
    emo = root / "activations" / "emotions"
    info = read_address(handle.address)
    pid = int(info["pid"])
    big_texts, big_ids = big_corpus()
    slow_out = emo / "slow.zarr"
    seen = len(handle.log_file.read_text(errors="replace"))
    slow = servers.spawn(root, [_extract_job(slow_out, big_texts, big_ids, name="big")])
    _wait(lambda: "request 'extract' (big)" in handle.log_file.read_text(errors="replace")[seen:], 300,
               "the long request")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192 <= hard or (soft < 8192 and hard == resource.RLIM_INFINITY):
        resource.setrlimit(resource.RLIMIT_NOFILE, (8192, hard))
    fillers = fill_listen_queue(info["socket"])
    full_at = time.monotonic()
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(info["socket"])
        eagain = False
    except BlockingIOError:
        eagain = True
    finally:
        probe.close()
    jobs = [servers.spawn(root, [_extract_job(emo / f"job{i}.zarr")]) for i in range(n_jobs)]

    def met_full_queue() -> int:
        return sum("is busy (its queue of waiting connections is full)" in out.read_text(errors="replace")
                   for _, out in jobs)

    with contextlib.suppress(RuntimeError):
        _wait(lambda: met_full_queue() == n_jobs or any(p.poll() is not None for p, _ in jobs), 300,
                   "the jobs to meet the full queue")
    met = met_full_queue()
    full_for = time.monotonic() - full_at
    alive_while_full = stale_reason(read_address(handle.address), handle.address) is None and \
        int(read_address(handle.address)["pid"]) == pid
    for f in fillers:
        f.close()
    results = [_job_results(p, out).get(str(emo / f"job{i}.zarr"), {}) for i, (p, out) in enumerate(jobs)]
    slow_res = _job_results(*slow).get(str(slow_out), {})
    served = []
    for i, r in enumerate(results):
        same = r.get("ok") and (r.get("summary") or {}).get("server", {}).get("pid") == pid
        lost, _ = compare_activations(emo / f"job{i}.zarr", ref)
        served.append(bool(same and lost == 0))
    one_server = servers.pids() == [pid]
    survived = sum(served) if (one_server and alive_while_full and slow_res.get("ok")) else 0
    b.details["server"]["busy"] = {
        "queued_connections": len(fillers), "eagain": eagain, "jobs": n_jobs, "jobs_met_full_queue": met,
        "queue_full_for_s": round(full_for, 1), "server_pid": pid, "servers_started": servers.pids(),
        "alive_while_full": alive_while_full, "jobs_served_identical": served,
        "long_request_ok": bool(slow_res.get("ok")), "errors": [r.get("error") for r in results if not r.get("ok")],
        "seconds": round(time.monotonic() - t0, 1),
    }
    b.add(
        "model server busy with a full listen queue", n_jobs, survived, f"{n_jobs - sum(served)} shards",
        f"{len(fillers)} connections queued (EAGAIN {'seen' if eagain else 'NOT seen'}) while a 300-text request ran; "
        f"{met}/{n_jobs} jobs met the full queue and waited {full_for:.0f} s; the server (pid {pid}) was never "
        f"replaced ({len(servers.pids())} start(s)); {sum(served)}/{n_jobs} shards bit-identical to the reference",
    )
    return slow_out


def server_symlinks(b: Battery, servers: _Servers, root: Path, handle: Any) -> None:
    """A symlink planted where the server or a job writes (shard partial, temporary copy, staging
    path, inside a partial, the output itself, a read's .part and answer, a server's lock and
    log): refused, or replaced (never followed); nothing outside the results changes."""
    from ..extraction.serve_subject import extract_shard
    from ..core.private_files import ServiceError
    from ..core.protocol import request
    from ..extraction.service import ensure_server

    victim = b.work / "server" / "victim"
    victim.mkdir(parents=True, exist_ok=True)
    (victim / "keep").write_text("keep")
    emo = root / "activations" / "emotions"
    scratch = handle.address.parent
    pid = _server_pid(handle)
    texts, ids = activation_corpus()
    params = servers.params(root)
    cases: list[dict[str, Any]] = []

    def snapshot() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in victim.iterdir()}

    def check(where: str, action: Callable[[], Any], *, refused: bool = True, after: Callable[[], bool] = lambda: True) -> None:
        before = snapshot()
        try:
            action()
            outcome = "completed"
        except ServiceError as err:
            outcome = str(err)
        intact = snapshot() == before
        ok = intact and (("symlink" in outcome) if refused else (outcome == "completed" and after()))
        cases.append({"case": where, "ok": ok, "outside_unchanged": intact, "result": outcome})
        b.log(f"planted symlink at {where}: {'ok' if ok else 'NOT OK'}: {_short(outcome, 200)}")

    out = emo / "planted.zarr"
    payload = {"kind": "extract", "name": "planted", "texts": texts, "ids": ids, "output": str(out),
               "staged": f"{out}.staged-1"}
    for suffix in (".partial", ".tmp", ".staged-1"):
        link = out.with_name(out.name + suffix)
        link.symlink_to(victim, target_is_directory=True)
        check(f"<shard>{suffix}", lambda: request(handle.address, payload))
        link.unlink()
    partial = out.with_name(out.name + ".partial")
    (partial / "activations").mkdir(parents=True)
    (partial / "activations" / "c").symlink_to(victim, target_is_directory=True)
    check("inside <shard>.partial (resumed)", lambda: extract_shard(name="planted", texts=texts, ids=ids, output=out,
                                                                    **params),
          refused=False, after=lambda: out.is_dir() and not partial.exists())
    linked = emo / "linked.zarr"
    linked.symlink_to(victim, target_is_directory=True)
    check("<shard> itself", lambda: extract_shard(name="linked", texts=texts, ids=ids, output=linked, **params))
    linked.unlink()
    answer = f"read-{socket.gethostname()}-{os.getpid()}-5a5a5a.npy"
    read = {"kind": "read", "texts": texts[:2], "layer": 1, "pool_start": 0, "max_tokens": 64, "batch_size": 2,
            "max_batch_tokens": None, "output": str(scratch / answer)}
    for name in (f"{answer}.{pid}.part", answer):
        (scratch / name).symlink_to(victim / "keep")
        check(f"read {'answer .part' if name.endswith('.part') else 'answer'}", lambda: request(handle.address, read))
        (scratch / name).unlink()
    for name, log_name in (("h-planted.lock", "h-planted.log"), ("h-planted2.log", "h-planted2.log")):
        (scratch / name).symlink_to(victim / name)
        check(f"server {'lock' if name.endswith('.lock') else 'log'} file",
              lambda: ensure_server(scratch / f"{Path(name).stem}.json", ["true"], log_file=scratch / log_name, timeout=5))
        (scratch / name).unlink()
    survived = sum(c["ok"] for c in cases) if _server_pid(handle) == pid else 0
    b.details["server"]["symlinks"] = cases
    b.add(
        "planted symlinks where the server or a job writes", len(cases), survived,
        f"{sum(not c['outside_unchanged'] for c in cases)} files outside the results",
        "refused at the moment of opening: " + ", ".join(c["case"] for c in cases if c["ok"] and c["result"] != "completed")
        + "; replaced or started over, never followed: " + ", ".join(c["case"] for c in cases if c["result"] == "completed")
        + f"; the same server (pid {pid}) answered every request",
    )


def server_stopped(b: Battery, servers: _Servers, root: Path, handle: Any, ref: Path, big_ref: Path, hung_after: float = 10.0) -> None:
    """The server SIGSTOPped (a) before a job connects, (b) during a job's request: the job
    fails within ``hung_after`` s with an error saying the server is stopped, no output
    appears; after SIGCONT the rerun completes (b: resuming the rows already done)."""
    t0 = time.monotonic()
    emo = root / "activations" / "emotions"
    env = {"EMOTION_VECTORS_SERVER_HUNG_AFTER": str(hung_after)}
    pid = _server_pid(handle)
    records = []
    # (a) the job waits in the queue of a stopped server
    out_a = emo / "stopped-queued.zarr"
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        res = _job_results(*servers.spawn(root, [_extract_job(out_a)], env)).get(str(out_a), {})
        failed_in = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    clear = (not res.get("ok")) and "stopped (SIGSTOP?)" in str(res.get("error")) and f"pid {pid}" in str(res.get("error"))
    published = out_a.exists()
    _job_results(*servers.spawn(root, [_extract_job(out_a)]))
    lost, note = compare_activations(out_a, ref)
    records.append({"case": "waiting in the queue", "error": res.get("error"), "failed_after_s": round(failed_in, 1),
                    "published_while_stopped": published, "rerun": note,
                    "ok": bool(clear and not published and lost == 0)})
    # (b) stopped in the middle of the job's extraction
    out_b = emo / "stopped-mid.zarr"
    big_texts, big_ids = big_corpus()
    seen = len(handle.log_file.read_text(errors="replace"))
    proc, log = servers.spawn(root, [_extract_job(out_b, big_texts, big_ids, name="big")], env)
    _wait(lambda: _work_rows(out_b) >= 20 or proc.poll() is not None, 600, "rows of the stopped request")
    rows_at_stop = _work_rows(out_b)
    os.kill(pid, signal.SIGSTOP)
    try:
        res = _job_results(proc, log).get(str(out_b), {})
        published = out_b.exists()
    finally:
        os.kill(pid, signal.SIGCONT)
    clear = (not res.get("ok")) and "stopped (SIGSTOP?)" in str(res.get("error"))
    _wait(lambda: "abandoned" in handle.log_file.read_text(errors="replace")[seen:], 120, "the abandoned request")
    again = _job_results(*servers.spawn(root, [_extract_job(out_b, big_texts, big_ids, name="big")])).get(str(out_b), {})
    lost, note = compare_activations(out_b, big_ref)
    resumed = (again.get("summary") or {}).get("resumed_rows", 0)
    records.append({"case": "in the middle of its request", "error": res.get("error"), "rows_done_at_stop": rows_at_stop,
                    "published_while_stopped": published, "rerun_resumed_rows": resumed, "rerun": note,
                    "ok": bool(clear and not published and lost == 0 and resumed > 0)})
    b.details["server"]["stopped"] = records
    b.add(
        "SIGSTOPped model server", 2, sum(r["ok"] for r in records), f"{lost} rows",
        f"hung_after {hung_after:.0f} s: a waiting job failed after {records[0]['failed_after_s']:.0f} s "
        f"(`{_short(records[0]['error'], 150)}`); a job stopped mid-request ({rows_at_stop} rows done) failed the same "
        f"way with no output; after SIGCONT the reruns completed ({resumed} rows resumed), bit-identical; "
        f"{time.monotonic() - t0:.0f} s",
    )


def server_killed(b: Battery, servers: _Servers, root: Path, handle: Any, big_ref: Path) -> None:
    """The server SIGKILLed (a) mid-extraction: its work directory is left beside the output;
    the next job's server moves the partial back, resumes it and removes the directory;
    (b) mid-read: its ``.part`` answer is left in the server directory; the next server removes
    it. Nothing of either is left, and the reruns complete."""
    from ..core.protocol import read_address

    t0 = time.monotonic()
    emo = root / "activations" / "emotions"
    scratch = handle.address.parent
    big_texts, big_ids = big_corpus()
    records = []
    # (a) mid-extraction
    out = emo / "killed.zarr"
    pid = _server_pid(handle)
    proc, log = servers.spawn(root, [_extract_job(out, big_texts, big_ids, name="big")])
    _wait(lambda: _work_rows(out) >= 20 or proc.poll() is not None, 600, "rows of the killed request")
    rows = _work_rows(out)
    os.kill(pid, signal.SIGKILL)
    res = _job_results(proc, log).get(str(out), {})
    left = sorted(p.name for p in emo.glob("killed.zarr.*"))
    again = _job_results(*servers.spawn(root, [_extract_job(out, big_texts, big_ids, name="big")])).get(str(out), {})
    lost, note = compare_activations(out, big_ref)
    resumed = (again.get("summary") or {}).get("resumed_rows", 0)
    after = sorted(p.name for p in emo.glob("killed.zarr.*"))
    records.append({"case": "mid-extraction", "rows_done": rows, "error": res.get("error"), "left_by_kill": left,
                    "left_after_rerun": after, "rerun_resumed_rows": resumed, "rerun": note,
                    "ok": bool(not res.get("ok") and any(".server-" in n for n in left) and not after
                               and lost == 0 and resumed > 0)})
    # (b) mid-read
    pid = _server_pid(handle)
    n_read = 3000
    texts = [f"Reading {i}. " + t for i in range(n_read // 12) for t in activation_corpus()[0]]
    read_job = {"kind": "read", "key": "read", "texts": texts, "layer": 2}
    proc, log = servers.spawn(root, [read_job])
    _wait(lambda: bool(list(scratch.glob("read-*.npy.*.part"))) or proc.poll() is not None, 600, "the read's .part")
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    res = _job_results(proc, log).get("read", {})
    parts = sorted(p.name for p in scratch.glob("read-*.part"))
    again = _job_results(*servers.spawn(root, [{**read_job, "texts": texts[:24]}])).get("read", {})
    new_pid = int(read_address(handle.address)["pid"])
    remaining = sorted(p.name for p in scratch.glob("read-*"))
    records.append({"case": "mid-read", "error": res.get("error"), "left_by_kill": parts, "left_after_next_start": remaining,
                    "next_read_ok": bool(again.get("ok")), "new_server": new_pid != pid,
                    "ok": bool(not res.get("ok") and parts and not remaining and again.get("ok") and new_pid != pid)})
    b.details["server"]["killed"] = records
    b.add(
        "model server SIGKILLed mid-request: leftovers", 2, sum(r["ok"] for r in records), f"{lost} rows",
        f"mid-extraction ({rows} rows done): left {left}; the next job's server moved the partial back, resumed "
        f"{resumed} rows (bit-identical) and left nothing beside the output; mid-read: left {parts}, removed when "
        f"the next server started; {time.monotonic() - t0:.0f} s",
    )


def server_trickle(b: Battery, servers: _Servers, root: Path, handshake: float = 2.0, request_timeout: float = 4.0) -> None:
    """A client sending its bytes one at a time, a little faster than any per-byte timeout,
    (a) before authenticating and (b) after: dropped when the one deadline for the handshake
    (b: for the request message) passes; a real job queued behind it waits no longer."""
    from ..extraction.serve_subject import extract_shard
    from ..core.protocol import read_address

    handle = servers.start(root, handshake_timeout=handshake, request_timeout=request_timeout)
    info = read_address(handle.address)
    key = bytes.fromhex(info["key"])
    params = servers.params(root)
    emo = root / "activations" / "emotions"
    texts, ids = activation_corpus()
    started = time.monotonic()
    extract_shard(name=ACT_NAME, texts=texts, ids=ids, output=emo / "base.zarr", **params)
    base_s = time.monotonic() - started
    records = []
    for n, (authenticate, deadline) in enumerate(((False, handshake), (True, request_timeout))):
        held: dict[str, float] = {}
        t = threading.Thread(target=lambda a=authenticate: held.setdefault("s", trickle(info, key, a, 30.0)))
        t.start()
        time.sleep(0.3)
        started = time.monotonic()
        extract_shard(name=ACT_NAME, texts=texts, ids=ids, output=emo / f"trickle-{n}.zarr", **params)
        job_s = time.monotonic() - started
        t.join()
        lost, note = compare_activations(emo / f"trickle-{n}.zarr", emo / "base.zarr")
        ok = held["s"] <= deadline + 1.5 and job_s <= base_s + deadline + 3.0 and lost == 0
        records.append({"case": "after authentication" if authenticate else "before authentication",
                        "deadline_s": deadline, "held_s": round(held["s"], 1), "job_s": round(job_s, 1),
                        "job_alone_s": round(base_s, 1), "ok": ok})
    b.details["server"]["trickle"] = records
    before, after = records
    b.add(
        "trickling client (a byte every 0.25 s)", 2, sum(r["ok"] for r in records), "0 shards",
        f"dropped after {before['held_s']} s (handshake deadline {handshake:.0f} s) and {after['held_s']} s (request "
        f"deadline {request_timeout:.0f} s), one deadline however the bytes come; a job behind it took "
        f"{before['job_s']} s / {after['job_s']} s vs {base_s:.1f} s alone",
    )


def server_squat(b: Battery, base: Path) -> None:
    """Another user creates the GPU lock directory's old fixed name first, or XDG_RUNTIME_DIR is
    missing or someone else's: a GPU job (``start_job`` with ``gpu=1``, two fake GPU ids) still
    claims its device, in a directory of ours. Creating another user's directory needs root."""
    from ..core.devices import DEVICE_LOCKS_ENV
    from ..core.private_files import PRIVATE_PREFIX

    base.mkdir(parents=True, exist_ok=True)
    tmp, cache = base / "tmp", base / "cache"
    tmp.mkdir(exist_ok=True)
    os.chmod(tmp, 0o1777)
    root_user = os.getuid() == 0
    old = tmp / f"{PRIVATE_PREFIX}{os.getuid()}-devices-{socket.gethostname()}"
    variants: list[tuple[str, str | None]] = [("XDG_RUNTIME_DIR set but missing", str(base / "missing"))]
    if root_user:
        old.mkdir(mode=0o700, exist_ok=True)
        os.chown(old, 65534, 65534)
        theirs = base / "runtime-of-another-user"
        theirs.mkdir(mode=0o700, exist_ok=True)
        os.chown(theirs, 65534, 65534)
        variants = [("old fixed path created first by another user (uid 65534), no XDG_RUNTIME_DIR", None),
                    *variants, ("XDG_RUNTIME_DIR belongs to another user", str(theirs))]
    job = ("import os, types\nfrom emotion_vectors.core.jobs import start_job\n"
           "smk = types.SimpleNamespace(log=[], rule='gpu_job', threads=1, output=[], resources=types.SimpleNamespace(gpu=1))\n"
           "start_job(smk)\nprint('claimed', os.environ['CUDA_VISIBLE_DEVICES'])\n")
    records = []
    for what, xdg in variants:
        env = {k: v for k, v in os.environ.items() if k not in (DEVICE_LOCKS_ENV, "XDG_RUNTIME_DIR", "SLURM_JOB_ID",
                                                                 "CUDA_VISIBLE_DEVICES")}
        env.update(TMPDIR=str(tmp), XDG_CACHE_HOME=str(cache), EMOTION_VECTORS_GPUS="f0,f1", OMP_NUM_THREADS="1",
                   PYTHONPATH=str(REPO_ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if xdg is not None:
            env["XDG_RUNTIME_DIR"] = xdg
        proc = subprocess.run([sys.executable, "-c", job], env=env, capture_output=True, text=True, timeout=300)
        locks = [p for p in tmp.iterdir() if p.name.startswith(old.name + "-")]
        ok = (proc.returncode == 0 and "claimed f0" in proc.stdout and "PermissionError" not in proc.stderr
              and len(locks) == 1 and locks[0].stat().st_uid == os.getuid() and (locks[0] / "f0.lock").exists())
        warned = next((line.split(": ", 1)[-1] for line in proc.stderr.splitlines() if "XDG_RUNTIME_DIR" in line), "")
        records.append({"case": what, "ok": ok, "rc": proc.returncode, "lock_dir": str(locks[0]) if locks else None,
                        "said": warned, "stderr": _short(proc.stderr, 400) if not ok else ""})
    b.details["server"]["squat"] = records
    b.add(
        "GPU lock directory squatted / XDG_RUNTIME_DIR unusable", len(records), sum(r["ok"] for r in records),
        "0 jobs blocked" if all(r["ok"] for r in records) else f"{sum(not r['ok'] for r in records)} jobs blocked",
        ("" if root_user else "not root: another user's directory could not be made, only the missing "
         "XDG_RUNTIME_DIR was injected; ")
        + "each GPU job claimed its device in a private directory whose name carries a tag from the user's "
        "secret (the old fixed name left to its squatter)",
    )
