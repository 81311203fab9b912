"""The shared model server, against the real server process on a tiny model (no mocks).

Each server is ``python -m emotion_vectors.extraction.serve_subject`` started the way the activation jobs
start it (``service.ensure_server``), with a tiny random Llama saved to disk. One module-scoped
server takes the abuse (bad paths, stray connections, wrong keys, garbage, a hung handshake, a
client killed mid-request); two more show stale address files being replaced and
``release_device`` stopping a server.
"""

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from emotion_vectors.extraction import service
from emotion_vectors.core import devices, private_files, protocol
from emotion_vectors.core.devices import release_device
from emotion_vectors.core.private_files import ServiceError
from emotion_vectors.core.protocol import read_address, request
from emotion_vectors.extraction.serve_subject import extract_shard, identity_parts, spec_input
from emotion_vectors.extraction.service import ensure_server
from emotion_vectors.extraction.shards import open_shard

SETTINGS = {"layers": [0, 2], "layer_step": 5, "pool_start": 2, "short_text_policy": "skip",
            "batch_size": 4, "max_batch_tokens": None, "storage_dtype": "float32"}
WORDS = "the fence rain letter garden window quiet road light morning neighbor paint".split()


def _texts(n, words=12):
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(words)) for i in range(n)], [f"t{i:04d}" for i in range(n)]


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory, shared_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(shared_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=shared_tokenizer.pad_token_id, eos_token_id=shared_tokenizer.eos_token_id,
                      bos_token_id=shared_tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("tinymodel")
    LlamaForCausalLM(cfg).save_pretrained(path)
    shared_tokenizer.save_pretrained(path)
    return {"name": "tiny", "path": str(path), "dtype": "float32", "device": "cpu"}


class Run:
    """One results root with its server directory, as the workflow lays them out."""

    def __init__(self, root: Path, spec: dict):
        self.root, self.spec = root, spec
        self.server_dir = root / "activations" / ".server"
        self.code = service.source_hash()
        self.identity = service.server_identity(identity_parts(spec, SETTINGS, root / "models", root), code=self.code)
        self.address = self.server_dir / f"{service.address_name(self.identity)}.json"
        self.log_file = self.server_dir / f"{self.address.stem}.log"
        self.command = service.python_command(
            "emotion_vectors.extraction.serve_subject", str(self.address),
            "--root", str(root), "--models-dir", str(root / "models"), "--threads", "1", "--idle-timeout", "120",
            "--handshake-timeout", "1", "--request-timeout", "2", "--expect-identity", self.identity,
        )
        self.stdin = spec_input(spec, SETTINGS)

    def start(self) -> dict:
        private_files.private_dir(self.server_dir)
        return ensure_server(self.address, self.command, log_file=self.log_file, stdin=self.stdin)

    def shard(self, name: str) -> Path:
        return self.root / "activations" / "emotions" / f"{name}.zarr"

    def extract(self, name: str, n: int = 6) -> dict:
        """A good request, exactly as an activation job makes it (reusing the live server)."""
        texts, ids = _texts(n)
        self.shard(name).parent.mkdir(parents=True, exist_ok=True)
        return extract_shard(name=name, texts=texts, ids=ids, output=self.shard(name), subject=self.spec,
                             extraction=SETTINGS, models_dir=self.root / "models", root=self.root,
                             server_dir=self.server_dir, idle_timeout=120, threads=1)

    def log(self) -> str:
        return self.log_file.read_text()

    def stop(self) -> None:
        if not self.log_file.exists():
            return
        for pid in {int(line.split("pid ")[1].split()[0]) for line in self.log().splitlines() if "ready on" in line}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _json(obj):
    return json.dumps(obj, sort_keys=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_spec, code_snapshot):
    r = Run(tmp_path_factory.mktemp("run"), tiny_spec)
    (r.root / "models").mkdir()
    r.start()
    yield r
    r.stop()


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_only_the_owner_can_connect_and_shards_record_the_server(run):
    info = read_address(run.address)
    assert _mode(run.server_dir) == 0o700 and _mode(run.address) == 0o600
    assert _mode(run.server_dir / f"{run.address.stem}.lock") == 0o600
    sock_dir = Path(info["socket"]).parent
    assert _mode(sock_dir) == 0o700 and os.lstat(sock_dir).st_uid == os.getuid()
    assert stat.S_ISSOCK(os.lstat(info["socket"]).st_mode) and _mode(info["socket"]) == 0o600
    ping = request(run.address, {"kind": "ping"}, identity=run.identity)
    assert ping["identity"] == run.identity == info["identity"]
    assert ping["code"] == run.code and ping["device"] == "cpu"
    assert ping["kinds"] == ["describe", "extract", "lens", "ping", "read", "shutdown", "tokens"]

    summary = run.extract("calm")
    shard = open_shard(run.shard("calm"))
    assert shard["activations"].shape == (6, 2, 32) and summary["n_kept"] == 6
    server = shard.attrs["provenance"]["server"]
    assert server["identity"] == run.identity and server["code_hash"] == run.code
    leftovers = [p.name for p in run.shard("calm").parent.iterdir() if p.name != "calm.zarr"]
    assert leftovers == []  # no staged copy, no partial, no tmp


def _extract_payload(run, output, staged=None):
    texts, ids = _texts(3)
    return {"kind": "extract", "name": "x", "texts": texts, "ids": ids, "output": str(output),
            "staged": str(staged or f"{output}.staged-1")}


def test_paths_outside_the_root_are_refused(run, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (run.root / "escape").symlink_to(outside, target_is_directory=True)
    cases = {
        "outside": _extract_payload(run, outside / "x.zarr"),
        "symlink": _extract_payload(run, run.root / "escape" / "x.zarr"),
        "relative": _extract_payload(run, "results/x.zarr"),
        "dotdot": _extract_payload(run, f"{run.root}/../{outside.name}/x.zarr"),
        "staged elsewhere": _extract_payload(run, run.shard("ok"), staged=outside / "ok.zarr.staged-1"),
        "staged wrong name": _extract_payload(run, run.shard("ok"), staged=run.shard("other")),
    }
    for case, payload in cases.items():
        with pytest.raises(ServiceError, match="outside|absolute path|staging path") as err:
            request(run.address, payload)
        assert not err.value.retryable, case
    assert list(outside.iterdir()) == []
    with pytest.raises(ServiceError, match="unknown request kind 'nope'.*extract"):
        request(run.address, {"kind": "nope"})
    run.extract("after-refusals")
    assert open_shard(run.shard("after-refusals")).attrs["complete"]


def _connect(info):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(info["socket"])
    return s


def test_bad_peers_never_stop_the_server(run):
    info = read_address(run.address)
    _connect(info).close()  # stray connection
    for garbage in (b"GET / HTTP/1.0\r\n\r\n",  # its first 4 bytes read as a huge length
                    b"\x00\x00\x00\x05\xff\xfe{{{"):  # well framed, not JSON
        with _connect(info) as s:
            s.recv(4096)  # the greeting
            s.sendall(garbage)
            with contextlib.suppress(ConnectionResetError):  # the server hangs up
                assert s.recv(4096) == b""
    with pytest.raises(ServiceError, match="authentication failed"):
        request({**info, "key": "00" * 32}, {"kind": "ping"})
    with pytest.raises(ServiceError, match="not the expected"):
        request(info, {"kind": "ping"}, identity="0" * 64)

    hung = _connect(info)  # reads the greeting, never answers it: dropped after 1 s
    started = time.monotonic()
    assert request(run.address, {"kind": "ping"})["identity"] == run.identity
    assert time.monotonic() - started >= 0.9
    hung.close()
    run.extract("after-abuse")
    log = run.log()
    assert "authentication failed" in log and "no handshake within 1 s" in log
    assert "exceeds the limit" in log and "not JSON" in log


def test_cancelled_client_never_gets_its_output(run):
    """SIGKILL a job mid-request: the server goes on, the output never appears, a rerun resumes."""
    texts, ids = _texts(600, words=40)  # a few seconds of extraction
    output = run.shard("killed")
    output.parent.mkdir(parents=True, exist_ok=True)
    client = textwrap.dedent(f"""
        from emotion_vectors.extraction.serve_subject import extract_shard
        extract_shard(name="killed", texts={texts!r}, ids={ids!r}, output={str(output)!r}, subject={run.spec!r},
                      extraction={SETTINGS!r}, models_dir={str(run.root / "models")!r}, root={str(run.root)!r},
                      server_dir={str(run.server_dir)!r}, idle_timeout=120, threads=1)
    """)
    script = run.root / "client.py"
    script.write_text(client)
    proc = subprocess.Popen([sys.executable, str(script)])
    partial = output.with_name("killed.zarr.partial")
    deadline = time.monotonic() + 30
    # the server fills the partial in its private work directory beside the output
    while not list(output.parent.glob("killed.zarr.server-*/killed.zarr.partial")) and time.monotonic() < deadline \
            and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the client finished before it could be killed (corpus too small?)"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run.extract("after-kill")  # served after the killed request is over
    assert not output.exists()
    assert not list(output.parent.glob("killed.zarr.staged-*"))
    assert not list(output.parent.glob("killed.zarr.server-*"))  # the work directory is gone
    assert "went away" in run.log() or "abandoned" in run.log()
    assert partial.is_dir()  # moved back beside the output for the rerun, which resumes from it
    summary = extract_shard(name="killed", texts=texts, ids=ids, output=output, subject=run.spec, extraction=SETTINGS,
                            models_dir=run.root / "models", root=run.root, server_dir=run.server_dir)
    assert summary["resumed_rows"] > 0 and open_shard(output)["activations"].shape[0] == 600
    assert not partial.exists()


def test_stale_addresses_are_replaced_and_release_device_stops_servers(tmp_path, tiny_spec, code_snapshot):
    r = Run(tmp_path / ("long-" * 14), tiny_spec)  # socket path too long: a private temp dir
    (r.root / "models").mkdir(parents=True)
    private_files.private_dir(r.server_dir)
    dead = subprocess.Popen(["true"])
    dead.wait()
    fake = {"socket": str(r.server_dir / "gone.sock"), "key": "00" * 32, "identity": r.identity, "device": "cpu",
            "host": socket.gethostname()}
    private_files.write_private_json(r.address, {**fake, "pid": dead.pid, "start_time": None})
    try:
        first = r.start()
        assert first["pid"] != dead.pid and first["socket_private_dir"]
        assert _mode(first["socket_private_dir"]) == 0o700
        assert request(first, {"kind": "ping"})["pid"] == first["pid"]

        assert release_device(r.server_dir, "cuda:0") == []  # another device: left alone
        assert release_device(r.server_dir, "cpu") == [first["pid"]]
        assert not r.address.exists() and protocol._pid_gone(first["pid"], first["start_time"])
        assert not os.path.exists(first["socket_private_dir"])

        # A live process unrelated to us, even with its true start time: its socket does not answer.
        other = subprocess.Popen(["sleep", "60"])
        try:
            private_files.write_private_json(r.address, {**fake, "pid": other.pid,
                                                   "start_time": protocol.process_start_time(other.pid)})
            second = r.start()
            assert second["pid"] not in (other.pid, first["pid"])
            assert request(second, {"kind": "ping"}, identity=r.identity)["pid"] == second["pid"]
        finally:
            other.kill()
        assert release_device([r.server_dir], "cpu") == [second["pid"]]
        assert not r.address.exists()
    finally:
        r.stop()


def test_identity_follows_the_code(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    before = service.source_hash(pkg)
    (pkg / "notes.txt").write_text("not code")
    assert service.source_hash(pkg) == before
    (pkg / "sub" / "b.py").write_text("y = 3\n")
    after = service.source_hash(pkg)
    assert after != before
    parts = {"subject": {"name": "m"}}
    assert service.server_identity(parts, code=before) == service.server_identity(parts, code=before)
    assert service.server_identity(parts, code=before) != service.server_identity(parts, code=after)
    assert service.server_identity(parts, code=before) != service.server_identity({"subject": {"name": "n"}}, code=before)


def test_private_dir_refuses_what_others_could_touch(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    with pytest.raises(ServiceError, match="writable by group or others"):
        private_files.private_dir(loose)
    readable = tmp_path / "readable"
    readable.mkdir()
    os.chmod(readable, 0o755)
    assert _mode(private_files.private_dir(readable)) == 0o700
    (tmp_path / "link").symlink_to(readable)
    with pytest.raises(ServiceError, match="not a directory"):
        private_files.private_dir(tmp_path / "link")
    exposed = readable / "address.json"
    exposed.write_text("{}")
    os.chmod(exposed, 0o644)
    with pytest.raises(ServiceError, match="not trusted"):
        read_address(exposed)


def test_devices():
    assert devices.devices_overlap("cuda", "cuda:0") and devices.devices_overlap("auto", "cuda:1")
    assert not devices.devices_overlap("cuda:0", "cuda:1") and not devices.devices_overlap("cpu", "auto")
    assert devices.uses_gpu("auto") and not devices.uses_gpu("cpu")


def test_a_server_still_loading_is_waited_for_not_started_twice(tmp_path):
    """While a server process holds its life lock (loading, no address yet), nothing is started."""
    server_dir = private_files.private_dir(tmp_path / ".server")
    address = server_dir / "host-0123456789abcdef.json"
    held = protocol._hold_life_lock(address)  # what a loading server holds
    try:
        with pytest.raises(ServiceError, match="another server .* is running or starting"):
            protocol._hold_life_lock(address)
        with pytest.raises(ServiceError, match="did not publish its address within 1 s"):
            ensure_server(address, ["false"], log_file=server_dir / "server.log", timeout=1)
        assert not (server_dir / "server.log").exists()  # no second server was started
    finally:
        os.close(held)
    os.close(protocol._hold_life_lock(address))  # released with its holder


def test_every_shard_write_refuses_a_planted_symlink(run, tmp_path):
    """A symlink planted where the server would write (the resumable partial, the final copy's
    temporary name, the staging path) is refused, and nothing is written through it; one planted
    inside a partial makes the server start that shard over, never follow it."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("keep")
    pid = read_address(run.address)["pid"]
    out = run.shard("planted")
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".partial", ".tmp", ".staged-1"):
        link = out.with_name(out.name + suffix)
        link.symlink_to(victim, target_is_directory=True)
        with pytest.raises(ServiceError, match=f"refusing to write .*{suffix}: it is a symlink"):
            request(run.address, _extract_payload(run, out, staged=out.with_name(out.name + ".staged-1")))
        assert sorted(os.listdir(victim)) == ["keep"] and not out.exists(), suffix
        link.unlink()
    partial = out.with_name(out.name + ".partial")
    (partial / "activations").mkdir(parents=True)
    (partial / "activations" / "c").symlink_to(victim, target_is_directory=True)
    summary = run.extract("planted")
    assert summary["resumed_rows"] == 0 and open_shard(out).attrs["complete"]
    assert sorted(os.listdir(victim)) == ["keep"]
    assert "holds symlinks" in run.log() and not partial.exists()
    assert read_address(run.address)["pid"] == pid  # the same server refused and served


def test_leftovers_of_dead_servers_and_jobs_are_removed(run):
    """What a killed server or job leaves in a shard directory is cleaned by the next request
    there: a dead server's work directory (its partial moved back for the resume) and a
    partial beside a finished shard."""
    done = run.shard("finished")
    run.extract("finished")
    stray_partial = done.with_name(done.name + ".partial")
    stray_partial.mkdir()
    (stray_partial / "zarr.json").write_text("{}")
    dead = subprocess.Popen(["true"])
    dead.wait()
    resumable = run.shard("resumable")
    work = resumable.parent / f"{resumable.name}.server-{socket.gethostname()}-{dead.pid}-0123abcd"
    (work / f"{resumable.name}.partial").mkdir(parents=True)
    (work / f"{resumable.name}.tmp").mkdir()
    alive_work = resumable.parent / f"other.zarr.server-{socket.gethostname()}-{os.getpid()}-0123abcd"
    alive_work.mkdir()  # a live server's (this process stands in for it): left alone
    run.extract("trigger")
    assert not stray_partial.exists() and open_shard(done).attrs["complete"]
    assert not work.exists() and resumable.with_name(resumable.name + ".partial").is_dir()
    assert alive_work.is_dir()
    alive_work.rmdir()
    summary = run.extract("resumable")  # resumes (here: an empty partial, so it starts over) and cleans up
    assert summary["n_kept"] == 6 and not resumable.with_name(resumable.name + ".partial").exists()
    assert sorted(p.name for p in done.parent.iterdir() if not p.name.endswith(".zarr")) == []


def test_no_settings_in_the_servers_argv(run):
    info = read_address(run.address)
    cmdline = Path(f"/proc/{info['pid']}/cmdline").read_bytes().decode()
    assert "emotion_vectors.extraction.serve_subject" in cmdline and run.identity in cmdline
    assert run.spec["path"] not in cmdline and "layer_step" not in cmdline and "storage_dtype" not in cmdline


def test_the_identity_covers_the_prepared_weights(tmp_path, tiny_spec, code_snapshot):
    """Weights rebuilt in place (a new directory renamed in, as prepare_model does) give a new
    identity, so the next job starts a server on them instead of reusing an idle one on the old."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_spec["path"], model)
    spec = {**tiny_spec, "path": str(model)}
    r = Run(tmp_path / "run", spec)
    (r.root / "models").mkdir(parents=True)
    try:
        first = r.extract("a")["server"]
        assert first["identity"] == r.identity
        assert identity_parts(spec, SETTINGS, r.root / "models", r.root) == identity_parts(spec, SETTINGS, r.root / "models", r.root)
        rebuilt = tmp_path / "model.partial"
        shutil.copytree(model, rebuilt)
        shutil.rmtree(model)
        rebuilt.rename(model)
        again = r.extract("b")["server"]
        assert again["identity"] != first["identity"] and again["pid"] != first["pid"]
        assert protocol._pid_gone(first["pid"], None) is None  # the old one still idles, unused
        weights = identity_parts(spec, SETTINGS, r.root / "models", r.root)["weights"]
        assert weights["path"] == str(model) and weights["files"] >= 3
    finally:
        r.stop()
        for log in r.server_dir.glob("*.log"):
            for line in log.read_text().splitlines():
                if "ready on" in line:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(line.split("pid ")[1].split()[0]), signal.SIGTERM)
