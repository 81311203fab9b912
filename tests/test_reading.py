"""Reading texts through the run's model server (emotion_vectors.extraction.reading, serve_subject's
``describe``/``read``/``lens`` requests) against reading them in process.

A real ``serve_subject`` process (started as the workflow's jobs start it, on a tiny random
Llama saved to disk, running a snapshot of the package) answers the requests; every number it
returns must equal the in-process reader's, and every bad request must be refused with the
server living on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_RUN_EMOTIONS, tiny_subject_run
from emotion_vectors.extraction import reading, serve_subject
from emotion_vectors.reading import score as score_mod
from emotion_vectors.core.models import load_model
from emotion_vectors.extraction.reading import LocalReader, ReadError, ServerReader, gather
from emotion_vectors.reading.score import score_texts
from emotion_vectors.extraction.serve_subject import ServerHandle, find_live_server, subject_server
from emotion_vectors.core.private_files import ServiceError

SETTINGS = {"layers": [1, 3], "layer_step": 5, "pool_start": 2, "short_text_policy": "skip",
            "batch_size": 4, "max_batch_tokens": None, "storage_dtype": "float32"}
EMOTIONS = TINY_RUN_EMOTIONS
LONG = " ".join(["the quiet road ran past the old mill and on toward the sea"] * 30)
TEXTS = [
    "The sun came out and we laughed all afternoon in the park.",
    "Hi",  # too short for pool_start 3
    LONG,  # truncated at max_tokens
    "Rain again. The bus was late and nobody answered the phone.",
    "He waited in the dark hallway, listening to the footsteps come closer.",
]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_llama, code_snapshot):
    """A run root with the tiny Llama as its subject, a vector store naming it, neutral
    activations, a live server (the handle the workflow's jobs build) and the same model loaded
    here."""
    run = tiny_subject_run(tmp_path_factory.mktemp("run"), tiny_llama, neutral=False)
    root, spec, store = run["root"], run["spec"], run["store"]
    (root / "models").mkdir()
    handle = subject_server(subject=spec, extraction=SETTINGS, models_dir=root / "models", root=root,
                            server_dir=root / "activations" / ".server", idle_timeout=120, threads=1)
    handle.call({"kind": "ping"})  # starts it
    local = load_model(spec, padding_side="left")
    yield {"root": root, "handle": handle, "store": store, "local": LocalReader(local.model, local.tokenizer, local.info)}
    info = handle.live()
    if info is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(info["pid"]), signal.SIGTERM)


def _scratch_files(handle: ServerHandle) -> list[str]:
    return sorted(p.name for p in handle.address.parent.iterdir() if p.suffix in (".npy", ".part"))


def _answer(tag: str) -> str:
    """A read answer's name as a client of this host and process makes it."""
    return f"read-{socket.gethostname()}-{os.getpid()}-{tag}.npy"


def test_server_reads_what_the_local_model_reads(served):
    handle = served["handle"]
    remote = ServerReader(handle)
    assert remote.hidden_size == served["local"].hidden_size == 48
    assert remote.layers == [1, 3] and remote.info["server"]["pid"] == handle.live()["pid"]
    kw = dict(layer=3, pool_start=3, max_tokens=40, batch_size=2)
    x_srv, s_srv = gather(remote, TEXTS, **kw)
    x_loc, s_loc = gather(served["local"], TEXTS, **kw)
    assert s_srv.via == "model server" and s_loc.via == "in-process"
    assert s_srv.too_short == s_loc.too_short == [1]
    assert list(s_srv.truncated) == list(s_loc.truncated) == [2]
    assert s_srv.truncated[2] == s_loc.truncated[2] and LONG.startswith(s_srv.truncated[2])
    assert s_srv.n_tokens.tolist() == s_loc.n_tokens.tolist() and s_srv.n_tokens[2] <= 40
    assert s_srv.tokens == s_loc.tokens > 0
    assert np.isnan(x_srv[1]).all() and np.isfinite(np.delete(x_srv, 1, axis=0)).all()
    np.testing.assert_allclose(x_srv, x_loc, rtol=1e-5, atol=1e-6)
    # another window and layer give other numbers (the request's window is honoured)
    x_other, _ = gather(remote, TEXTS, layer=1, pool_start=0, max_tokens=40)
    assert not np.allclose(x_other[0], x_srv[0])
    # no answer file is left behind, and an empty read works
    assert _scratch_files(handle) == []
    x_none, s_none = gather(remote, [], **kw)
    assert x_none.shape == (0, 48) and s_none.n_tokens.shape == (0,)
    assert _scratch_files(handle) == []


def test_lens_through_the_server_equals_the_local_lens(served):
    remote = ServerReader(served["handle"])
    rng = np.random.default_rng(1)
    dirs = rng.standard_normal((3, 48))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    assert remote.top_tokens(dirs, 5.0, 7) == served["local"].top_tokens(dirs, 5.0, 7)
    with pytest.raises(ServiceError, match="lens"):
        remote.top_tokens(np.full((2, 48), np.nan), 5.0, 7)


@pytest.mark.parametrize("baseline", ["corpus", "neutral"])
def test_score_texts_through_the_server_equals_in_process(served, baseline):
    import zarr

    root = served["root"]
    if baseline == "neutral" and not (root / "activations" / "neutral.zarr").exists():
        g = zarr.open_group(str(root / "activations" / "neutral.zarr"), mode="w")
        g.create_array("activations", data=np.random.default_rng(2).standard_normal((4, 2, 48)).astype(np.float32))
        g.attrs.update({"layers": [1, 3], "pool_start": 50, "complete": True})
    kw = dict(layer=3, pool="from:1", baseline=baseline, max_tokens=40, batch_size=2)
    remote = score_texts(served["store"], TEXTS + [None, ""], reader=ServerReader(served["handle"]), **kw)
    local = score_texts(served["store"], TEXTS + [None, ""], reader=served["local"], **kw)
    assert remote.attrs["scoring"]["read_by"] == "model server"
    assert local.attrs["scoring"]["read_by"] == "in-process"
    num = [c for c in local.columns if c not in ("id", "label", "skipped", "text")]
    pd.testing.assert_frame_equal(remote[["id", "skipped", "text", "truncated"]],
                                  local[["id", "skipped", "text", "truncated"]])
    np.testing.assert_allclose(remote[num].to_numpy(float), local[num].to_numpy(float), rtol=1e-4, atol=1e-6)
    assert remote["truncated"].tolist() == [False, False, True, False, False, False, False]
    assert remote["skipped"].tolist()[5:] == ["non_string", "empty"]


def _raw(handle: ServerHandle, payload: dict) -> None:
    handle.call(payload, start=False)


def test_bad_read_requests_are_refused_and_the_server_lives_on(served, tmp_path):
    handle = served["handle"]
    pid = handle.live()["pid"]
    good = {"kind": "read", "texts": ["a small test text here"], "layer": 1, "pool_start": 0, "max_tokens": 50,
            "batch_size": 2, "max_batch_tokens": None}
    outside_scratch = served["root"] / "elsewhere.npy"
    with pytest.raises(ServiceError, match=r"must be a read-<host>-<pid>-<hex>\.npy file in"):
        _raw(handle, good | {"output": str(outside_scratch)})
    with pytest.raises(ServiceError, match=r"must be a read-<host>-<pid>-<hex>\.npy file in"):
        _raw(handle, good | {"output": str(handle.scratch_path("elsewhere.npy"))})
    with pytest.raises(ServiceError, match="outside the server's root"):
        _raw(handle, good | {"output": str(tmp_path / "x.npy")})
    existing = handle.scratch_path(_answer("e0e0"))
    existing.write_bytes(b"mine")
    with pytest.raises(ServiceError, match="refusing to overwrite"):
        _raw(handle, good | {"output": str(existing)})
    assert existing.read_bytes() == b"mine"
    existing.unlink()
    out = str(handle.scratch_path(_answer("a0a0")))
    with pytest.raises(ServiceError, match="not a block"):
        _raw(handle, good | {"output": out, "layer": 5})
    with pytest.raises(ServiceError, match="list of strings"):
        _raw(handle, good | {"output": out, "texts": ["ok", 3]})
    with pytest.raises(ServiceError, match="max_tokens"):
        _raw(handle, good | {"output": out, "pool_start": 4, "max_tokens": 4})
    assert _scratch_files(handle) == []
    with pytest.raises(ReadError, match="max_tokens"):  # the client checks before sending
        ServerReader(handle).read(["x"], layer=1, pool_start=3, max_tokens=2, on_batch=lambda r, x: None)
    assert handle.live()["pid"] == pid  # the same server answered everything


def test_find_live_server_and_the_cli_use_a_server_that_is_up(served, tmp_path):
    root = served["root"]
    server_dir = root / "activations" / ".server"
    found = find_live_server(server_dir, lambda info: Path(str(info.get("path"))).name == "model")
    assert found is not None and found.address == served["handle"].address
    assert find_live_server(server_dir, lambda info: False) is None
    assert find_live_server(tmp_path / "nothing-here", lambda info: True) is None
    src = tmp_path / "in.txt"
    src.write_text("\n".join(t for t in TEXTS if t) + "\n")
    out = tmp_path / "out.csv"
    assert score_mod.main([str(root / "vectors" / "vectors.zarr"), str(src), "--out", str(out),
                           "--layer", "3", "--max-tokens", "40", "--no-text"]) == 0
    meta = json.loads(out.with_name("out.csv.json").read_text())
    assert meta["read_by"] == "model server"
    assert meta["model"]["server"]["pid"] == served["handle"].live()["pid"]
    out2 = tmp_path / "out2.csv"
    assert score_mod.main([str(root / "vectors" / "vectors.zarr"), str(src), "--out", str(out2), "--layer", "3",
                           "--max-tokens", "40", "--no-text", "--server", "never"]) == 0
    meta2 = json.loads(out2.with_name("out2.csv.json").read_text())
    assert meta2["read_by"] == "in-process"
    a, b = pd.read_csv(out), pd.read_csv(out2)
    np.testing.assert_allclose(a[EMOTIONS + ["valence"]].to_numpy(float), b[EMOTIONS + ["valence"]].to_numpy(float),
                               rtol=1e-4, atol=1e-6)


def test_token_view_through_the_server_equals_the_local_one(served):
    remote = ServerReader(served["handle"])
    vec = np.random.default_rng(3).standard_normal(48)
    a = remote.token_projections(TEXTS[0], vec, 3, max_tokens=8)
    b = served["local"].token_projections(TEXTS[0], vec, 3, max_tokens=8)
    assert a.token_ids == b.token_ids and a.pieces == b.pieces and a.tokens == b.tokens and len(a) == 8
    np.testing.assert_allclose(a.projections, b.projections, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.norms, b.norms, rtol=1e-5)
    with pytest.raises(ServiceError, match="tokens request"):
        remote.token_projections(TEXTS[0], np.zeros(48), 3)


def test_request_bounds_are_clear_and_the_reader_splits_below_them(served, monkeypatch):
    handle = served["handle"]
    pid = handle.live()["pid"]
    out = str(handle.scratch_path(_answer("b0b0")))
    good = {"kind": "read", "layer": 1, "pool_start": 0, "max_tokens": 50, "batch_size": 2, "max_batch_tokens": None,
            "output": out}
    too_many = serve_subject.MAX_TEXTS_PER_REQUEST + 1
    with pytest.raises(ServiceError, match=f"{too_many:,} texts in one request: at most"):
        _raw(handle, good | {"texts": ["a"] * too_many})
    with pytest.raises(ServiceError, match="directions must be a list of 1 to"):
        _raw(handle, {"kind": "lens", "directions": [[0.0] * 48] * (serve_subject.MAX_LENS_DIRECTIONS + 1),
                      "scale": 1.0, "top_k": 1})
    with pytest.raises(ServiceError, match=r"shape \(m, 48\)"):
        _raw(handle, {"kind": "lens", "directions": [[1.0] * 47], "scale": 1.0, "top_k": 1})
    with pytest.raises(ServiceError, match="vector of 48 numbers"):
        _raw(handle, {"kind": "tokens", "text": "a", "layer": 1, "vector": [1.0] * 3})
    assert handle.live()["pid"] == pid and _scratch_files(handle) == []
    # a long read is split into several requests; the caller sees one read, the same numbers
    monkeypatch.setattr(reading, "READ_TEXTS_PER_REQUEST", 2)
    monkeypatch.setattr(reading, "LENS_DIRECTIONS_PER_REQUEST", 2)
    log = handle.log_file.read_text
    before = log().count("request 'read'")
    kw = dict(layer=3, pool_start=3, max_tokens=40, batch_size=2)
    x_srv, s_srv = gather(ServerReader(handle), TEXTS, **kw)
    x_loc, s_loc = gather(served["local"], TEXTS, **kw)
    assert log().count("request 'read'") - before == 3  # 5 texts, 2 per request
    assert s_srv.too_short == s_loc.too_short == [1] and list(s_srv.truncated) == [2]
    assert s_srv.n_tokens.tolist() == s_loc.n_tokens.tolist() and s_srv.tokens == s_loc.tokens
    np.testing.assert_allclose(x_srv, x_loc, rtol=1e-5, atol=1e-6)
    dirs = np.random.default_rng(4).standard_normal((5, 48))
    assert ServerReader(handle).top_tokens(dirs, 5.0, 3) == served["local"].top_tokens(dirs, 5.0, 3)
    assert reading.request_spans(["x" * 10] * 5, max_texts=10, max_bytes=30) == [(0, 2), (2, 4), (4, 5)]
    assert reading.request_spans(["x" * 100, "y"], max_bytes=30) == [(0, 1), (1, 2)]  # one long text alone
    assert reading.request_spans([]) == [(0, 0)]


def test_a_reads_part_file_refuses_symlinks_and_leftovers_are_swept(served, tmp_path):
    handle = served["handle"]
    pid = handle.live()["pid"]
    scratch = handle.address.parent
    victim = tmp_path / "victim.npy"
    victim.write_bytes(b"keep")
    answer = _answer("c0c0")
    good = {"kind": "read", "texts": ["a small test text here"], "layer": 1, "pool_start": 0, "max_tokens": 50,
            "batch_size": 2, "max_batch_tokens": None, "output": str(scratch / answer)}
    (scratch / f"{answer}.{pid}.part").symlink_to(victim)
    with pytest.raises(ServiceError, match=r"refusing to write .*\.part: a symlink"):
        _raw(handle, good)
    (scratch / f"{answer}.{pid}.part").unlink()
    (scratch / answer).symlink_to(victim)
    with pytest.raises(ServiceError, match="refusing to write .*: it is a symlink"):
        _raw(handle, good)
    (scratch / answer).unlink()
    assert victim.read_bytes() == b"keep"
    # what dead servers and clients of this host left is removed by the next read; a live one's stays
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    left = [f"read-{host}-{os.getpid()}-d1d1.npy.{dead.pid}.part",  # its server died mid-read
            f"read-{host}-{dead.pid}-d2d2.npy"]  # its client died after the answer
    kept = [f"read-{host}-{os.getpid()}-d3d3.npy.{os.getpid()}.part",  # a live "server" (this process)
            f"read-{host}-{os.getpid()}-d4d4.npy",  # a live client's answer
            f"read-otherhost-{dead.pid}-d5d5.npy"]  # another host's: its pids mean nothing here
    for name in left + kept:
        (scratch / name).write_bytes(b"x")
    gather(ServerReader(handle), ["one more text to read here"], layer=1, pool_start=0, max_tokens=50)
    assert not any((scratch / n).exists() for n in left) and all((scratch / n).exists() for n in kept)
    for name in kept:
        (scratch / name).unlink()
    assert handle.live()["pid"] == pid and _scratch_files(handle) == []
